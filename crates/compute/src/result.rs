//! Building ProtocolDAGResults in Rust: for native protocols, and for the failures the
//! service reports itself when an executor crashes, hangs or produces nothing usable.
//!
//! The keyed chain has gufe's shapes (model.md §2.7): ProtocolUnits and
//! ProtocolUnitResults / ProtocolUnitFailures keyed `<Class>-<uuid4 hex>` with the key
//! repeated in `_key`, times in gufe's datetime codec, dependencies between results as
//! `{":gufe-key:": …}` references in `inputs`, and a ProtocolDAGResult root keyed by the
//! default algorithm ([`alchemiscale_model::hash::default_key`]; the class has no
//! defaults). The blob is zstd of the chain's JSON with the content size in the frame
//! header, as the Python clients require (api.md §2.6).

use alchemiscale_model::chain::chain_json_from_parts;
use alchemiscale_model::hash::default_key;
use alchemiscale_model::json::{object, Object, Value};
use alchemiscale_model::pdr::zstd_compress;
use alchemiscale_model::GufeKey;
use chrono::{DateTime, Utc};

/// gufe's module of the unit result classes.
pub const PROTOCOLUNIT_MODULE: &str = "gufe.protocols.protocolunit";
/// gufe's module of the DAG result class.
pub const PROTOCOLDAG_MODULE: &str = "gufe.protocols.protocoldag";
/// Module named by the unit class of service-built failures.
pub const SERVICE_MODULE: &str = "alchemiscale_rs.compute";
/// Unit class of service-built failures: "the execution of the task".
pub const SERVICE_UNIT: &str = "TaskExecutionUnit";

/// A fresh `<qualname>-<uuid4 hex>` key, as gufe gives units and unit results.
pub fn new_key(qualname: &str) -> String {
    format!("{qualname}-{}", uuid::Uuid::new_v4().simple())
}

/// A reference stub `{":gufe-key:": key}`.
pub fn reference(key: &str) -> Value {
    Value::Object(object([(":gufe-key:", Value::from(key))]))
}

/// gufe's datetime codec of a naive timestamp (gufe records `datetime.now()`; we record
/// UTC).
pub fn datetime_value(t: DateTime<Utc>) -> Value {
    Value::Object(object([
        ("__class__", Value::from("datetime")),
        ("__module__", Value::from("datetime")),
        (":is_custom:", Value::from(true)),
        ("isotime", Value::from(t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string())),
    ]))
}

/// How a unit ended.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitOutcome {
    /// A `ProtocolUnitResult` with these outputs.
    Success { outputs: Object },
    /// A `ProtocolUnitFailure`: exception class name, its arguments and the traceback text.
    Failure { exception: String, args: Vec<Value>, traceback: String },
}

/// Collects units and their results, then writes the ProtocolDAGResult keyed chain.
#[derive(Debug, Clone)]
pub struct PdrBuilder {
    name: Option<String>,
    transformation_key: Option<String>,
    extends_key: Option<String>,
    units: Vec<(String, Object)>,
    results: Vec<(String, Object)>,
}

impl PdrBuilder {
    /// A result named `name` (upstream names the DAG, and so its result, after the task
    /// ScopedKey) for `transformation_key`, extending the result `extends_key`.
    pub fn new(name: Option<&str>, transformation_key: Option<&str>, extends_key: Option<&str>) -> PdrBuilder {
        PdrBuilder {
            name: name.map(str::to_string),
            transformation_key: transformation_key.map(str::to_string),
            extends_key: extends_key.map(str::to_string),
            units: Vec::new(),
            results: Vec::new(),
        }
    }

    /// Add a ProtocolUnit of class `qualname` (module `module`); `inputs` may reference
    /// units added before. Returns its key.
    pub fn add_unit(&mut self, qualname: &str, module: &str, name: &str, inputs: Object) -> String {
        let key = new_key(qualname);
        let mut d = Object::new();
        d.insert("inputs", Value::Object(inputs));
        d.insert("name", Value::from(name));
        d.insert("_key", Value::from(key.as_str()));
        d.insert("__qualname__", Value::from(qualname));
        d.insert("__module__", Value::from(module));
        d.insert(":version:", Value::from(1i64));
        self.units.push((key.clone(), d));
        key
    }

