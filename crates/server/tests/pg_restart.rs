//! PostgreSQL restarted while the APIs serve: requests fail with 503 (which clients retry),
//! never 500, and the pools recover without a server restart.
//!
//! The test runs its own throwaway PostgreSQL cluster (initdb in a temporary directory, a
//! random port on 127.0.0.1, fsync off; as `postgres` through `runuser` when run as root),
//! from `ALCHEMISCALE_TEST_PG_BINDIR` or the newest `/usr/lib/postgresql/*/bin`. Without
//! either it is skipped with a note, unless `ALCHEMISCALE_TEST_REQUIRE_POSTGRES=1`. The
//! user and compute APIs run in-process on it; workers drive user reads, `/check`,
//! heartbeats and claims in a loop (and one calls the store directly, to see the errors
//! themselves) while PostgreSQL is stopped (fast shutdown: sessions are terminated), stays
//! down for a while and starts again. The cluster is stopped by PID, also on panic.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alchemiscale_client::Client;
use alchemiscale_model::{ComputeServiceId, Scope};
use alchemiscale_server::testing::outage::{summary, Log, Outcome, Probe};
use alchemiscale_server::testing::settings;
use alchemiscale_server::{ApiKind, AppState};
use alchemiscale_store::identities::{hash_key, IdentityKind};
use alchemiscale_store::testing::cluster::{pg_bindir_or_skip, Cluster, Restart};
use alchemiscale_store::{Store, StoreError, StoreLocation, StoreOptions};
use common::*;
use reqwest::Method;
use serde_json::json;
use sqlx::{Connection, Executor};

const SERVICE: &str = "restart-cccccccccccccccccccccccccccccccc";
/// How long PostgreSQL stays down (longer than the test pool's acquire timeout, so
/// requests waiting for a connection time out and answer 503).
const OUTAGE: Duration = Duration::from_secs(3);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The store itself, to see which errors a restart produces: 200 for success, 503 for
/// `Unavailable`, 500 for anything else (the API's mapping).
async fn store_worker(store: Store, stop: Arc<AtomicBool>, log: Log) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sent = Instant::now();
        let r = match n % 3 {
            0 => store.ping().await.map(|_| ()),
            1 => store.acquire_lease("restart-probe", "probe", Duration::from_secs(5)).await.map(|_| ()),
            _ => store.lease_holder("restart-probe").await.map(|_| ()),
        };
        let (status, detail) = match r {
            Ok(()) => (200, String::new()),
            Err(StoreError::Unavailable(m)) => (503, m),
            Err(e) => (500, format!("{e:?}")),
        };
        log.lock().unwrap().push(Outcome { worker: "store", sent, took: sent.elapsed(), status, detail });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn serve(state: AppState) -> String {
    let app = match state.api() {
        ApiKind::User => alchemiscale_server::user_app(state),
        ApiKind::Compute => alchemiscale_server::compute_app(state),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { alchemiscale_server::serve(listener, app, std::future::pending()).await.unwrap() });
    url
}

async fn add_identity(store: &Store, kind: IdentityKind, identifier: &str) {
    store.add_identity(kind, identifier, &hash_key(&format!("key-of-{identifier}")).unwrap(), false).await.unwrap();
    store.add_scopes(kind, identifier, &["vecorg-*-*".parse::<Scope>().unwrap()]).await.unwrap();
}

