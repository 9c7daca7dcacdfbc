//! `alchemiscale compute synchronous` as a process: exit codes, signals, log lines, and a
//! service killed with SIGKILL whose task comes back after the registration expires —
//! against in-process servers on SQLite and (when configured) PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alchemiscale_client::Client;
use alchemiscale_model::json::Value;
use alchemiscale_model::synthetic::network_chain_json_with_settings;
use alchemiscale_model::{Scope, ScopedKey};
use alchemiscale_server::testing::{settings, Backend, ObjectsBackend, TestServer};
use alchemiscale_server::{ApiKind, ApiSettings, AppState};
use alchemiscale_store::identities::IdentityKind;

mod common;
use common::{wait_exit, BIN};

struct Env {
    user_server: TestServer,
    compute_server: TestServer,
    user: Client,
    dir: tempfile::TempDir,
    reaper: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(r) = self.reaper.take() {
            r.abort();
        }
    }
}

async fn env(backend: Backend, api: ApiSettings, reaper: bool) -> Option<Env> {
    let user_server = TestServer::start(backend, ObjectsBackend::Local, ApiKind::User, api.clone()).await?;
    let compute_server = user_server.sibling(ApiKind::Compute).await;
    let user = user_server.client(IdentityKind::User, "alice", &["synth-*-*"]).await;
    let _ = compute_server.client(IdentityKind::Compute, "worker", &["synth-*-*"]).await;
    let reaper = reaper.then(|| {
        let state = AppState::new(ApiKind::Compute, compute_server.store.clone(), Some(compute_server.objects.clone()), api);
        alchemiscale_server::spawn_reaper(state)
    });
    Some(Env { user_server, compute_server, user, dir: tempfile::tempdir().unwrap(), reaper })
}

