//! The strategist end to end, on SQLite and PostgreSQL: strategies set through the user
//! API, executed by the strategist (in-process cycles, the `alchemiscale strategist`
//! command, and inside `alchemiscale serve`), their tasks drained by our compute service
//! running the native synthetic protocol, until the termination rule sends the strategy
//! dormant.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alchemiscale_client::Client;
use alchemiscale_compute::{ExecutorConfig, Service, StopHandle};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{Scope, ScopedKey};
use alchemiscale_server::backend_test;
use alchemiscale_server::testing::Backend;
use alchemiscale_strategist::{CycleSummary, Settings, Strategist};

const BIN: &str = env!("CARGO_BIN_EXE_alchemiscale");
const SCOPE: &str = "strat-campaign-project";

mod common;
use common::Env;

async fn env(backend: Backend) -> Option<Env> {
    common::env(backend, "strat").await
}

/// A ConnectivityStrategy with `settings` (JSON members) as the Python client sends it;
/// its key differs with its settings, as gufe keys (content hashes) do.
fn connectivity(settings: &str) -> String {
    let token = settings.bytes().fold(0xcbf2_9ce4_8422_2325u128, |h, b| (h ^ b as u128).wrapping_mul(0x0100_0000_01b3));
    format!(
        r#"[["ConnectivityStrategy-{token:032x}", {{"settings": {{"__class__": "ConnectivityStrategySettings", "__module__": "stratocaster.strategies.connectivity", ":is_custom:": true{settings}}}, "__qualname__": "ConnectivityStrategy", "__module__": "stratocaster.strategies.connectivity", ":version:": 1}}]]"#
    )
}

/// U58, the body as upstream's `set_network_strategy` writes it.
async fn set_strategy(user: &Client, network: &ScopedKey, chain: &str, mode: &str, max_tasks: i64, scaling: &str) {
    let body = format!(
        r#"{{"strategy": {chain}, "max_tasks_per_transformation": {max_tasks}, "task_scaling": "{scaling}", "mode": "{mode}", "sleep_interval": 1}}"#
    );
    let v = user.post_payload(&format!("/networks/{network}/strategy"), alchemiscale_client::Payload::Json(body)).await.unwrap();
    assert!(v.as_str().unwrap().starts_with("ConnectivityStrategy-"), "{v}");
}

/// A synthetic network of 4 systems and 5 transformations: edges 0→1, 1→2, 2→3, 3→0
/// (mean degree 2.5) and 0→2 (mean degree 3). Returns the network and its
/// transformations in that order.
async fn submit(user: &Client, tag: &str) -> (ScopedKey, Vec<ScopedKey>) {
    let scope: Scope = SCOPE.parse().unwrap();
    let network = user.create_network(&network_chain_json(4, 5, tag), &scope, "active").await.unwrap();
    let tfs = alchemiscale_client::parse_keys(&user.get(&format!("/networks/{network}/transformations")).await.unwrap()).unwrap();
    let mut indexed = Vec::new();
    for tf in tfs {
        let chain = user.get(&format!("/transformations/{tf}")).await.unwrap();
        let root = chain.as_array().unwrap().last().unwrap()[1].clone();
        let name = root["name"].as_str().unwrap().to_string();
        let i: usize = name.rsplit('-').next().unwrap().parse().unwrap();
        indexed.push((i, tf));
    }
    indexed.sort();
    (network, indexed.into_iter().map(|(_, tf)| tf).collect())
}

impl Env {
    fn strategist(&self, yaml: &str) -> Strategist {
        let (settings, warnings) = Settings::from_yaml(yaml).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        Strategist::from_settings(self.user_server.store.clone(), Some(self.user_server.objects.clone()), &settings).unwrap()
    }

    /// A compute service running our native executor, as a tokio task.
    fn compute(&self, name: &str) -> (StopHandle, tokio::task::JoinHandle<()>) {
        let base = self.dir.path().join(name);
        let yaml = format!(
            "api_url: {}\nidentifier: worker\nkey: key-of-worker\nname: {name}\nshared_basedir: {}\nscratch_basedir: {}\n\
             heartbeat_interval: 1\nsleep_interval: 1\ndeep_sleep_interval: 1\nclaim_limit: 4\n",
            self.compute_server.url,
            base.join("shared").display(),
            base.join("scratch").display(),
        );
        let (settings, _) = alchemiscale_compute::Settings::from_yaml(&yaml).unwrap();
        let executors = ExecutorConfig::new(BIN, vec!["compute".into(), "execute".into()], "python3");
        let service = Service::new(settings, executors).unwrap();
        let stop = service.stop_handle();
        (
            stop,
            tokio::spawn(async move {
                service.run().await.unwrap();
            }),
        )
    }

