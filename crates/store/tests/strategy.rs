//! Strategies and strategy state.

mod common;

use std::collections::HashMap;

use alchemiscale_model::status::{StrategyMode, StrategyStatus, StrategyTaskScaling};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{NetworkState, Scope, ScopedKey};
use alchemiscale_store::strategy::StrategyState;
use alchemiscale_store::{store_test, Store, StoreError};
use chrono::{TimeZone, Utc};
use common::*;

fn scope() -> Scope {
    "sorg-scampaign-sproject".parse().unwrap()
}

async fn network(store: &Store, tag: &str) -> ScopedKey {
    store.create_network(&chain_of(&network_chain_json(3, 3, tag)), &scope(), NetworkState::Active).await.unwrap().network
}

async fn counts(store: &Store) -> HashMap<&'static str, i64> {
    store.table_counts().await.unwrap().into_iter().collect()
}

/// A strategy chain: a settings-like helper object and the strategy referencing it.
fn strategy_text(token: &str, weight: &str) -> String {
    format!(
        r#"[["StrategyHelper-{token}", {{"threshold": {weight}, "__qualname__": "StrategyHelper", "__module__": "stratocaster.base", ":version:": 1}}], ["ConnectivityStrategy-{token}", {{"settings": {{"__class__": "ConnectivityStrategySettings", "__module__": "stratocaster.strategies.connectivity", ":is_custom:": true, "decay_rate": 0.5, "cutoff": NaN}}, "helper": {{":gufe-key:": "StrategyHelper-{token}"}}, "__qualname__": "ConnectivityStrategy", "__module__": "stratocaster.strategies.connectivity", ":version:": 1}}]]"#
    )
}

fn missing_network() -> ScopedKey {
    format!("AlchemicalNetwork-00000000000000000000000000000000-{}", scope()).parse().unwrap()
}

store_test!(strategy_lifecycle, |store| async move {
    let net = network(&store, "life").await;
    assert_eq!(store.get_network_strategy(&net).await.unwrap(), None);
    assert_eq!(store.get_strategy_state(&net).await.unwrap(), None);
    assert_eq!(store.get_strategy_status(&net).await.unwrap(), None);
    assert_eq!(store.wake_strategy(&net).await.unwrap(), None);
    assert_eq!(store.replace_strategy_state(&net, StrategyState::default()).await.unwrap(), None);
    let before = counts(&store).await["gufe_object"];

    let text = strategy_text("0000000000000000000000000000000a", "1.0");
    let chain = chain_of(&text);
    let sk = store.set_network_strategy(&net, Some(&chain), StrategyState::default()).await.unwrap().unwrap();
    assert_eq!(sk.to_string(), format!("ConnectivityStrategy-0000000000000000000000000000000a-{}", scope()));
    assert!(store.exists(&sk).await.unwrap());
    // served back exactly (NaN and float spellings included)
    assert_eq!(store.get_network_strategy(&net).await.unwrap().as_deref(), Some(text.as_str()));
    assert_eq!(store.get_strategy_state(&net).await.unwrap(), Some(StrategyState::default()));
    assert_eq!(store.get_strategy_status(&net).await.unwrap(), Some(StrategyStatus::Awake));
    assert_eq!(counts(&store).await["gufe_object"], before + 2);

    // the strategist overwrites the whole state
    let t = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::microseconds(123456);
    let busy = StrategyState {
        mode: StrategyMode::Full,
        status: StrategyStatus::Error,
        iterations: 4,
        sleep_interval: 60,
        last_iteration: Some(t),
        last_iteration_result_count: 17,
        max_tasks_per_transformation: 6,
        task_scaling: StrategyTaskScaling::Linear,
        exception: Some(("ValueError".into(), "weights must be finite".into())),
        traceback: Some("Traceback (most recent call last): ...".into()),
    };
    assert_eq!(store.replace_strategy_state(&net, busy.clone()).await.unwrap(), Some(net.clone()));
    let stored = store.get_strategy_state(&net).await.unwrap().unwrap();
    assert_eq!(stored, busy);
    assert_eq!(serde_json::to_value(&stored).unwrap()["last_iteration"], "2025-03-01T12:00:00.123456+00:00");
    assert_eq!(store.get_strategy_status(&net).await.unwrap(), Some(StrategyStatus::Error));

    // waking clears the error and keeps the rest
    assert_eq!(store.wake_strategy(&net).await.unwrap(), Some(net.clone()));
    let woken = store.get_strategy_state(&net).await.unwrap().unwrap();
    assert_eq!(woken, StrategyState { status: StrategyStatus::Awake, exception: None, traceback: None, ..busy.clone() });

    // setting again resets the state to the one given; the record is reused
    let fresh = StrategyState { mode: StrategyMode::Disabled, sleep_interval: 10, ..Default::default() };
    let again = store.set_network_strategy(&net, Some(&chain), fresh.clone()).await.unwrap().unwrap();
    assert_eq!(again, sk);
    assert_eq!(store.get_strategy_state(&net).await.unwrap(), Some(fresh));
    assert_eq!(store.get_network_strategy(&net).await.unwrap().as_deref(), Some(text.as_str()));
    assert_eq!(counts(&store).await["gufe_object"], before + 2);

    // a different strategy replaces it; the unused old Strategy record goes
    let other = chain_of(&strategy_text("0000000000000000000000000000000b", "2.5"));
    let sk2 = store.set_network_strategy(&net, Some(&other), StrategyState::default()).await.unwrap().unwrap();
    assert_ne!(sk2, sk);
    assert!(!store.exists(&sk).await.unwrap());
    assert!(store.exists(&sk2).await.unwrap());
    assert_eq!(counts(&store).await["network_strategy"], 1);

    // removing
    assert_eq!(store.set_network_strategy(&net, None, StrategyState::default()).await.unwrap(), None);
    assert!(!store.exists(&sk2).await.unwrap());
    assert_eq!(store.get_network_strategy(&net).await.unwrap(), None);
    assert_eq!(store.get_strategy_state(&net).await.unwrap(), None);
    assert_eq!(store.wake_strategy(&net).await.unwrap(), None);
    assert_eq!(counts(&store).await["network_strategy"], 0);
    // removing again is harmless
    assert_eq!(store.set_network_strategy(&net, None, StrategyState::default()).await.unwrap(), None);
});

