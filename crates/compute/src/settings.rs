//! The compute-service settings file: a flat YAML mapping.
//!
//! Every upstream key is accepted with upstream's type and default. Unknown keys are not
//! an error (upstream silently ignores them); [`Settings::from_yaml`] returns them as
//! warnings so a typo does not go unnoticed. Validation happens here, before anything
//! starts, and names the offending key.
//!
//! Our additions, all optional:
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `task_timeout` | seconds (number) or null | null | time limit for running one task; the child is killed and a `TimeoutError` failure is pushed |
//! | `executor_python` | path | `python3` | interpreter that runs gufe protocols (the python executor) |
//! | `wanted_check_interval` | seconds (number) | 30 | how often a running task is checked to be still wanted (not cancelled, network active) |
//! | `executor_env` | mapping of names to strings | empty | extra environment variables for the executors (e.g. `OPENMM_CPU_THREADS`, `CUDA_VISIBLE_DEVICES`); the python executor also runs with its interpreter's environment activated (see [`crate::environment`]) |
//! | `max_empty_claims` | positive int or null | null | stop after this many claims in a row brought no task (empty or denied): how services started by a compute manager scale down |
//! | `task_logs_dir` | path or null | `<scratch_basedir>/task-logs` | where each execution's standard output and error are kept (see [`crate::task_logs`]) |
//! | `task_logs_max_mb` | number ≥ 0 | 1024 | total size the kept logs may take; the oldest go first; 0 keeps none |
//! | `task_logs_max_age_days` | number > 0 | 14 | logs older than this are removed |
//!
//! Deliberate differences: `loglevel` is matched case-insensitively (Python's `setLevel`
//! wants upper case); `protocols: []` is refused (upstream sends it and every claim then
//! fails on the server); `heartbeat_interval` must be at least 1; the `client_cache_*`
//! keys are accepted but unused (this service fetches each transformation once per task
//! and keeps nothing between tasks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use alchemiscale_client::compute::RetryPolicy;
use alchemiscale_model::{ComputeManagerId, ComputeServiceId, Scope};
use serde::Deserialize;
use tracing::level_filters::LevelFilter;

/// Every key the file may hold (upstream's and ours).
pub const KNOWN_KEYS: &[&str] = &[
    "api_url",
    "identifier",
    "key",
    "name",
    "compute_manager_id",
    "shared_basedir",
    "scratch_basedir",
    "keep_shared",
    "keep_scratch",
    "n_retries",
    "sleep_interval",
    "deep_sleep_interval",
    "heartbeat_interval",
    "scopes",
    "scopes_exclude",
    "protocols",
    "claim_limit",
    "max_tasks",
    "max_time",
    "loglevel",
    "logfile",
    "client_cache_directory",
    "client_cache_size_limit",
    "client_use_local_cache",
    "client_max_retries",
    "client_retry_base_seconds",
    "client_retry_max_seconds",
    "client_verify",
    "task_timeout",
    "executor_python",
    "wanted_check_interval",
    "max_empty_claims",
    "executor_env",
    "task_logs_dir",
    "task_logs_max_mb",
    "task_logs_max_age_days",
];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid settings file: {0}")]
    Yaml(String),
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The error for an invalid value of `key`.
pub fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid { key, message: message.into() }
}

