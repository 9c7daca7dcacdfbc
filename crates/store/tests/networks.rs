mod common;

use alchemiscale_model::chain::KeyedChain;
use alchemiscale_model::json::parse;
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{NetworkState, Scope, ScopeDict, ScopedKey};
use alchemiscale_store::{store_test, SchemaStatus, StoreError};
use common::*;

fn scope() -> Scope {
    "vecorg-veccampaign-vecproject".parse().unwrap()
}

store_test!(schema_lifecycle, |store| async move {
    assert!(store.schema_status().await.unwrap().is_current());
    store.init().await.unwrap(); // idempotent
    assert!(store.is_empty().await.unwrap());
    store.reset().await.unwrap();
    assert_eq!(store.schema_status().await.unwrap(), SchemaStatus::Uninitialized);
    assert!(store.require_current_schema().await.is_err());
    store.init().await.unwrap();
    assert!(matches!(store.schema_status().await.unwrap(), SchemaStatus::Current { version: 11 }));
});

store_test!(network_round_trip_is_byte_identical, |store| async move {
    let text = vector_text("network.keyed_chain.json");
    let chain = chain_of(&text);
    let created = store.create_network(&chain, &scope(), NetworkState::Active).await.unwrap();
    assert!(created.created);
    assert_eq!(created.network.to_string(), "AlchemicalNetwork-c5a12a2d9a941dbfe56b76c3387ccf6d-vecorg-veccampaign-vecproject");
    assert_eq!(created.taskhub.qualname(), "TaskHub");
    assert_eq!(created.mark.gufe_key().token(), created.taskhub.gufe_key().token());
    assert_eq!(store.get_chain(&created.network).await.unwrap(), text);

    // resubmission is idempotent
    let counts = store.table_counts().await.unwrap();
    let again = store.create_network(&chain, &scope(), NetworkState::Inactive).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.network, created.network);
    assert_eq!(store.table_counts().await.unwrap(), counts);

    // the same network in another scope is a separate set of records
    let other: Scope = "o2-c2-p2".parse().unwrap();
    let there = store.create_network(&chain, &other, NetworkState::Active).await.unwrap();
    assert!(there.created);
    assert_eq!(there.network.gufe_key(), created.network.gufe_key());
    assert_ne!(there.network, created.network);
    assert_eq!(store.get_chain(&there.network).await.unwrap(), text);
});

store_test!(client_submission_vector, |store| async move {
    let body = u7_body();
    let scope = serde_json_scope(body.get("scope").unwrap());
    assert_eq!(body.get("state").unwrap().as_str(), Some("active"));
    let chain = KeyedChain::from_value(body.get("network").unwrap().clone()).unwrap();
    let created = store.create_network(&chain, &scope, NetworkState::Active).await.unwrap();
    let back = store.get_chain(&created.network).await.unwrap();
    assert_eq!(back, chain.to_python_json());
    let keys: alchemiscale_model::json::Value = parse(&vector_text("keys.json")).unwrap();
    assert_eq!(created.network.gufe_key().as_str(), keys.get("network").unwrap().as_str().unwrap());
});

fn serde_json_scope(v: &alchemiscale_model::json::Value) -> Scope {
    let d: ScopeDict = alchemiscale_model::json::from_value(v).unwrap();
    d.to_scope().unwrap()
}

store_test!(object_chains_rebuild_in_dependency_order, |store| async move {
    let text = vector_text("network.keyed_chain.json");
    let chain = chain_of(&text);
    let created = store.create_network(&chain, &scope(), NetworkState::Active).await.unwrap();
    let tf: ScopedKey = format!("Transformation-3c2debf79f5ad85b0bcb6b86e7c390f5-{}", scope()).parse().unwrap();
    let tf_chain = chain_of(&store.get_chain(&tf).await.unwrap());
    assert_eq!(tf_chain.root().key.as_str(), "Transformation-3c2debf79f5ad85b0bcb6b86e7c390f5");
    // every entry is byte-identical to the network's copy, and the chain validated
    // (KeyedChain::from_value checks dependency order)
    for e in tf_chain.entries() {
        assert_eq!(chain.get(&e.key).unwrap().dict_json(), e.dict_json());
    }
    // ties are broken by the smallest key: the leaves come out sorted
    let keys: Vec<&str> = tf_chain.entries().iter().map(|e| e.key.as_str()).collect();
    assert!(keys.len() >= 5, "{keys:?}");
    let missing: ScopedKey = format!("Transformation-00000000000000000000000000000000-{}", scope()).parse().unwrap();
    assert!(matches!(store.get_chain(&missing).await, Err(StoreError::NotFound)));
    let _ = created;
});

store_test!(bad_networks_change_nothing, |store| async move {
    let m = r#""__module__": "m""#;
    let selfie = format!(
        r#"[["ChemicalSystem-1", {{"__qualname__": "ChemicalSystem", {m}}}],
            ["P-1", {{"__qualname__": "P", {m}}}],
            ["Transformation-1", {{"__qualname__": "Transformation", {m}, "stateA": {{":gufe-key:": "ChemicalSystem-1"}}, "stateB": {{":gufe-key:": "ChemicalSystem-1"}}, "protocol": {{":gufe-key:": "P-1"}}}}],
            ["AlchemicalNetwork-1", {{"__qualname__": "AlchemicalNetwork", {m}, "nodes": [{{":gufe-key:": "ChemicalSystem-1"}}], "edges": [{{":gufe-key:": "Transformation-1"}}], "name": null}}]]"#
    );
    let e = store.create_network(&chain_of(&selfie), &scope(), NetworkState::Active).await.unwrap_err();
    assert!(matches!(e, StoreError::Chain(_)), "{e}");
    let not_network = format!(r#"[["ChemicalSystem-1", {{"__qualname__": "ChemicalSystem", {m}}}]]"#);
    assert!(store.create_network(&chain_of(&not_network), &scope(), NetworkState::Active).await.is_err());
    let chain = chain_of(&vector_text("network.keyed_chain.json"));
    let e = store.create_network(&chain, &"org-*-*".parse().unwrap(), NetworkState::Active).await.unwrap_err();
    assert!(e.to_string().contains("not specific"));
    assert!(store.is_empty().await.unwrap());
});

store_test!(synthetic_network_and_concurrent_submission, |store| async move {
    let text = network_chain_json(40, 90, "conc");
    let chain = chain_of(&text);
    let mut handles = Vec::new();
    for _ in 0..4 {
        let (store, chain) = (store.clone(), chain.clone());
        handles.push(tokio::spawn(async move { store.create_network(&chain, &scope(), NetworkState::Active).await.unwrap() }));
    }
    let mut created = 0;
    let mut keys = Vec::new();
    for h in handles {
        let c = h.await.unwrap();
        created += c.created as usize;
        keys.push(c.network);
    }
    assert_eq!(created, 1);
    keys.dedup();
    assert_eq!(keys.len(), 1);
    assert_eq!(store.get_chain(&keys[0]).await.unwrap(), text);
    let counts: std::collections::HashMap<_, _> = store.table_counts().await.unwrap().into_iter().collect();
    assert_eq!(counts["network_transformation"], 90);
    assert_eq!(counts["network_system"], 40);
    assert_eq!(counts["gufe_object"], (1 + 1 + 2 * 40 + 90 + 1) as i64);
});
