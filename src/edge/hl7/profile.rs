//! The trust's HL7 profile, read from the edge's config file: its local test codes mapped to
//! catalogue codes, its priority codes, the time zone of its timestamps, the processing IDs it
//! sends, and the names its results carry in MSH.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::domain::{Priority, TestCode};

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    timezone: Option<String>,
    default_priority: Option<String>,
    processing_ids: Option<Vec<String>>,
    #[serde(default)]
    codes: BTreeMap<String, String>,
    #[serde(default)]
    priorities: BTreeMap<String, String>,
    #[serde(default)]
    results: ResultsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultsFile {
    sending_application: Option<String>,
    sending_facility: Option<String>,
    receiving_application: Option<String>,
    receiving_facility: Option<String>,
}

/// MSH names on the results the edge sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultHeader {
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
}

/// The validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Time zone of timestamps sent without an offset.
    pub timezone: TimeZone,
    /// Its name, for logs.
    pub timezone_name: String,
    /// Priority when an order names none.
    pub default_priority: Priority,
    /// Processing IDs accepted in MSH-11 (`P` production, `T` training, `D` debugging).
    pub processing_ids: Vec<String>,
    /// Local test code (upper case) to catalogue code.
    codes: BTreeMap<String, TestCode>,
    /// Priority code (upper case) to priority.
    priorities: BTreeMap<String, Priority>,
    /// MSH names on results.
    pub results: ResultHeader,
}

impl Default for Profile {
    fn default() -> Self {
        Self::from_file(File::default()).unwrap_or_else(|_| unreachable!("defaults are valid"))
    }
}

impl Profile {
    /// Reads and checks the config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("the config file {}: {e}", path.display()))
    }

    /// Checks a config file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
        Self::from_file(file)
    }

    fn from_file(file: File) -> Result<Self, String> {
        let timezone_name = file.timezone.unwrap_or_else(|| "Europe/London".into());
        let timezone = TimeZone::get(&timezone_name)
            .map_err(|e| format!("timezone {timezone_name:?} is not known: {e}"))?;
        let default_priority = match file.default_priority {
            Some(p) => Priority::parse(&p).map_err(|e| format!("default_priority {e}"))?,
            None => Priority::Routine,
        };
        let processing_ids = file
            .processing_ids
            .unwrap_or_else(|| vec!["P".into()])
            .into_iter()
            .map(|p| p.trim().to_ascii_uppercase())
            .collect();
        let mut codes = BTreeMap::new();
        for (local, target) in file.codes {
            let code = TestCode::parse(&target)
                .map_err(|e| format!("codes: {local:?} maps to {target:?}, which {e}"))?;
            codes.insert(local.trim().to_ascii_uppercase(), code);
        }
        // HL7 table 0027's codes, read as the DESIGN's mapping; the file may change or add any.
        let mut priorities: BTreeMap<String, Priority> = [
            ("S", Priority::Stat),
            ("A", Priority::Asap),
            ("U", Priority::Urgent),
            ("T", Priority::Urgent),
            ("R", Priority::Routine),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (code, priority) in file.priorities {
            let p = Priority::parse(&priority).map_err(|e| format!("priorities.{code} {e}"))?;
            priorities.insert(code.trim().to_ascii_uppercase(), p);
        }
        let r = file.results;
        Ok(Self {
            timezone,
            timezone_name,
            default_priority,
            processing_ids,
            codes,
            priorities,
            results: ResultHeader {
                sending_application: r.sending_application.unwrap_or_else(|| "LABAID".into()),
                sending_facility: r.sending_facility.unwrap_or_else(|| "LABAID".into()),
                receiving_application: r.receiving_application.unwrap_or_default(),
                receiving_facility: r.receiving_facility.unwrap_or_default(),
            },
        })
    }

    /// The catalogue code for a code the trust sent: its mapping, else the code itself (catalogue
    /// codes map to themselves; whether the catalogue has it is checked by the caller).
    pub fn test_code(&self, local: &str) -> String {
        let key = local.trim().to_ascii_uppercase();
        self.codes
            .get(&key)
            .map_or(key, |code| code.as_str().to_string())
    }

    /// The priority for a priority code, if the profile knows it.
    pub fn priority(&self, code: &str) -> Option<Priority> {
        self.priorities
            .get(&code.trim().to_ascii_uppercase())
            .copied()
    }

    /// The local code the trust uses for a catalogue code, when exactly one maps to it.
    pub fn local_code(&self, code: &str) -> Option<&str> {
        let mut found = self
            .codes
            .iter()
            .filter(|(_, c)| c.as_str() == code)
            .map(|(local, _)| local.as_str());
        match (found.next(), found.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_and_catalogue_codes_map_to_themselves() {
        let p = Profile::parse(
            "[codes]\n\"K+\" = \"K\"\nfbcx = \"FBC\"\nKPOT = \"K\"\n[priorities]\nE = \"stat\"\nT = \"asap\"\n",
        )
        .unwrap();
        assert_eq!(p.test_code("k+"), "K");
        assert_eq!(p.test_code("FBCX"), "FBC");
        assert_eq!(p.test_code("crp"), "CRP");
        assert_eq!(p.local_code("FBC"), Some("FBCX"));
        assert_eq!(p.local_code("K"), None, "two local codes map to K");
        assert_eq!(p.priority("e"), Some(Priority::Stat));
        assert_eq!(
            p.priority("T"),
            Some(Priority::Asap),
            "the file overrides the default"
        );
        assert_eq!(p.priority("S"), Some(Priority::Stat));
        assert_eq!(p.priority("X"), None);
        assert_eq!(p.timezone_name, "Europe/London");
        assert_eq!(p.processing_ids, ["P"]);
    }

    #[test]
    fn a_bad_profile_names_what_is_wrong() {
        let e = Profile::parse("[codes]\nX = \"not a code\"\n").unwrap_err();
        assert!(e.contains("codes"), "{e}");
        let e = Profile::parse("timezone = \"Mars/Olympus\"\n").unwrap_err();
        assert!(e.contains("timezone"), "{e}");
        let e = Profile::parse("[priorities]\nS = \"soon\"\n").unwrap_err();
        assert!(e.contains("priorities.S"), "{e}");
        assert!(Profile::parse("colour = 1\n").is_err());
    }
}