/// The settings of one compute service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Settings {
    /// Base URL of the compute API.
    pub api_url: String,
    /// Compute identity identifier.
    pub identifier: String,
    /// Compute identity key.
    pub key: String,
    /// Service name: prefix of the service id (`[a-zA-Z][a-zA-Z0-9_.:]*`).
    pub name: String,
    /// Id of the compute manager that launched this service.
    #[serde(default)]
    pub compute_manager_id: Option<String>,
    /// Parent of the per-DAG shared directories (created if missing).
    pub shared_basedir: PathBuf,
    /// Parent of the per-DAG scratch directories (created if missing).
    pub scratch_basedir: PathBuf,
    #[serde(default)]
    pub keep_shared: bool,
    #[serde(default)]
    pub keep_scratch: bool,
    /// Retries of a failing protocol unit within one execution.
    #[serde(default = "defaults::n_retries")]
    pub n_retries: i64,
    /// Seconds to sleep when nothing was claimed.
    #[serde(default = "defaults::sleep_interval")]
    pub sleep_interval: u64,
    /// Seconds to sleep when a claim was denied.
    #[serde(default = "defaults::deep_sleep_interval")]
    pub deep_sleep_interval: u64,
    /// Seconds between heartbeats.
    #[serde(default = "defaults::heartbeat_interval")]
    pub heartbeat_interval: u64,
    /// Scopes to claim from (scope strings); null or empty means `*-*-*`.
    #[serde(default, deserialize_with = "scopes")]
    pub scopes: Option<Vec<Scope>>,
    /// Hubs in these scopes are never claimed from; null or empty means none.
    #[serde(default, deserialize_with = "scopes")]
    pub scopes_exclude: Option<Vec<Scope>>,
    /// Only claim tasks whose protocol class is one of these; null means any.
    #[serde(default)]
    pub protocols: Option<Vec<String>>,
    /// Tasks claimed per claim request.
    #[serde(default = "defaults::claim_limit")]
    pub claim_limit: u64,
    /// Stop after executing this many tasks.
    #[serde(default)]
    pub max_tasks: Option<u64>,
    /// Stop after running this many seconds (checked between tasks).
    #[serde(default)]
    pub max_time: Option<u64>,
    /// Log level name (`DEBUG`, `INFO`, `WARN`/`WARNING`, `ERROR`, `CRITICAL`, `NOTSET`).
    #[serde(default = "defaults::loglevel")]
    pub loglevel: String,
    /// Also log to this file (appended).
    #[serde(default)]
    pub logfile: Option<PathBuf>,
    /// Accepted for compatibility; unused.
    #[serde(default)]
    pub client_cache_directory: Option<PathBuf>,
    /// Accepted for compatibility; unused.
    #[serde(default = "defaults::client_cache_size_limit")]
    pub client_cache_size_limit: u64,
    /// Accepted for compatibility; unused.
    #[serde(default)]
    pub client_use_local_cache: bool,
    /// Request retries; -1 retries forever.
    #[serde(default = "defaults::client_max_retries")]
    pub client_max_retries: i64,
    /// Backoff base in seconds (> 1).
    #[serde(default = "defaults::client_retry_base_seconds")]
    pub client_retry_base_seconds: f64,
    /// Cap of one backoff sleep in seconds.
    #[serde(default = "defaults::client_retry_max_seconds")]
    pub client_retry_max_seconds: f64,
    /// Verify the API's TLS certificate.
    #[serde(default = "defaults::yes")]
    pub client_verify: bool,
    /// Ours: time limit per task in seconds (null: none).
    #[serde(default)]
    pub task_timeout: Option<f64>,
    /// Ours: the Python interpreter of the python executor.
    #[serde(default = "defaults::executor_python")]
    pub executor_python: PathBuf,
    /// Ours: seconds between checks that a running task is still wanted.
    #[serde(default = "defaults::wanted_check_interval")]
    pub wanted_check_interval: f64,
    /// Ours: stop after this many claims in a row brought no task (null: never).
    #[serde(default)]
    pub max_empty_claims: Option<u64>,
    /// Ours: extra environment variables for the executors.
    #[serde(default)]
    pub executor_env: std::collections::BTreeMap<String, String>,
    /// Ours: where executions' output is kept (null: `<scratch_basedir>/task-logs`).
    #[serde(default)]
    pub task_logs_dir: Option<PathBuf>,
    /// Ours: total size of the kept output in MB (0: keep none).
    #[serde(default = "defaults::task_logs_max_mb")]
    pub task_logs_max_mb: f64,
    /// Ours: age after which kept output is removed, in days.
    #[serde(default = "defaults::task_logs_max_age_days")]
    pub task_logs_max_age_days: f64,
}

