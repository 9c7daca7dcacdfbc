//! The compute manager's settings file (`alchemiscale compute manager -c manager.yaml`).
//!
//! Top level: upstream's `ComputeManagerSettings` keys, plus two of ours.
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `name` | string | **required** | manager name, unique among managers (letters, digits, `_`, `.`, `:`; no `-`) |
//! | `logfile` | path or null | null | also log to this file |
//! | `max_compute_services` | positive integer | **required** | services running (or pending) at most |
//! | `max_submit_per_cycle` | positive integer | 1 | services started in one cycle at most |
//! | `sleep_interval` | seconds | 1800 | pause between cycles |
//! | `loglevel` | level name | `WARN` | |
//! | `client_max_retries` | integer | 5 | request retries; -1 = forever |
//! | `client_retry_base_seconds` | number > 1 | 2.0 | backoff base |
//! | `client_retry_max_seconds` | number | 60.0 | cap of one backoff sleep |
//! | `work_dir` | path | `alchemiscale-manager/<name>` | where the manager writes its services' settings file, job scripts, logs and the list of services it started |
//! | `alchemiscale` | path | this executable | the `alchemiscale` program services run |
//!
//! `service`: a compute-service settings mapping exactly as `alchemiscale compute
//! synchronous -c` reads it. Every started service gets it, with `compute_manager_id` set
//! to the manager's id and, unless the section sets it, `max_empty_claims: 3` (so idle
//! services exit and an idle campaign holds nothing). Its `api_url`, `identifier` and
//! `key` also authenticate the manager; its `scopes` and `protocols` are sent with each
//! instruction request; its `claim_limit` enters the sizing rule.
//!
//! `backend`: where services run; `kind` chooses (see [`crate::backend`]): `local` (child
//! processes) or `slurm` (one batch job per service).
//!
//! Unlike upstream (which ignores unknown keys), an unknown key anywhere is an error: a
//! typo in a file that decides how much of a cluster is used should not go unnoticed.
//! `logfile` may be left out (upstream requires the key, with null allowed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use alchemiscale_client::compute::RetryPolicy;
pub use alchemiscale_compute::settings::{invalid, SettingsError};
use alchemiscale_compute::settings::{parse_loglevel, validate_retries};
use alchemiscale_model::manager::Sizing;
use alchemiscale_model::ComputeManagerId;
use serde::Deserialize;
use tracing::level_filters::LevelFilter;

use crate::backend::local::LocalSettings;
use crate::backend::slurm::SlurmSettings;

/// `max_empty_claims` given to started services when the `service` section has none.
pub const DEFAULT_MAX_EMPTY_CLAIMS: u64 = 3;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default)]
    logfile: Option<PathBuf>,
    max_compute_services: u64,
    #[serde(default = "defaults::max_submit_per_cycle")]
    max_submit_per_cycle: u64,
    #[serde(default = "defaults::sleep_interval")]
    sleep_interval: f64,
    #[serde(default = "defaults::loglevel")]
    loglevel: String,
    #[serde(default = "defaults::client_max_retries")]
    client_max_retries: i64,
    #[serde(default = "defaults::client_retry_base_seconds")]
    client_retry_base_seconds: f64,
    #[serde(default = "defaults::client_retry_max_seconds")]
    client_retry_max_seconds: f64,
    #[serde(default)]
    work_dir: Option<PathBuf>,
    #[serde(default)]
    alchemiscale: Option<PathBuf>,
    service: serde_yaml_ng::Value,
    backend: BackendSettings,
}

mod defaults {
    pub fn max_submit_per_cycle() -> u64 {
        1
    }
    pub fn sleep_interval() -> f64 {
        1800.0
    }
    pub fn loglevel() -> String {
        "WARN".into()
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
}

/// The `backend` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
// read once per process from the settings file: the size of the small variant does not matter
#[allow(clippy::large_enum_variant)]
pub enum BackendSettings {
    Local(LocalSettings),
    Slurm(SlurmSettings),
}

/// A validated manager settings file.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerSettings {
    pub name: String,
    pub logfile: Option<PathBuf>,
    pub max_compute_services: u64,
    pub max_submit_per_cycle: u64,
    pub sleep_interval: Duration,
    pub loglevel: LevelFilter,
    pub retry: RetryPolicy,
    pub work_dir: PathBuf,
    /// The program services run (`None`: this executable).
    pub alchemiscale: Option<PathBuf>,
    /// The services' settings (validated), before the manager adds its id.
    pub service: alchemiscale_compute::Settings,
    /// The `service` section as written, plus `max_empty_claims` if it had none: what
    /// the manager writes for its services.
    pub service_yaml: serde_yaml_ng::Mapping,
    pub backend: BackendSettings,
}

