//! Building ProtocolDAGResults in Rust: for native protocols, and for the failures the
//! service reports itself when an executor crashes, hangs or produces nothing usable.
//!
//! A service-built failure names only gufe's classes and the protocol's own, so the stock
//! Python client can read it in any environment that could submit the network
//! ([`failure_blob`]): when the executor recorded the ProtocolDAG it was running
//! ([`ExecutedDag`]), the failure is recorded against the DAG's real units — the unit
//! that was running gets a ProtocolUnitFailure carrying the service's explanation as its
//! traceback. When no DAG exists (the executor failed before creating one, or the
//! transformation could not be prepared), gufe has no concrete unit class to name, so the
//! ProtocolUnitFailure stands for its own unit: it is listed as the DAG result's only
//! unit and only result, with its `source_key` its own key. gufe rebuilds both shapes.
//!
//! The keyed chain has gufe's shapes: ProtocolUnits and
//! ProtocolUnitResults / ProtocolUnitFailures keyed `<Class>-<uuid4 hex>` with the key
//! repeated in `_key`, times in gufe's datetime codec, dependencies between results as
//! `{":gufe-key:": …}` references in `inputs`, and a ProtocolDAGResult root keyed by the
//! default algorithm ([`alchemiscale_model::hash::default_key`]; the class has no
//! defaults). The blob is zstd of the chain's JSON with the content size in the frame
//! header, as the Python clients require.

use alchemiscale_model::chain::{as_reference, chain_json_from_parts, KeyedChain};
use alchemiscale_model::hash::default_key;
use alchemiscale_model::json::{object, Object, Value};
use alchemiscale_model::pdr::zstd_compress;
use alchemiscale_model::GufeKey;
use chrono::{DateTime, Utc};

/// gufe's module of the unit result classes.
pub const PROTOCOLUNIT_MODULE: &str = "gufe.protocols.protocolunit";
/// gufe's module of the DAG result class.
pub const PROTOCOLDAG_MODULE: &str = "gufe.protocols.protocoldag";

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

impl UnitOutcome {
    /// gufe's class of the unit result.
    fn qualname(&self) -> &'static str {
        match self {
            UnitOutcome::Success { .. } => "ProtocolUnitResult",
            UnitOutcome::Failure { .. } => "ProtocolUnitFailure",
        }
    }
}

