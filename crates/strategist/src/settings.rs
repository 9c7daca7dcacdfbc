//! The strategist's settings file (`alchemiscale strategist -c strategist.yaml`): a YAML
//! mapping with upstream's keys and defaults, plus three of ours for Python strategies.
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `sleep_interval` | positive integer, seconds | 300 | cycle period, and the shortest interval between two executions of one strategy |
//! | `max_workers` | positive integer | 4 | executions at the same time |
//! | `scopes` | list of scope strings | all | only networks in these scopes |
//! | `loglevel` | level name | `WARN` | |
//! | `logfile` | path | none | also log to this file |
//! | `cache_directory` | path | `$XDG_CACHE_HOME/alchemiscale-strategist` | results cache (Python strategies) |
//! | `cache_size_limit` | bytes | 1 GiB | |
//! | `use_local_cache` | bool | true | |
//! | `s3_settings` | mapping of `AWS_*` keys | none | object store, where no option or variable gives one |
//! | `python` | path | none | interpreter for strategies without a native implementation |
//! | `python_timeout` | seconds | 600 | time limit of one Python `propose` |
//! | `python_env` | mapping | none | extra environment variables for that interpreter |
//!
//! Unknown keys are warned about (upstream ignores them). Upstream's `neo4j_settings` is
//! refused with an explanation; the state store is chosen like every other command's
//! (`--url` / `ALCHEMISCALE_STATE_URL`). A `null` in `scopes` is refused with a message
//! (upstream crashes at start-up).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use alchemiscale_model::Scope;
use serde::Deserialize;

pub const KNOWN_KEYS: &[&str] = &[
    "sleep_interval",
    "max_workers",
    "scopes",
    "loglevel",
    "logfile",
    "cache_directory",
    "cache_size_limit",
    "use_local_cache",
    "neo4j_settings",
    "s3_settings",
    "python",
    "python_timeout",
    "python_env",
];

pub use alchemiscale_compute::settings::{invalid, SettingsError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Settings {
    #[serde(default = "defaults::sleep_interval")]
    pub sleep_interval: u64,
    #[serde(default = "defaults::max_workers")]
    pub max_workers: u64,
    #[serde(default)]
    pub scopes: Option<Vec<Option<String>>>,
    #[serde(default = "defaults::loglevel")]
    pub loglevel: String,
    #[serde(default)]
    pub logfile: Option<PathBuf>,
    #[serde(default)]
    pub cache_directory: Option<PathBuf>,
    #[serde(default = "defaults::cache_size_limit")]
    pub cache_size_limit: u64,
    #[serde(default = "defaults::yes")]
    pub use_local_cache: bool,
    #[serde(default)]
    pub neo4j_settings: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub s3_settings: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub python: Option<PathBuf>,
    #[serde(default = "defaults::python_timeout")]
    pub python_timeout: f64,
    #[serde(default)]
    pub python_env: BTreeMap<String, String>,
}

mod defaults {
    pub fn sleep_interval() -> u64 {
        300
    }
    pub fn max_workers() -> u64 {
        4
    }
    pub fn loglevel() -> String {
        "WARN".into()
    }
    pub fn cache_size_limit() -> u64 {
        1_073_741_824
    }
    pub fn yes() -> bool {
        true
    }
    pub fn python_timeout() -> f64 {
        600.0
    }
}

impl Default for Settings {
    fn default() -> Self {
        serde_yaml_ng::from_str("{}").expect("defaults")
    }
}

/// The `AWS_*` keys `s3_settings` may hold.
pub const S3_KEYS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_S3_BUCKET",
    "AWS_S3_PREFIX",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
];

