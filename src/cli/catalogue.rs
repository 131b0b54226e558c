//! `labctl catalogue`, and the catalogue that local validation uses: the broker's own
//! (DirectoryService.ListTests), so labctl checks exactly what the broker will check.

use super::Ctx;
use super::error::{CliError, Subject};
use super::output::{Table, test_json};
use crate::client::Client;
use crate::domain::{Catalogue, TestCode, TestDef};
use crate::proto;

/// The broker's catalogue, or the bundled demo catalogue when the broker does not serve one.
pub(crate) async fn fetch(ctx: &Ctx, client: &Client) -> Result<Catalogue, CliError> {
    match client
        .directory()
        .list_tests(proto::ListTestsRequest {})
        .await
    {
        Ok(resp) => to_domain(&resp.into_inner().tests),
        Err(status) if status.code() == tonic::Code::Unimplemented => crate::Config::demo()
            .map(|c| (*c.catalogue).clone())
            .map_err(|e| CliError::Other(format!("cannot load the bundled catalogue: {e}"))),
        Err(status) => Err(ctx.status(&status, Subject::Other)),
    }
}

fn to_domain(tests: &[proto::TestDefinition]) -> Result<Catalogue, CliError> {
    let defs = tests
        .iter()
        .map(|t| {
            Ok(TestDef {
                code: TestCode::parse(&t.code).map_err(|e| {
                    CliError::Other(format!("the broker sent a bad test code {:?}: {e}", t.code))
                })?,
                name: t.name.clone(),
                discipline: t.discipline.clone(),
                specimen: t.specimen.clone(),
                stability_minutes: t.stability_minutes,
                turnaround_minutes: t.turnaround_minutes,
                unit: (!t.unit.is_empty()).then(|| t.unit.clone()),
                critical_low: t.critical_low,
                critical_high: t.critical_high,
                loinc: (!t.loinc.is_empty()).then(|| t.loinc.clone()),
                snomed: (!t.snomed.is_empty()).then(|| t.snomed.clone()),
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    Catalogue::new(defs)
        .map_err(|e| CliError::Other(format!("the broker sent an inconsistent catalogue: {e}")))
}

/// `labctl catalogue`.
pub(crate) async fn run(ctx: &Ctx) -> Result<(), CliError> {
    let client = ctx.connect().await?;
    let tests = client
        .directory()
        .list_tests(proto::ListTestsRequest {})
        .await
        .map_err(|s| ctx.status(&s, Subject::Other))?
        .into_inner()
        .tests;
    let out = ctx.out();
    if out.is_json() {
        return out.json(&serde_json::json!({
            "tests": tests.iter().map(test_json).collect::<Vec<_>>(),
        }));
    }
    let mut table = Table::new([
        "CODE",
        "NAME",
        "DISCIPLINE",
        "SPECIMEN",
        "STABILITY",
        "TURNAROUND",
        "UNIT",
        "CRITICAL",
    ]);
    for t in &tests {
        let critical = match (t.critical_low, t.critical_high) {
            (Some(lo), Some(hi)) => format!("<= {lo}, >= {hi}"),
            (Some(lo), None) => format!("<= {lo}"),
            (None, Some(hi)) => format!(">= {hi}"),
            (None, None) => String::new(),
        };
        table.row([
            t.code.clone(),
            t.name.clone(),
            t.discipline.clone(),
            t.specimen.clone(),
            super::time::format_span(i64::from(t.stability_minutes) * 60_000),
            super::time::format_span(i64::from(t.turnaround_minutes) * 60_000),
            t.unit.clone(),
            critical,
        ]);
    }
    out.table(&table)
}
