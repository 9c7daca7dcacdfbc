//! Keyed chains and the network structure the server
//! interprets.
//!
//! A keyed chain is a list of `[gufe_key, keyed_dict]` pairs, dependencies first, root
//! last. The server takes the keys as given and validates the structure:
//! every key well formed and equal in class to its dict's `__qualname__`, every
//! `{":gufe-key:": ...}` reference resolving to an earlier entry, no key repeated with
//! different contents.

use std::collections::HashMap;

use crate::json::{Object, Value};
use crate::keys::GufeKey;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("keyed chain must be a JSON array of [gufe_key, keyed_dict] pairs")]
    NotAnArray,
    #[error("keyed chain is empty")]
    Empty,
    #[error("keyed chain entry {index} is not a [gufe_key, keyed_dict] pair")]
    BadEntry { index: usize },
    #[error("keyed chain entry {index} has an invalid gufe key {key:?}")]
    BadKey { index: usize, key: String },
    #[error("keyed chain entry {index}: key '{key}' does not match its __qualname__ {qualname:?}")]
    QualnameMismatch { index: usize, key: String, qualname: String },
    #[error("keyed chain entry {index} ('{key}') lacks a string '__module__'")]
    MissingModule { index: usize, key: String },
    #[error("keyed chain entry {index} ('{key}') has a malformed reference: {detail}")]
    BadReference { index: usize, key: String, detail: String },
    #[error("keyed chain entry {index} ('{key}') references '{reference}', which is not an earlier entry (possibly corrupt keyed chain)")]
    UnresolvedReference { index: usize, key: String, reference: String },
    #[error("keyed chain contains '{key}' twice with different contents")]
    ConflictingDuplicate { key: String },
    #[error("expected the root object to be a `{expected}`, got `{found}`")]
    RootClass { expected: &'static str, found: String },
    #[error("`{class}` '{key}': {detail}")]
    Structure { class: String, key: String, detail: String },
    #[error("`Transformation` '{transformation}' uses the same `ChemicalSystem` '{system}' for both states; this is currently not supported in `alchemiscale`")]
    SelfTransformation { transformation: String, system: String },
}

/// One object of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainEntry {
    pub key: GufeKey,
    pub dict: Object,
}

impl ChainEntry {
    pub fn qualname(&self) -> &str {
        self.key.qualname()
    }
    pub fn module(&self) -> &str {
        self.dict.get("__module__").and_then(Value::as_str).unwrap_or_default()
    }
    /// The object's `name` member when it is a string.
    pub fn name(&self) -> Option<&str> {
        self.dict.get("name").and_then(Value::as_str)
    }
    /// Keys this entry references, in document order (duplicates kept).
    pub fn references(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for (_, v) in self.dict.iter() {
            collect_refs(v, &mut out);
        }
        out
    }
    /// The keyed dict as CPython's `json.dumps` writes it (what the store keeps).
    pub fn dict_json(&self) -> String {
        self.dict.to_python_json()
    }
}

/// If `v` is a reference stub `{":gufe-key:": "..."}`, the referenced key text.
pub fn as_reference(v: &Value) -> Option<&Value> {
    v.as_object().and_then(|o| o.get(":gufe-key:"))
}

fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => match o.get(":gufe-key:") {
            Some(r) => out.push(r.as_str().unwrap_or("")),
            None => o.iter().for_each(|(_, x)| collect_refs(x, out)),
        },
        Value::Array(items) => items.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn check_refs(v: &Value, index: usize, key: &GufeKey, seen: &HashMap<GufeKey, usize>) -> Result<(), ChainError> {
    match v {
        Value::Object(o) => match o.get(":gufe-key:") {
            Some(r) => {
                let text = r.as_str().ok_or_else(|| ChainError::BadReference {
                    index,
                    key: key.to_string(),
                    detail: "`:gufe-key:` value is not a string".into(),
                })?;
                let rk = GufeKey::new(text).map_err(|_| ChainError::BadReference {
                    index,
                    key: key.to_string(),
                    detail: format!("{text:?} is not a valid gufe key"),
                })?;
                if !seen.contains_key(&rk) {
                    return Err(ChainError::UnresolvedReference { index, key: key.to_string(), reference: text.to_string() });
                }
                Ok(())
            }
            None => o.iter().try_for_each(|(_, x)| check_refs(x, index, key, seen)),
        },
        Value::Array(items) => items.iter().try_for_each(|x| check_refs(x, index, key, seen)),
        _ => Ok(()),
    }
}

