//! gufe key computation for the objects the server itself creates.
//!
//! Submitted objects keep the keys their submitter computed: the default
//! algorithm needs every class's constructor defaults, which only the Python classes
//! know. The server computes keys for Task (uuid7), TaskHub, NetworkMark,
//! TaskRestartPattern (md5 rules), ProtocolDAGResultRef and Tracebacks (default algorithm
//! with their known defaults).

use md5::{Digest, Md5};

use crate::json::{Object, Value};
use crate::keys::{GufeKey, ScopedKey};

pub const ALCHEMISCALE_MODULE: &str = "alchemiscale.storage.models";

pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// The text hashed by the default algorithm: the keyed dict minus top-level entries equal
/// (Python `==`) to the class defaults (and `:version:` equal to the current schema
/// version 1), in `json.dumps(sort_keys=True)` form.
pub fn hashed_text(keyed_dict: &Object, defaults: &[(&str, Value)]) -> String {
    let version = Value::from(1i64);
    let kept: Object = keyed_dict
        .iter()
        .filter(|(k, v)| {
            let default = if *k == ":version:" { Some(&version) } else { defaults.iter().find(|(d, _)| d == k).map(|(_, v)| v) };
            !default.is_some_and(|d| v.py_eq(d))
        })
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Value::Object(kept).to_canonical_json()
}

/// Default-algorithm gufe key of a keyed dict (which carries `__qualname__`).
pub fn default_key(keyed_dict: &Object, defaults: &[(&str, Value)]) -> GufeKey {
    let qualname = keyed_dict.get("__qualname__").and_then(Value::as_str).unwrap_or("Unknown");
    let token = md5_hex(hashed_text(keyed_dict, defaults).as_bytes());
    GufeKey::from_parts(qualname, &token).expect("qualname of a server-built object is a valid key part")
}

/// A keyed dict for one of alchemiscale's own classes: the class dict plus bookkeeping.
pub fn alchemiscale_dict(qualname: &str, class_dict: Object) -> Object {
    let mut d = class_dict;
    d.insert("__qualname__", Value::from(qualname));
    d.insert("__module__", Value::from(ALCHEMISCALE_MODULE));
    d.insert(":version:", Value::from(1i64));
    d
}

fn md5_key(qualname: &str, text: &str) -> GufeKey {
    GufeKey::from_parts(qualname, &md5_hex(text.as_bytes())).expect("valid key")
}

/// TaskHub key: md5 of the network's ScopedKey string.
pub fn taskhub_key(network: &ScopedKey) -> GufeKey {
    md5_key("TaskHub", &network.to_string())
}

/// NetworkMark key: md5 of the target network's ScopedKey string (same token as the hub).
pub fn network_mark_key(network: &ScopedKey) -> GufeKey {
    md5_key("NetworkMark", &network.to_string())
}

/// TaskRestartPattern key: md5 of the pattern immediately followed by the hub ScopedKey.
pub fn restart_pattern_key(pattern: &str, taskhub: &ScopedKey) -> GufeKey {
    md5_key("TaskRestartPattern", &format!("{pattern}{taskhub}"))
}

/// A new Task key: a 128-bit hex token like upstream's uuid4, but a time-ordered uuid7
/// (74 random bits after a millisecond timestamp), so new tasks append to the store's key
/// index instead of landing at random places in it (bulk creation stays fast as the
/// store grows). Clients treat the token as opaque.
pub fn new_task_key() -> GufeKey {
    GufeKey::from_parts("Task", &uuid::Uuid::now_v7().simple().to_string()).expect("valid key")
}

/// Fields of a ProtocolDAGResultRef.
#[derive(Debug, Clone, PartialEq)]
pub struct PdrrFields {
    pub location: Option<String>,
    pub obj_key: String,
    pub scope: String,
    pub ok: bool,
    /// Python isoformat with `+00:00`, e.g. `2024-01-02T03:04:05.678901+00:00`.
    pub datetime_created: Option<String>,
    pub creator: Option<String>,
}