fn yaml_error(e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Yaml(e.to_string())
}

impl ManagerSettings {
    /// Parse and validate a settings document.
    pub fn from_yaml(text: &str) -> Result<ManagerSettings, SettingsError> {
        let f: File = serde_yaml_ng::from_str(text).map_err(yaml_error)?;
        if !ComputeManagerId::valid_name(&f.name) {
            return Err(invalid(
                "name",
                format!(
                    "'{}' is not a valid compute manager name (letters, digits, '_', '.', ':', starting with a letter; no '-')",
                    f.name
                ),
            ));
        }
        if f.max_compute_services == 0 {
            return Err(invalid("max_compute_services", "must be a positive integer"));
        }
        if f.max_submit_per_cycle == 0 {
            return Err(invalid("max_submit_per_cycle", "must be a positive integer"));
        }
        if !(f.sleep_interval.is_finite() && f.sleep_interval > 0.0) {
            return Err(invalid("sleep_interval", "must be a positive number of seconds"));
        }
        let loglevel = parse_loglevel(&f.loglevel)
            .ok_or_else(|| invalid("loglevel", format!("unknown level '{}' (use DEBUG, INFO, WARNING, ERROR or CRITICAL)", f.loglevel)))?;
        validate_retries(f.client_max_retries, f.client_retry_base_seconds, f.client_retry_max_seconds)?;
        let serde_yaml_ng::Value::Mapping(mut service_yaml) = f.service else {
            return Err(invalid("service", "must be a mapping of compute-service settings (as `compute synchronous -c` reads them)"));
        };
        if service_yaml.contains_key("compute_manager_id") {
            return Err(invalid("service", "`compute_manager_id` is set by the manager; leave it out"));
        }
        if !service_yaml.contains_key("max_empty_claims") {
            service_yaml.insert("max_empty_claims".into(), DEFAULT_MAX_EMPTY_CLAIMS.into());
        }
        let text = serde_yaml_ng::to_string(&service_yaml).map_err(yaml_error)?;
        let (service, warnings) = alchemiscale_compute::Settings::from_yaml(&text).map_err(|e| invalid("service", e.to_string()))?;
        if let Some(w) = warnings.first() {
            return Err(invalid("service", w.replace(" ignored", "")));
        }
        match &f.backend {
            BackendSettings::Local(_) => {}
            BackendSettings::Slurm(s) => s.validate()?,
        }
        let work_dir = f.work_dir.unwrap_or_else(|| Path::new("alchemiscale-manager").join(&f.name));
        Ok(ManagerSettings {
            name: f.name,
            logfile: f.logfile,
            max_compute_services: f.max_compute_services,
            max_submit_per_cycle: f.max_submit_per_cycle,
            sleep_interval: Duration::from_secs_f64(f.sleep_interval),
            loglevel,
            retry: RetryPolicy {
                max_retries: f.client_max_retries,
                base_seconds: f.client_retry_base_seconds,
                max_seconds: f.client_retry_max_seconds,
            },
            work_dir,
            alchemiscale: f.alchemiscale,
            service,
            service_yaml,
            backend: f.backend,
        })
    }