    /// Per transformation: (tasks actioned on `network`, tasks, successful results).
    async fn counts(&self, network: &ScopedKey, tfs: &[ScopedKey]) -> Vec<(usize, usize, usize)> {
        let store = &self.user_server.store;
        let mut actioned: HashMap<ScopedKey, usize> = HashMap::new();
        for (task, _) in store.network_actioned_tasks(network).await.unwrap() {
            *actioned.entry(store.get_task_transformation(&task).await.unwrap()).or_default() += 1;
        }
        let mut out = Vec::new();
        for tf in tfs {
            let tasks = store.transformation_tasks(tf, None, None).await.unwrap().len();
            let results = store.transformation_results(tf, true).await.unwrap().len();
            out.push((actioned.get(tf).copied().unwrap_or(0), tasks, results));
        }
        out
    }

    async fn state(&self, network: &ScopedKey) -> serde_json::Value {
        self.user.get(&format!("/networks/{network}/strategy/state")).await.unwrap()
    }

    /// Run a compute service until nothing is actioned on `network` any more (every
    /// task completed), then stop it.
    async fn drain(&self, network: &ScopedKey) {
        let (stop, service) = self.compute("drainer");
        let t0 = Instant::now();
        while !self.user_server.store.network_actioned_tasks(network).await.unwrap().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(120), "tasks not drained in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.stop();
        service.await.unwrap();
    }
}

fn actioned(c: &[(usize, usize, usize)]) -> Vec<usize> {
    c.iter().map(|x| x.0).collect()
}

fn results(c: &[(usize, usize, usize)]) -> Vec<usize> {
    c.iter().map(|x| x.2).collect()
}