/// Collects units and their results, then writes the ProtocolDAGResult keyed chain.
#[derive(Debug, Clone)]
pub struct PdrBuilder {
    name: Option<String>,
    transformation_key: Option<String>,
    extends_key: Option<String>,
    /// Everything written before the results, in chain order: the units and the objects
    /// they reference.
    objects: Vec<(String, Object)>,
    /// Keys of the DAG's units, in the DAG's order.
    units: Vec<String>,
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
            objects: Vec::new(),
            units: Vec::new(),
            results: Vec::new(),
        }
    }

    /// A result of the ProtocolDAG `dag` (its keyed chain): its name, labels, units and
    /// every object they reference are taken over as the DAG holds them.
    pub fn for_dag(dag: &ExecutedDag) -> PdrBuilder {
        let root = dag.chain.root();
        let label = |member: &str| root.dict.get(member).and_then(Value::as_str).map(str::to_string);
        let n = dag.chain.len() - 1;
        PdrBuilder {
            name: label("name"),
            transformation_key: label("transformation_key"),
            extends_key: label("extends_key"),
            objects: dag.chain.entries()[..n].iter().map(|e| (e.key.to_string(), e.dict.clone())).collect(),
            units: dag.units.clone(),
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
        self.objects.push((key.clone(), d));
        self.units.push(key.clone());
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
        let qualname = outcome.qualname();
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

    /// Add a ProtocolUnitFailure that stands for its own unit (its `source_key` is its own
    /// key, and it is listed among the units): the shape of a failure for which no
    /// ProtocolDAG exists. Returns its key.
    pub fn add_standalone_failure(&mut self, name: &str, at: DateTime<Utc>, exception: &str, args: Vec<Value>, traceback: &str) -> String {
        let outcome = UnitOutcome::Failure { exception: exception.into(), args, traceback: traceback.into() };
        let key = self.add_result("", name, Object::new(), at, at, outcome);
        if let Some((_, d)) = self.results.last_mut() {
            d.insert("source_key", Value::from(key.as_str()));
        }
        self.units.push(key.clone());
        key
    }

    /// The root's keyed dict and key.
    fn root(&self) -> (GufeKey, Object) {
        let refs = |keys: &mut dyn Iterator<Item = &String>| Value::Array(keys.map(|k| reference(k)).collect());
        let mut d = Object::new();
        d.insert("name", Value::from(self.name.clone()));
        d.insert("protocol_units", refs(&mut self.units.iter()));
        d.insert("protocol_unit_results", refs(&mut self.results.iter().map(|(k, _)| k)));
        d.insert("transformation_key", Value::from(self.transformation_key.clone()));
        d.insert("extends_key", Value::from(self.extends_key.clone()));
        d.insert("__qualname__", Value::from("ProtocolDAGResult"));
        d.insert("__module__", Value::from(PROTOCOLDAG_MODULE));
        d.insert(":version:", Value::from(1i64));
        (default_key(&d, &[]), d)
    }

    /// The keyed chain's JSON text (units and what they reference, then results, then the
    /// root) and the root key.
    pub fn chain_json(&self) -> (GufeKey, String) {
        let (key, root) = self.root();
        let texts: Vec<(String, String)> = self
            .objects
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

/// The ProtocolDAG an executor was running when it failed: its keyed chain (written by
/// the executor as `dag.json`) and its units in the DAG's order.
#[derive(Debug, Clone)]
pub struct ExecutedDag {
    chain: KeyedChain,
    units: Vec<String>,
    /// The unit that was running (the executor's last `running_unit` mark), if known and
    /// one of the DAG's units.
    running: Option<String>,
}

impl ExecutedDag {
    /// Read a ProtocolDAG's keyed-chain JSON and the key of the unit that was running.
    pub fn parse(dag_json: &[u8], running: Option<&str>) -> Result<ExecutedDag, String> {
        let value = alchemiscale_model::json::parse_bytes(dag_json).map_err(|e| e.to_string())?;
        let chain = KeyedChain::from_value(value).map_err(|e| e.to_string())?;
        chain.expect_root("ProtocolDAG").map_err(|e| e.to_string())?;
        let units: Vec<String> = chain
            .root()
            .dict
            .get("protocol_units")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| as_reference(v).and_then(Value::as_str).map(str::to_string)).collect())
            .unwrap_or_default();
        if units.is_empty() {
            return Err("the ProtocolDAG has no units".into());
        }
        let running = running.map(str::trim).filter(|k| units.iter().any(|u| u == k)).map(str::to_string);
        Ok(ExecutedDag { chain, units, running })
    }

    /// The unit that gets the failure: the one running, else the first of the DAG.
    pub fn failed_unit(&self) -> &str {
        self.running.as_deref().unwrap_or(&self.units[0])
    }

    /// The failed unit's name and class (for messages).
    pub fn failed_unit_name(&self) -> String {
        let key = self.failed_unit();
        let entry = GufeKey::new(key).ok().and_then(|k| self.chain.get(&k).cloned());
        let name = entry.as_ref().and_then(|e| e.name()).unwrap_or("unnamed");
        format!("{} ({name})", key.split('-').next().unwrap_or(key))
    }
}

/// What a service-built failure says: the exception class name, its message and the
/// traceback text restart patterns are matched against (it should start with
/// `<exception>: <message>`).
#[derive(Debug, Clone, Copy)]
pub struct ServiceFailure<'a> {
    pub exception: &'a str,
    pub message: &'a str,
    pub traceback: &'a str,
}

