//! Several strategist processes on one store: each network is executed by one of them at
//! a time, and a holder that died blocks its network only until its lease runs out.

use std::time::Duration;

use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{NetworkState, Scope, ScopedKey};
use alchemiscale_store::strategy::StrategyState;
use alchemiscale_store::{store_test, Store};
use alchemiscale_strategist::execute::lease_name;
use alchemiscale_strategist::{Settings, Strategist};

const STRATEGY: &str = r#"[["ConnectivityStrategy-11111111111111111111111111111111", {"settings": {"__class__": "ConnectivityStrategySettings", "__module__": "stratocaster.strategies.connectivity", ":is_custom:": true, "decay_rate": 0.5, "cutoff": null, "max_runs": 3}, "__qualname__": "ConnectivityStrategy", "__module__": "stratocaster.strategies.connectivity", ":version:": 1}]]"#;

fn chain(text: &str) -> alchemiscale_model::chain::KeyedChain {
    alchemiscale_model::chain::KeyedChain::from_value(alchemiscale_model::json::parse(text).unwrap()).unwrap()
}

async fn networks(store: &Store, n: usize) -> Vec<ScopedKey> {
    let scope: Scope = "lease-campaign-project".parse().unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let net = store
            .create_network(&chain(&network_chain_json(5, 40, &format!("lease{i}"))), &scope, NetworkState::Active)
            .await
            .unwrap()
            .network;
        store.set_network_strategy(&net, Some(&chain(STRATEGY)), StrategyState { sleep_interval: 1, ..Default::default() }).await.unwrap();
        out.push(net);
    }
    out
}

fn strategist(store: &Store) -> Strategist {
    let (settings, _) = Settings::from_yaml("sleep_interval: 1\nmax_workers: 3\n").unwrap();
    Strategist::from_settings(store.clone(), None, &settings).unwrap()
}

store_test!(two_strategists_never_run_a_network_twice, |store| async move {
    let nets = networks(&store, 8).await;
    let (a, b) = (strategist(&store), strategist(&store));
    let (sa, sb) = tokio::join!(a.cycle(), b.cycle());
    assert_eq!(sa.committed + sb.committed, 8, "{sa:?} {sb:?}");
    for net in &nets {
        let state = store.get_strategy_state(net).await.unwrap().unwrap();
        assert_eq!(state.iterations, 1, "{net} executed twice");
        // one task per transformation (exponential, M = 3, weights ~1/40): never doubled
        assert_eq!(store.network_actioned_tasks(net).await.unwrap().len(), 40);
        assert_eq!(store.network_tasks(net, None).await.unwrap().len(), 40);
    }
});

store_test!(a_dead_holder_blocks_only_until_its_lease_runs_out, |store| async move {
    let nets = networks(&store, 1).await;
    let due = store.due_strategies(&[], 0, chrono::Utc::now()).await.unwrap();
    // a strategist process that took the lease and was killed
    assert!(store.acquire_lease(&lease_name(due[0].network_id), "killed-process", Duration::from_secs(2)).await.unwrap());
    let s = strategist(&store).cycle().await;
    assert_eq!((s.due, s.busy, s.committed), (1, 1, 0), "{s:?}");
    assert_eq!(store.get_strategy_state(&nets[0]).await.unwrap().unwrap().iterations, 0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let s = strategist(&store).cycle().await;
    assert_eq!((s.due, s.busy, s.committed), (1, 0, 1), "{s:?}");
});
