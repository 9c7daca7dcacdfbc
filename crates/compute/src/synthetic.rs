//! `SyntheticProtocol`, the native protocol of synthetic networks
//! ([`alchemiscale_model::synthetic`]): deterministic, fast, and able to misbehave on
//! request, so the whole compute path can be exercised without Python or chemistry.
//!
//! The ProtocolDAG is a chain of `n_units` `SyntheticUnit`s (default 2), each depending on
//! the previous one. Unit `i` outputs an `estimate` derived from the transformation key
//! (the MD5 of `"<key>:<i>"` mapped to [-5, 5)), so repeated runs agree. Each result's
//! `inputs` reference the previous unit's result, as gufe records consumed results, so
//! the result graph has real dependencies. Settings (members of the protocol's
//! `settings`, see `network_chain_json_with_settings`):
//!
//! * `n_units` (int ≥ 1, default 2);
//! * `fail` (bool): the last unit fails on every attempt (`n_retries` + 1 attempts, as
//!   gufe's `execute_DAG` retries), each a ProtocolUnitFailure whose traceback ends in
//!   `RuntimeError: synthetic failure`;
//! * `sleep_seconds` (number): sleep that long before running (for timeouts and
//!   cancellation);
//! * `crash` (bool): abort the process (for crash handling).
//!
//! A task extending another records that result's key as `extends_key`.

use std::time::Duration;

use alchemiscale_model::chain::{as_reference, KeyedChain};
use alchemiscale_model::hash::md5_hex;
use alchemiscale_model::json::{object, Object, Value};
use alchemiscale_model::pdr::read_result;
use alchemiscale_model::synthetic::SYNTHETIC_PROTOCOL;
use alchemiscale_model::GufeKey;
use chrono::Utc;

use crate::child::{io_err, ExecuteError, TaskInput};
use crate::result::{new_key, reference, PdrBuilder, UnitOutcome};

/// Module our native protocol classes claim.
pub const MODULE: &str = alchemiscale_model::synthetic::SYNTHETIC_MODULE;
/// Class of the units.
pub const UNIT: &str = "SyntheticUnit";
/// Largest accepted `n_units`.
pub const MAX_UNITS: i64 = 10_000;

/// The settings the protocol honours.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSettings {
    pub n_units: usize,
    pub fail: bool,
    pub sleep_seconds: f64,
    pub crash: bool,
    /// The whole settings object, recorded in every unit's inputs.
    pub raw: Value,
}

fn bad(message: impl Into<String>) -> ExecuteError {
    ExecuteError::Settings { protocol: SYNTHETIC_PROTOCOL.into(), message: message.into() }
}

fn flag(settings: &Object, name: &str) -> Result<bool, ExecuteError> {
    match settings.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(format!("`{name}` must be a boolean, got {}", other.to_python_json()))),
    }
}

impl SyntheticSettings {
    /// Read the settings of the transformation's protocol.
    pub fn of(chain: &KeyedChain) -> Result<SyntheticSettings, ExecuteError> {
        let root = chain.root();
        let protocol = root
            .dict
            .get("protocol")
            .and_then(as_reference)
            .and_then(Value::as_str)
            .and_then(|k| GufeKey::new(k).ok())
            .and_then(|k| chain.get(&k))
            .ok_or_else(|| bad(format!("transformation {} has no protocol", root.key)))?;
        let raw = protocol.dict.get("settings").cloned().unwrap_or(Value::Object(Object::new()));
        let settings = raw.as_object().cloned().unwrap_or_default();
        let n_units = match settings.get("n_units") {
            None | Some(Value::Null) => 2,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if (1..=MAX_UNITS).contains(&v) => v as usize,
                _ => return Err(bad(format!("`n_units` must be an integer from 1 to {MAX_UNITS}, got {}", n.source_text()))),
            },
            Some(other) => return Err(bad(format!("`n_units` must be an integer, got {}", other.to_python_json()))),
        };
        let sleep_seconds = match settings.get("sleep_seconds") {
            None | Some(Value::Null) => 0.0,
            Some(Value::Number(n)) if n.as_f64().is_finite() && n.as_f64() >= 0.0 => n.as_f64(),
            Some(other) => return Err(bad(format!("`sleep_seconds` must be a number of seconds ≥ 0, got {}", other.to_python_json()))),
        };
        Ok(SyntheticSettings { n_units, fail: flag(&settings, "fail")?, sleep_seconds, crash: flag(&settings, "crash")?, raw })
    }
}

/// The deterministic estimate of unit `unit` of `transformation_key`, in [-5, 5).
pub fn estimate(transformation_key: &str, unit: usize) -> f64 {
    let h = md5_hex(format!("{transformation_key}:{unit}").as_bytes());
    let bits = u64::from_str_radix(&h[..13], 16).unwrap_or(0); // 52 bits
    (bits as f64 / (1u64 << 52) as f64) * 10.0 - 5.0
}