/// Strategy cycles are due one second after the last (the state's `sleep_interval`).
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// Full mode, linear scaling, M = 10, `max_runs` 4: hand-computed targets. No results:
/// weights 2.5 ×4 and 3 → normalised 2.5/13 and 3/13 → floor(1 + 10w) = 2 and 3. After
/// those: 0.5² × 2.5 = 0.625 ×4 and 0.5³ × 3 = 0.375 → floor(1 + 10w) = 3 and 2. Then
/// every transformation has 5 results ≥ 4: dormant.
async fn drains_until_dormant(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (net, tfs) = submit(&env.user, "drain").await;
    set_strategy(&env.user, &net, &connectivity(r#", "decay_rate": 0.5, "cutoff": null, "max_runs": 4"#), "full", 10, "linear").await;
    let strategist = env.strategist("sleep_interval: 1\n");

    let s = strategist.cycle().await;
    assert_eq!((s.due, s.committed, s.tasks_created, s.tasks_actioned), (1, 1, 11, 11), "{s:?}");
    assert_eq!(actioned(&env.counts(&net, &tfs).await), vec![2, 2, 2, 2, 3]);
    env.drain(&net).await;
    assert_eq!(results(&env.counts(&net, &tfs).await), vec![2, 2, 2, 2, 3]);

    next_second().await;
    let s = strategist.cycle().await;
    assert_eq!((s.committed, s.tasks_created), (1, 14), "{s:?}");
    assert_eq!(actioned(&env.counts(&net, &tfs).await), vec![3, 3, 3, 3, 2]);
    env.drain(&net).await;
    let c = env.counts(&net, &tfs).await;
    assert_eq!(results(&c), vec![5; 5]);
    assert!(c.iter().all(|x| x.1 == 5), "no task beyond the targets: {c:?}");

    next_second().await;
    let s = strategist.cycle().await;
    assert_eq!((s.committed, s.tasks_created), (1, 0), "{s:?}");
    let state = env.state(&net).await;
    assert_eq!(state["status"], "dormant");
    assert_eq!(state["iterations"], 3);
    assert_eq!(state["last_iteration_result_count"], 25);
    assert_eq!(env.user.get(&format!("/networks/{net}/strategy/status")).await.unwrap(), "dormant");

    // no new results: the dormant strategy is looked at but nothing is recorded
    next_second().await;
    let s = strategist.cycle().await;
    assert_eq!((s.due, s.still_dormant, s.committed), (1, 1, 0), "{s:?}");
    assert_eq!(env.state(&net).await["iterations"], 3);
}
backend_test!(drains_until_dormant, super::drains_until_dormant);

/// Full and partial mode, and a strategy replaced between cycles (U58 resets its state):
/// with M = 1 every target is 1, so full mode cancels the excess and partial keeps it.
async fn full_and_partial_modes(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let chain = connectivity(r#", "max_runs": 4"#);
    let (full, full_tfs) = submit(&env.user, "full").await;
    let (partial, partial_tfs) = submit(&env.user, "partial").await;
    set_strategy(&env.user, &full, &chain, "full", 10, "linear").await;
    set_strategy(&env.user, &partial, &chain, "partial", 10, "linear").await;
    let strategist = env.strategist("sleep_interval: 1\nmax_workers: 2\n");
    let s = strategist.cycle().await;
    assert_eq!((s.due, s.committed, s.tasks_created), (2, 2, 22), "{s:?}");
    assert_eq!(actioned(&env.counts(&full, &full_tfs).await), vec![2, 2, 2, 2, 3]);
    assert_eq!(actioned(&env.counts(&partial, &partial_tfs).await), vec![2, 2, 2, 2, 3]);

    set_strategy(&env.user, &full, &chain, "full", 1, "linear").await;
    set_strategy(&env.user, &partial, &chain, "partial", 1, "linear").await;
    assert_eq!(env.state(&full).await["iterations"], 0, "re-setting a strategy resets its state");
    let s = strategist.cycle().await;
    assert_eq!((s.committed, s.tasks_created, s.tasks_cancelled), (2, 0, 6), "{s:?}");
    let c = env.counts(&full, &full_tfs).await;
    assert_eq!(actioned(&c), vec![1; 5]);
    assert!(c.iter().all(|x| x.1 >= 2), "cancelled tasks still exist: {c:?}");
    assert_eq!(actioned(&env.counts(&partial, &partial_tfs).await), vec![2, 2, 2, 2, 3]);

    // disabled strategies are not executed
    env.user
        .post_payload(
            &format!("/networks/{full}/strategy"),
            alchemiscale_client::Payload::Json(format!(r#"{{"strategy": {chain}, "mode": "disabled"}}"#)),
        )
        .await
        .unwrap();
    next_second().await;
    let s = strategist.cycle().await;
    assert_eq!((s.due, s.committed), (1, 1), "only the partial one: {s:?}");
}
backend_test!(full_and_partial_modes, super::full_and_partial_modes);

/// Invalid settings and unknown classes land in the state as errors; nothing else in the
/// store changes; the other network is still served; waking (U62) after a fix works.
async fn bad_strategies_error_alone(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (bad, bad_tfs) = submit(&env.user, "bad").await;
    let (good, good_tfs) = submit(&env.user, "good").await;
    set_strategy(&env.user, &bad, &connectivity(r#", "decay_rate": 1.5, "max_runs": 3"#), "full", 3, "exponential").await;
    set_strategy(&env.user, &good, &connectivity(r#", "max_runs": 3"#), "full", 3, "exponential").await;
    let strategist = env.strategist("sleep_interval: 1\n");
    let s: CycleSummary = strategist.cycle().await;
    assert_eq!((s.due, s.committed, s.errored), (2, 2, 1), "{s:?}");
    let state = env.state(&bad).await;
    assert_eq!(state["status"], "error");
    assert_eq!(state["exception"][0], "ValidationError");
    assert!(state["exception"][1].as_str().unwrap().contains("`decay_rate` must be between 0 and 1"), "{state}");
    assert!(state["traceback"].as_str().unwrap().contains("ConnectivityStrategy"), "{state}");
    assert_eq!(env.counts(&bad, &bad_tfs).await.iter().map(|c| c.1).sum::<usize>(), 0);
    assert!(env.counts(&good, &good_tfs).await.iter().all(|c| c.0 == 1));

    // errored strategies wait for a user
    next_second().await;
    assert_eq!(strategist.cycle().await.due, 1);
    // neither max_runs nor cutoff: still invalid after waking
    set_strategy(&env.user, &bad, &connectivity(r#", "decay_rate": 0.5"#), "full", 3, "exponential").await;
    strategist.cycle().await;
    let state = env.state(&bad).await;
    assert!(state["exception"][1].as_str().unwrap().contains("At least one of `max_runs` or `cutoff` must be set"), "{state}");
    // a class with no native implementation and no Python configured
    let other = connectivity(", \"max_runs\": 3")
        .replace("ConnectivityStrategy-", "MyStrategy-")
        .replace("\"ConnectivityStrategy\"", "\"MyStrategy\"");
    let body = format!(r#"{{"strategy": {other}, "mode": "full", "sleep_interval": 1}}"#);
    env.user.post_payload(&format!("/networks/{bad}/strategy"), alchemiscale_client::Payload::Json(body)).await.unwrap();
    strategist.cycle().await;
    let state = env.state(&bad).await;
    assert_eq!(state["exception"][0], "NotImplementedError", "{state}");
    assert!(state["exception"][1].as_str().unwrap().contains("no Python interpreter is configured"), "{state}");

    // fixed and woken: runs normally
    set_strategy(&env.user, &bad, &connectivity(r#", "max_runs": 3"#), "full", 3, "exponential").await;
    env.user.post(&format!("/networks/{bad}/strategy/awake"), &serde_json::json!({})).await.unwrap();
    strategist.cycle().await;
    assert_eq!(env.state(&bad).await["status"], "awake");
    assert!(env.counts(&bad, &bad_tfs).await.iter().all(|c| c.0 == 1));
}
backend_test!(bad_strategies_error_alone, super::bad_strategies_error_alone);

/// `alchemiscale strategist --once` against the test store: one cycle, exit status 0;
/// an invalid settings file is a usage error.
async fn command_runs_one_cycle(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (net, tfs) = submit(&env.user, "cli").await;
    set_strategy(&env.user, &net, &connectivity(r#", "max_runs": 3"#), "partial", 3, "exponential").await;
    let config = env.dir.path().join("strategist.yaml");
    std::fs::write(&config, "sleep_interval: 1\nloglevel: INFO\nscopes: ['strat-*-*']\n").unwrap();
    let objects = env.dir.path().join("objects");
    let out = run(&[
        "strategist",
        "--once",
        "-c",
        config.to_str().unwrap(),
        "--url",
        &env.user_server.store_url(),
        "--objects-dir",
        objects.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("strategy executed") && log.contains("created=5"), "{log}");
    assert_eq!(actioned(&env.counts(&net, &tfs).await), vec![1; 5]);

    std::fs::write(&config, "sleep_interval: 0\n").unwrap();
    let out = run(&["strategist", "--once", "-c", config.to_str().unwrap(), "--url", &env.user_server.store_url()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sleep_interval"), "{}", String::from_utf8_lossy(&out.stderr));
}
backend_test!(command_runs_one_cycle, super::command_runs_one_cycle);

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env_remove("RUST_LOG").stdin(Stdio::null()).output().unwrap()
}

/// The credential file `serve` writes on first start.
fn credential(text: &str, label: &str) -> String {
    text.lines().find_map(|l| l.trim().strip_prefix(label)).unwrap_or_else(|| panic!("{label} in {text}")).trim().to_string()
}

/// `serve` runs the strategist by default: a strategy set through the API is executed,
/// its tasks drained by a compute service, until dormant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_strategies() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strategist.yaml");
    std::fs::write(&config, "sleep_interval: 1\n").unwrap();
    let mut serve = Command::new(BIN)
        .args(["serve", "--port", "0", "--compute-port", "0", "--sqlite-synchronous", "OFF", "--strategist-config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let credentials = dir.path().join("data/credentials.txt");
    let t0 = Instant::now();
    while !credentials.exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "serve did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = std::fs::read_to_string(&credentials).unwrap();
    let user = Client::new(&credential(&text, "user API:"), "user", &credential(&text, "user key:")).unwrap();
    let (net, _) = submit(&user, "serve").await;
    set_strategy(&user, &net, &connectivity(r#", "max_runs": 2"#), "full", 3, "exponential").await;

    let work = dir.path().join("compute");
    let compute = format!(
        "api_url: {}\nidentifier: compute\nkey: {}\nname: served\nshared_basedir: {}\nscratch_basedir: {}\n\
         heartbeat_interval: 1\nsleep_interval: 1\nclaim_limit: 4\n",
        credential(&text, "compute API:"),
        credential(&text, "compute key:"),
        work.join("shared").display(),
        work.join("scratch").display()
    );
    std::fs::write(dir.path().join("compute.yaml"), compute).unwrap();
    let mut service = Command::new(BIN)
        .args(["compute", "synchronous", "-c"])
        .arg(dir.path().join("compute.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let t0 = Instant::now();
    loop {
        let status = user.get(&format!("/networks/{net}/strategy/status")).await.unwrap();
        if status == "dormant" {
            break;
        }
        assert_ne!(status, "error", "{}", user.get(&format!("/networks/{net}/strategy/state")).await.unwrap());
        assert!(t0.elapsed() < Duration::from_secs(120), "not dormant in time; log: {}", log(dir.path()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let tfs = alchemiscale_client::parse_keys(&user.get(&format!("/networks/{net}/transformations")).await.unwrap()).unwrap();
    for tf in &tfs {
        let results = alchemiscale_client::parse_keys(&user.get(&format!("/transformations/{tf}/results")).await.unwrap()).unwrap();
        assert!(results.len() >= 2, "{tf}: {} results", results.len());
    }
    for child in [&mut service, &mut serve] {
        // SAFETY: signalling our own child processes.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        assert!(child.wait().unwrap().success());
    }
    assert!(log(dir.path()).contains("strategy executed"));
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}
