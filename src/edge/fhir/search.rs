//! Searches: `GET /Task` by status and last update, paged with the broker's own page tokens,
//! and `GET /DiagnosticReport` by the ServiceRequest it is based on, with its Observations on
//! request. Unknown parameters are refused, so a client never mistakes an ignored filter for
//! an applied one.

use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::handlers::{fetch, fhir};
use super::instant::{millis, parse_instant};
use super::outcome::Outcome;
use super::render::{self, states_of_task_status};
use super::{Caller, State};
use crate::proto;

/// Default and largest page sizes of a Task search.
const DEFAULT_COUNT: u32 = 50;
const MAX_COUNT: u32 = 1000;

/// One `_lastUpdated` bound.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
    After(i64, bool),
    Before(i64, bool),
}

impl Bound {
    fn parse(raw: &str) -> Result<Self, Outcome> {
        let (prefix, rest) = match raw.get(..2) {
            Some(p @ ("gt" | "ge" | "lt" | "le")) => (p, &raw[2..]),
            _ => {
                return Err(param(
                    "_lastUpdated",
                    format!(
                        "use gt, ge, lt or le with an instant, e.g. gt2024-06-03T09:00:00Z (got {raw:?})"
                    ),
                ));
            }
        };
        // A bare date means its midnight, UTC.
        let text = if rest.len() == 10 {
            format!("{rest}T00:00:00Z")
        } else {
            rest.to_string()
        };
        let t = parse_instant(&text).map_err(|e| param("_lastUpdated", e))?;
        let ms = millis(&t);
        Ok(match prefix {
            "gt" => Self::After(ms, false),
            "ge" => Self::After(ms, true),
            "lt" => Self::Before(ms, false),
            _ => Self::Before(ms, true),
        })
    }

    fn admits(self, ms: i64) -> bool {
        match self {
            Self::After(t, inclusive) => ms > t || (inclusive && ms == t),
            Self::Before(t, inclusive) => ms < t || (inclusive && ms == t),
        }
    }
}

fn param(name: &str, why: impl Into<String>) -> Outcome {
    Outcome::new(StatusCode::BAD_REQUEST, "invalid", why.into()).at(name.to_string())
}

fn searchset(self_link: String, next: Option<String>, entries: Vec<Value>) -> Value {
    let mut links = vec![json!({ "relation": "self", "url": self_link })];
    if let Some(next) = next {
        links.push(json!({ "relation": "next", "url": next }));
    }
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": entries,
    })
}

fn query_string(params: &[(String, String)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        out.append_pair(k, v);
    }
    out.finish()
}

/// `GET /Task?status=…&_lastUpdated=gt…&_count=…`: the caller's Tasks, newest first.
pub(super) async fn tasks(
    AxState(edge): AxState<State>,
    Caller(client): Caller,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, Outcome> {
    let mut states: Vec<i32> = Vec::new();
    let mut bounds = Vec::new();
    let mut count = DEFAULT_COUNT;
    let mut cursor = String::new();
    for (name, value) in &params {
        match name.as_str() {
            "status" => {
                for status in value.split(',') {
                    let found = states_of_task_status(status.trim()).ok_or_else(|| {
                        param(
                            "status",
                            format!(
                                "{status:?} is not a Task status labaid uses (requested, accepted, in-progress, completed, failed, cancelled)"
                            ),
                        )
                    })?;
                    states.extend(found.iter().map(|s| *s as i32));
                }
            }
            "_lastUpdated" => bounds.push(Bound::parse(value)?),
            "_count" => {
                count = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_COUNT).contains(n))
                    .ok_or_else(|| param("_count", format!("_count is 1 to {MAX_COUNT}")))?;
            }
            "_cursor" => cursor.clone_from(value),
            "_format" => check_format(value)?,
            other => return Err(unknown_param("Task", other)),
        }
    }
    let page = client
        .requests()
        .list_requests(proto::ListRequestsRequest {
            states,
            priorities: Vec::new(),
            page_size: count,
            page_token: cursor,
            order_number: String::new(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::InvalidArgument => param(
                "_cursor",
                "the paging cursor is not valid; start the search again",
            ),
            _ => Outcome::from_status(&s, &|f| f.into()),
        })?
        .into_inner();
    let entries: Vec<Value> = page
        .requests
        .iter()
        .filter(|r| {
            let updated = r.updated_at.as_ref().map_or(0, millis);
            bounds.iter().all(|b| b.admits(updated))
        })
        .map(|r| {
            json!({
                "fullUrl": format!("{}/Task/{}", edge.base, r.id),
                "resource": render::task(r),
                "search": { "mode": "match" },
            })
        })
        .collect();
    let kept: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "_cursor")
        .cloned()
        .collect();
    let link = |cursor: Option<&str>| {
        let mut p = kept.clone();
        if let Some(c) = cursor {
            p.push(("_cursor".into(), c.into()));
        }
        format!("{}/Task?{}", edge.base, query_string(&p))
    };
    let current = params
        .iter()
        .find(|(k, _)| k == "_cursor")
        .map(|(_, v)| v.as_str());
    let next = (!page.next_page_token.is_empty()).then(|| link(Some(&page.next_page_token)));
    Ok(fhir(
        StatusCode::OK,
        &searchset(link(current), next, entries),
    ))
}

