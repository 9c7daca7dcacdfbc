//! `alchemiscale compute manager` as a process, against in-process servers on SQLite and
//! PostgreSQL: the local backend scales services up to the limit, drains a network and
//! scales back to nothing; SIGTERM stops its services with no task left `running`; a
//! manager killed with SIGKILL leaves its services working and a successor with `--steal`
//! takes them over; bad settings, an unreachable API and a broken backend. With
//! `ALCHEMISCALE_TEST_SLURM=1` (set by `.ci/run`, which starts a one-node Slurm cluster)
//! the same against real Slurm jobs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alchemiscale_model::json::Value;
use alchemiscale_model::status::ComputeManagerStatus;
use alchemiscale_model::synthetic::network_chain_json_with_settings;
use alchemiscale_model::{Scope, ScopedKey};
use alchemiscale_server::backend_test;
use alchemiscale_server::testing::Backend;
use alchemiscale_store::managers::ComputeManagerInfo;

mod common;
use common::{alive, sigterm, wait_exit, Env, BIN};

async fn env(backend: Backend) -> Option<Env> {
    common::env(backend, "synth").await
}

impl Env {
    /// A manager settings file: short intervals, `top` lines at the top level, `service`
    /// lines in the service section, the backend section's lines.
    fn config(&self, name: &str, top: &str, service: &str, backend: &str) -> PathBuf {
        let base = self.dir.path().join(name);
        let text = format!(
            "name: {name}\nloglevel: INFO\nlogfile: {}\nsleep_interval: 0.3\nclient_max_retries: 1\nclient_retry_base_seconds: 1.1\n\
             client_retry_max_seconds: 0.3\nwork_dir: {}\n{top}\
             service:\n  api_url: {}\n  identifier: worker\n  key: key-of-worker\n  name: {name}svc\n  shared_basedir: {}\n  \
             scratch_basedir: {}\n  heartbeat_interval: 1\n  sleep_interval: 1\n  deep_sleep_interval: 1\n  loglevel: INFO\n  \
             client_max_retries: 1\n  client_retry_base_seconds: 1.1\n  client_retry_max_seconds: 0.3\n{service}\
             backend:\n{backend}",
            self.log(name).display(),
            self.work_dir(name).display(),
            self.compute_server.url,
            base.join("shared").display(),
            base.join("scratch").display(),
        );
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn work_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}-work"))
    }

    fn spawn(&self, config: &Path, extra: &[&str]) -> Child {
        Command::new(BIN)
            .args(["compute", "manager", "-c"])
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(config.with_extension(format!("stderr{}", extra.len()))).unwrap())
            .spawn()
            .unwrap()
    }

    /// `tasks` actioned tasks of a network with `transformations` transformations whose
    /// protocol sleeps `sleep` seconds.
    async fn tasks(&self, tag: &str, transformations: usize, per: i64, sleep: f64) -> Vec<ScopedKey> {
        let scope: Scope = "synth-campaign-project".parse().unwrap();
        let chain = network_chain_json_with_settings(transformations + 1, transformations, tag, &[("sleep_seconds", Value::from(sleep))]);
        let network = self.user.create_network(&chain, &scope, "active").await.unwrap();
        let tfs = alchemiscale_client::parse_keys(&self.user.get(&format!("/networks/{network}/transformations")).await.unwrap()).unwrap();
        let mut tasks = Vec::new();
        for tf in &tfs {
            tasks.extend(self.user.create_tasks(tf, per, None).await.unwrap());
        }
        self.user.action_tasks(&network, &tasks, None).await.unwrap();
        tasks
    }

    async fn statuses(&self, tasks: &[ScopedKey]) -> Vec<String> {
        self.user.get_tasks_status(tasks).await.unwrap().into_iter().map(Option::unwrap_or_default).collect()
    }

    async fn count(&self, tasks: &[ScopedKey], status: &str) -> usize {
        self.statuses(tasks).await.iter().filter(|s| *s == status).count()
    }

    /// Registered services started by manager `name`.
    async fn services(&self, name: &str) -> usize {
        let all = self.compute_server.store.list_compute_services().await.unwrap();
        all.iter().filter(|s| s.manager_name.as_deref() == Some(name)).count()
    }

    async fn manager(&self, name: &str) -> Option<ComputeManagerInfo> {
        self.compute_server.store.get_compute_manager(name).await.unwrap()
    }

    async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let t0 = Instant::now();
        while !check().await {
            assert!(t0.elapsed() < limit, "not within {limit:?}: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Pids of live local-backend services of manager `name`.
    fn live_services(&self, name: &str) -> Vec<u32> {
        let dir = self.work_dir(name).join("local-services");
        let pids =
            std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()).unwrap_or_default();
        let pids: Vec<u32> = pids;
        pids.into_iter().filter(|p| alive(*p)).collect()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

const LOCAL: &str = "  kind: local\n  stop_timeout: 20\n";

/// From nothing to the limit, the network drained, back to nothing; SIGTERM ends the
/// manager, which deregisters.
async fn scales_up_drains_and_down(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let tasks = env.tasks("drain", 6, 2, 0.3).await;
    let config = env.config("lab", "max_compute_services: 3\nmax_submit_per_cycle: 2\n", "  max_empty_claims: 2\n", LOCAL);
    let mut manager = env.spawn(&config, &[]);
    let (mut most, mut saturation) = (0, 0.0f64);
    let t0 = Instant::now();
    while env.count(&tasks, "complete").await < tasks.len() {
        assert!(t0.elapsed() < Duration::from_secs(90), "not drained: {:?}\n{}", env.statuses(&tasks).await, read(&env.log("lab")));
        assert!(manager.try_wait().unwrap().is_none(), "the manager exited early\n{}", read(&env.log("lab")));
        most = most.max(env.services("lab").await);
        most = most.max(env.live_services("lab").len());
        if let Some(m) = env.manager("lab").await {
            assert_eq!(m.status, ComputeManagerStatus::Ok, "{m:?}");
            saturation = saturation.max(m.saturation.unwrap_or(0.0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!((2..=3).contains(&most), "services at most 3, and more than one: {most}");
    assert!(saturation > 0.5 && saturation <= 1.0, "{saturation}");
    // idle services leave by themselves; the manager stays and reports saturation 0
    env.wait_for("services scaled down", Duration::from_secs(30), || async {
        env.services("lab").await == 0 && env.live_services("lab").is_empty()
    })
    .await;
    env.wait_for("saturation 0 reported", Duration::from_secs(10), || async {
        env.manager("lab").await.is_some_and(|m| m.saturation == Some(0.0))
    })
    .await;
    assert!(manager.try_wait().unwrap().is_none(), "the manager keeps running while idle");
    sigterm(&manager);
    assert_eq!(wait_exit(&mut manager, Duration::from_secs(20)).code(), Some(0));
    assert!(env.manager("lab").await.is_none(), "deregistered");
    let log = read(&env.log("lab"));
    assert!(log.contains("Registered compute manager 'lab-") && log.contains("Started compute service process"), "{log}");
    assert!(log.contains("Deregistration successful"), "{log}");
    let service_logs = std::fs::read_dir(env.work_dir("lab").join("logs")).unwrap().count();
    assert!((2..=9).contains(&service_logs), "one log per started service: {service_logs}");
}
backend_test!(scales_up_drains_and_down, super::scales_up_drains_and_down);

/// SIGTERM while services run tasks: the services stop, their tasks go back to
/// `waiting`, nothing stays registered or running.
async fn sigterm_stops_services(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let tasks = env.tasks("stopped", 4, 1, 60.0).await;
    let config = env.config("stopper", "max_compute_services: 2\nmax_submit_per_cycle: 2\n", "", LOCAL);
    let mut manager = env.spawn(&config, &[]);
    env.wait_for("two tasks running", Duration::from_secs(40), || async { env.count(&tasks, "running").await == 2 }).await;
    let pids = env.live_services("stopper");
    assert_eq!(pids.len(), 2, "{pids:?}");
    sigterm(&manager);
    assert_eq!(wait_exit(&mut manager, Duration::from_secs(30)).code(), Some(0));
    assert_eq!(env.count(&tasks, "waiting").await, 4, "{:?}", env.statuses(&tasks).await);
    assert_eq!(env.services("stopper").await, 0);
    assert!(pids.iter().all(|p| !alive(*p)), "services outlived the manager");
    assert!(env.manager("stopper").await.is_none());
}
backend_test!(sigterm_stops_services, super::sigterm_stops_services);

/// A manager killed with SIGKILL: its services finish their tasks; a second manager of
/// that name is refused, unless it steals the name, when it adopts the services.
async fn sigkill_then_steal(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let tasks = env.tasks("orphans", 2, 1, 4.0).await;
    let config = env.config("crashy", "max_compute_services: 2\nmax_submit_per_cycle: 2\n", "  max_empty_claims: 3\n", LOCAL);
    let mut first = env.spawn(&config, &[]);
    env.wait_for("two tasks running", Duration::from_secs(40), || async { env.count(&tasks, "running").await == 2 }).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let orphans = env.live_services("crashy");
    assert_eq!(orphans.len(), 2, "the services outlive a killed manager");

    let mut refused = env.spawn(&config, &[]);
    assert_eq!(wait_exit(&mut refused, Duration::from_secs(30)).code(), Some(1));
    let stderr = read(&config.with_extension("stderr0"));
    assert!(stderr.contains("already registered with status OK"), "{stderr}");

    let mut successor = env.spawn(&config, &["--steal"]);
    env.wait_for("orphans finish their tasks", Duration::from_secs(60), || async { env.count(&tasks, "complete").await == 2 }).await;
    env.wait_for("orphans leave when idle", Duration::from_secs(30), || async { orphans.iter().all(|p| !alive(*p)) }).await;
    assert!(successor.try_wait().unwrap().is_none());
    let log = read(&env.log("crashy"));
    assert_eq!(log.matches("Adopting compute service process").count(), 2, "{log}");
    let m = env.manager("crashy").await.expect("the successor is registered");
    assert_eq!(m.status, ComputeManagerStatus::Ok);
    sigterm(&successor);
    assert_eq!(wait_exit(&mut successor, Duration::from_secs(20)).code(), Some(0));
    assert!(env.manager("crashy").await.is_none());
}
backend_test!(sigkill_then_steal, super::sigkill_then_steal);

/// A backend that cannot start services: status ERROR with the reason, nothing started,
/// the manager keeps trying; a stop still deregisters it.
async fn broken_backend_reports_error(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let tasks = env.tasks("unstartable", 1, 1, 0.0).await;
    let config = env.config("broken", "max_compute_services: 2\nalchemiscale: /nonexistent/alchemiscale\n", "", LOCAL);
    let mut manager = env.spawn(&config, &[]);
    env.wait_for("ERROR reported", Duration::from_secs(30), || async {
        env.manager("broken").await.is_some_and(|m| m.status == ComputeManagerStatus::Error)
    })
    .await;
    let m = env.manager("broken").await.unwrap();
    assert!(m.detail.as_deref().unwrap_or("").contains("cannot start `/nonexistent/alchemiscale`"), "{m:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(manager.try_wait().unwrap().is_none(), "the manager keeps trying");
    assert_eq!(env.count(&tasks, "waiting").await, 1);
    sigterm(&manager);
    assert_eq!(wait_exit(&mut manager, Duration::from_secs(20)).code(), Some(0));
    assert!(env.manager("broken").await.is_none(), "a requested stop does not leave an ERROR registration behind");
}
backend_test!(broken_backend_reports_error, super::broken_backend_reports_error);

/// Settings with unknown or invalid keys are usage errors (status 2); an unreachable API
/// ends the manager after its retries (status 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_unreachable_api() {
    let env = env(Backend::Sqlite).await.unwrap();
    let run = |config: &Path| Command::new(BIN).args(["compute", "manager", "-c"]).arg(config).stdin(Stdio::null()).output().unwrap();
    for (top, service, backend, needle) in [
        ("max_compute_services: 1\nsurprise: 1\n", "", LOCAL, "surprise"),
        ("max_compute_services: 1\n", "  sleep_intervl: 1\n", LOCAL, "sleep_intervl"),
        ("max_compute_services: 1\n", "", "  kind: kubernetes\n", "kubernetes"),
        ("max_compute_services: 0\n", "", LOCAL, "max_compute_services"),
        ("max_compute_services: 1\n", "", "  kind: slurm\n  cpus_per_task: 0\n", "cpus_per_task"),
    ] {
        let out = run(&env.config("bad", top, service, backend));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{needle}: {stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    let config = env.config("lost", "max_compute_services: 1\n", "", LOCAL);
    std::fs::write(&config, read(&config).replace(&env.compute_server.url, "http://127.0.0.1:9")).unwrap();
    let t0 = Instant::now();
    let out = run(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("registration failed") && stderr.contains("retrying"), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    drop(env.user_server);
}

// ---- Slurm (a real one-node cluster; .ci/run starts it) ---------------------------------

fn slurm() -> bool {
    std::env::var("ALCHEMISCALE_TEST_SLURM").is_ok_and(|v| v == "1")
}

/// Our jobs (`squeue --name`): (running, pending).
fn squeue(job_name: &str) -> (usize, usize) {
    let out = Command::new("squeue").args(["--noheader", &format!("--name={job_name}"), "--format=%T"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let pending = text.lines().filter(|l| l.trim() == "PENDING").count();
    (text.lines().filter(|l| !l.trim().is_empty()).count() - pending, pending)
}

fn slurm_backend(env: &Env, name: &str, extra: &str) -> String {
    format!("  kind: slurm\n  job_name: test-{name}\n  output: {}/{name}-%j.out\n{extra}", env.dir.path().display())
}

/// Slurm jobs run our compute services: the network drains, idle jobs end, the manager
/// stops cleanly.
async fn slurm_drains(backend: Backend) {
    if !slurm() {
        eprintln!("skipped: ALCHEMISCALE_TEST_SLURM is not 1");
        return;
    }
    let Some(env) = env(backend).await else { return };
    let tasks = env.tasks("slurmed", 3, 2, 0.2).await;
    let name = format!("slurm{}", if backend == Backend::Sqlite { "s" } else { "p" });
    let config =
        env.config(&name, "max_compute_services: 2\nmax_submit_per_cycle: 2\n", "  max_empty_claims: 2\n", &slurm_backend(&env, &name, ""));
    let mut manager = env.spawn(&config, &[]);
    env.wait_for("drained by Slurm jobs", Duration::from_secs(120), || async { env.count(&tasks, "complete").await == tasks.len() }).await;
    env.wait_for("jobs end when idle", Duration::from_secs(60), || async { squeue(&format!("test-{name}")) == (0, 0) }).await;
    assert!(env.services(&name).await == 0);
    sigterm(&manager);
    assert_eq!(wait_exit(&mut manager, Duration::from_secs(30)).code(), Some(0));
    let log = read(&env.log(&name));
    assert!(log.contains("Submitted Slurm job"), "{log}");
    let outputs = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{name}-")))
        .count();
    assert!(outputs >= 1, "job output files where `output` says");
}
backend_test!(slurm_drains, super::slurm_drains);

/// Held (pending) jobs are capacity already spent: no more are submitted while they
/// pend; a stop cancels them. A failing `sbatch`, or a Slurm that cannot be reached, is an
/// ERROR status and submits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slurm_pending_jobs_and_failures() {
    if !slurm() {
        eprintln!("skipped: ALCHEMISCALE_TEST_SLURM is not 1");
        return;
    }
    let env = env(Backend::Sqlite).await.unwrap();
    let _tasks = env.tasks("held", 4, 1, 0.0).await;
    let config = env.config(
        "held",
        "max_compute_services: 4\nmax_submit_per_cycle: 2\n",
        "",
        &slurm_backend(&env, "held", "  extra_directives: [--hold]\n"),
    );
    let mut manager = env.spawn(&config, &[]);
    env.wait_for("two held jobs", Duration::from_secs(30), || async { squeue("test-held") == (0, 2) }).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // several more cycles
    assert_eq!(squeue("test-held"), (0, 2), "nothing more while jobs pend");
    let m = env.manager("held").await.unwrap();
    assert_eq!((m.status, m.saturation), (ComputeManagerStatus::Ok, Some(0.5)));
    sigterm(&manager);
    assert_eq!(wait_exit(&mut manager, Duration::from_secs(30)).code(), Some(0));
    env.wait_for("jobs cancelled", Duration::from_secs(30), || async { squeue("test-held") == (0, 0) }).await;

    let config = env.config(
        "nosbatch",
        "max_compute_services: 4\nmax_submit_per_cycle: 2\n",
        "",
        &slurm_backend(&env, "nosbatch", "  sbatch: /bin/false\n"),
    );
    let mut manager = env.spawn(&config, &[]);
    env.wait_for("ERROR reported", Duration::from_secs(30), || async {
        env.manager("nosbatch").await.is_some_and(|m| m.status == ComputeManagerStatus::Error)
    })
    .await;
    let m = env.manager("nosbatch").await.unwrap();
    assert!(m.detail.as_deref().unwrap_or("").contains("submitting a job"), "{m:?}");
    assert_eq!(squeue("test-nosbatch"), (0, 0));
    sigterm(&manager);
    assert_eq!(wait_exit(&mut manager, Duration::from_secs(30)).code(), Some(0));

    // Slurm unreachable (squeue fails): ERROR, and nothing submitted blindly
    let config = env.config("noslurm", "max_compute_services: 4\n", "", &slurm_backend(&env, "noslurm", "  squeue: /bin/false\n"));
    let mut manager = env.spawn(&config, &[]);
    env.wait_for("ERROR reported", Duration::from_secs(30), || async {
        env.manager("noslurm").await.is_some_and(|m| m.status == ComputeManagerStatus::Error)
    })
    .await;
    let m = env.manager("noslurm").await.unwrap();
    assert!(m.detail.as_deref().unwrap_or("").contains("listing jobs"), "{m:?}");
    assert_eq!(squeue("test-noslurm"), (0, 0));
    sigterm(&manager);
    assert_eq!(wait_exit(&mut manager, Duration::from_secs(30)).code(), Some(0));
}