impl Settings {
    /// Parse and validate; returns the settings and one warning per unknown key.
    pub fn from_yaml(text: &str) -> Result<(Settings, Vec<String>), SettingsError> {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| SettingsError::Yaml(e.to_string()))?;
        let mut warnings = Vec::new();
        match &doc {
            serde_yaml_ng::Value::Mapping(map) => {
                for k in map.keys() {
                    match k.as_str() {
                        Some(name) if KNOWN_KEYS.contains(&name) => {}
                        Some(name) => warnings.push(format!("unknown setting `{name}` ignored")),
                        None => warnings.push(format!("non-string key {k:?} ignored")),
                    }
                }
            }
            serde_yaml_ng::Value::Null => {}
            _ => return Err(SettingsError::Yaml("the settings file must be a mapping of keys to values".into())),
        }
        let settings: Settings = if doc.is_null() {
            Settings::default()
        } else {
            serde_yaml_ng::from_value(doc).map_err(|e| SettingsError::Yaml(e.to_string()))?
        };
        settings.validate()?;
        Ok((settings, warnings))
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.sleep_interval == 0 {
            return Err(invalid("sleep_interval", "must be a positive number of seconds"));
        }
        if self.max_workers == 0 {
            return Err(invalid("max_workers", "must be a positive integer"));
        }
        self.scopes()?;
        if alchemiscale_compute::settings::parse_loglevel(&self.loglevel).is_none() {
            return Err(invalid("loglevel", format!("unknown level '{}' (use DEBUG, INFO, WARNING, ERROR or CRITICAL)", self.loglevel)));
        }
        if self.neo4j_settings.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(invalid(
                "neo4j_settings",
                "Neo4j is not supported: choose the state store with --url / ALCHEMISCALE_STATE_URL (SQLite or PostgreSQL)",
            ));
        }
        if let Some(s3) = &self.s3_settings {
            if let Some(k) = s3.keys().find(|k| !S3_KEYS.contains(&k.as_str())) {
                return Err(invalid("s3_settings", format!("unknown key `{k}` (expected {})", S3_KEYS.join(", "))));
            }
        }
        if !(self.python_timeout.is_finite() && self.python_timeout > 0.0) {
            return Err(invalid("python_timeout", "must be a positive number of seconds"));
        }
        Ok(())
    }

    /// `scopes` parsed; none (or an empty list) means every scope.
    pub fn scopes(&self) -> Result<Vec<Scope>, SettingsError> {
        let Some(list) = &self.scopes else { return Ok(Vec::new()) };
        list.iter()
            .map(|s| match s {
                None => Err(invalid("scopes", "null is not a scope (write '*-*-*' for every scope)")),
                Some(s) => s.parse::<Scope>().map_err(|e| invalid("scopes", format!("'{s}' is not a valid scope: {e}"))),
            })
            .collect()
    }

    pub fn python_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.python_timeout)
    }

    /// A value from `s3_settings`.
    pub fn s3(&self, key: &str) -> Option<String> {
        self.s3_settings.as_ref()?.get(key).cloned().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_upstreams() {
        let (s, w) = Settings::from_yaml("").unwrap();
        assert!(w.is_empty());
        assert_eq!((s.sleep_interval, s.max_workers, s.loglevel.as_str()), (300, 4, "WARN"));
        assert_eq!((s.cache_size_limit, s.use_local_cache, s.python_timeout), (1 << 30, true, 600.0));
        assert!(s.scopes().unwrap().is_empty());
    }

    #[test]
    fn upstream_sample_and_ours() {
        let yaml = "sleep_interval: 60\nmax_workers: 2\nscopes: ['*-*-*', 'acme-*-*']\nloglevel: INFO\n\
                    cache_directory: /tmp/c\nuse_local_cache: false\nneo4j_settings: null\n\
                    s3_settings: {AWS_S3_BUCKET: b, AWS_ENDPOINT_URL: 'http://127.0.0.1:9000'}\n\
                    python: /opt/venv/bin/python\npython_timeout: 30\npython_env: {OMP_NUM_THREADS: '1'}\nextra: 1\n";
        let (s, w) = Settings::from_yaml(yaml).unwrap();
        assert_eq!(w, vec!["unknown setting `extra` ignored".to_string()]);
        assert_eq!(s.scopes().unwrap().len(), 2);
        assert_eq!(s.s3("AWS_S3_BUCKET").as_deref(), Some("b"));
        assert_eq!(s.python_timeout(), Duration::from_secs(30));
        assert_eq!(s.python_env["OMP_NUM_THREADS"], "1");
    }

    #[test]
    fn invalid_settings_name_their_key() {
        for (yaml, key) in [
            ("sleep_interval: 0", "sleep_interval"),
            ("max_workers: 0", "max_workers"),
            ("scopes: [null]", "scopes"),
            ("scopes: ['*-camp-*']", "scopes"),
            ("loglevel: LOUD", "loglevel"),
            ("neo4j_settings: {NEO4J_URL: 'bolt://x'}", "neo4j_settings"),
            ("s3_settings: {BUCKET: x}", "s3_settings"),
            ("python_timeout: -1", "python_timeout"),
        ] {
            match Settings::from_yaml(yaml) {
                Err(SettingsError::Invalid { key: k, .. }) => assert_eq!(k, key, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
        assert!(matches!(Settings::from_yaml("sleep_interval: soon"), Err(SettingsError::Yaml(_))));
        assert!(matches!(Settings::from_yaml("- a list"), Err(SettingsError::Yaml(_))));
    }
}
