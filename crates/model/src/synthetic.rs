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
/// Module named by the synthetic protocol and its settings.
pub const SYNTHETIC_MODULE: &str = "alchemiscale_rs.protocols";

/// Keyed chain JSON of a network with `n_systems` chemical systems and
/// `n_transformations` transformations (`n_systems` ≥ 2). `tag` makes the content (and
/// so every key) unique per tag.
pub fn network_chain_json(n_systems: usize, n_transformations: usize, tag: &str) -> String {
    network_chain_json_with_settings(n_systems, n_transformations, tag, &[])
}

/// As [`network_chain_json`], with extra members in the protocol's settings (e.g. to make
/// the native `SyntheticProtocol` fail or take time).
pub fn network_chain_json_with_settings(n_systems: usize, n_transformations: usize, tag: &str, extra_settings: &[(&str, Value)]) -> String {
    network_chain_json_with_protocol(n_systems, n_transformations, tag, (SYNTHETIC_PROTOCOL, SYNTHETIC_MODULE), extra_settings)
}

/// As [`network_chain_json_with_settings`], with another protocol class `(qualname,
/// module)` (e.g. a stand-in Python protocol for tests of the python executor).
pub fn network_chain_json_with_protocol(
    n_systems: usize,
    n_transformations: usize,
    tag: &str,
    protocol_class: (&str, &str),
    extra_settings: &[(&str, Value)],
) -> String {
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
        ("__module__", Value::from(SYNTHETIC_MODULE)),
        (":is_custom:", Value::from(true)),
        ("n_units", Value::from(2i64)),
        ("tag", Value::from(tag)),
    ]);
    for (k, v) in extra_settings {
        settings.insert(*k, v.clone());
    }
    let (protocol, d) = finish(object([("settings", Value::Object(settings))]), protocol_class.0, protocol_class.1);
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

/// Pseudo-random text of `n` characters from a 64-symbol alphabet (about 6 bits of
/// entropy per byte, so it barely compresses): payloads of a chosen stored size.
pub fn noise(n: usize, seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).take(n).map(|x| ALPHABET[(x & 63) as usize] as char).collect()
}

/// Reproducible pseudo-random words (xorshift64) from a starting state (0 counts as 1).
pub fn xorshift(state: u64) -> impl Iterator<Item = u64> {
    let mut x = state.max(1);
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

/// `n` pseudo-random bytes (incompressible) from a starting state.
pub fn random_bytes(n: usize, state: u64) -> Vec<u8> {
    xorshift(state).take(n).map(|x| (x >> 24) as u8).collect()
}

/// Keyed chain JSON of a ProtocolDAGResult for `transformation_key` with one unit whose
/// result carries `payload_bytes` of incompressible text; a failure when `!ok` (its
/// traceback ends with "RuntimeError: synthetic failure"). `seed` varies keys and payload.
pub fn result_chain_json(transformation_key: &str, ok: bool, payload_bytes: usize, seed: u64) -> String {
    let uid = |salt: u64| {
        format!("{:016x}{:016x}", seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ salt, seed.rotate_left(17) ^ salt.wrapping_mul(31))
    };
    let unit_key = format!("SyntheticUnit-{}", uid(1));
    let unit = object([
        ("name", Value::from("synthetic unit")),
        ("inputs", Value::Object(Object::new())),
        ("_key", Value::from(unit_key.clone())),
        ("__qualname__", Value::from("SyntheticUnit")),
        ("__module__", Value::from(SYNTHETIC_MODULE)),
        (":version:", Value::from(1i64)),
    ]);
    let qualname = if ok { "ProtocolUnitResult" } else { "ProtocolUnitFailure" };
    let result_key = format!("{qualname}-{}", uid(2));
    let mut result = object([
        ("name", Value::from("synthetic unit")),
        ("_key", Value::from(result_key.clone())),
        ("source_key", Value::from(unit_key.clone())),
        ("inputs", Value::Object(Object::new())),
        ("outputs", Value::Object(object([("payload", Value::from(noise(payload_bytes, seed))), ("estimate", Value::from(1.25f64))]))),
        ("start_time", Value::Null),
        ("end_time", Value::Null),
        ("stdout", Value::Null),
        ("stderr", Value::Null),
        ("__qualname__", Value::from(qualname)),
        ("__module__", Value::from("gufe.protocols.protocolunit")),
        (":version:", Value::from(1i64)),
    ]);
    if !ok {
        result.insert("exception", Value::Array(vec![Value::from("RuntimeError"), Value::Array(vec![Value::from("synthetic failure")])]));
        result.insert(
            "traceback",
            Value::from("Traceback (most recent call last):\n  File \"synthetic.py\", line 1, in execute\nRuntimeError: synthetic failure"),
        );
    }
    let (pdr_key, pdr) = finish(
        object([
            ("name", Value::Null),
            ("protocol_units", Value::Array(vec![reference(&GufeKey::new(&unit_key).expect("key"))])),
            ("protocol_unit_results", Value::Array(vec![reference(&GufeKey::new(&result_key).expect("key"))])),
            ("transformation_key", Value::from(transformation_key)),
            ("extends_key", Value::Null),
        ]),
        "ProtocolDAGResult",
        "gufe.protocols.protocoldag",
    );
    let parts = [(unit_key, unit.to_python_json()), (result_key, result.to_python_json()), (pdr_key.to_string(), pdr.to_python_json())];
    chain_json_from_parts(parts.iter().map(|(k, d)| (k.as_str(), d.as_str())))
}

#[cfg(test)]
mod result_tests {
    use super::*;
    use crate::pdr::{read_result, zstd_compress};

    #[test]
    fn synthetic_results_analyse() {
        let ok = read_result(zstd_compress(result_chain_json("Transformation-abc", true, 10_000, 1).as_bytes()), 1 << 30).unwrap();
        assert!(ok.summary.ok && ok.summary.failures.is_empty());
        assert_eq!(ok.summary.transformation_key.as_deref(), Some("Transformation-abc"));
        assert!(ok.blob.len() > 7_000, "payload barely compresses: {}", ok.blob.len());
        let failed = read_result(result_chain_json("Transformation-abc", false, 10, 2).into_bytes(), 1 << 30).unwrap();
        assert!(!failed.summary.ok);
        assert!(failed.summary.tracebacks().unwrap().tracebacks[0].ends_with("RuntimeError: synthetic failure"));
        assert_ne!(
            ok.summary.key,
            read_result(result_chain_json("Transformation-abc", true, 10_000, 3).into_bytes(), 1 << 30).unwrap().summary.key
        );
    }
}
