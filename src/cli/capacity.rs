//! `labctl capacity show|set`: how many jobs of each test this lab will hold in flight.

use clap::Subcommand;

use super::Ctx;
use super::error::{CliError, Subject};
use super::output::{Output, Table, capacity_json, lab_status_name};
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
            let me = client
                .labs()
                .who_am_i(proto::WhoAmIRequest {})
                .await
                .map_err(|s| ctx.status(&s, Subject::Other))?
                .into_inner();
            let capacity = proto::Capacity {
                lab: me.organisation.clone(),
                tests: me.tests,
            };
            return print(ctx.out(), &capacity, Some((&me.name, me.status)));
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
    print(ctx.out(), &capacity, None)
}

/// Prints the capacity table, headed by the lab's name and status when known.
fn print(out: &Output, c: &proto::Capacity, lab: Option<(&str, i32)>) -> Result<(), CliError> {
    if out.is_json() {
        let mut doc = capacity_json(c);
        if let (Some((name, status)), Some(map)) = (lab, doc.as_object_mut()) {
            map.insert("name".into(), name.into());
            map.insert("status".into(), lab_status_name(status).into());
        }
        return out.json(&doc);
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
    match lab {
        Some((name, status)) => out.line(&format!(
            "Capacity of {} ({name}, {})",
            c.lab,
            lab_status_name(status)
        ))?,
        None => out.line(&format!("Capacity of {}", c.lab))?,
    }
    out.table(&table)
}
