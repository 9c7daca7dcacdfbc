//! PostgreSQL restarted under the real server processes: `alchemiscale api` and
//! `alchemiscale compute api`, started as an operator would, with `--pool-timeout 2`, on a
//! throwaway PostgreSQL cluster of the test's own (stopped by PID). While PostgreSQL is
//! stopped, stays down for longer than the pool timeout and starts again, clients that do
//! not retry see 200 or 503 and nothing else (no 500, no dropped connection), requests that
//! wait for a connection answer 503 after the configured pool timeout (not the default
//! 30 s), a client that retries 503s as compute services do never sees an error, and both
//! processes serve again within seconds of PostgreSQL's return without being restarted.
//! (The in-process variant, which also looks at the store's own errors, is
//! `crates/server/tests/pg_restart.rs`.)

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alchemiscale_client::{parse_keys, Client, Payload};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{ComputeServiceId, Scope};
use alchemiscale_server::testing::outage::{summary, Log, Outcome, Probe};
use alchemiscale_store::testing::cluster::{pg_bindir_or_skip, Cluster};
use common::{free_port, Stopped, BIN};
use reqwest::Method;
use serde_json::json;

const POOL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longer than the pool timeout, so requests waiting for a connection give up with 503.
const OUTAGE: Duration = Duration::from_secs(4);
const SERVICE: &str = "binrestart-dddddddddddddddddddddddddddddddd";