impl PdrrFields {
    pub fn keyed_dict(&self) -> Object {
        let mut d = Object::new();
        d.insert("location", Value::from(self.location.clone()));
        d.insert("obj_key", Value::from(self.obj_key.clone()));
        d.insert("scope", Value::from(self.scope.clone()));
        d.insert("ok", Value::from(self.ok));
        d.insert("datetime_created", Value::from(self.datetime_created.clone()));
        d.insert("creator", Value::from(self.creator.clone()));
        alchemiscale_dict("ProtocolDAGResultRef", d)
    }

    pub fn key(&self) -> GufeKey {
        let defaults = [("location", Value::Null), ("datetime_created", Value::Null), ("creator", Value::Null)];
        default_key(&self.keyed_dict(), &defaults)
    }
}

/// Fields of a Tracebacks record; lists are parallel.
#[derive(Debug, Clone, PartialEq)]
pub struct TracebacksFields {
    pub tracebacks: Vec<String>,
    pub source_keys: Vec<String>,
    pub failure_keys: Vec<String>,
}

impl TracebacksFields {
    pub fn keyed_dict(&self) -> Object {
        let list = |v: &Vec<String>| Value::Array(v.iter().map(|s| Value::from(s.as_str())).collect());
        let mut d = Object::new();
        d.insert("tracebacks", list(&self.tracebacks));
        d.insert("source_keys", list(&self.source_keys));
        d.insert("failure_keys", list(&self.failure_keys));
        alchemiscale_dict("Tracebacks", d)
    }

    pub fn key(&self) -> GufeKey {
        default_key(&self.keyed_dict(), &[])
    }
}