/// A failed ProtocolDAGResult the service reports for a task whose execution went wrong
/// outside the protocol (executor crashed, timed out, produced nothing usable). With the
/// DAG that was running, the failure is recorded against its running unit; without, as a
/// standalone failure (see the module documentation). `name`, `transformation_key` and
/// `extends_key` label the result when there is no DAG to take them from.
pub fn failure_blob(
    dag: Option<&ExecutedDag>,
    name: Option<&str>,
    transformation_key: Option<&str>,
    extends_key: Option<&str>,
    failure: ServiceFailure<'_>,
) -> Vec<u8> {
    let now = Utc::now();
    let args = vec![Value::from(failure.message)];
    let builder = match dag {
        Some(dag) => {
            let mut b = PdrBuilder::for_dag(dag);
            let unit = dag.failed_unit().to_string();
            let unit_name = GufeKey::new(&unit).ok().and_then(|k| dag.chain.get(&k)).and_then(|e| e.name()).unwrap_or_default().to_string();
            let outcome = UnitOutcome::Failure { exception: failure.exception.into(), args, traceback: failure.traceback.into() };
            b.add_result(&unit, &unit_name, Object::new(), now, now, outcome);
            b
        }
        None => {
            let mut b = PdrBuilder::new(name, transformation_key, extends_key);
            b.add_standalone_failure("task execution", now, failure.exception, args, failure.traceback);
            b
        }
    };
    builder.blob()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alchemiscale_model::pdr::read_result;

    const TB: &str = "TimeoutError: task exceeded task_timeout of 5 s\n";
    const FAILURE: ServiceFailure<'static> =
        ServiceFailure { exception: "TimeoutError", message: "task exceeded task_timeout of 5 s", traceback: TB };

    /// (key, __module__) of every object of a result blob's chain.
    fn classes(blob: &[u8]) -> Vec<(String, String)> {
        let text = alchemiscale_model::pdr::zstd_decompress(blob, 1 << 20).unwrap();
        let chain = KeyedChain::from_value(alchemiscale_model::json::parse_bytes(&text).unwrap()).unwrap();
        chain.entries().iter().map(|e| (e.key.to_string(), e.module().to_string())).collect()
    }

    #[test]
    fn standalone_failure_is_a_failed_result_of_gufe_classes_only() {
        let blob = failure_blob(None, Some("Task-x-a-b-c"), Some("Transformation-abc"), None, FAILURE);
        let r = read_result(blob.clone(), 1 << 20).unwrap();
        assert!(!r.summary.ok);
        assert_eq!(r.summary.transformation_key.as_deref(), Some("Transformation-abc"));
        assert_eq!(r.summary.extends_key, None);
        assert_eq!(r.summary.failures.len(), 1);
        let f = &r.summary.failures[0];
        assert_eq!(f.traceback, TB);
        assert!(f.key.starts_with("ProtocolUnitFailure-"));
        assert_eq!(f.source_key, f.key, "the failure stands for its own unit");
        assert_eq!(r.summary.key.qualname(), "ProtocolDAGResult");
        assert_eq!(r.summary.key.token().len(), 32);
        for (key, module) in classes(&blob) {
            assert!(module == PROTOCOLUNIT_MODULE || module == PROTOCOLDAG_MODULE, "{key} is of module {module}");
        }
    }

    /// A two-unit DAG (Simulation depends on Setup), as an executor records it.
    fn dag_json() -> (String, String, String) {
        let setup = "SetupUnit-0123456789abcdef0123456789abcdef";
        let sim = "SimulationUnit-fedcba9876543210fedcba9876543210";
        let text = format!(
            r#"[["ChemicalSystem-00000000000000000000000000000001", {{"components": {{}}, "name": "s", "__qualname__": "ChemicalSystem", "__module__": "gufe.chemicalsystem", ":version:": 1}}],
               ["{setup}", {{"inputs": {{"system": {{":gufe-key:": "ChemicalSystem-00000000000000000000000000000001"}}, "n": NaN}}, "name": "setup of repeat 0", "_key": "{setup}", "__qualname__": "SetupUnit", "__module__": "standin.protocol", ":version:": 1}}],
               ["{sim}", {{"inputs": {{"setup": {{":gufe-key:": "{setup}"}}}}, "name": "simulation of repeat 0", "_key": "{sim}", "__qualname__": "SimulationUnit", "__module__": "standin.protocol", ":version:": 1}}],
               ["ProtocolDAG-99999999999999999999999999999999", {{"name": "Task-t-o-c-p", "protocol_units": [{{":gufe-key:": "{setup}"}}, {{":gufe-key:": "{sim}"}}], "transformation_key": "Transformation-abc", "extends_key": "ProtocolDAGResult-def", "__qualname__": "ProtocolDAG", "__module__": "gufe.protocols.protocoldag", ":version:": 1}}]]"#
        );
        (text, setup.into(), sim.into())
    }

    #[test]
    fn failure_against_the_running_unit_of_the_dag() {
        let (text, setup, sim) = dag_json();
        let dag = ExecutedDag::parse(text.as_bytes(), Some(&format!("{sim}\n"))).unwrap();
        assert_eq!(dag.failed_unit(), sim);
        assert_eq!(dag.failed_unit_name(), "SimulationUnit (simulation of repeat 0)");
        // labels come from the DAG, not from the arguments
        let blob = failure_blob(Some(&dag), Some("ignored"), Some("Transformation-ignored"), None, FAILURE);
        let r = read_result(blob.clone(), 1 << 20).unwrap();
        assert!(!r.summary.ok);
        assert_eq!(r.summary.transformation_key.as_deref(), Some("Transformation-abc"));
        assert_eq!(r.summary.extends_key.as_deref(), Some("ProtocolDAGResult-def"));
        assert_eq!(r.summary.failures.len(), 1);
        assert_eq!(r.summary.failures[0].source_key, sim);
        assert_eq!(r.summary.failures[0].traceback, TB);
        let classes = classes(&blob);
        let modules: Vec<&str> = classes.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            modules,
            ["gufe.chemicalsystem", "standin.protocol", "standin.protocol", PROTOCOLUNIT_MODULE, PROTOCOLDAG_MODULE],
            "the DAG's objects as recorded, then the failure and the root"
        );
        let text = String::from_utf8(alchemiscale_model::pdr::zstd_decompress(&blob, 1 << 20).unwrap()).unwrap();
        assert!(text.contains(r#""n": NaN"#) && text.contains(r#""name": "Task-t-o-c-p""#), "{text}");
        assert!(text.contains(r#""name": "simulation of repeat 0", "_key": "ProtocolUnitFailure-"#), "{text}");

        // a unit that is not of this DAG, or no mark at all: the first unit
        for mark in [Some("SimulationUnit-00000000000000000000000000000000"), None] {
            let dag = ExecutedDag::parse(dag_json().0.as_bytes(), mark).unwrap();
            assert_eq!(dag.failed_unit(), setup);
        }
    }

    #[test]
    fn unusable_dags_are_refused() {
        for bad in ["", "[]", "not json", r#"[["ProtocolDAGResult-1", {"__qualname__": "ProtocolDAGResult", "__module__": "m"}]]"#] {
            assert!(ExecutedDag::parse(bad.as_bytes(), None).is_err(), "{bad}");
        }
        let no_units = r#"[["ProtocolDAG-99999999999999999999999999999999", {"name": null, "protocol_units": [], "__qualname__": "ProtocolDAG", "__module__": "gufe.protocols.protocoldag", ":version:": 1}]]"#;
        assert_eq!(ExecutedDag::parse(no_units.as_bytes(), None).unwrap_err(), "the ProtocolDAG has no units");
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
