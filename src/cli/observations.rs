//! Results on the command line: `--obs K=5.1mmol/L` flags and CSV or JSON files, read into raw
//! observations that `jobs result` then validates with the broker's own rules.

use serde_json::Value;

use super::error::CliError;
use crate::domain::ObservationFlag;

/// One result as typed or read, before validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RawObservation {
    pub(crate) test: String,
    pub(crate) analyte: String,
    pub(crate) value: String,
    pub(crate) unit: String,
    pub(crate) reference_range: String,
    pub(crate) flag: Option<ObservationFlag>,
}

/// Parses `TEST[.ANALYTE]=VALUE[UNIT][;ref=RANGE][;flag=FLAG]`, e.g. `K=5.1mmol/L`,
/// `FBC.HGB=135 g/L;ref=130-170`, `GS=positive;flag=abnormal`.
pub(crate) fn parse_obs(raw: &str) -> Result<RawObservation, String> {
    let mut parts = raw.split(';');
    let main = parts.next().unwrap_or_default();
    let (name, reading) = main.split_once('=').ok_or_else(|| {
        format!("{raw:?} is not a result: write TEST=VALUE[UNIT], e.g. K=5.1mmol/L")
    })?;
    let (test, analyte) = match name.split_once('.') {
        Some((t, a)) => (t.trim(), a.trim()),
        None => (name.trim(), ""),
    };
    let (value, unit) = split_value_unit(reading.trim());
    let mut obs = RawObservation {
        test: test.to_string(),
        analyte: analyte.to_string(),
        value,
        unit,
        ..RawObservation::default()
    };
    for extra in parts {
        match extra.split_once('=') {
            Some(("ref" | "range" | "reference_range", v)) => obs.reference_range = v.trim().into(),
            Some(("flag", v)) => obs.flag = Some(parse_flag(v)?),
            Some(("unit", v)) => obs.unit = v.trim().into(),
            _ => {
                return Err(format!(
                    "{extra:?} in {raw:?} is not understood: use ;ref=RANGE, ;flag=FLAG or ;unit=UNIT"
                ));
            }
        }
    }
    Ok(obs)
}

/// `5.1mmol/L` -> (`5.1`, `mmol/L`); `<0.5 mg/L` -> (`<0.5`, `mg/L`); `positive` -> (`positive`, ``).
fn split_value_unit(reading: &str) -> (String, String) {
    let bytes = reading.as_bytes();
    let mut i = 0;
    while i < bytes.len() && matches!(bytes[i], b'<' | b'>' | b'=') {
        i += 1;
    }
    if i < bytes.len() && matches!(bytes[i], b'-' | b'+') {
        i += 1;
    }
    let digits_start = i;
    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
        i += 1;
    }
    if i == digits_start || !reading[digits_start..i].bytes().any(|b| b.is_ascii_digit()) {
        return (reading.to_string(), String::new());
    }
    (reading[..i].to_string(), reading[i..].trim().to_string())
}

/// `high`, `critical-low`, ... (underscores and any case accepted).
pub(crate) fn parse_flag(raw: &str) -> Result<ObservationFlag, String> {
    Ok(
        match raw.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "" | "normal" => ObservationFlag::Normal,
            "low" => ObservationFlag::Low,
            "high" => ObservationFlag::High,
            "abnormal" => ObservationFlag::Abnormal,
            "critical-low" => ObservationFlag::CriticalLow,
            "critical-high" => ObservationFlag::CriticalHigh,
            other => {
                return Err(format!(
                    "{other:?} is not a flag: use normal, low, high, abnormal, critical-low or critical-high"
                ));
            }
        },
    )
}

/// Reads a results file: JSON (an array of objects, or `{"observations": [...]}`) when it starts
/// with `[` or `{`, else CSV with a header row naming test, value and optionally analyte, unit,
/// reference_range and flag.
pub(crate) fn parse_file(text: &str, name: &str) -> Result<Vec<RawObservation>, CliError> {
    let bad = |why: String| CliError::Usage(format!("the results file {name}: {why}"));
    if text.trim_start().starts_with(['[', '{']) {
        parse_json(text).map_err(bad)
    } else {
        parse_csv(text).map_err(bad)
    }
}