/// A client logged in as `identifier`, which does not retry (every answer is seen).
async fn client(url: &str, identifier: &str) -> Client {
    let mut c = Client::new(url, identifier, &format!("key-of-{identifier}")).unwrap();
    c.max_retries = 0;
    c.login().await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_answer_503_while_postgres_restarts_and_recover() {
    let Some(bin) = pg_bindir_or_skip("PostgreSQL restart test") else { return };
    let began = Instant::now();
    // the causes of errors the APIs log (a 500's cause is only in the log)
    let _ = tracing_subscriber::fmt().with_env_filter("warn,tower_http=off").with_ansi(false).with_test_writer().try_init();
    let mut cluster = Cluster::create(bin);
    cluster.start();
    let location = StoreLocation::Postgres { url: cluster.url() };
    let options = StoreOptions { max_connections: 8, acquire_timeout: ACQUIRE_TIMEOUT, ..Default::default() };
    let store = Store::connect(&location, &options).await.unwrap();
    store.init().await.unwrap();
    let test_objects = alchemiscale_objects::testing::local();
    let objects = test_objects.objects.clone();

    let api = settings();
    let user_url = serve(AppState::new(ApiKind::User, store.clone(), Some(objects.clone()), api.clone())).await;
    let compute_url = serve(AppState::new(ApiKind::Compute, store.clone(), Some(objects.clone()), api.clone())).await;
    add_identity(&store, IdentityKind::User, "alice").await;
    add_identity(&store, IdentityKind::Compute, "worker").await;
    let user = client(&user_url, "alice").await;
    let compute = client(&compute_url, "worker").await;
    expect(&submit_vector(&user).await, 200);
    let tasks = user.create_tasks(&sk(TF0), 2000, None).await.unwrap();
    user.action_tasks(&sk(NETWORK), &tasks, Some(1.0)).await.unwrap();
    let id: ComputeServiceId = SERVICE.parse().unwrap();
    expect(&post(&compute, &format!("/computeservice/{id}/register"), json!({"compute_manager_id": null})).await, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let claim = json!({"scopes": [{"org": "vecorg", "campaign": null, "project": null}], "compute_service_id": SERVICE, "count": 1});
    let heartbeat = format!("/computeservice/{id}/heartbeat");
    let drives = [
        ("check", &user_url, "alice", Method::GET, "/check".to_string(), None),
        ("network", &user_url, "alice", Method::GET, format!("/networks/{NETWORK}/tasks"), None),
        ("status", &user_url, "alice", Method::GET, format!("/networks/{NETWORK}/status"), None),
        ("claim", &compute_url, "worker", Method::POST, "/claim".into(), Some(claim)),
        ("heartbeat", &compute_url, "worker", Method::POST, heartbeat, Some(json!({}))),
    ];
    let mut workers = Vec::new();
    for (name, url, identity, method, path, body) in drives {
        let c = client(url, identity).await;
        let probe = Probe { name, client: c, method, path, body };
        workers.push(tokio::spawn(probe.run(Duration::from_millis(20), stop.clone(), log.clone())));
    }
    workers.push(tokio::spawn(store_worker(store.clone(), stop.clone(), log.clone())));

    // serving normally; then a session locks the tables the claims, heartbeats and
    // network reads use, so that they are in flight when PostgreSQL stops (it ends their
    // sessions: SQLSTATE 57P01)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut locker = sqlx::PgConnection::connect(&cluster.url()).await.unwrap();
    locker.execute("BEGIN; LOCK TABLE task, compute_service IN ACCESS EXCLUSIVE MODE").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut cluster, restart) = cluster.restart(OUTAGE).await;
    let Restart { stopping, stopped, restarted } = restart;
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let outcomes = log.lock().unwrap().clone();
    let secs = |t: Instant| t.duration_since(stopping).as_secs_f64();
    eprintln!(
        "stop took {:.2} s, PostgreSQL back after {:.2} s; outcomes (worker, status) → count: {}",
        secs(stopped),
        secs(restarted),
        summary(&outcomes)
    );
    let mut distinct: Vec<(&str, u16, String)> =
        outcomes.iter().filter(|o| o.status != 200).map(|o| (o.worker, o.status, o.detail.chars().take(160).collect())).collect();
    distinct.sort();
    distinct.dedup();
    for (w, s, d) in &distinct {
        eprintln!("  {w} {s}: {d}");
    }

    // never a 500 (nor a dropped connection): 503 while PostgreSQL is away
    let bad: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200 && o.status != 503).collect();
    assert!(bad.is_empty(), "answers other than 200/503 during the restart: {:#?}", &bad[..bad.len().min(10)]);
    // both ways of meeting the outage were seen: statements cut off by the shutdown
    // (57P01) and requests waiting for a connection while PostgreSQL was down
    assert!(
        outcomes.iter().any(|o| o.status == 503 && o.detail.contains("error returned from database")),
        "no request was cut off by the shutdown"
    );
    assert!(outcomes.iter().any(|o| o.status == 503 && o.detail.contains("pool timed out")), "no request waited for the restart");
    // back within a few seconds of PostgreSQL's return (requests that were waiting for a
    // connection when it came back answer within the acquire timeout), every worker, and
    // stays back
    let recovered = restarted + ACQUIRE_TIMEOUT + Duration::from_secs(2);
    let late: Vec<&Outcome> = outcomes.iter().filter(|o| o.answered() > recovered && o.status != 200).collect();
    assert!(late.is_empty(), "failures more than 4 s after PostgreSQL came back: {:#?}", &late[..late.len().min(10)]);
    for w in ["check", "network", "status", "claim", "heartbeat", "store"] {
        assert!(outcomes.iter().any(|o| o.worker == w && o.answered() > recovered && o.status == 200), "{w} did not recover");
        assert!(
            outcomes.iter().any(|o| o.worker == w && o.answered() < stopping && o.status == 200),
            "{w} did not work before the restart"
        );
    }
    store.close().await;
    cluster.stop();
    eprintln!("test took {:.1} s", began.elapsed().as_secs_f64());
}
