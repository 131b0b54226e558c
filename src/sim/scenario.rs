//! Scenario files: the TOML an incident team writes, parsed and checked into a [`Scenario`] whose
//! every name is known to the directory, or refused with the file, line and field at fault.

mod parts;

use parts::{build_demand, build_event};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::config::Config;
use crate::domain::{Catalogue, LabStatus, OdsCode, Priority, TestCode, TestSet, Timestamp};
use crate::routing::{LabConfig, Leases};

use super::SimError;
use super::calendar::parse_datetime;

/// How long a lab takes to analyse a sample once it has arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Service {
    /// Exactly the catalogue turnaround.
    Fixed,
    /// Exponential with the catalogue turnaround as its mean (the M/M/c textbook case).
    Exponential,
    /// Log-normal with the catalogue turnaround as its mean and this coefficient of variation.
    LogNormal(f64),
}

/// How one lab behaves in the simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct LabBehaviour {
    /// Mean minutes from an offer to the lab's answer (exponential; 0 answers at once).
    pub accept_minutes: f64,
    /// Chance that an offer is declined.
    pub decline_chance: f64,
    /// Chance that a sample cannot be used (haemolysed, insufficient).
    pub fail_chance: f64,
    /// Analysis time.
    pub service: Service,
    /// Multiplies the catalogue turnaround (a lab slower or faster than the catalogue says).
    pub turnaround_factor: f64,
    /// Mean extra courier minutes on top of the directory's (exponential; 0 for none).
    pub courier_extra_minutes: f64,
    /// Daily opening hours as minutes of the day `[open, close)`; `None` for 24 hours.
    pub hours: Option<(u32, u32)>,
    /// Status at the start.
    pub status: LabStatus,
}

/// Requests of one trust.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// The trust.
    pub trust: OdsCode,
    /// Requests a day per priority, indexed by [`priority_index`].
    pub per_day: [f64; 4],
    /// Relative weight of each hour of the day (mean 1).
    pub hourly: [f64; 24],
    /// Multiplies Saturday and Sunday demand.
    pub weekend_factor: f64,
    /// Test sets and their weights (they sum to 1).
    pub mix: Vec<(TestSet, f64)>,
    /// Mean minutes from collection to submission (exponential).
    pub collection_minutes: f64,
}

/// Something that happens at a given time.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// These trusts' provider goes down: they submit to labaid from now on.
    ProviderDown(Vec<OdsCode>),
    /// Their provider is back: they stop submitting.
    ProviderRestored(Vec<OdsCode>),
    /// A lab goes offline, for some hours or until a `lab_online` event.
    LabOffline {
        /// The lab.
        lab: OdsCode,
        /// For how long, if known.
        hours: Option<f64>,
    },
    /// A lab comes back online.
    LabOnline(OdsCode),
    /// A lab's capacity for a test (or every test it performs) is set.
    Capacity {
        /// The lab.
        lab: OdsCode,
        /// The test and its new capacity, for each test changed.
        capacity: Vec<(TestCode, u32)>,
    },
    /// Requests naming this test are no longer sent (for some hours, or until resumed).
    SuspendTest {
        /// The test.
        test: TestCode,
        /// For how long, if known.
        hours: Option<f64>,
    },
    /// A suspended test is sent again.
    ResumeTest(TestCode),
}

/// A scenario event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When.
    pub at: Timestamp,
    /// What.
    pub kind: EventKind,
}

