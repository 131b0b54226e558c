//! `labctl status [online|draining|offline]`: whether this lab takes new work.

use super::Ctx;
use super::error::{CliError, Subject};
use super::output::lab_status_name;
use crate::proto;

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The new status; leave out to show the current one. draining keeps the lab's work and takes
    /// no new offers; offline also withdraws its open offers, which are routed again
    #[arg(value_enum)]
    status: Option<StatusArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatusArg {
    /// Take new offers
    Online,
    /// Keep current work, take no new offers
    Draining,
    /// Take no new offers; open offers are withdrawn and routed again
    Offline,
}

pub(crate) async fn run(ctx: &Ctx, args: StatusArgs) -> Result<(), CliError> {
    let client = ctx.connect().await?;
    let out = ctx.out();
    let fail = |s: tonic::Status| ctx.status(&s, Subject::Other);
    let Some(status) = args.status else {
        let me = client
            .labs()
            .who_am_i(proto::WhoAmIRequest {})
            .await
            .map_err(fail)?
            .into_inner();
        let status = lab_status_name(me.status);
        return if out.is_json() {
            out.json(&serde_json::json!({
                "lab": me.organisation,
                "name": me.name,
                "role": me.role,
                "status": status,
            }))
        } else {
            out.line(&format!("{} ({}) is {status}", me.organisation, me.name))
        };
    };
    let status = match status {
        StatusArg::Online => proto::LabStatus::Online,
        StatusArg::Draining => proto::LabStatus::Draining,
        StatusArg::Offline => proto::LabStatus::Offline,
    };
    let resp = client
        .labs()
        .set_status(proto::SetStatusRequest {
            status: status as i32,
        })
        .await
        .map_err(fail)?
        .into_inner();
    let name = lab_status_name(resp.status);
    if out.is_json() {
        return out.json(&serde_json::json!({
            "lab": resp.lab,
            "status": name,
            "offers_withdrawn": resp.offers_withdrawn,
        }));
    }
    let mut line = format!("{} is now {name}", resp.lab);
    if resp.offers_withdrawn > 0 {
        line.push_str(&format!(
            "; {} open offer(s) withdrawn and routed to other labs",
            resp.offers_withdrawn
        ));
    }
    out.line(&line)
}