fn cli(url: &str, args: &[&str]) {
    let out = Command::new(BIN).args(args).args(["--url", url]).env_remove("ALCHEMISCALE_STATE_URL").output().unwrap();
    assert!(out.status.success(), "alchemiscale {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn server(args: &[&str], url: &str, port: u16, dir: &std::path::Path) -> Stopped {
    let child = Command::new(BIN)
        .args(args)
        .args(["--url", url, "--port", &port.to_string(), "--pool-timeout", &format!("{}s", POOL_TIMEOUT.as_secs())])
        .args(["--jwt-secret", "restart-secret", "--loglevel", "warn"])
        .arg("--data-dir")
        .arg(dir)
        .env_remove("ALCHEMISCALE_STATE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Stopped(child)
}

async fn logged_in(url: &str, identifier: &str, retries: u32) -> Client {
    let mut c = Client::new(url, identifier, &format!("key-of-{identifier}")).unwrap();
    c.max_retries = retries;
    c.login().await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_processes_answer_503_while_postgres_restarts_and_recover() {
    let Some(bin) = pg_bindir_or_skip("PostgreSQL restart test of the server processes") else { return };
    let mut cluster = Cluster::create(bin);
    cluster.start();
    let url = cluster.url();
    cli(&url, &["database", "init"]);
    for (kind, who) in [("user", "alice"), ("compute", "worker")] {
        cli(&url, &["identity", "add", "-t", kind, "-i", who, "-k", &format!("key-of-{who}")]);
        cli(&url, &["identity", "add-scope", "-t", kind, "-i", who, "-s", "binrestart-*-*"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let (user_port, compute_port) = (free_port(), free_port());
    let mut api = server(&["api"], &url, user_port, dir.path());
    let mut compute_api = server(&["compute", "api"], &url, compute_port, dir.path());
    let (user_url, compute_url) = (format!("http://127.0.0.1:{user_port}"), format!("http://127.0.0.1:{compute_port}"));
    let t0 = Instant::now();
    while Client::new(&user_url, "alice", "key-of-alice").unwrap().login().await.is_err()
        || Client::new(&compute_url, "worker", "key-of-worker").unwrap().login().await.is_err()
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "the servers did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // work to claim: 2,000 actioned tasks
    let user = logged_in(&user_url, "alice", 0).await;
    let scope: Scope = "binrestart-c-p".parse().unwrap();
    let network = user.create_network(&network_chain_json(3, 4, "restart"), &scope, "active").await.unwrap();
    let tfs = parse_keys(&user.get(&format!("/networks/{network}/transformations")).await.unwrap()).unwrap();
    let tasks = user.create_tasks(&tfs[0], 2000, None).await.unwrap();
    user.action_tasks(&network, &tasks, Some(1.0)).await.unwrap();
    let compute = logged_in(&compute_url, "worker", 0).await;
    let id: ComputeServiceId = SERVICE.parse().unwrap();
    let r = compute
        .send(Method::POST, &format!("/computeservice/{id}/register"), Payload::Json(json!({"compute_manager_id": null}).to_string()))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let claim = json!({"scopes": [{"org": "binrestart", "campaign": null, "project": null}], "compute_service_id": SERVICE, "count": 1});
    let drives = [
        ("check", &user_url, "alice", 0, Method::GET, "/check".to_string(), None),
        ("status", &user_url, "alice", 0, Method::GET, format!("/networks/{network}/status"), None),
        ("claim", &compute_url, "worker", 0, Method::POST, "/claim".to_string(), Some(claim.clone())),
        ("heartbeat", &compute_url, "worker", 0, Method::POST, format!("/computeservice/{id}/heartbeat"), Some(json!({}))),
        // as a compute service claims: 503s retried with back-off
        ("patient claim", &compute_url, "worker", 8, Method::POST, "/claim".to_string(), Some(claim)),
    ];
    let mut workers = Vec::new();
    for (name, url, who, retries, method, path, body) in drives {
        let c = logged_in(url, who, retries).await;
        let probe = Probe { name, client: c, method, path, body };
        workers.push(tokio::spawn(probe.run(Duration::from_millis(25), stop.clone(), log.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut cluster, restart) = cluster.restart(OUTAGE).await;
    let (stopping, restarted) = (restart.stopping, restart.restarted);
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let outcomes = log.lock().unwrap().clone();
    eprintln!("outcomes (worker, status) → count: {}", summary(&outcomes));
    for o in outcomes.iter().filter(|o| o.status != 200 || o.took > Duration::from_secs(1)) {
        let at = o.sent.duration_since(stopping).as_secs_f64();
        eprintln!("  {} at {at:+.2} s, {:?}: {} {}", o.worker, o.took, o.status, o.detail.chars().take(200).collect::<String>());
    }

    // the processes were never restarted
    for (name, p) in [("api", &mut api), ("compute api", &mut compute_api)] {
        if let Some(status) = p.0.try_wait().unwrap() {
            let mut err = String::new();
            p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("`{name}` exited ({status}) during the restart:\n{err}");
        }
    }
    let bad: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200 && o.status != 503).collect();
    assert!(bad.is_empty(), "answers other than 200/503 during the restart: {:#?}", &bad[..bad.len().min(10)]);
    // requests that waited for a connection gave up after --pool-timeout, not the default 30 s
    let timed_out: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 503 && o.detail.contains("pool timed out")).collect();
    assert!(!timed_out.is_empty(), "no request waited for a connection while PostgreSQL was down");
    let slowest = outcomes.iter().filter(|o| o.worker != "patient claim").map(|o| o.took).max().unwrap();
    assert!(slowest < POOL_TIMEOUT + Duration::from_millis(1500), "a request took {slowest:?} with --pool-timeout {POOL_TIMEOUT:?}");
    // (a claim queued behind a batch shares its answer, so it may come sooner)
    assert!(timed_out.iter().any(|o| o.took >= POOL_TIMEOUT - Duration::from_millis(100)), "no request waited the pool timeout");
    // the retrying client rode the outage out
    let patient: Vec<&Outcome> = outcomes.iter().filter(|o| o.worker == "patient claim").collect();
    assert!(patient.iter().all(|o| o.status == 200), "the retrying claimer saw {:?}", patient.iter().find(|o| o.status != 200));
    assert!(patient.iter().any(|o| o.sent < stopping + OUTAGE && o.took > OUTAGE / 2), "no retried claim spanned the outage");
    // back within seconds of PostgreSQL's return, for every worker, and stays back
    let recovered = restarted + POOL_TIMEOUT + Duration::from_secs(2);
    let late: Vec<&Outcome> = outcomes.iter().filter(|o| o.sent > recovered && o.status != 200).collect();
    assert!(late.is_empty(), "failures after PostgreSQL came back: {:#?}", &late[..late.len().min(10)]);
    for w in ["check", "status", "claim", "heartbeat", "patient claim"] {
        assert!(outcomes.iter().any(|o| o.worker == w && o.sent > recovered && o.status == 200), "{w} did not recover");
        assert!(outcomes.iter().any(|o| o.worker == w && o.sent < stopping && o.status == 200), "{w} did not work before");
    }
    drop(api);
    drop(compute_api);
    cluster.stop();
}