store_test!(networks_of_one_scope_share_a_strategy_record, |store| async move {
    let a = network(&store, "share-a").await;
    let b = network(&store, "share-b").await;
    let chain = chain_of(&strategy_text("0000000000000000000000000000000c", "1.0"));
    let before = counts(&store).await["gufe_object"];
    let sa = store.set_network_strategy(&a, Some(&chain), StrategyState::default()).await.unwrap().unwrap();
    let sb =
        store.set_network_strategy(&b, Some(&chain), StrategyState { sleep_interval: 5, ..Default::default() }).await.unwrap().unwrap();
    assert_eq!(sa, sb);
    assert_eq!(counts(&store).await["gufe_object"], before + 2);
    // states are per network
    assert_eq!(store.get_strategy_state(&a).await.unwrap().unwrap().sleep_interval, 3600);
    assert_eq!(store.get_strategy_state(&b).await.unwrap().unwrap().sleep_interval, 5);

    // removing it from one network keeps the record the other still uses
    store.set_network_strategy(&a, None, StrategyState::default()).await.unwrap();
    assert!(store.exists(&sa).await.unwrap());
    assert!(store.get_network_strategy(&b).await.unwrap().is_some());
    assert_eq!(store.get_network_strategy(&a).await.unwrap(), None);
    store.set_network_strategy(&b, None, StrategyState::default()).await.unwrap();
    assert!(!store.exists(&sa).await.unwrap());
});

store_test!(a_network_object_as_strategy_is_never_deleted, |store| async move {
    // a chain may name any object as its root; unlinking must not delete shared records
    let a = network(&store, "root-a").await;
    let b_text = network_chain_json(3, 3, "root-b");
    let b = store.create_network(&chain_of(&b_text), &scope(), NetworkState::Active).await.unwrap().network;
    store.set_network_strategy(&a, Some(&chain_of(&b_text)), StrategyState::default()).await.unwrap();
    let before = counts(&store).await;
    store.set_network_strategy(&a, None, StrategyState::default()).await.unwrap();
    let after = counts(&store).await;
    assert_eq!(after["gufe_object"], before["gufe_object"]);
    assert_eq!(store.get_chain(&b).await.unwrap(), b_text);
});

store_test!(strategy_errors_change_nothing, |store| async move {
    let net = network(&store, "errors").await;
    let chain = chain_of(&strategy_text("0000000000000000000000000000000d", "1.0"));
    let not_network: ScopedKey = format!("Transformation-00000000000000000000000000000000-{}", scope()).parse().unwrap();
    let e = store.set_network_strategy(&not_network, Some(&chain), StrategyState::default()).await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid(m) if m.contains("AlchemicalNetwork")), "{e}");
    assert!(matches!(store.set_network_strategy(&not_network, None, StrategyState::default()).await, Err(StoreError::Invalid(_))));
    let e = store.set_network_strategy(&missing_network(), Some(&chain), StrategyState::default()).await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid(m) if m.contains("no such network")), "{e}");
    assert_eq!(store.set_network_strategy(&missing_network(), None, StrategyState::default()).await.unwrap(), None);
    for bad in [
        StrategyState { sleep_interval: 0, ..Default::default() },
        StrategyState { max_tasks_per_transformation: -3, ..Default::default() },
    ] {
        assert!(matches!(store.set_network_strategy(&net, Some(&chain), bad.clone()).await, Err(StoreError::Invalid(_))));
    }
    let c = counts(&store).await;
    assert_eq!(c["network_strategy"], 0);
    assert!(store.get_network_strategy(&net).await.unwrap().is_none());

    store.set_network_strategy(&net, Some(&chain), StrategyState::default()).await.unwrap();
    let e = store.replace_strategy_state(&net, StrategyState { sleep_interval: -1, ..Default::default() }).await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid(m) if m.contains("sleep_interval")), "{e}");
    assert_eq!(store.get_strategy_state(&net).await.unwrap(), Some(StrategyState::default()));
    // reads on keys that are not networks' simply find nothing
    assert_eq!(store.get_strategy_state(&not_network).await.unwrap(), None);
    assert_eq!(store.get_network_strategy(&missing_network()).await.unwrap(), None);
});