/// A validated keyed chain.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedChain {
    entries: Vec<ChainEntry>,
    index: HashMap<GufeKey, usize>,
}

impl KeyedChain {
    /// Validate and take ownership of a parsed chain. Identical repeated entries are
    /// collapsed to their first occurrence.
    pub fn from_value(v: Value) -> Result<KeyedChain, ChainError> {
        let Value::Array(items) = v else { return Err(ChainError::NotAnArray) };
        if items.is_empty() {
            return Err(ChainError::Empty);
        }
        let mut entries: Vec<ChainEntry> = Vec::with_capacity(items.len());
        let mut index: HashMap<GufeKey, usize> = HashMap::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let Value::Array(pair) = item else { return Err(ChainError::BadEntry { index: i }) };
            let [k, d]: [Value; 2] = pair.try_into().map_err(|_| ChainError::BadEntry { index: i })?;
            let (Value::String(k), Value::Object(dict)) = (k, d) else { return Err(ChainError::BadEntry { index: i }) };
            let key = GufeKey::new(&k).map_err(|_| ChainError::BadKey { index: i, key: k.clone() })?;
            let qualname = dict.get("__qualname__").and_then(Value::as_str).unwrap_or_default();
            if qualname != key.qualname() {
                return Err(ChainError::QualnameMismatch { index: i, key: k, qualname: qualname.to_string() });
            }
            if dict.get("__module__").and_then(Value::as_str).is_none() {
                return Err(ChainError::MissingModule { index: i, key: k });
            }
            if let Some(&prev) = index.get(&key) {
                if entries[prev].dict != dict {
                    return Err(ChainError::ConflictingDuplicate { key: k });
                }
                continue;
            }
            for (_, v) in dict.iter() {
                check_refs(v, i, &key, &index)?;
            }
            index.insert(key.clone(), entries.len());
            entries.push(ChainEntry { key, dict });
        }
        Ok(KeyedChain { entries, index })
    }

    pub fn entries(&self) -> &[ChainEntry] {
        &self.entries
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// The root object (last entry).
    pub fn root(&self) -> &ChainEntry {
        self.entries.last().expect("validated chains are non-empty")
    }
    pub fn get(&self, key: &GufeKey) -> Option<&ChainEntry> {
        self.index.get(key).map(|&i| &self.entries[i])
    }
    pub fn position(&self, key: &GufeKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Fail unless the root is of class `qualname`.
    pub fn expect_root(&self, qualname: &'static str) -> Result<(), ChainError> {
        if self.root().qualname() == qualname {
            Ok(())
        } else {
            Err(ChainError::RootClass { expected: qualname, found: self.root().qualname().to_string() })
        }
    }

    /// `[[key, dict], ...]` as CPython's `json.dumps` writes it.
    pub fn to_python_json(&self) -> String {
        let mut out = String::from("[");
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str("[\"");
            out.push_str(e.key.as_str());
            out.push_str("\", ");
            out.push_str(&e.dict_json());
            out.push(']');
        }
        out.push(']');
        out
    }
}

/// Assemble chain JSON text from `(key, keyed-dict JSON text)` pairs already in order.
pub fn chain_json_from_parts<'a>(parts: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("[");
    for (i, (k, d)) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str("[\"");
        out.push_str(k);
        out.push_str("\", ");
        out.push_str(d);
        out.push(']');
    }
    out.push(']');
    out
}

/// Order objects so each comes after everything it references, always taking the
/// lexicographically smallest available key first (Kahn's algorithm; upstream's store
/// read order). `deps[i]` lists indices that object `i` references.
/// Returns None if the graph has a cycle.
pub fn kahn_order(keys: &[&str], deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = keys.len();
    let mut remaining: Vec<usize> = vec![0; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        let mut uniq = ds.clone();
        uniq.sort_unstable();
        uniq.dedup();
        remaining[i] = uniq.len();
        for d in uniq {
            dependents[d].push(i);
        }
    }
    let mut heap: BinaryHeap<Reverse<(&str, usize)>> = (0..n).filter(|&i| remaining[i] == 0).map(|i| Reverse((keys[i], i))).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse((_, i))) = heap.pop() {
        order.push(i);
        for &j in &dependents[i] {
            remaining[j] -= 1;
            if remaining[j] == 0 {
                heap.push(Reverse((keys[j], j)));
            }
        }
    }
    (order.len() == n).then_some(order)
}