fn parse_json(text: &str) -> Result<Vec<RawObservation>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let items = match &doc {
        Value::Array(items) => items,
        Value::Object(o) => match o.get("observations") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(
                    "expected an array, or an object with an \"observations\" array".into(),
                );
            }
        },
        _ => return Err("expected an array of results".into()),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(o) = item else {
                return Err(format!("result {} is not an object", i + 1));
            };
            let text = |key: &str| -> Result<String, String> {
                match o.get(key) {
                    None | Some(Value::Null) => Ok(String::new()),
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(Value::Number(n)) => Ok(n.to_string()),
                    Some(_) => Err(format!("result {}: {key} must be text or a number", i + 1)),
                }
            };
            for key in o.keys() {
                if ![
                    "test",
                    "analyte",
                    "value",
                    "unit",
                    "reference_range",
                    "flag",
                ]
                .contains(&key.as_str())
                {
                    return Err(format!("result {}: unknown field {key:?}", i + 1));
                }
            }
            let flag = text("flag")?;
            Ok(RawObservation {
                test: text("test")?,
                analyte: text("analyte")?,
                value: text("value")?,
                unit: text("unit")?,
                reference_range: text("reference_range")?,
                flag: if flag.is_empty() {
                    None
                } else {
                    Some(parse_flag(&flag)?)
                },
            })
        })
        .collect()
}

fn parse_csv(text: &str) -> Result<Vec<RawObservation>, String> {
    let mut rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (_, header) = rows.next().ok_or("the file is empty")?;
    let header: Vec<String> = split_csv_line(header)?
        .into_iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(test_col), Some(value_col)) = (column("test"), column("value")) else {
        return Err("the header row must name at least the columns test and value".into());
    };
    for h in &header {
        if ![
            "test",
            "analyte",
            "value",
            "unit",
            "reference_range",
            "flag",
        ]
        .contains(&h.as_str())
        {
            return Err(format!("unknown column {h:?}"));
        }
    }
    rows.map(|(n, line)| {
        let cells = split_csv_line(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let cell = |col: Option<usize>| {
            col.and_then(|c| cells.get(c))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let flag = cell(column("flag"));
        Ok(RawObservation {
            test: cell(Some(test_col)),
            analyte: cell(column("analyte")),
            value: cell(Some(value_col)),
            unit: cell(column("unit")),
            reference_range: cell(column("reference_range")),
            flag: if flag.is_empty() {
                None
            } else {
                Some(parse_flag(&flag).map_err(|e| format!("line {}: {e}", n + 1))?)
            },
        })
    })
    .collect()
}

/// Splits one CSV line; fields may be quoted, with `""` for a quote inside.
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_splits_value_and_unit() {
        let o = parse_obs("K=5.1mmol/L").unwrap();
        assert_eq!(
            (o.test.as_str(), o.value.as_str(), o.unit.as_str()),
            ("K", "5.1", "mmol/L")
        );
        let o = parse_obs("FBC.HGB=135 g/L;ref=130-170;flag=high").unwrap();
        assert_eq!(o.analyte, "HGB");
        assert_eq!(o.unit, "g/L");
        assert_eq!(o.reference_range, "130-170");
        assert_eq!(o.flag, Some(ObservationFlag::High));
        let o = parse_obs("CRP=<5 mg/L").unwrap();
        assert_eq!((o.value.as_str(), o.unit.as_str()), ("<5", "mg/L"));
        let o = parse_obs("GS=O positive").unwrap();
        assert_eq!((o.value.as_str(), o.unit.as_str()), ("O positive", ""));
        assert!(parse_obs("K5.1").is_err());
        assert!(parse_obs("K=5;colour=red").is_err());
    }

    #[test]
    fn csv_files_are_read_by_header() {
        let text = "test,value,unit,flag\nK,5.1,mmol/L,\n\"UE\",\"7,2\",mmol/L,high\n";
        let obs = parse_file(text, "r.csv").unwrap();
        assert_eq!(obs.len(), 2);
        assert_eq!(obs[1].value, "7,2");
        assert_eq!(obs[1].flag, Some(ObservationFlag::High));
        assert!(parse_file("value\n5\n", "r.csv").is_err());
    }

    #[test]
    fn json_files_take_numbers_or_text() {
        let obs = parse_file(r#"[{"test":"K","value":5.1,"unit":"mmol/L"}]"#, "r.json").unwrap();
        assert_eq!(obs[0].value, "5.1");
        let obs = parse_file(
            r#"{"observations":[{"test":"K","value":"6.8","flag":"critical_high"}]}"#,
            "r.json",
        )
        .unwrap();
        assert_eq!(obs[0].flag, Some(ObservationFlag::CriticalHigh));
        assert!(parse_file(r#"[{"test":"K","valu":"5"}]"#, "r.json").is_err());
    }
}