mod defaults {
    use std::path::PathBuf;
    pub fn n_retries() -> i64 {
        3
    }
    pub fn sleep_interval() -> u64 {
        30
    }
    pub fn deep_sleep_interval() -> u64 {
        300
    }
    pub fn heartbeat_interval() -> u64 {
        300
    }
    pub fn claim_limit() -> u64 {
        1
    }
    pub fn loglevel() -> String {
        "WARN".into()
    }
    pub fn client_cache_size_limit() -> u64 {
        1_073_741_824
    }
    pub fn client_max_retries() -> i64 {
        5
    }
    pub fn client_retry_base_seconds() -> f64 {
        2.0
    }
    pub fn client_retry_max_seconds() -> f64 {
        60.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn executor_python() -> PathBuf {
        PathBuf::from("python3")
    }
    pub fn wanted_check_interval() -> f64 {
        30.0
    }
    pub fn task_logs_max_mb() -> f64 {
        1024.0
    }
    pub fn task_logs_max_age_days() -> f64 {
        14.0
    }
}

/// `scopes`/`scopes_exclude`: null, or a list of scope strings; an empty list is null.
fn scopes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<Scope>>, D::Error> {
    let raw: Option<Vec<String>> = Option::deserialize(d)?;
    match raw {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .iter()
            .map(|s| s.parse::<Scope>().map_err(|e| serde::de::Error::custom(format!("'{s}' is not a valid scope: {e}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// Python `logging` level name → filter (case-insensitive).
pub fn parse_loglevel(name: &str) -> Option<LevelFilter> {
    match name.trim().to_ascii_uppercase().as_str() {
        "NOTSET" | "DEBUG" => Some(LevelFilter::DEBUG),
        "INFO" => Some(LevelFilter::INFO),
        "WARN" | "WARNING" => Some(LevelFilter::WARN),
        "ERROR" | "CRITICAL" | "FATAL" => Some(LevelFilter::ERROR),
        _ => None,
    }
}

/// Check `client_max_retries`, `client_retry_base_seconds` and `client_retry_max_seconds`.
pub fn validate_retries(max_retries: i64, base_seconds: f64, max_seconds: f64) -> Result<(), SettingsError> {
    if max_retries < -1 {
        return Err(invalid("client_max_retries", "must be -1 (forever) or more"));
    }
    if !(base_seconds.is_finite() && base_seconds > 1.0) {
        return Err(invalid("client_retry_base_seconds", "must be greater than 1.0"));
    }
    if !(max_seconds.is_finite() && max_seconds >= 0.0) {
        return Err(invalid("client_retry_max_seconds", "must be 0 or more"));
    }
    Ok(())
}

/// Protocol names follow the grammar of scope components.
fn valid_protocol_name(p: &str) -> bool {
    alchemiscale_model::scope::is_valid_component(p)
}

impl Settings {
    /// Parse and validate a settings document. Returns the settings and one warning per
    /// unknown key.
    pub fn from_yaml(text: &str) -> Result<(Settings, Vec<String>), SettingsError> {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| SettingsError::Yaml(e.to_string()))?;
        let serde_yaml_ng::Value::Mapping(map) = &doc else {
            return Err(SettingsError::Yaml("the settings file must be a mapping of keys to values".into()));
        };
        let mut warnings = Vec::new();
        for k in map.keys() {
            match k.as_str() {
                Some(name) if KNOWN_KEYS.contains(&name) => {}
                Some(name) => warnings.push(format!("unknown setting `{name}` ignored")),
                None => warnings.push(format!("non-string key {k:?} ignored")),
            }
        }
        let settings: Settings = serde_yaml_ng::from_str(text).map_err(|e| SettingsError::Yaml(e.to_string()))?;
        settings.validate()?;
        Ok((settings, warnings))
    }

    /// As [`Settings::from_yaml`], with `name` and `compute_manager_id` replaced first
    /// when given (the `-n` and `-m` options), so the result is validated as a whole.
    pub fn from_yaml_with_overrides(
        text: &str,
        name: Option<&str>,
        compute_manager_id: Option<&str>,
    ) -> Result<(Settings, Vec<String>), SettingsError> {
        if name.is_none() && compute_manager_id.is_none() {
            return Settings::from_yaml(text);
        }
        let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| SettingsError::Yaml(e.to_string()))?;
        let serde_yaml_ng::Value::Mapping(map) = &mut doc else {
            return Err(SettingsError::Yaml("the settings file must be a mapping of keys to values".into()));
        };
        for (key, value) in [("name", name), ("compute_manager_id", compute_manager_id)] {
            if let Some(v) = value {
                map.insert(key.into(), v.into());
            }
        }
        let text = serde_yaml_ng::to_string(&doc).map_err(|e| SettingsError::Yaml(e.to_string()))?;
        Settings::from_yaml(&text)
    }

    /// Read, parse and validate a settings file.
    pub fn from_file(path: &Path) -> Result<(Settings, Vec<String>), SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: path.to_path_buf(), source })?;
        Settings::from_yaml(&text)
    }

    /// Check every constraint the types cannot express.
    pub fn validate(&self) -> Result<(), SettingsError> {
        url::Url::parse(&self.api_url).map_err(|e| invalid("api_url", format!("'{}' is not a URL: {e}", self.api_url)))?;
        if !ComputeServiceId::valid_name(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "'{}' is not a valid compute service name (letters, digits, '_', '.', ':', starting with a letter; no '-')",
                    self.name
                ),
            ));
        }
        if let Some(m) = &self.compute_manager_id {
            m.parse::<ComputeManagerId>().map_err(|e| invalid("compute_manager_id", e.to_string()))?;
        }
        if self.n_retries < 0 {
            return Err(invalid("n_retries", "must be 0 or more"));
        }
        if self.heartbeat_interval == 0 {
            return Err(invalid("heartbeat_interval", "must be at least 1 second"));
        }
        if self.claim_limit == 0 {
            return Err(invalid("claim_limit", "must be a positive integer"));
        }
        if let Some(p) = &self.protocols {
            if p.is_empty() {
                return Err(invalid("protocols", "an empty list matches no task; use null for no restriction"));
            }
            if let Some(bad) = p.iter().find(|p| !valid_protocol_name(p)) {
                return Err(invalid("protocols", format!("'{bad}' is not a protocol class name")));
            }
        }
        if parse_loglevel(&self.loglevel).is_none() {
            return Err(invalid("loglevel", format!("unknown level '{}' (use DEBUG, INFO, WARNING, ERROR or CRITICAL)", self.loglevel)));
        }
        validate_retries(self.client_max_retries, self.client_retry_base_seconds, self.client_retry_max_seconds)?;
        if let Some(t) = self.task_timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(invalid("task_timeout", "must be a positive number of seconds, or null"));
            }
        }
        if !(self.wanted_check_interval.is_finite() && self.wanted_check_interval > 0.0) {
            return Err(invalid("wanted_check_interval", "must be a positive number of seconds"));
        }
        if let Some((k, _)) = self.executor_env.iter().find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0')) {
            return Err(invalid("executor_env", format!("'{k}' is not a usable environment variable (empty name, '=' or NUL)")));
        }
        if self.max_empty_claims == Some(0) {
            return Err(invalid("max_empty_claims", "must be at least 1, or null (never stop for lack of work)"));
        }
        if self.executor_python.as_os_str().is_empty() {
            return Err(invalid("executor_python", "must not be empty"));
        }
        if !(self.task_logs_max_mb.is_finite() && self.task_logs_max_mb >= 0.0) {
            return Err(invalid("task_logs_max_mb", "must be a number of megabytes, 0 or more (0 keeps no logs)"));
        }
        if !(self.task_logs_max_age_days.is_finite() && self.task_logs_max_age_days > 0.0) {
            return Err(invalid("task_logs_max_age_days", "must be a positive number of days"));
        }
        if self.task_logs_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(invalid("task_logs_dir", "must not be empty (leave it out for <scratch_basedir>/task-logs)"));
        }
        Ok(())
    }

    /// The scopes claims are made in (`*-*-*` when none are configured).
    pub fn claim_scopes(&self) -> Vec<Scope> {
        self.scopes.clone().unwrap_or_else(|| vec![Scope::all()])
    }

    /// The request retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.client_max_retries,
            base_seconds: self.client_retry_base_seconds,
            max_seconds: self.client_retry_max_seconds,
        }
    }

    /// The log filter for `loglevel` (validated, so never None after [`Settings::validate`]).
    pub fn log_level(&self) -> LevelFilter {
        parse_loglevel(&self.loglevel).unwrap_or(LevelFilter::WARN)
    }

    pub fn task_timeout(&self) -> Option<Duration> {
        self.task_timeout.map(Duration::from_secs_f64)
    }

    pub fn wanted_check_interval(&self) -> Duration {
        Duration::from_secs_f64(self.wanted_check_interval)
    }

    /// Where executions' output is kept, with its limits; None when none is to be kept.
    pub fn task_logs(&self) -> Option<crate::task_logs::Limits> {
        if self.task_logs_max_mb == 0.0 {
            return None;
        }
        Some(crate::task_logs::Limits {
            dir: self.task_logs_dir.clone().unwrap_or_else(|| self.scratch_basedir.join("task-logs")),
            max_bytes: (self.task_logs_max_mb * 1_048_576.0) as u64,
            max_age: Duration::from_secs_f64(self.task_logs_max_age_days * 86_400.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "api_url: http://127.0.0.1:8081\nidentifier: worker\nkey: secret\nname: host1\nshared_basedir: /tmp/shared\nscratch_basedir: /tmp/scratch\n";

    #[test]
    fn defaults_match_the_specification() {
        let (s, warnings) = Settings::from_yaml(MINIMAL).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(s.compute_manager_id, None);
        assert!(!s.keep_shared && !s.keep_scratch);
        assert_eq!((s.n_retries, s.sleep_interval, s.deep_sleep_interval, s.heartbeat_interval), (3, 30, 300, 300));
        assert_eq!((s.scopes.clone(), s.scopes_exclude.clone(), s.protocols.clone()), (None, None, None));
        assert_eq!(s.claim_scopes(), vec![Scope::all()]);
        assert_eq!((s.claim_limit, s.max_tasks, s.max_time), (1, None, None));
        assert_eq!((s.loglevel.as_str(), s.logfile.clone()), ("WARN", None));
        assert_eq!((s.client_cache_directory.clone(), s.client_cache_size_limit, s.client_use_local_cache), (None, 1_073_741_824, false));
        assert_eq!((s.client_max_retries, s.client_retry_base_seconds, s.client_retry_max_seconds, s.client_verify), (5, 2.0, 60.0, true));
        assert_eq!((s.task_timeout, s.executor_python.clone(), s.wanted_check_interval), (None, PathBuf::from("python3"), 30.0));
        assert_eq!(s.log_level(), LevelFilter::WARN);
        assert_eq!(s.max_empty_claims, None);
        let logs = s.task_logs().unwrap();
        assert_eq!(logs.dir, PathBuf::from("/tmp/scratch/task-logs"));
        assert_eq!((logs.max_bytes, logs.max_age), (1 << 30, Duration::from_secs(14 * 86_400)));
    }

    #[test]
    fn every_key_is_read() {
        let text = format!(
            "{MINIMAL}compute_manager_id: mgr-0123456789abcdef0123456789abcdef\nkeep_shared: true\nkeep_scratch: true\nn_retries: 0\n\
             sleep_interval: 1\ndeep_sleep_interval: 2\nheartbeat_interval: 3\nscopes: [a-b-c, 'd-*-*']\nscopes_exclude: []\n\
             protocols: [SyntheticProtocol]\nclaim_limit: 4\nmax_tasks: 5\nmax_time: 6\nloglevel: info\nlogfile: /tmp/log\n\
             client_cache_directory: /tmp/c\nclient_cache_size_limit: 7\nclient_use_local_cache: true\nclient_max_retries: -1\n\
             client_retry_base_seconds: 3\nclient_retry_max_seconds: 9.5\nclient_verify: false\ntask_timeout: 2.5\n\
             executor_python: /opt/py/bin/python\nwanted_check_interval: 0.5\nmax_empty_claims: 2\nexecutor_env: {{OPENMM_CPU_THREADS: '2'}}\n\
             task_logs_dir: /var/log/tasks\ntask_logs_max_mb: 0.5\ntask_logs_max_age_days: 0.25\nsurprise: 1\n"
        );
        let (s, warnings) = Settings::from_yaml(&text).unwrap();
        assert_eq!(warnings, vec!["unknown setting `surprise` ignored".to_string()]);
        assert_eq!(s.compute_manager_id.as_deref(), Some("mgr-0123456789abcdef0123456789abcdef"));
        assert!(s.keep_shared && s.keep_scratch);
        assert_eq!((s.n_retries, s.sleep_interval, s.deep_sleep_interval, s.heartbeat_interval), (0, 1, 2, 3));
        assert_eq!(s.scopes.as_ref().unwrap().iter().map(ToString::to_string).collect::<Vec<_>>(), ["a-b-c", "d-*-*"]);
        assert_eq!(s.scopes_exclude, None, "an empty list means no exclusion");
        assert_eq!(s.protocols.as_deref(), Some(&["SyntheticProtocol".to_string()][..]));
        assert_eq!((s.claim_limit, s.max_tasks, s.max_time), (4, Some(5), Some(6)));
        assert_eq!(s.log_level(), LevelFilter::INFO);
        assert_eq!(s.logfile.as_deref(), Some(Path::new("/tmp/log")));
        assert_eq!((s.client_cache_size_limit, s.client_use_local_cache, s.client_max_retries), (7, true, -1));
        assert_eq!((s.client_retry_base_seconds, s.client_retry_max_seconds, s.client_verify), (3.0, 9.5, false));
        assert_eq!(s.task_timeout(), Some(Duration::from_millis(2500)));
        assert_eq!(s.executor_python, PathBuf::from("/opt/py/bin/python"));
        assert_eq!(s.wanted_check_interval(), Duration::from_millis(500));
        assert_eq!(s.max_empty_claims, Some(2));
        assert_eq!(s.executor_env.get("OPENMM_CPU_THREADS").map(String::as_str), Some("2"));
        assert_eq!(s.retry_policy(), RetryPolicy { max_retries: -1, base_seconds: 3.0, max_seconds: 9.5 });
        let logs = s.task_logs().unwrap();
        assert_eq!(logs.dir, PathBuf::from("/var/log/tasks"));
        assert_eq!((logs.max_bytes, logs.max_age), (524_288, Duration::from_secs(6 * 3600)));
        let (none, _) = Settings::from_yaml(&format!("{MINIMAL}task_logs_max_mb: 0\n")).unwrap();
        assert_eq!(none.task_logs(), None, "0 MB keeps no logs");
    }

    fn error_of(extra: &str) -> String {
        Settings::from_yaml(&format!("{MINIMAL}{extra}")).unwrap_err().to_string()
    }

    #[test]
    fn validation_errors_are_clear() {
        let missing =
            Settings::from_yaml("api_url: http://x\nidentifier: w\nkey: k\nname: n\nscratch_basedir: /s\n").unwrap_err().to_string();
        assert!(missing.contains("shared_basedir"), "{missing}");
        assert!(Settings::from_yaml("- a\n- b\n").unwrap_err().to_string().contains("mapping"));
        assert!(Settings::from_yaml("a: [").is_err());
        // the 0.7.x layout (`init:` / `start:`) lacks the required keys
        assert!(Settings::from_yaml("init:\n  api_url: http://x\nstart:\n  max_tasks: 1\n")
            .unwrap_err()
            .to_string()
            .contains("missing field"));
        let name = Settings::from_yaml(&MINIMAL.replace("name: host1", "name: host-1")).unwrap_err().to_string();
        assert!(name.contains("`name`") && name.contains("host-1"), "{name}");
        assert!(error_of("scopes: [a-*-c]\n").contains("'a-*-c' is not a valid scope"));
        assert!(error_of("scopes_exclude: [5]\n").contains("not a valid scope"));
        assert!(error_of("compute_manager_id: nouuid\n").contains("compute_manager_id"));
        assert!(error_of("claim_limit: 0\n").contains("claim_limit"));
        assert!(error_of("claim_limit: -1\n").contains("claim_limit"));
        assert!(error_of("sleep_interval: 0.5\n").contains("sleep_interval"));
        assert!(error_of("heartbeat_interval: 0\n").contains("heartbeat_interval"));
        assert!(error_of("protocols: []\n").contains("protocols"));
        assert!(error_of("protocols: [bad-name]\n").contains("bad-name"));
        assert!(error_of("loglevel: LOUD\n").contains("loglevel"));
        assert!(error_of("client_retry_base_seconds: 1.0\n").contains("greater than 1.0"));
        assert!(error_of("client_max_retries: -2\n").contains("client_max_retries"));
        assert!(error_of("task_timeout: 0\n").contains("task_timeout"));
        assert!(error_of("wanted_check_interval: -1\n").contains("wanted_check_interval"));
        assert!(error_of("n_retries: -1\n").contains("n_retries"));
        assert!(error_of("max_empty_claims: 0\n").contains("max_empty_claims"));
        assert!(error_of("executor_env: {'A=B': x}\n").contains("executor_env"));
        assert!(error_of("executor_env: [a]\n").contains("executor_env"));
        assert!(error_of("keep_shared: maybe\n").contains("keep_shared"));
        assert!(error_of("task_logs_max_mb: -1\n").contains("task_logs_max_mb"));
        assert!(error_of("task_logs_max_age_days: 0\n").contains("task_logs_max_age_days"));
        assert!(error_of("task_logs_dir: ''\n").contains("task_logs_dir"));
        let url = Settings::from_yaml(&MINIMAL.replace("http://127.0.0.1:8081", "not a url")).unwrap_err().to_string();
        assert!(url.contains("api_url"), "{url}");
    }

    /// The GPU example of the documentation is a valid settings file.
    #[test]
    fn documented_gpu_example_is_valid() {
        let (s, warnings) = Settings::from_yaml(include_str!("../../../docs/compute-gpu.yaml")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(s.executor_env.get("CUDA_VISIBLE_DEVICES").map(String::as_str), Some("0"));
        assert_eq!(s.task_logs().unwrap().max_bytes, 2048 << 20);
    }

    #[test]
    fn overrides_replace_name_and_manager() {
        let bad_name = MINIMAL.replace("name: host1", "name: host-1");
        let (s, _) = Settings::from_yaml_with_overrides(&bad_name, Some("host2"), Some("mgr-0123456789abcdef0123456789abcdef")).unwrap();
        assert_eq!(s.name, "host2");
        assert_eq!(s.compute_manager_id.as_deref(), Some("mgr-0123456789abcdef0123456789abcdef"));
        assert!(Settings::from_yaml_with_overrides(MINIMAL, Some("bad-name"), None).unwrap_err().to_string().contains("bad-name"));
        let (s, _) = Settings::from_yaml_with_overrides(MINIMAL, None, None).unwrap();
        assert_eq!(s.name, "host1");
    }

    #[test]
    fn loglevels() {
        for (name, level) in [
            ("DEBUG", LevelFilter::DEBUG),
            ("warning", LevelFilter::WARN),
            ("CRITICAL", LevelFilter::ERROR),
            ("NOTSET", LevelFilter::DEBUG),
        ] {
            assert_eq!(parse_loglevel(name), Some(level));
        }
        assert_eq!(parse_loglevel("verbose"), None);
    }
}