/// A Transformation-like edge of a network, as far as the server needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeInfo {
    pub key: GufeKey,
    /// Class of the protocol object (what compute-side protocol filters match).
    pub protocol: Option<String>,
    /// End states as `(attribute, chemical system key)`, ordered by attribute name
    /// (`stateA`, `stateB` for a Transformation, `system` for a NonTransformation).
    pub systems: Vec<(String, GufeKey)>,
}

/// The structure of an AlchemicalNetwork chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkInfo {
    pub key: GufeKey,
    pub name: Option<String>,
    pub nodes: Vec<GufeKey>,
    pub edges: Vec<EdgeInfo>,
}

fn ref_list(chain: &KeyedChain, owner: &ChainEntry, field: &str) -> Result<Vec<GufeKey>, ChainError> {
    let err = |detail: String| ChainError::Structure { class: owner.qualname().to_string(), key: owner.key.to_string(), detail };
    let list = owner.dict.get(field).and_then(Value::as_array).ok_or_else(|| err(format!("`{field}` must be a list of references")))?;
    list.iter()
        .map(|v| {
            let k = as_reference(v).and_then(Value::as_str).ok_or_else(|| err(format!("`{field}` must contain only references")))?;
            let k = GufeKey::new(k).map_err(|_| err(format!("invalid reference {k:?} in `{field}`")))?;
            chain.get(&k).ok_or_else(|| err(format!("reference '{k}' is not in the chain")))?;
            Ok(k)
        })
        .collect()
}

fn single_ref(owner: &ChainEntry, field: &str) -> Option<GufeKey> {
    owner.dict.get(field).and_then(as_reference).and_then(Value::as_str).and_then(|k| GufeKey::new(k).ok())
}

