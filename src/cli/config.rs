//! Connection settings in one place: flags over environment over the profile file over defaults,
//! each value remembering where it came from, and `labctl config show` (secrets masked).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;

use super::GlobalOpts;
use super::error::CliError;
use super::output::{Output, Table};

/// The broker address when nothing else says.
pub(crate) const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env(&'static str),
    /// The profile file.
    Profile,
    /// The built-in default.
    Default,
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Self::Flag => "flag".into(),
            Self::Env(var) => format!("env {var}"),
            Self::Profile => "profile".into(),
            Self::Default => "default".into(),
        }
    }
}

/// One setting and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) source: Source,
}

/// The connection settings in effect, validated.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Broker address, with a scheme.
    pub(crate) addr: Setting<String>,
    /// Bearer token.
    pub(crate) token: Option<Setting<String>>,
    /// CA certificate to trust (for TLS, once the broker serves it).
    pub(crate) ca: Option<Setting<PathBuf>>,
    /// Client certificate (mutual TLS).
    pub(crate) cert: Option<Setting<PathBuf>>,
    /// Client key (mutual TLS).
    pub(crate) key: Option<Setting<PathBuf>>,
    /// The profile file read, if any.
    pub(crate) profile: Option<PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|t| mask(&t.value)))
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("profile", &self.profile)
            .finish()
    }
}

/// The profile file: `addr`, `token`, `ca`, `cert`, `key`, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    addr: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// Resolves the settings from the flags, the environment (`env`) and the profile file.
pub(crate) fn resolve(
    flags: &GlobalOpts,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, CliError> {
    // Empty variables count as unset, as `LABAID_TOKEN= labctl ...` means "no token".
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let (profile_path, explicit) = match (&flags.profile, env("LABAID_PROFILE")) {
        (Some(p), _) => (Some(p.clone()), true),
        (None, Some(p)) => (Some(PathBuf::from(p)), true),
        (None, None) => (default_profile_path(&env), false),
    };
    let (profile, profile_read) = match profile_path {
        Some(path) if path.exists() => (read_profile(&path)?, Some(path)),
        Some(path) if explicit => {
            return Err(CliError::Usage(format!(
                "the profile file {} does not exist; check --profile or LABAID_PROFILE",
                path.display()
            )));
        }
        _ => (Profile::default(), None),
    };
    let base = profile_read
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    let pick = |flag: &Option<String>, var: &'static str, file: &Option<String>| {
        if let Some(v) = flag {
            Some(Setting {
                value: v.clone(),
                source: Source::Flag,
            })
        } else if let Some(v) = env(var) {
            Some(Setting {
                value: v,
                source: Source::Env(var),
            })
        } else {
            file.clone().map(|v| Setting {
                value: v,
                source: Source::Profile,
            })
        }
    };
    let pick_path = |flag: &Option<PathBuf>, var: &'static str, file: &Option<PathBuf>| {
        let file = file.as_ref().map(|p| match &base {
            // A relative path in the profile is relative to the profile's folder.
            Some(dir) if p.is_relative() => dir.join(p).display().to_string(),
            _ => p.display().to_string(),
        });
        let flag = flag.as_ref().map(|p| p.display().to_string());
        pick(&flag, var, &file).map(|s| Setting {
            value: PathBuf::from(s.value),
            source: s.source,
        })
    };
    let addr = pick(&flags.addr, "LABAID_ADDR", &profile.addr).unwrap_or(Setting {
        value: DEFAULT_ADDR.into(),
        source: Source::Default,
    });
    let addr = Setting {
        value: normalise_addr(&addr.value)?,
        source: addr.source,
    };
    Ok(Settings {
        addr,
        token: pick(&flags.token, "LABAID_TOKEN", &profile.token),
        ca: pick_path(&flags.ca, "LABAID_CA", &profile.ca),
        cert: pick_path(&flags.cert, "LABAID_CERT", &profile.cert),
        key: pick_path(&flags.key, "LABAID_KEY", &profile.key),
        profile: profile_read,
    })
}

/// `$XDG_CONFIG_HOME/labaid/labctl.toml`, else `~/.config/labaid/labctl.toml`.
fn default_profile_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("labaid").join("labctl.toml"))
}

fn read_profile(path: &Path) -> Result<Profile, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Other(format!(
            "cannot read the profile file {}: {e}",
            path.display()
        ))
    })?;
    let profile: Profile = toml::from_str(&text).map_err(|e| {
        let why = e.message().to_string();
        CliError::Usage(format!(
            "the profile file {} is not valid ({why}); it may hold addr, token, ca, cert and key",
            path.display()
        ))
    })?;
    warn_if_readable_by_others(path, &profile);
    Ok(profile)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, profile: &Profile) {
    use std::os::unix::fs::PermissionsExt as _;
    if profile.token.is_some()
        && let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "labctl: warning: the profile {} holds a token and others can read it; \
             run chmod 600 on it",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path, _: &Profile) {}

