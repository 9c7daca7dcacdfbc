//! TEMPORARY claim throughput measurement (not to be committed).
mod common;

use std::time::Instant;

use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{ComputeServiceId, NetworkState, Scope, ScopedKey};
use alchemiscale_store::compute::ClaimOutcome;
use alchemiscale_store::tasks::TaskRequest;
use alchemiscale_store::{Store, StoreOptions};
use common::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn setup(store: &Store, hubs: usize, tasks_per_hub: usize) {
    let scope: Scope = "borg-bcamp-bproj".parse().unwrap();
    let t0 = Instant::now();
    let mut futs = Vec::new();
    let par = if store.backend() == alchemiscale_store::Backend::Postgres { 8 } else { 1 };
    for w in 0..par {
        let store = store.clone();
        let scope = scope.clone();
        futs.push(tokio::spawn(async move {
            for h in (w..hubs).step_by(par) {
                let n_tf = tasks_per_hub.clamp(1, 50);
                let created = store.create_network(&chain_of(&network_chain_json(2, n_tf, &format!("b{h}"))), &scope, NetworkState::Active).await.unwrap();
                let tfs: Vec<ScopedKey> = store.network_transformations(&created.network).await.unwrap();
                let reqs: Vec<TaskRequest> = (0..tasks_per_hub).map(|i| TaskRequest { transformation: tfs[i % tfs.len()].clone(), extends: None }).collect();
                let ts = store.create_tasks(&reqs, None).await.unwrap();
                store.action_tasks(&created.network, &ts.into_iter().map(Some).collect::<Vec<_>>(), None).await.unwrap();
            }
        }));
    }
    for f in futs {
        f.await.unwrap();
    }
    eprintln!("setup {hubs} hubs x {tasks_per_hub} tasks: {:.1} s", t0.elapsed().as_secs_f64());
}

async fn drain(store: &Store, claimers: usize, total: usize) -> f64 {
    let mut ids = Vec::new();
    for c in 0..claimers {
        let id: ComputeServiceId = format!("bench{c}-{:032x}", c + 1).parse().unwrap();
        store.register_compute_service(&id, None).await.unwrap();
        ids.push(id);
    }
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for id in ids {
        let store = store.clone();
        let counter = counter.clone();
        hs.push(tokio::spawn(async move {
            loop {
                if counter.load(std::sync::atomic::Ordering::Relaxed) >= total {
                    break;
                }
                match store.claim_tasks(&[Scope::all()], &[], &id, 1, None, 600, 3).await.unwrap() {
                    ClaimOutcome::Claimed(v) => {
                        if v[0].is_none() {
                            break;
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    ClaimOutcome::Denied => panic!(),
                }
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let n = counter.load(std::sync::atomic::Ordering::Relaxed);
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    eprintln!("  claimed {n} in {:.2} s: {rate:.0} claims/s", t0.elapsed().as_secs_f64());
    rate
}

async fn run(store: Store) {
    let claimers = env("BENCH_CLAIMERS", 16);
    let total = env("BENCH_CLAIMS", 3000);
    let one_hub_tasks = env("BENCH_ONE_HUB_TASKS", 6000);
    let many = env("BENCH_HUBS", 10_000);
    let per = env("BENCH_TASKS_PER_HUB", 1);
    let which = std::env::var("BENCH_WHICH").unwrap_or_else(|_| "both".into());
    if which != "many" {
        setup(&store, 1, one_hub_tasks).await;
        eprintln!("one hub ({}):", store.backend().name());
        drain(&store, claimers, total).await;
    }
    if which != "one" {
        let fresh = store; // separate scope of hubs; one-hub leftovers stay claimable too
        setup(&fresh, many, per).await;
        eprintln!("{many} hubs ({}):", fresh.backend().name());
        drain(&fresh, claimers, total).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("BENCH_DB").map(std::path::PathBuf::from).unwrap_or_else(|_| dir.path().join("s.db"));
    let location = alchemiscale_store::StoreLocation::Sqlite { path };
    let store = Store::connect(&location, &StoreOptions { sqlite_synchronous: "NORMAL".into(), ..Default::default() }).await.unwrap();
    store.init().await.unwrap();
    run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_postgres() {
    let location = alchemiscale_store::testing::postgres_location().await.unwrap();
    let store = Store::connect(&location, &StoreOptions { max_connections: 20, ..Default::default() }).await.unwrap();
    store.init().await.unwrap();
    run(store).await;
}