/// The traceback of the synthetic failure.
pub const FAILURE_TRACEBACK: &str = "Traceback (most recent call last):\n  File \"alchemiscale_rs/protocols/synthetic\", in SyntheticUnit._execute\nRuntimeError: synthetic failure\n";

/// Run the protocol for `task`; returns the result blob. May sleep or abort the process
/// as the settings ask.
pub fn run(task: &TaskInput) -> Result<Vec<u8>, ExecuteError> {
    let settings = SyntheticSettings::of(&task.chain)?;
    if settings.sleep_seconds > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(settings.sleep_seconds.min(1e9)));
    }
    if settings.crash {
        eprintln!("SyntheticProtocol: crashing as asked (`crash: true`)");
        std::process::abort();
    }
    let extends_key = match &task.extends {
        None => None,
        Some(blob) => Some(
            read_result(blob.clone(), 1 << 30)
                .map_err(|e| ExecuteError::Input { file: crate::child::EXTENDS_FILE, message: e.to_string() })?
                .summary
                .key
                .to_string(),
        ),
    };
    let tk = task.request.transformation_key.as_str();
    let dag_key = new_key("ProtocolDAG");
    task.record_dag_key(&dag_key)?;
    let shared = task.request.shared_basedir.join(&dag_key);
    let scratch = task.request.scratch_basedir.join(&dag_key);
    for dir in [&shared, &scratch] {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }

    let mut pdr = PdrBuilder::new(Some(&task.request.task), Some(tk), extends_key.as_deref());
    let mut previous_unit: Option<String> = None;
    let mut previous_result: Option<String> = None;
    let attempts = task.request.n_retries.max(0) as usize + 1;
    for i in 0..settings.n_units {
        let inputs = |previous: &Option<String>| {
            let mut o = object([("settings", settings.raw.clone()), ("index", Value::from(i as i64))]);
            o.insert("previous", previous.as_deref().map(reference).unwrap_or(Value::Null));
            if i == 0 {
                o.insert("extends_key", Value::from(extends_key.clone()));
            }
            o
        };
        let unit = pdr.add_unit(UNIT, MODULE, &format!("synthetic unit {i}"), inputs(&previous_unit));
        let failing = settings.fail && i + 1 == settings.n_units;
        let mut succeeded = None;
        for attempt in 0..(if failing { attempts } else { 1 }) {
            let start = Utc::now();
            let unit_shared = shared.join(format!("shared_{unit}_attempt_{attempt}"));
            std::fs::create_dir_all(&unit_shared).map_err(io_err(&unit_shared))?;
            let value = estimate(tk, i);
            let outcome = if failing {
                UnitOutcome::Failure {
                    exception: "RuntimeError".into(),
                    args: vec![Value::from("synthetic failure")],
                    traceback: FAILURE_TRACEBACK.into(),
                }
            } else {
                let file = unit_shared.join("estimate.txt");
                std::fs::write(&file, format!("{value}\n")).map_err(io_err(&file))?;
                UnitOutcome::Success {
                    outputs: object([
                        ("estimate", Value::from(value)),
                        ("index", Value::from(i as i64)),
                        ("log", Value::from(format!("synthetic unit {i} of {tk}"))),
                    ]),
                }
            };
            let key = pdr.add_result(&unit, &format!("synthetic unit {i}"), inputs(&previous_result), start, Utc::now(), outcome);
            if !failing {
                succeeded = Some(key);
            }
        }
        if succeeded.is_none() {
            break; // as gufe: a unit that failed every attempt ends the DAG
        }
        previous_unit = Some(unit);
        previous_result = succeeded;
    }
    Ok(pdr.blob())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{TaskRequest, EXTENDS_FILE, REQUEST_FILE, TRANSFORMATION_FILE};
    use alchemiscale_model::chain::network_info;
    use alchemiscale_model::json;
    use alchemiscale_model::pdr::zstd_decompress;
    use alchemiscale_model::synthetic::network_chain_json_with_settings;

    /// A task directory for the first transformation of a synthetic network.
    fn task_dir(extra: &[(&str, Value)], n_retries: i64, extends: Option<&[u8]>) -> (tempfile::TempDir, String) {
        let text = network_chain_json_with_settings(2, 1, "syn", extra);
        let chain = KeyedChain::from_value(json::parse(&text).unwrap()).unwrap();
        let info = network_info(&chain).unwrap();
        let tf = &info.edges[0].key;
        // the transformation's own chain: everything before it, then it
        let pos = chain.position(tf).unwrap();
        let sub: Vec<Value> = chain.entries()[..=pos]
            .iter()
            .map(|e| Value::Array(vec![Value::from(e.key.to_string()), Value::Object(e.dict.clone())]))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TRANSFORMATION_FILE), Value::Array(sub).to_python_json()).unwrap();
        if let Some(b) = extends {
            std::fs::write(dir.path().join(EXTENDS_FILE), b).unwrap();
        }
        let req = TaskRequest {
            task: "Task-0123456789abcdef0123456789abcdef-o-c-p".into(),
            transformation_key: tf.to_string(),
            protocol: SYNTHETIC_PROTOCOL.into(),
            shared_basedir: dir.path().join("shared"),
            scratch_basedir: dir.path().join("scratch"),
            keep_shared: false,
            keep_scratch: false,
            n_retries,
            extends: extends.map(|_| EXTENDS_FILE.to_string()),
        };
        std::fs::write(dir.path().join(REQUEST_FILE), serde_json::to_string(&req).unwrap()).unwrap();
        (dir, tf.to_string())
    }

    fn run_dir(dir: &tempfile::TempDir) -> Vec<u8> {
        run(&TaskInput::read(dir.path()).unwrap()).unwrap()
    }

    #[test]
    fn success_passes_the_server_analysis() {
        let (dir, tf) = task_dir(&[("n_units", Value::from(3i64))], 3, None);
        let blob = run_dir(&dir);
        let r = read_result(blob.clone(), 1 << 30).unwrap();
        assert!(r.summary.ok);
        assert!(r.summary.failures.is_empty());
        assert_eq!(r.summary.transformation_key.as_deref(), Some(tf.as_str()));
        assert_eq!(r.summary.extends_key, None);
        assert_eq!(r.blob, blob, "already a blob with the content size recorded");
        let text = zstd_decompress(&blob, 1 << 30).unwrap();
        let chain = KeyedChain::from_value(json::parse_bytes(&text).unwrap()).unwrap();
        let units: Vec<_> = chain.entries().iter().filter(|e| e.qualname() == UNIT).collect();
        let results: Vec<_> = chain.entries().iter().filter(|e| e.qualname() == "ProtocolUnitResult").collect();
        assert_eq!((units.len(), results.len()), (3, 3));
        // each result after the first consumes the previous one; estimates are deterministic
        for (i, r) in results.iter().enumerate() {
            let prev = r.dict.get("inputs").unwrap().get("previous").unwrap();
            match i {
                0 => assert!(prev.is_null()),
                _ => assert_eq!(as_reference(prev).and_then(Value::as_str), Some(results[i - 1].key.as_str())),
            }
            let est = r.dict.get("outputs").unwrap().get("estimate").unwrap().as_number().unwrap().as_f64();
            assert_eq!(est, estimate(&tf, i));
            assert_eq!(r.dict.get("_key").and_then(Value::as_str), Some(r.key.as_str()));
            assert!(r.dict.get("start_time").unwrap().get("isotime").is_some());
        }
        assert_eq!(chain.root().dict.get("name").and_then(Value::as_str), Some("Task-0123456789abcdef0123456789abcdef-o-c-p"));
        let dag_key = std::fs::read_to_string(dir.path().join(crate::child::DAG_KEY_FILE)).unwrap();
        assert!(dir.path().join("shared").join(&dag_key).is_dir());
        assert!((-5.0..5.0).contains(&estimate(&tf, 0)));
        assert_ne!(estimate(&tf, 0), estimate(&tf, 1));
    }

    #[test]
    fn failure_has_retries_and_the_synthetic_traceback() {
        let (dir, tf) = task_dir(&[("fail", Value::from(true))], 2, None);
        let r = read_result(run_dir(&dir), 1 << 30).unwrap();
        assert!(!r.summary.ok);
        assert_eq!(r.summary.transformation_key.as_deref(), Some(tf.as_str()));
        assert_eq!(r.summary.failures.len(), 3, "n_retries 2 → three attempts");
        assert!(r.summary.failures.iter().all(|f| f.traceback.contains("RuntimeError: synthetic failure")));
        let tb = r.summary.tracebacks().unwrap();
        assert_eq!(tb.tracebacks.len(), 3);
    }

    #[test]
    fn extending_records_the_extended_result() {
        let (first, _) = task_dir(&[], 0, None);
        let parent = run_dir(&first);
        let parent_key = read_result(parent.clone(), 1 << 30).unwrap().summary.key;
        let (dir, _) = task_dir(&[], 0, Some(&parent));
        let r = read_result(run_dir(&dir), 1 << 30).unwrap();
        assert!(r.summary.ok);
        assert_eq!(r.summary.extends_key.as_deref(), Some(parent_key.as_str()));
    }

    #[test]
    fn bad_settings_are_reported() {
        for (k, v) in [("n_units", Value::from(0i64)), ("fail", Value::from("yes")), ("sleep_seconds", Value::from(-1.0))] {
            let (dir, _) = task_dir(&[(k, v)], 0, None);
            let e = run(&TaskInput::read(dir.path()).unwrap()).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains("invalid SyntheticProtocol settings"), "{e}");
        }
    }
}