/// Format a UTC timestamp as Python's `datetime.isoformat()` of an aware datetime.
pub fn python_isoformat(t: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::Timelike;
    if t.nanosecond() / 1000 == 0 {
        t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{object, parse};
    use chrono::TimeZone;

    fn sk(s: &str) -> ScopedKey {
        s.parse().unwrap()
    }

    // gufe's documented key examples 1–4: gufe classes, with their stated defaults.
    #[test]
    fn gufe_examples_1_to_4() {
        let solvent = parse(
            r#"{"smiles": "O", "positive_ion": "Na+", "negative_ion": "Cl-", "ion_concentration": "0.15 molar", "neutralize": true, "__qualname__": "SolventComponent", "__module__": "gufe.components.solventcomponent", ":version:": 1}"#,
        )
        .unwrap();
        // ion_concentration's default is a quantity object, never equal to a string
        let solvent_defaults = [
            ("smiles", Value::from("O")),
            ("positive_ion", Value::from("Na+")),
            ("negative_ion", Value::from("Cl-")),
            ("neutralize", Value::from(true)),
        ];
        let d = solvent.as_object().unwrap();
        assert_eq!(
            hashed_text(d, &solvent_defaults),
            r#"{"__module__": "gufe.components.solventcomponent", "__qualname__": "SolventComponent", "ion_concentration": "0.15 molar"}"#
        );
        assert_eq!(default_key(d, &solvent_defaults).as_str(), "SolventComponent-26b4034ad9dbd9f908dfc298ea8d449f");
        let mut d2 = d.clone();
        d2.insert("ion_concentration", Value::from("0.2 molar"));
        assert_eq!(default_key(&d2, &solvent_defaults).as_str(), "SolventComponent-d09ee03ea11fdc0d454014800d58a464");

        let cs = parse(
            r#"{"components": {"solvent": {":gufe-key:": "SolventComponent-26b4034ad9dbd9f908dfc298ea8d449f"}}, "name": "water", "__qualname__": "ChemicalSystem", "__module__": "gufe.chemicalsystem", ":version:": 1}"#,
        )
        .unwrap();
        let cs_key = default_key(cs.as_object().unwrap(), &[("name", Value::from(""))]);
        assert_eq!(cs_key.as_str(), "ChemicalSystem-2fb5b7622b36b03cf3c1bd7b6b26411e");

        let nt = parse(
            r#"{"system": {":gufe-key:": "ChemicalSystem-2fb5b7622b36b03cf3c1bd7b6b26411e"}, "protocol": {":gufe-key:": "DummyProtocol-e74b8a34526e7a7a5541d63e9ef511d5"}, "name": "water-nt", "__qualname__": "NonTransformation", "__module__": "gufe.transformations.transformation", ":version:": 1}"#,
        )
        .unwrap();
        let nt_key = default_key(nt.as_object().unwrap(), &[("name", Value::Null)]);
        assert_eq!(nt_key.as_str(), "NonTransformation-228911555fa99fe1e67044435762564d");

        let net = parse(
            r#"{"nodes": [{":gufe-key:": "ChemicalSystem-2fb5b7622b36b03cf3c1bd7b6b26411e"}], "edges": [{":gufe-key:": "NonTransformation-228911555fa99fe1e67044435762564d"}], "name": "toy", "__qualname__": "AlchemicalNetwork", "__module__": "gufe.network", ":version:": 1}"#,
        )
        .unwrap();
        let net_key = default_key(net.as_object().unwrap(), &[("name", Value::Null)]);
        assert_eq!(net_key.as_str(), "AlchemicalNetwork-ef2ea1f6183275ef9b52d9e47f27be58");
    }

    // gufe key example 5
    #[test]
    fn pdrr_keys() {
        let t = chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(678901);
        let full = PdrrFields {
            location: Some("protocoldagresult/my_org/my_campaign/my_project/Transformation-00000000000000000000000000000001/results/ProtocolDAGResult-00000000000000000000000000000002/obj.json.zst".into()),
            obj_key: "ProtocolDAGResult-00000000000000000000000000000002".into(),
            scope: "my_org-my_campaign-my_project".into(),
            ok: true,
            datetime_created: Some(python_isoformat(t)),
            creator: Some("csvc-0123456789abcdef0123456789abcdef".into()),
        };
        assert_eq!(full.datetime_created.as_deref(), Some("2024-01-02T03:04:05.678901+00:00"));
        assert_eq!(full.key().as_str(), "ProtocolDAGResultRef-d402d2951057549b292d838acd275b78");
        let minimal = PdrrFields { location: None, datetime_created: None, creator: None, ok: false, ..full };
        assert_eq!(
            hashed_text(&minimal.keyed_dict(), &[("location", Value::Null), ("datetime_created", Value::Null), ("creator", Value::Null)]),
            r#"{"__module__": "alchemiscale.storage.models", "__qualname__": "ProtocolDAGResultRef", "obj_key": "ProtocolDAGResult-00000000000000000000000000000002", "ok": false, "scope": "my_org-my_campaign-my_project"}"#
        );
        assert_eq!(minimal.key().as_str(), "ProtocolDAGResultRef-bc2a32110dbdce58f8dabd3514fe1ae2");
    }

    // gufe key example 6
    #[test]
    fn tracebacks_key() {
        let tb = TracebacksFields {
            tracebacks: vec!["Traceback: boom".into(), "Traceback: bang".into()],
            source_keys: vec!["ProtocolUnit-aa".into(), "ProtocolUnit-bb".into()],
            failure_keys: vec!["ProtocolUnitFailure-cc".into(), "ProtocolUnitFailure-dd".into()],
        };
        assert_eq!(tb.key().as_str(), "Tracebacks-03fbff6123bb54dd1681ae95a915222c");
    }

    // gufe key example 7
    #[test]
    fn custom_token_keys() {
        let net = sk("AlchemicalNetwork-0123456789abcdef0123456789abcdef-my_org-my_campaign-my_project");
        assert_eq!(taskhub_key(&net).as_str(), "TaskHub-005d3598c35282a7d15d313d4e884d0e");
        assert_eq!(network_mark_key(&net).as_str(), "NetworkMark-005d3598c35282a7d15d313d4e884d0e");
        let hub = sk("TaskHub-005d3598c35282a7d15d313d4e884d0e-my_org-my_campaign-my_project");
        assert_eq!(restart_pattern_key("RuntimeError: .+", &hub).as_str(), "TaskRestartPattern-f46dd0678acfce5ec12bf1cbb20476d7");
        let t = new_task_key();
        assert_eq!(t.qualname(), "Task");
        assert_eq!(t.token().len(), 32);
        assert_ne!(t, new_task_key());
    }

    #[test]
    fn isoformat_without_micros() {
        let t = chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(python_isoformat(t), "2024-01-02T03:04:05+00:00");
        let _ = object([("a", 1i64)]);
    }
}