/// Interpret `chain` as an AlchemicalNetwork: root class, node and edge lists, each
/// edge's end states and protocol, and the "non-self" rule for `Transformation`s.
pub fn network_info(chain: &KeyedChain) -> Result<NetworkInfo, ChainError> {
    chain.expect_root("AlchemicalNetwork")?;
    let root = chain.root();
    let nodes = ref_list(chain, root, "nodes")?;
    let edge_keys = ref_list(chain, root, "edges")?;
    let mut edges = Vec::with_capacity(edge_keys.len());
    for ek in edge_keys {
        let entry = chain.get(&ek).expect("checked by ref_list");
        let err =
            |detail: &str| ChainError::Structure { class: entry.qualname().to_string(), key: ek.to_string(), detail: detail.to_string() };
        let mut systems: Vec<(String, GufeKey)> = Vec::new();
        for attr in ["stateA", "stateB", "system"] {
            if let Some(k) = single_ref(entry, attr) {
                systems.push((attr.to_string(), k));
            }
        }
        if systems.is_empty() {
            return Err(err("a network edge must reference its end states (`stateA`/`stateB` or `system`)"));
        }
        if entry.qualname() == "Transformation" {
            let a = systems.iter().find(|(n, _)| n == "stateA").map(|(_, k)| k);
            let b = systems.iter().find(|(n, _)| n == "stateB").map(|(_, k)| k);
            if let (Some(a), Some(b)) = (a, b) {
                if a == b {
                    return Err(ChainError::SelfTransformation { transformation: ek.to_string(), system: a.to_string() });
                }
            }
        }
        let protocol = single_ref(entry, "protocol").map(|k| k.qualname().to_string());
        edges.push(EdgeInfo { key: ek, protocol, systems });
    }
    Ok(NetworkInfo { key: root.key.clone(), name: root.name().map(str::to_string), nodes, edges })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn vector(name: &str) -> String {
        std::fs::read_to_string(format!("{}/../../testdata/vectors/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn vector_network_validates_and_round_trips() {
        let text = vector("network.keyed_chain.json");
        let chain = KeyedChain::from_value(parse(&text).unwrap()).unwrap();
        assert_eq!(chain.len(), 22);
        assert_eq!(chain.to_python_json(), text);
        let info = network_info(&chain).unwrap();
        assert_eq!(info.key.as_str(), "AlchemicalNetwork-c5a12a2d9a941dbfe56b76c3387ccf6d");
        assert_eq!(info.edges.len(), 5);
        let t0 = info.edges.iter().find(|e| e.key.as_str() == "Transformation-3c2debf79f5ad85b0bcb6b86e7c390f5").unwrap();
        assert_eq!(t0.protocol.as_deref(), Some("DummyProtocol"));
        assert_eq!(t0.systems.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), ["stateA", "stateB"]);
        let nt = info.edges.iter().find(|e| e.key.qualname() == "NonTransformation").unwrap();
        assert_eq!(nt.systems.len(), 1);
        assert!(info.edges.iter().any(|e| e.protocol.as_deref() == Some("BrokenProtocol")));
        assert!(!info.nodes.is_empty());
    }

    #[test]
    fn kahn_order_is_dependency_respecting_and_lexicographic() {
        let keys = ["c", "a", "b", "d"];
        // d depends on c and a; b depends on d
        let deps = vec![vec![], vec![], vec![3], vec![0, 1]];
        let order = kahn_order(&keys, &deps).unwrap();
        let names: Vec<&str> = order.iter().map(|&i| keys[i]).collect();
        assert_eq!(names, ["a", "c", "d", "b"]);
        assert!(kahn_order(&["x", "y"], &[vec![1], vec![0]]).is_none());
    }

    fn chain(text: &str) -> Result<KeyedChain, ChainError> {
        KeyedChain::from_value(parse(text).unwrap())
    }

    #[test]
    fn structural_errors() {
        let m = r#""__module__": "m""#;
        assert_eq!(chain("{}").unwrap_err(), ChainError::NotAnArray);
        assert_eq!(chain("[]").unwrap_err(), ChainError::Empty);
        assert!(matches!(chain("[[\"A-1\"]]").unwrap_err(), ChainError::BadEntry { .. }));
        assert!(matches!(chain(&format!(r#"[["A 1", {{"__qualname__": "A", {m}}}]]"#)).unwrap_err(), ChainError::BadKey { .. }));
        assert!(matches!(chain(&format!(r#"[["A-1", {{"__qualname__": "B", {m}}}]]"#)).unwrap_err(), ChainError::QualnameMismatch { .. }));
        assert!(matches!(chain(r#"[["A-1", {"__qualname__": "A"}]]"#).unwrap_err(), ChainError::MissingModule { .. }));
        assert!(matches!(
            chain(&format!(
                r#"[["A-1", {{"__qualname__": "A", {m}, "x": [{{":gufe-key:": "B-2"}}]}}], ["B-2", {{"__qualname__": "B", {m}}}]]"#
            ))
            .unwrap_err(),
            ChainError::UnresolvedReference { .. }
        ));
        assert!(matches!(
            chain(&format!(r#"[["A-1", {{"__qualname__": "A", {m}, "x": {{":gufe-key:": 5}}}}]]"#)).unwrap_err(),
            ChainError::BadReference { .. }
        ));
        assert!(matches!(
            chain(&format!(r#"[["A-1", {{"__qualname__": "A", {m}, "v": 1}}], ["A-1", {{"__qualname__": "A", {m}, "v": 2}}]]"#))
                .unwrap_err(),
            ChainError::ConflictingDuplicate { .. }
        ));
        let c = chain(&format!(r#"[["A-1", {{"__qualname__": "A", {m}}}], ["A-1", {{"__qualname__": "A", {m}}}]]"#)).unwrap();
        assert_eq!(c.len(), 1);
        assert!(matches!(network_info(&c).unwrap_err(), ChainError::RootClass { .. }));
    }

    #[test]
    fn self_transformation_rejected() {
        let m = r#""__module__": "m""#;
        let text = format!(
            r#"[["ChemicalSystem-1", {{"__qualname__": "ChemicalSystem", {m}}}],
                ["P-1", {{"__qualname__": "P", {m}}}],
                ["Transformation-1", {{"__qualname__": "Transformation", {m}, "stateA": {{":gufe-key:": "ChemicalSystem-1"}}, "stateB": {{":gufe-key:": "ChemicalSystem-1"}}, "protocol": {{":gufe-key:": "P-1"}}}}],
                ["AlchemicalNetwork-1", {{"__qualname__": "AlchemicalNetwork", {m}, "nodes": [{{":gufe-key:": "ChemicalSystem-1"}}], "edges": [{{":gufe-key:": "Transformation-1"}}], "name": null}}]]"#
        );
        let e = network_info(&chain(&text).unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`Transformation` 'Transformation-1' uses the same `ChemicalSystem` 'ChemicalSystem-1' for both states; this is currently not supported in `alchemiscale`"
        );
    }
}