/// A checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its file.
    pub path: PathBuf,
    /// Its title.
    pub name: String,
    /// A paragraph on what it rehearses.
    pub description: String,
    /// When the simulation starts.
    pub start: Timestamp,
    /// Milliseconds during which requests arrive.
    pub duration_ms: i64,
    /// Longest milliseconds after that for work in progress to finish.
    pub drain_ms: i64,
    /// Random seed.
    pub seed: u64,
    /// Minutes between time-series samples.
    pub sample_minutes: u32,
    /// Minutes after a lab goes offline before a coordinator reassigns its samples in transit.
    pub reassign_minutes: f64,
    /// Turnaround target per priority, in milliseconds, indexed by [`priority_index`].
    pub targets_ms: [i64; 4],
    /// The test catalogue.
    pub catalogue: Catalogue,
    /// Trusts of the directory.
    pub trusts: BTreeMap<OdsCode, String>,
    /// Labs of the directory, with the scenario's capacities.
    pub labs: Vec<LabConfig>,
    /// Offer leases.
    pub leases: Leases,
    /// How each lab behaves, by ODS code.
    pub behaviour: BTreeMap<OdsCode, LabBehaviour>,
    /// Demand per trust.
    pub demand: Vec<Demand>,
    /// Events, in time order (file order among equal times).
    pub events: Vec<Event>,
}

/// Priorities in report order, most urgent first.
pub const REPORT_ORDER: [Priority; 4] = [
    Priority::Stat,
    Priority::Asap,
    Priority::Urgent,
    Priority::Routine,
];