/// `GET /DiagnosticReport?based-on=ServiceRequest/{id}[&_include=DiagnosticReport:result]`.
pub(super) async fn reports(
    AxState(edge): AxState<State>,
    Caller(client): Caller,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, Outcome> {
    let mut based_on = None;
    let mut include = false;
    for (name, value) in &params {
        match name.as_str() {
            "based-on" => {
                let id = value.strip_prefix("ServiceRequest/").unwrap_or(value);
                based_on = Some(id.to_string());
            }
            "_include" if value == "DiagnosticReport:result" => include = true,
            "_include" => {
                return Err(param(
                    "_include",
                    format!("only _include=DiagnosticReport:result is supported, not {value:?}"),
                ));
            }
            "_format" => check_format(value)?,
            other => return Err(unknown_param("DiagnosticReport", other)),
        }
    }
    let id = based_on.ok_or_else(|| {
        param(
            "based-on",
            "search DiagnosticReports by based-on=ServiceRequest/{id}",
        )
    })?;
    // Search answers what matches: another trust's or an unknown request matches nothing.
    let request = match fetch(&client, "ServiceRequest", &id).await {
        Ok(r) => Some(r),
        Err(o) if o.status == StatusCode::NOT_FOUND => None,
        Err(o) => return Err(o),
    };
    let mut entries = Vec::new();
    if let Some(r) = &request {
        let codes = edge.codes(&client).await?;
        if let Some(report) = render::diagnostic_report(r, &codes) {
            entries.push(json!({
                "fullUrl": format!("{}/DiagnosticReport/{}", edge.base, r.id),
                "resource": report,
                "search": { "mode": "match" },
            }));
            if include {
                for o in render::observations(r, &codes) {
                    entries.push(json!({
                        "fullUrl": format!("{}/Observation/{}", edge.base, o["id"].as_str().unwrap_or("")),
                        "resource": o,
                        "search": { "mode": "include" },
                    }));
                }
            }
        }
    }
    let self_link = format!("{}/DiagnosticReport?{}", edge.base, query_string(&params));
    let mut bundle = searchset(self_link, None, entries);
    bundle["total"] =
        json!(usize::from(request.as_ref().is_some_and(
            |r| r.state == proto::RequestState::Resulted as i32
        )));
    Ok(fhir(StatusCode::OK, &bundle))
}

fn check_format(value: &str) -> Result<(), Outcome> {
    match value {
        "json" | "application/json" | "application/fhir+json" => Ok(()),
        other => Err(Outcome::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            format!("labaid-edge speaks FHIR JSON only, not {other:?}"),
        )),
    }
}

fn unknown_param(kind: &str, name: &str) -> Outcome {
    param(
        name,
        format!(
            "{kind} searches do not support the parameter {name:?}; GET /metadata lists those that are"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::instant::format_instant;
    use super::*;

    #[test]
    fn last_updated_bounds_take_prefixes_and_dates() {
        let t = parse_instant("2024-06-03T09:00:00Z").unwrap();
        let ms = millis(&t);
        assert!(
            Bound::parse("gt2024-06-03T09:00:00Z")
                .unwrap()
                .admits(ms + 1)
        );
        assert!(!Bound::parse("gt2024-06-03T09:00:00Z").unwrap().admits(ms));
        assert!(Bound::parse("ge2024-06-03T09:00:00Z").unwrap().admits(ms));
        assert!(Bound::parse("lt2024-06-04").unwrap().admits(ms));
        assert!(Bound::parse("2024-06-03").is_err());
        assert_eq!(format_instant(&t), "2024-06-03T09:00:00.000Z");
    }
}