/// Adds `http://` to a bare `host:port`, and refuses anything that is not http(s); several
/// comma-separated addresses (brokers sharing one store) each.
fn normalise_addr(raw: &str) -> Result<String, CliError> {
    if raw.contains(',') {
        let each: Result<Vec<String>, CliError> = raw
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .map(normalise_one)
            .collect();
        return Ok(each?.join(","));
    }
    normalise_one(raw)
}

fn normalise_one(raw: &str) -> Result<String, CliError> {
    let raw = raw.trim();
    if raw.starts_with("http://") || raw.starts_with("https://") {
        Ok(raw.trim_end_matches('/').to_string())
    } else if raw.contains("://") {
        Err(CliError::Usage(format!(
            "the broker address {raw:?} must start with http:// or https://"
        )))
    } else {
        Ok(format!("http://{}", raw.trim_end_matches('/')))
    }
}

/// A token as `config show` prints it: never the token itself.
pub(crate) fn mask(token: &str) -> String {
    format!("******** ({} characters)", token.chars().count())
}

/// `labctl config show`.
pub(crate) fn show(settings: &Settings, out: &Output) -> Result<(), CliError> {
    let entry = |value: Option<String>, source: Option<&Source>| {
        json!({
            "value": value,
            "source": source.map(Source::describe),
        })
    };
    fn path_of(s: &Option<Setting<PathBuf>>) -> (Option<String>, Option<&Source>) {
        (
            s.as_ref().map(|s| s.value.display().to_string()),
            s.as_ref().map(|s| &s.source),
        )
    }
    let token = (
        settings.token.as_ref().map(|t| mask(&t.value)),
        settings.token.as_ref().map(|t| &t.source),
    );
    let rows = [
        (
            "addr",
            (
                Some(settings.addr.value.clone()),
                Some(&settings.addr.source),
            ),
        ),
        ("token", token),
        ("ca", path_of(&settings.ca)),
        ("cert", path_of(&settings.cert)),
        ("key", path_of(&settings.key)),
    ];
    let profile = settings.profile.as_ref().map(|p| p.display().to_string());
    if out.is_json() {
        let mut doc = serde_json::Map::new();
        for (name, (value, source)) in &rows {
            doc.insert((*name).into(), entry(value.clone(), *source));
        }
        doc.insert("profile".into(), json!(profile));
        return out.json(&serde_json::Value::Object(doc));
    }
    let mut table = Table::new(["SETTING", "VALUE", "FROM"]);
    for (name, (value, source)) in rows {
        table.row([
            name.to_string(),
            value.unwrap_or_else(|| "(not set)".into()),
            source.map(Source::describe).unwrap_or_default(),
        ]);
    }
    table.row([
        "profile".to_string(),
        profile.unwrap_or_else(|| "(none)".into()),
        String::new(),
    ]);
    out.table(&table)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn flags() -> GlobalOpts {
        GlobalOpts::default()
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = resolve(&flags(), &env_of(&[])).unwrap();
        assert_eq!(s.addr.value, DEFAULT_ADDR);
        assert_eq!(s.addr.source, Source::Default);
        assert!(s.token.is_none());
    }

    #[test]
    fn flags_beat_environment_which_beats_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "addr = \"http://profile:1\"\ntoken = \"p\"\nca = \"ca.pem\"\n",
        )
        .unwrap();
        let p = path.display().to_string();
        let env = env_of(&[("LABAID_PROFILE", &p), ("LABAID_TOKEN", "demo:RJ7")]);
        let mut f = flags();
        f.addr = Some("flaghost:2".into());
        let s = resolve(&f, &env).unwrap();
        assert_eq!(s.addr.value, "http://flaghost:2");
        assert_eq!(s.addr.source, Source::Flag);
        let token = s.token.unwrap();
        assert_eq!(
            (token.value.as_str(), token.source),
            ("demo:RJ7", Source::Env("LABAID_TOKEN"))
        );
        let ca = s.ca.unwrap();
        assert_eq!(ca.value, dir.path().join("ca.pem"));
        assert_eq!(ca.source, Source::Profile);
    }

    #[test]
    fn a_named_profile_that_is_missing_or_malformed_is_a_usage_error() {
        let mut f = flags();
        f.profile = Some("/nonexistent/labctl.toml".into());
        assert_eq!(resolve(&f, &env_of(&[])).unwrap_err().exit_code(), 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "adress = \"x\"\n").unwrap();
        f.profile = Some(path);
        assert_eq!(resolve(&f, &env_of(&[])).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn the_token_is_never_shown() {
        assert!(!mask("demo:RJ1").contains("RJ1"));
        let s = resolve(&flags(), &env_of(&[("LABAID_TOKEN", "demo:RJ1")])).unwrap();
        assert!(!format!("{s:?}").contains("RJ1"));
    }
}
