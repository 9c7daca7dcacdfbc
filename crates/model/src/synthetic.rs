//! Synthetic but structurally valid networks, for benchmarks and tests.
//!
//! Shape: one shared solvent component and protocol; every chemical system holds its own
//! small-molecule component plus the solvent; transformation `i` goes from system
//! `i mod n` to system `(i + 1 + i / n) mod n`, so every pair is distinct and no
//! transformation uses one system for both states. Keys are real MD5 hashes of the
//! objects' dicts, so the chain is self-consistent.

use crate::chain::chain_json_from_parts;
use crate::hash::default_key;
use crate::json::{object, Object, Value};
use crate::keys::GufeKey;

fn reference(k: &GufeKey) -> Value {
    Value::Object(object([(":gufe-key:", Value::from(k.as_str()))]))
}

fn finish(mut d: Object, qualname: &str, module: &str) -> (GufeKey, Object) {
    d.insert("__qualname__", Value::from(qualname));
    d.insert("__module__", Value::from(module));
    d.insert(":version:", Value::from(1i64));
    (default_key(&d, &[]), d)
}

/// Name of the protocol class synthetic networks use.
pub const SYNTHETIC_PROTOCOL: &str = "SyntheticProtocol";

/// Keyed chain JSON of a network with `n_systems` chemical systems and
/// `n_transformations` transformations (`n_systems` ≥ 2). `tag` makes the content (and
/// so every key) unique per tag.
pub fn network_chain_json(n_systems: usize, n_transformations: usize, tag: &str) -> String {
    network_chain_json_with_settings(n_systems, n_transformations, tag, &[])
}

/// As [`network_chain_json`], with extra members in the protocol's settings (e.g. to make
/// the native `SyntheticProtocol` fail or take time).
pub fn network_chain_json_with_settings(n_systems: usize, n_transformations: usize, tag: &str, extra_settings: &[(&str, Value)]) -> String {
    assert!(n_systems >= 2, "need at least two chemical systems");
    let mut parts: Vec<(GufeKey, Object)> = Vec::with_capacity(2 * n_systems + n_transformations + 3);

    let (solvent, d) = finish(
        object([
            ("smiles", Value::from("O")),
            ("positive_ion", Value::from("Na+")),
            ("negative_ion", Value::from("Cl-")),
            ("ion_concentration", Value::from("0.15 molar")),
            ("neutralize", Value::from(true)),
        ]),
        "SolventComponent",
        "gufe.components.solventcomponent",
    );
    parts.push((solvent.clone(), d));

    let mut settings = object([
        ("__class__", Value::from("SyntheticSettings")),
        ("__module__", Value::from("alchemiscale_rs.protocols")),
        (":is_custom:", Value::from(true)),
        ("n_units", Value::from(2i64)),
        ("tag", Value::from(tag)),
    ]);
    for (k, v) in extra_settings {
        settings.insert(*k, v.clone());
    }
    let (protocol, d) = finish(object([("settings", Value::Object(settings))]), SYNTHETIC_PROTOCOL, "alchemiscale_rs.protocols");
    parts.push((protocol.clone(), d));

    let mut systems = Vec::with_capacity(n_systems);
    for i in 0..n_systems {
        let atoms: Vec<Value> = (0..12)
            .map(|a| {
                Value::Array(vec![
                    Value::from(((i + a) % 8 + 1) as i64),
                    Value::from(0i64),
                    Value::from(0i64),
                    Value::from(a % 2 == 0),
                    Value::from(0i64),
                    Value::from(0i64),
                    Value::Object(Object::new()),
                    Value::from(3i64),
                ])
            })
            .collect();
        let (smc, d) = finish(
            object([
                ("atoms", Value::Array(atoms)),
                ("bonds", Value::Array(vec![])),
                ("conformer", Value::Null),
                ("molprops", Value::Object(object([("ofe-name", Value::from(format!("{tag}-ligand-{i}")))]))),
            ]),
            "SmallMoleculeComponent",
            "gufe.components.smallmoleculecomponent",
        );
        parts.push((smc.clone(), d));
        let components = object([("ligand", reference(&smc)), ("solvent", reference(&solvent))]);
        let (cs, d) = finish(
            object([("components", Value::Object(components)), ("name", Value::from(format!("{tag}-system-{i}")))]),
            "ChemicalSystem",
            "gufe.chemicalsystem",
        );
        parts.push((cs.clone(), d));
        systems.push(cs);
    }

    let mut edges = Vec::with_capacity(n_transformations);
    for i in 0..n_transformations {
        let a = i % n_systems;
        let b = (a + 1 + (i / n_systems) % (n_systems - 1)) % n_systems;
        let (t, d) = finish(
            object([
                ("stateA", reference(&systems[a])),
                ("stateB", reference(&systems[b])),
                ("protocol", reference(&protocol)),
                ("mapping", Value::Null),
                ("name", Value::from(format!("{tag}-transformation-{i}"))),
            ]),
            "Transformation",
            "gufe.transformations.transformation",
        );
        parts.push((t.clone(), d));
        edges.push(t);
    }

    let mut nodes_sorted = systems.clone();
    nodes_sorted.sort();
    let mut edges_sorted = edges.clone();
    edges_sorted.sort();
    let (net, d) = finish(
        object([
            ("nodes", Value::Array(nodes_sorted.iter().map(reference).collect())),
            ("edges", Value::Array(edges_sorted.iter().map(reference).collect())),
            ("name", Value::from(format!("{tag}-network"))),
        ]),
        "AlchemicalNetwork",
        "gufe.network",
    );
    parts.push((net, d));

    let texts: Vec<(String, String)> = parts.iter().map(|(k, d)| (k.to_string(), d.to_python_json())).collect();
    chain_json_from_parts(texts.iter().map(|(k, d)| (k.as_str(), d.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{network_info, KeyedChain};
    use crate::json::parse;

    #[test]
    fn synthetic_network_is_valid() {
        let text = network_chain_json(10, 25, "t");
        let chain = KeyedChain::from_value(parse(&text).unwrap()).unwrap();
        let info = network_info(&chain).unwrap();
        assert_eq!(info.nodes.len(), 10);
        assert_eq!(info.edges.len(), 25);
        // transformations are distinct objects
        let mut keys: Vec<_> = info.edges.iter().map(|e| e.key.clone()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 25);
        assert_eq!(chain.to_python_json(), text);
        assert_ne!(network_chain_json(3, 3, "a"), network_chain_json(3, 3, "b"));
    }
}