impl Env {
    /// A settings file with short intervals plus `extra` lines.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let base = self.dir.path().join(name);
        let text = format!(
            "api_url: {}\nidentifier: worker\nkey: key-of-worker\nname: {name}\nshared_basedir: {}\nscratch_basedir: {}\n\
             heartbeat_interval: 1\nsleep_interval: 1\ndeep_sleep_interval: 1\nclient_max_retries: 1\nclient_retry_base_seconds: 1.1\n\
             client_retry_max_seconds: 0.5\nwanted_check_interval: 0.5\nloglevel: INFO\nlogfile: {}\n{extra}",
            self.compute_server.url,
            base.join("shared").display(),
            base.join("scratch").display(),
            self.log(name).display(),
        );
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn spawn(&self, config: &Path) -> Child {
        Command::new(BIN)
            .args(["compute", "synchronous", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(config.with_extension("stderr")).unwrap())
            .spawn()
            .unwrap()
    }

    /// One task of a one-transformation synthetic network with protocol settings `extra`.
    async fn task(&self, tag: &str, extra: &[(&str, Value)]) -> ScopedKey {
        let scope: Scope = "synth-campaign-project".parse().unwrap();
        let network = self.user.create_network(&network_chain_json_with_settings(2, 1, tag, extra), &scope, "active").await.unwrap();
        let tfs = alchemiscale_client::parse_keys(&self.user.get(&format!("/networks/{network}/transformations")).await.unwrap()).unwrap();
        let task = self.user.create_tasks(&tfs[0], 1, None).await.unwrap().remove(0);
        self.user.action_tasks(&network, std::slice::from_ref(&task), None).await.unwrap();
        task
    }

    async fn status(&self, task: &ScopedKey) -> String {
        self.user.get_tasks_status(std::slice::from_ref(task)).await.unwrap().remove(0).unwrap_or_default()
    }

    async fn wait_status(&self, task: &ScopedKey, want: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let s = self.status(task).await;
            if s == want {
                return;
            }
            assert!(t0.elapsed() < limit, "task {task} is still {s}, not {want}, after {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A live (non-zombie) process whose command line mentions `path`.
fn process_mentioning(path: &Path) -> Option<u32> {
    let needle = path.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) && !stat.contains(") Z") {
            return Some(pid);
        }
    }
    None
}

/// A service killed with SIGKILL mid-task: its executor dies with it, and once the
/// registration expires the task is back in `waiting`.
async fn sigkill(backend: Backend) {
    let api = ApiSettings { registration_expire_seconds: 2, ..settings() };
    let Some(env) = env(backend, api, true).await else { return };
    let task = env.task("killed", &[("sleep_seconds", Value::from(60i64))]).await;
    let mut child = env.spawn(&env.config("victim", ""));
    env.wait_status(&task, "running", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let marker = env.dir.path().join("victim").join("scratch");
    assert!(process_mentioning(&marker).is_some(), "the executor runs");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // its executor (whose task directory is under the victim's scratch space) dies too
    let t0 = Instant::now();
    while let Some(pid) = process_mentioning(&marker) {
        assert!(t0.elapsed() < Duration::from_secs(5), "executor {pid} outlived its service");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = Instant::now();
    env.wait_status(&task, "waiting", Duration::from_secs(20)).await;
    assert!(t0.elapsed() >= Duration::from_millis(500), "returned by expiry, not by the dead service");
    assert!(env.compute_server.store.list_compute_services().await.unwrap().is_empty(), "the registration expired");
}
alchemiscale_server::backend_test!(sigkill_mid_task_task_returns_after_expiry, super::sigkill);

/// SIGTERM mid-task: exit 0, task back in `waiting`, registration gone; log lines carry a
/// UTC timestamp, the service id and the level, on stderr and in the logfile.
async fn sigterm(backend: Backend) {
    let Some(env) = env(backend, settings(), false).await else { return };
    let task = env.task("termed", &[("sleep_seconds", Value::from(60i64))]).await;
    let config = env.config("termed", "");
    let mut child = env.spawn(&config);
    env.wait_status(&task, "running", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert_eq!(env.status(&task).await, "waiting");
    assert!(env.compute_server.store.list_compute_services().await.unwrap().is_empty());
    let log = std::fs::read_to_string(env.log("termed")).unwrap();
    let stderr = std::fs::read_to_string(config.with_extension("stderr")).unwrap();
    for text in [&log, &stderr] {
        let line = text.lines().find(|l| l.contains("Registered service")).unwrap_or_else(|| panic!("{text}"));
        // [2026-01-02 03:04:05,678] [termed-<32 hex>] [INFO] Registered service …
        let (stamp, rest) = line.split_at(25);
        assert!(stamp.starts_with("[20") && stamp.ends_with(']') && stamp.contains(','), "{line}");
        assert!(rest.starts_with(" [termed-") && rest.contains("] [INFO] Registered service"), "{line}");
        assert!(text.contains("Deregistration successful"), "{text}");
    }
}
alchemiscale_server::backend_test!(sigterm_mid_task_exits_zero, super::sigterm);

/// Limits end the service with status 0; bad settings are status 1, usage errors 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_statuses() {
    let env = env(Backend::Sqlite, settings(), false).await.unwrap();
    let task = env.task("limited", &[]).await;
    let mut child = env.spawn(&env.config("limited", "max_tasks: 1\n"));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(60)).code(), Some(0));
    assert_eq!(env.status(&task).await, "complete");

    // `database check` reads the result's object back; with the object gone it says which
    let objects_dir = env.compute_server.objects.description().strip_prefix("local directory ").unwrap().to_string();
    let store_url = env.compute_server.store_url();
    let check = || Command::new(BIN).args(["database", "check", "--url", &store_url, "--objects-dir", &objects_dir]).output().unwrap();
    let out = check();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("No inconsistencies found"));
    let mut objects = Vec::new();
    let mut dirs = vec![PathBuf::from(&objects_dir)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            match e.file_type().unwrap().is_dir() {
                true => dirs.push(e.path()),
                false if e.path().to_string_lossy().contains("protocoldagresult") => objects.push(e.path()),
                false => {}
            }
        }
    }
    assert_eq!(objects.len(), 1, "one result object: {objects:?}");
    std::fs::remove_file(&objects[0]).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 result references without their object"), "{err}");

    let run = |args: &[&str]| Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap();
    let out = run(&["compute", "synchronous", "-c", env.config("bad", "scopes: [a-*-c]\n").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'a-*-c' is not a valid scope"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["compute", "synchronous", "-c", env.config("named", "").to_str().unwrap(), "-n", "bad-name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad-name"));
    assert_eq!(run(&["compute", "synchronous", "-c", "/nonexistent.yaml"]).status.code(), Some(2));
    assert_eq!(run(&["compute", "synchronous"]).status.code(), Some(2));

    // nothing listens there: registration fails after the retries, status 1
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = std::fs::read_to_string(env.config("offline", "")).unwrap().replace(&env.compute_server.url, &format!("http://{closed}"));
    let path = env.dir.path().join("offline2.yaml");
    std::fs::write(&path, text).unwrap();
    let out = run(&["compute", "synchronous", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("registration failed"), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = &env.user_server;
}