    /// Add a result of unit `unit_key`; `inputs` may reference results added before (that
    /// is how gufe records which results a unit consumed). Returns its key.
    pub fn add_result(
        &mut self,
        unit_key: &str,
        name: &str,
        inputs: Object,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        outcome: UnitOutcome,
    ) -> String {
        let qualname = match outcome {
            UnitOutcome::Success { .. } => "ProtocolUnitResult",
            UnitOutcome::Failure { .. } => "ProtocolUnitFailure",
        };
        let key = new_key(qualname);
        let mut d = Object::new();
        d.insert("name", Value::from(name));
        d.insert("_key", Value::from(key.as_str()));
        d.insert("source_key", Value::from(unit_key));
        d.insert("inputs", Value::Object(inputs));
        let outputs = match &outcome {
            UnitOutcome::Success { outputs } => outputs.clone(),
            UnitOutcome::Failure { .. } => Object::new(),
        };
        d.insert("outputs", Value::Object(outputs));
        d.insert("stderr", Value::Object(Object::new()));
        d.insert("stdout", Value::Object(Object::new()));
        d.insert("start_time", datetime_value(start));
        d.insert("end_time", datetime_value(end));
        if let UnitOutcome::Failure { exception, args, traceback } = outcome {
            d.insert("exception", Value::Array(vec![Value::from(exception), Value::Array(args)]));
            d.insert("traceback", Value::from(traceback));
        }
        d.insert("__qualname__", Value::from(qualname));
        d.insert("__module__", Value::from(PROTOCOLUNIT_MODULE));
        d.insert(":version:", Value::from(1i64));
        self.results.push((key.clone(), d));
        key
    }

    /// The root's keyed dict and key.
    fn root(&self) -> (GufeKey, Object) {
        let refs = |v: &Vec<(String, Object)>| Value::Array(v.iter().map(|(k, _)| reference(k)).collect());
        let mut d = Object::new();
        d.insert("name", Value::from(self.name.clone()));
        d.insert("protocol_units", refs(&self.units));
        d.insert("protocol_unit_results", refs(&self.results));
        d.insert("transformation_key", Value::from(self.transformation_key.clone()));
        d.insert("extends_key", Value::from(self.extends_key.clone()));
        d.insert("__qualname__", Value::from("ProtocolDAGResult"));
        d.insert("__module__", Value::from(PROTOCOLDAG_MODULE));
        d.insert(":version:", Value::from(1i64));
        (default_key(&d, &[]), d)
    }

    /// The keyed chain's JSON text (units, then results, then the root) and the root key.
    pub fn chain_json(&self) -> (GufeKey, String) {
        let (key, root) = self.root();
        let texts: Vec<(String, String)> = self
            .units
            .iter()
            .chain(self.results.iter())
            .map(|(k, d)| (k.clone(), d.to_python_json()))
            .chain(std::iter::once((key.to_string(), root.to_python_json())))
            .collect();
        (key, chain_json_from_parts(texts.iter().map(|(k, d)| (k.as_str(), d.as_str()))))
    }

    /// The result blob: zstd of the chain JSON, content size recorded.
    pub fn blob(&self) -> Vec<u8> {
        zstd_compress(self.chain_json().1.as_bytes())
    }
}

/// A failed ProtocolDAGResult the service reports for a task whose execution went wrong
/// outside the protocol (executor crashed, timed out, produced nothing usable): one
/// [`SERVICE_UNIT`] unit with one ProtocolUnitFailure. `traceback` is the text restart
/// patterns are matched against; it should start with `<exception>: <message>`.
pub fn failure_blob(
    name: Option<&str>,
    transformation_key: Option<&str>,
    extends_key: Option<&str>,
    exception: &str,
    message: &str,
    traceback: &str,
) -> Vec<u8> {
    let now = Utc::now();
    let mut b = PdrBuilder::new(name, transformation_key, extends_key);
    let unit = b.add_unit(SERVICE_UNIT, SERVICE_MODULE, "task execution", Object::new());
    b.add_result(
        &unit,
        "task execution",
        Object::new(),
        now,
        now,
        UnitOutcome::Failure { exception: exception.into(), args: vec![Value::from(message)], traceback: traceback.into() },
    );
    b.blob()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alchemiscale_model::pdr::read_result;

    #[test]
    fn service_failure_is_a_valid_failed_result() {
        let tb = "TimeoutError: task exceeded task_timeout of 5 s\n";
        let blob =
            failure_blob(Some("Task-x-a-b-c"), Some("Transformation-abc"), None, "TimeoutError", "task exceeded task_timeout of 5 s", tb);
        let r = read_result(blob, 1 << 20).unwrap();
        assert!(!r.summary.ok);
        assert_eq!(r.summary.transformation_key.as_deref(), Some("Transformation-abc"));
        assert_eq!(r.summary.extends_key, None);
        assert_eq!(r.summary.failures.len(), 1);
        assert_eq!(r.summary.failures[0].traceback, tb);
        assert!(r.summary.failures[0].key.starts_with("ProtocolUnitFailure-"));
        assert!(r.summary.failures[0].source_key.starts_with("TaskExecutionUnit-"));
        assert_eq!(r.summary.key.qualname(), "ProtocolDAGResult");
        assert_eq!(r.summary.key.token().len(), 32);
    }

    #[test]
    fn keys_are_class_and_uuid() {
        let k = new_key("ProtocolUnitResult");
        let (class, token) = k.split_once('-').unwrap();
        assert_eq!(class, "ProtocolUnitResult");
        assert!(token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(GufeKey::new(&k).is_ok());
    }
}