    /// Read, parse and validate a settings file.
    pub fn from_file(path: &Path) -> Result<ManagerSettings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: path.to_path_buf(), source })?;
        ManagerSettings::from_yaml(&text)
    }

    /// The limits of the sizing rule.
    pub fn sizing(&self) -> Sizing {
        Sizing {
            max_compute_services: self.max_compute_services,
            max_submit_per_cycle: self.max_submit_per_cycle,
            claim_limit: self.service.claim_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "service:\n  api_url: http://127.0.0.1:8081\n  identifier: w\n  key: k\n  name: node\n  shared_basedir: /tmp/s\n  scratch_basedir: /tmp/t\n";

    fn doc(top: &str, backend: &str) -> String {
        format!("name: lab\nmax_compute_services: 4\n{top}{SERVICE}backend:\n{backend}")
    }

    fn error_of(top: &str, backend: &str) -> String {
        ManagerSettings::from_yaml(&doc(top, backend)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_upstream() {
        let s = ManagerSettings::from_yaml(&doc("", "  kind: local\n")).unwrap();
        assert_eq!((s.name.as_str(), s.logfile.clone(), s.max_compute_services, s.max_submit_per_cycle), ("lab", None, 4, 1));
        assert_eq!((s.sleep_interval, s.loglevel), (Duration::from_secs(1800), LevelFilter::WARN));
        assert_eq!(s.retry, RetryPolicy { max_retries: 5, base_seconds: 2.0, max_seconds: 60.0 });
        assert_eq!(s.work_dir, PathBuf::from("alchemiscale-manager/lab"));
        assert_eq!(s.service.max_empty_claims, Some(DEFAULT_MAX_EMPTY_CLAIMS));
        assert_eq!(s.sizing(), Sizing { max_compute_services: 4, max_submit_per_cycle: 1, claim_limit: 1 });
        assert!(matches!(s.backend, BackendSettings::Local(_)));
    }

    #[test]
    fn every_key_is_read() {
        let top = "logfile: /tmp/m.log\nmax_submit_per_cycle: 2\nsleep_interval: 0.5\nloglevel: info\nclient_max_retries: -1\n\
                   client_retry_base_seconds: 3\nclient_retry_max_seconds: 7\nwork_dir: /tmp/w\nalchemiscale: /opt/bin/alchemiscale\n";
        let s = ManagerSettings::from_yaml(&doc(top, "  kind: slurm\n  partition: gpu\n  time_limit: '1:00:00'\n")).unwrap();
        assert_eq!((s.logfile.as_deref(), s.max_submit_per_cycle), (Some(Path::new("/tmp/m.log")), 2));
        assert_eq!((s.sleep_interval, s.loglevel), (Duration::from_millis(500), LevelFilter::INFO));
        assert_eq!(s.retry, RetryPolicy { max_retries: -1, base_seconds: 3.0, max_seconds: 7.0 });
        assert_eq!((s.work_dir.as_path(), s.alchemiscale.as_deref()), (Path::new("/tmp/w"), Some(Path::new("/opt/bin/alchemiscale"))));
        let BackendSettings::Slurm(slurm) = &s.backend else { panic!("{:?}", s.backend) };
        assert_eq!((slurm.partition.as_deref(), slurm.time_limit.as_deref()), (Some("gpu"), Some("1:00:00")));
        // a service section's own max_empty_claims wins, null included
        let with = doc("", "  kind: local\n").replace("  name: node\n", "  name: node\n  max_empty_claims: null\n");
        assert_eq!(ManagerSettings::from_yaml(&with).unwrap().service.max_empty_claims, None);
    }

    #[test]
    fn unknown_and_invalid_keys_are_refused_with_their_name() {
        assert!(error_of("surprise: 1\n", "  kind: local\n").contains("surprise"));
        assert!(error_of("", "  kind: local\n  surprise: 1\n").contains("surprise"));
        assert!(error_of("", "  kind: slurm\n  partiton: x\n").contains("partiton"));
        assert!(error_of("", "  kind: kubernetes\n").contains("kubernetes"));
        let svc = ManagerSettings::from_yaml(&doc("", "  kind: local\n").replace("  name: node\n", "  name: node\n  sleep_intervl: 1\n"))
            .unwrap_err()
            .to_string();
        assert!(svc.contains("`service`") && svc.contains("sleep_intervl"), "{svc}");
        let mgr_id =
            ManagerSettings::from_yaml(&doc("", "  kind: local\n").replace("  name: node\n", "  name: node\n  compute_manager_id: x\n"))
                .unwrap_err()
                .to_string();
        assert!(mgr_id.contains("compute_manager_id"), "{mgr_id}");
        for (top, key) in [
            ("max_submit_per_cycle: 0\n", "max_submit_per_cycle"),
            ("sleep_interval: 0\n", "sleep_interval"),
            ("loglevel: LOUD\n", "loglevel"),
            ("client_max_retries: -2\n", "client_max_retries"),
            ("client_retry_base_seconds: 1\n", "client_retry_base_seconds"),
        ] {
            let e = error_of(top, "  kind: local\n");
            assert!(e.contains(key), "{top}: {e}");
        }
        let zero = ManagerSettings::from_yaml(&doc("", "  kind: local\n").replace("max_compute_services: 4", "max_compute_services: 0"))
            .unwrap_err()
            .to_string();
        assert!(zero.contains("max_compute_services"), "{zero}");
        let name = ManagerSettings::from_yaml(&doc("", "  kind: local\n").replace("name: lab", "name: my-lab")).unwrap_err().to_string();
        assert!(name.contains("my-lab"), "{name}");
        let missing = ManagerSettings::from_yaml("name: lab\nmax_compute_services: 1\nbackend:\n  kind: local\n").unwrap_err().to_string();
        assert!(missing.contains("service"), "{missing}");
    }
}
