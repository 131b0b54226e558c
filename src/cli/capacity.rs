//! `labctl capacity show|set`: how many jobs of each test this lab will hold in flight.

use clap::Subcommand;

use super::Ctx;
use super::error::{CliError, Subject};
use super::output::{Output, Table, capacity_json};
use crate::domain::TestCode;
use crate::proto;

#[derive(Debug, Subcommand)]
pub(crate) enum CapacityCommand {
    /// Show capacity, jobs in flight and free room, per test
    Show,
    /// Set the capacity of one test; lowering it never revokes work already offered or accepted
    Set {
        /// Catalogue code of the test, e.g. K
        test: String,
        /// Most jobs of this test to hold in flight; 0 stops new offers of it
        capacity: u32,
    },
}

pub(crate) async fn run(ctx: &Ctx, command: CapacityCommand) -> Result<(), CliError> {
    let capacity = match command {
        CapacityCommand::Show => {
            let client = ctx.connect().await?;
            client
                .labs()
                .get_capacity(proto::GetCapacityRequest {})
                .await
        }
        CapacityCommand::Set { test, capacity } => {
            let test = TestCode::parse(&test)
                .map_err(|e| CliError::Usage(format!("the test {test:?} {e}")))?;
            let client = ctx.connect().await?;
            client
                .labs()
                .set_capacity(proto::SetCapacityRequest {
                    test: test.to_string(),
                    capacity,
                })
                .await
        }
    }
    .map_err(|s| ctx.status(&s, Subject::Other))?
    .into_inner();
    print(ctx.out(), &capacity)
}

fn print(out: &Output, c: &proto::Capacity) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(&capacity_json(c));
    }
    let mut table = Table::new(["TEST", "CAPACITY", "IN FLIGHT", "FREE"]);
    for t in &c.tests {
        table.row([
            t.test.clone(),
            t.capacity.to_string(),
            t.in_flight.to_string(),
            t.capacity.saturating_sub(t.in_flight).to_string(),
        ]);
    }
    out.line(&format!("Capacity of {}", c.lab))?;
    out.table(&table)
}
