//! The parts of a scenario built from their TOML: each trust's demand and each timed event,
//! checked against the directory.

use super::*;

pub(super) fn build_demand(
    ctx: &Ctx<'_>,
    d: &RawDemand,
    trusts: &BTreeMap<OdsCode, String>,
    catalogue: &Catalogue,
) -> Result<Demand, SimError> {
    let trust = trust_code(ctx, &d.trust, d.trust.span(), "demand.trust", trusts)?;
    let mut per_day = [0.0; 4];
    for (key, v) in &d.per_day {
        let field = format!("per_day.{key}");
        let p = Priority::parse(key).map_err(|e| ctx.err(v, &field, e))?;
        per_day[priority_index(p)] = non_negative(ctx, v, &field)?;
    }
    let mut hourly = match &d.curve {
        None => [1.0; 24],
        Some(c) => match c.get_ref().as_str() {
            "flat" => [1.0; 24],
            "gp-morning" => GP_MORNING,
            "hospital" => HOSPITAL,
            other => {
                return Err(ctx.err(
                    c,
                    "curve",
                    format!("{other:?} must be flat, gp-morning or hospital"),
                ));
            }
        },
    };
    if let Some(h) = &d.hourly {
        let values = h.get_ref();
        if values.len() != 24 || values.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(ctx.err(
                h,
                "hourly",
                "must be 24 weights of 0 or more, one per hour from midnight",
            ));
        }
        hourly.copy_from_slice(values);
    }
    let mean = hourly.iter().sum::<f64>() / 24.0;
    if mean <= 0.0 {
        return Err(ctx.err_at(
            d.trust.span(),
            "hourly",
            "at least one hour must have demand",
        ));
    }
    for w in &mut hourly {
        *w /= mean;
    }
    let weekend_factor = match &d.weekend_factor {
        Some(v) => non_negative(ctx, v, "weekend_factor")?,
        None => 1.0,
    };
    let collection_minutes = match &d.collection_minutes {
        Some(v) => non_negative(ctx, v, "collection_minutes")?,
        None => 30.0,
    };
    let mut mix = Vec::new();
    for m in &d.mix {
        let tests = TestSet::parse(m.tests.get_ref(), catalogue)
            .map_err(|e| ctx.err(&m.tests, "mix.tests", e))?;
        let w = non_negative(ctx, &m.weight, "mix.weight")?;
        mix.push((tests, w));
    }
    let total: f64 = mix.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return Err(ctx.err_at(
            d.trust.span(),
            "mix",
            "needs at least one [[demand.mix]] with a weight above 0",
        ));
    }
    for (_, w) in &mut mix {
        *w /= total;
    }
    Ok(Demand {
        trust,
        per_day,
        hourly,
        weekend_factor,
        mix,
        collection_minutes,
    })
}

pub(super) fn build_event(
    ctx: &Ctx<'_>,
    e: &RawEvent,
    start: Timestamp,
    end: Timestamp,
    trusts: &BTreeMap<OdsCode, String>,
    labs: &[LabConfig],
    catalogue: &Catalogue,
) -> Result<Event, SimError> {
    let at = parse_datetime(e.at.get_ref()).map_err(|m| ctx.err(&e.at, "at", m))?;
    if at < start {
        return Err(ctx.err(
            &e.at,
            "at",
            format!("{} is before the scenario's start", e.at.get_ref()),
        ));
    }
    if at > end {
        return Err(ctx.err(
            &e.at,
            "at",
            format!("{} is after the scenario's end", e.at.get_ref()),
        ));
    }
    let kind_name = e.kind.get_ref().as_str();
    let need = |field: &str| ctx.err(&e.kind, field, format!("a {kind_name} event needs {field}"));
    let lab = || -> Result<OdsCode, SimError> {
        let v = e.lab.as_ref().ok_or_else(|| need("lab"))?;
        lab_code(ctx, v, "lab", labs)
    };
    let trust_list = || -> Result<Vec<OdsCode>, SimError> {
        let v = e.trusts.as_ref().ok_or_else(|| need("trusts"))?;
        v.get_ref()
            .iter()
            .map(|t| trust_code(ctx, &S::new(0..0, t.clone()), v.span(), "trusts", trusts))
            .collect()
    };
    let hours = match &e.hours {
        Some(v) => Some(non_negative(ctx, v, "hours")?),
        None => None,
    };
    let test = || -> Result<TestCode, SimError> {
        let v = e.test.as_ref().ok_or_else(|| need("test"))?;
        test_code(ctx, v, catalogue)
    };
    let kind = match kind_name {
        "provider_down" => EventKind::ProviderDown(trust_list()?),
        "provider_restored" => EventKind::ProviderRestored(trust_list()?),
        "lab_offline" => EventKind::LabOffline { lab: lab()?, hours },
        "lab_online" => EventKind::LabOnline(lab()?),
        "capacity" => {
            let lab = lab()?;
            let config = labs
                .iter()
                .find(|l| l.ods == lab)
                .expect("lab() checked it");
            let tests: Vec<TestCode> = match &e.test {
                Some(v) => {
                    let t = test_code(ctx, v, catalogue)?;
                    if !config.capacity.contains_key(&t) {
                        return Err(ctx.err(v, "test", format!("lab {lab} does not perform {t}")));
                    }
                    vec![t]
                }
                None => config.capacity.keys().cloned().collect(),
            };
            let capacity = match (&e.capacity, &e.factor) {
                (Some(c), None) => {
                    let c = u32::try_from(*c.get_ref()).map_err(|_| {
                        ctx.err(
                            c,
                            "capacity",
                            format!("must be 0 or more, not {}", c.get_ref()),
                        )
                    })?;
                    tests.into_iter().map(|t| (t, c)).collect()
                }
                (None, Some(f)) => {
                    let f = non_negative(ctx, f, "factor")?;
                    tests
                        .into_iter()
                        .map(|t| {
                            let base = config.capacity[&t];
                            (t, (f64::from(base) * f).round() as u32)
                        })
                        .collect()
                }
                _ => {
                    return Err(ctx.err(
                        &e.kind,
                        "capacity",
                        "a capacity event needs either capacity or factor",
                    ));
                }
            };
            EventKind::Capacity { lab, capacity }
        }
        "suspend_test" => EventKind::SuspendTest {
            test: test()?,
            hours,
        },
        "resume_test" => EventKind::ResumeTest(test()?),
        other => {
            return Err(ctx.err(
                &e.kind,
                "kind",
                format!(
                    "{other:?} must be provider_down, provider_restored, lab_offline, lab_online, \
                     capacity, suspend_test or resume_test"
                ),
            ));
        }
    };
    Ok(Event { at, kind })
}