/// Index of a priority in the per-priority arrays (routine 0 .. stat 3).
pub fn priority_index(p: Priority) -> usize {
    match p {
        Priority::Routine => 0,
        Priority::Urgent => 1,
        Priority::Asap => 2,
        Priority::Stat => 3,
    }
}

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    description: Option<String>,
    start: S<String>,
    duration_hours: S<f64>,
    seed: u64,
    drain_hours: Option<S<f64>>,
    sample_minutes: Option<S<i64>>,
    directory: Option<S<String>>,
    reassign_minutes: Option<S<f64>>,
    #[serde(default)]
    targets: BTreeMap<String, S<f64>>,
    lab_defaults: Option<RawLab>,
    #[serde(default, rename = "lab")]
    labs: Vec<RawLab>,
    #[serde(default, rename = "demand")]
    demand: Vec<RawDemand>,
    #[serde(default, rename = "event")]
    events: Vec<RawEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    ods: Option<S<String>>,
    status: Option<S<String>>,
    capacity: Option<BTreeMap<String, S<i64>>>,
    capacity_factor: Option<S<f64>>,
    accept_minutes: Option<S<f64>>,
    decline_chance: Option<S<f64>>,
    fail_chance: Option<S<f64>>,
    service: Option<S<String>>,
    service_cv: Option<S<f64>>,
    turnaround_factor: Option<S<f64>>,
    courier_extra_minutes: Option<S<f64>>,
    hours: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemand {
    trust: S<String>,
    per_day: BTreeMap<String, S<f64>>,
    curve: Option<S<String>>,
    hourly: Option<S<Vec<f64>>>,
    weekend_factor: Option<S<f64>>,
    collection_minutes: Option<S<f64>>,
    mix: Vec<RawMix>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMix {
    tests: S<Vec<String>>,
    weight: S<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: S<String>,
    kind: S<String>,
    trusts: Option<S<Vec<String>>>,
    lab: Option<S<String>>,
    test: Option<S<String>>,
    hours: Option<S<f64>>,
    capacity: Option<S<i64>>,
    factor: Option<S<f64>>,
}

/// The hourly curve of a GP surgery: bloods taken in the morning clinics, couriered by noon.
const GP_MORNING: [f64; 24] = [
    0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.8, 2.5, 3.2, 3.0, 2.4, 1.6, 1.2, 1.4, 1.3, 1.0, 0.6, 0.3,
    0.2, 0.1, 0.1, 0.1, 0.1,
];
/// The hourly curve of a hospital: ward rounds in the morning, the emergency department all day.
const HOSPITAL: [f64; 24] = [
    0.5, 0.4, 0.4, 0.4, 0.5, 0.8, 1.2, 1.5, 1.7, 1.6, 1.5, 1.4, 1.3, 1.3, 1.2, 1.2, 1.1, 1.1, 1.0,
    0.9, 0.8, 0.7, 0.6, 0.6,
];

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<Scenario, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Checks scenario text; `path` names it in errors and anchors a relative `directory`.
pub fn parse(text: &str, path: &Path) -> Result<Scenario, SimError> {
    let ctx = Ctx { text, path };
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err_at(span.clone(), &ctx.key_at(span), e.message().trim())
    })?;
    build(raw, &ctx)
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn err_at(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> SimError {
        SimError::Scenario {
            path: self.path.to_path_buf(),
            line: self.line(span.start),
            field: field.to_string(),
            message: message.into().replace('\n', " "),
        }
    }

    fn err<T>(&self, value: &S<T>, field: &str, message: impl Into<String>) -> SimError {
        self.err_at(value.span(), field, message)
    }

    /// The key written on the line of a parser error, for errors serde reports without one.
    fn key_at(&self, span: Range<usize>) -> String {
        let start = self.text[..span.start.min(self.text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line_text = self.text[start..].lines().next().unwrap_or("");
        let before = &self.text[start..span.start.min(self.text.len()).max(start)];
        let outer = line_text
            .split_once('=')
            .map(|(k, _)| k.trim().to_string())
            .unwrap_or_else(|| line_text.trim().to_string());
        // In an inline table (`capacity = { FBC = -5 }`) name the inner key too.
        let inner = before
            .rsplit_once('=')
            .map(|(k, _)| {
                k.rsplit(['{', ',', ' '])
                    .find(|s| !s.is_empty())
                    .unwrap_or("")
                    .to_string()
            })
            .filter(|k| !k.is_empty() && *k != outer);
        match inner {
            Some(inner) => format!("{outer}.{inner}"),
            None => outer,
        }
    }
}

fn non_negative(ctx: &Ctx<'_>, v: &S<f64>, field: &str) -> Result<f64, SimError> {
    let x = *v.get_ref();
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(ctx.err(v, field, format!("must be 0 or more, not {x}")))
    }
}

fn chance(ctx: &Ctx<'_>, v: &S<f64>, field: &str) -> Result<f64, SimError> {
    let x = *v.get_ref();
    if (0.0..=1.0).contains(&x) {
        Ok(x)
    } else {
        Err(ctx.err(v, field, format!("must be a chance from 0 to 1, not {x}")))
    }
}

fn parse_hours(ctx: &Ctx<'_>, v: &S<String>) -> Result<(u32, u32), SimError> {
    let bad = || {
        ctx.err(
            v,
            "hours",
            format!("{:?} must look like 08:00-20:00", v.get_ref()),
        )
    };
    let (a, b) = v.get_ref().split_once('-').ok_or_else(bad)?;
    let minute = |s: &str| -> Option<u32> {
        let (h, m) = s.trim().split_once(':')?;
        let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
    };
    match (minute(a), minute(b)) {
        (Some(open), Some(close)) if open < close => Ok((open, close)),
        _ => Err(bad()),
    }
}

fn lab_code(
    ctx: &Ctx<'_>,
    v: &S<String>,
    field: &str,
    labs: &[LabConfig],
) -> Result<OdsCode, SimError> {
    let known = || {
        labs.iter()
            .map(|l| l.ods.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    OdsCode::parse(v.get_ref())
        .ok()
        .filter(|c| labs.iter().any(|l| &l.ods == c))
        .ok_or_else(|| {
            ctx.err(
                v,
                field,
                format!(
                    "unknown lab {:?} (the directory has {})",
                    v.get_ref(),
                    known()
                ),
            )
        })
}

fn trust_code(
    ctx: &Ctx<'_>,
    v: &S<String>,
    span: Range<usize>,
    field: &str,
    trusts: &BTreeMap<OdsCode, String>,
) -> Result<OdsCode, SimError> {
    let known = trusts
        .keys()
        .map(OdsCode::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    OdsCode::parse(v.get_ref())
        .ok()
        .filter(|c| trusts.contains_key(c))
        .ok_or_else(|| {
            ctx.err_at(
                span,
                field,
                format!(
                    "unknown trust {:?} (the directory has {known})",
                    v.get_ref()
                ),
            )
        })
}

fn test_code(ctx: &Ctx<'_>, v: &S<String>, catalogue: &Catalogue) -> Result<TestCode, SimError> {
    TestCode::parse(v.get_ref())
        .ok()
        .filter(|c| catalogue.get(c).is_some())
        .ok_or_else(|| {
            ctx.err(
                v,
                "test",
                format!("{:?} is not in the test catalogue", v.get_ref()),
            )
        })
}

fn build(raw: RawScenario, ctx: &Ctx<'_>) -> Result<Scenario, SimError> {
    let config = match &raw.directory {
        None => Config::demo().map_err(|e| ctx.err_at(0..0, "directory", e.to_string()))?,
        Some(d) => {
            let file = ctx
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .join(d.get_ref());
            Config::load(&file).map_err(|e| ctx.err(d, "directory", e.to_string()))?
        }
    };
    let start = parse_datetime(raw.start.get_ref()).map_err(|e| ctx.err(&raw.start, "start", e))?;
    let hours = *raw.duration_hours.get_ref();
    if !(hours > 0.0 && hours <= 24.0 * 366.0) {
        return Err(ctx.err(
            &raw.duration_hours,
            "duration_hours",
            "must be more than 0 and at most a year",
        ));
    }
    let drain = match &raw.drain_hours {
        Some(v) => non_negative(ctx, v, "drain_hours")?,
        None => 72.0,
    };
    let sample_minutes = match &raw.sample_minutes {
        Some(v) if (1..=1440).contains(v.get_ref()) => *v.get_ref() as u32,
        Some(v) => return Err(ctx.err(v, "sample_minutes", "must be 1 to 1440")),
        None => 15,
    };
    let reassign_minutes = match &raw.reassign_minutes {
        Some(v) => non_negative(ctx, v, "reassign_minutes")?,
        None => 15.0,
    };
    let mut targets_ms = [24 * 60, 4 * 60, 2 * 60, 60].map(|m: i64| m * 60_000);
    for (key, v) in &raw.targets {
        let p = Priority::parse(key).map_err(|e| ctx.err(v, &format!("targets.{key}"), e))?;
        let h = non_negative(ctx, v, &format!("targets.{key}"))?;
        targets_ms[priority_index(p)] = (h * 3_600_000.0).round() as i64;
    }

    let catalogue = (*config.catalogue).clone();
    let mut labs = config.labs.clone();
    let defaults = match &raw.lab_defaults {
        Some(d) => {
            for (present, field) in [
                (d.ods.is_some(), "lab_defaults.ods"),
                (d.capacity.is_some(), "lab_defaults.capacity"),
                (d.capacity_factor.is_some(), "lab_defaults.capacity_factor"),
            ] {
                if present {
                    return Err(ctx.err_at(
                        0..0,
                        field,
                        "belongs in a [[lab]] table, not in [lab_defaults]",
                    ));
                }
            }
            behaviour(ctx, d, &default_behaviour())?
        }
        None => default_behaviour(),
    };
    let mut behaviours: BTreeMap<OdsCode, LabBehaviour> = labs
        .iter()
        .map(|l| (l.ods.clone(), defaults.clone()))
        .collect();
    for l in &raw.labs {
        let Some(ods_raw) = &l.ods else {
            return Err(ctx.err_at(0..0, "lab.ods", "every [[lab]] needs an ods code"));
        };
        let ods = lab_code(ctx, ods_raw, "lab.ods", &labs)?;
        let config = labs
            .iter_mut()
            .find(|c| c.ods == ods)
            .expect("lab_code checked the lab is in the directory");
        if let Some(f) = &l.capacity_factor {
            let f = non_negative(ctx, f, "capacity_factor")?;
            for cap in config.capacity.values_mut() {
                *cap = (f64::from(*cap) * f).round() as u32;
            }
        }
        for (test, cap) in l.capacity.iter().flatten() {
            let field = format!("capacity.{test}");
            let code = TestCode::parse(test)
                .ok()
                .filter(|c| config.capacity.contains_key(c))
                .ok_or_else(|| {
                    ctx.err(cap, &field, format!("lab {ods} does not perform {test}"))
                })?;
            let value = u32::try_from(*cap.get_ref()).map_err(|_| {
                ctx.err(
                    cap,
                    &field,
                    format!("must be 0 or more, not {}", cap.get_ref()),
                )
            })?;
            config.capacity.insert(code, value);
        }
        let b = behaviour(ctx, l, &behaviours[&ods])?;
        behaviours.insert(ods, b);
    }

    let mut demand = Vec::new();
    for d in &raw.demand {
        demand.push(build_demand(ctx, d, &config.trusts, &catalogue)?);
    }
    if demand.is_empty() {
        return Err(ctx.err_at(
            0..0,
            "demand",
            "a scenario needs at least one [[demand]] table",
        ));
    }

    let end = start.plus_millis((hours * 3_600_000.0).round() as i64);
    let mut events = Vec::new();
    for e in &raw.events {
        events.push(build_event(
            ctx,
            e,
            start,
            end,
            &config.trusts,
            &labs,
            &catalogue,
        )?);
    }
    events.sort_by_key(|e| e.at);

    Ok(Scenario {
        path: ctx.path.to_path_buf(),
        name: raw.name.clone().unwrap_or_else(|| {
            ctx.path
                .file_stem()
                .map_or("scenario".into(), |s| s.to_string_lossy().into_owned())
        }),
        description: raw.description.clone().unwrap_or_default(),
        start,
        duration_ms: end.millis_since(start),
        drain_ms: (drain * 3_600_000.0).round() as i64,
        seed: raw.seed,
        sample_minutes,
        reassign_minutes,
        targets_ms,
        catalogue,
        trusts: config.trusts.clone(),
        labs,
        leases: config.leases,
        behaviour: behaviours,
        demand,
        events,
    })
}

fn default_behaviour() -> LabBehaviour {
    LabBehaviour {
        accept_minutes: 3.0,
        decline_chance: 0.0,
        fail_chance: 0.0,
        service: Service::LogNormal(0.3),
        turnaround_factor: 1.0,
        courier_extra_minutes: 0.0,
        hours: None,
        status: LabStatus::Online,
    }
}

fn behaviour(ctx: &Ctx<'_>, l: &RawLab, base: &LabBehaviour) -> Result<LabBehaviour, SimError> {
    let mut b = base.clone();
    if let Some(v) = &l.accept_minutes {
        b.accept_minutes = non_negative(ctx, v, "accept_minutes")?;
    }
    if let Some(v) = &l.decline_chance {
        b.decline_chance = chance(ctx, v, "decline_chance")?;
    }
    if let Some(v) = &l.fail_chance {
        b.fail_chance = chance(ctx, v, "fail_chance")?;
    }
    if let Some(v) = &l.turnaround_factor {
        b.turnaround_factor = non_negative(ctx, v, "turnaround_factor")?;
    }
    if let Some(v) = &l.courier_extra_minutes {
        b.courier_extra_minutes = non_negative(ctx, v, "courier_extra_minutes")?;
    }
    let cv = match &l.service_cv {
        Some(v) => Some(non_negative(ctx, v, "service_cv")?),
        None => None,
    };
    if let Some(v) = &l.service {
        b.service = match v.get_ref().as_str() {
            "fixed" => Service::Fixed,
            "exponential" => Service::Exponential,
            "lognormal" => Service::LogNormal(cv.unwrap_or(0.3)),
            other => {
                return Err(ctx.err(
                    v,
                    "service",
                    format!("{other:?} must be fixed, exponential or lognormal"),
                ));
            }
        };
    } else if let (Some(cv), Service::LogNormal(_)) = (cv, b.service) {
        b.service = Service::LogNormal(cv);
    }
    if let Some(v) = &l.hours {
        b.hours = Some(parse_hours(ctx, v)?);
    }
    if let Some(v) = &l.status {
        b.status = LabStatus::parse(v.get_ref()).map_err(|e| ctx.err(v, "status", e))?;
    }
    Ok(b)
}
