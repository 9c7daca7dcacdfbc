//! `alchemiscale bench managers`: a compute manager (local backend) scaling from nothing
//! to at most `--max-services` compute services to drain `--tasks` actioned tasks, against
//! the same work drained by that many services started by hand up front, in the same run;
//! then how long the managed services take to leave once the work is done.
//!
//! Everything runs as real processes (`alchemiscale compute synchronous`, `alchemiscale
//! compute manager`) against APIs this command starts on random ports; the tasks are
//! created and actioned through the user API, each a `SyntheticProtocol` task that takes
//! `--task-seconds` in its executor. Services claim one task per request and leave after
//! `--max-empty-claims` empty claims with `sleep_interval: 1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alchemiscale_model::json::Value;
use alchemiscale_model::synthetic::network_chain_json_with_settings;
use alchemiscale_model::{Scope, ScopedKey};
use anyhow::{ensure, Context};
use clap::Args;
use serde_json::json;

use super::bench_claims::BenchServers;
use crate::store_args::StoreArgs;

#[derive(Debug, Args)]
pub struct ManagersBench {
    /// Actioned tasks to drain in each phase.
    #[arg(long, default_value_t = 200)]
    pub tasks: usize,
    /// Seconds each task takes in its executor.
    #[arg(long, default_value_t = 0.2)]
    pub task_seconds: f64,
    /// Services started up front, and the manager's `max_compute_services`.
    #[arg(long, default_value_t = 8)]
    pub max_services: u64,
    /// The manager's `sleep_interval` (seconds between cycles).
    #[arg(long, default_value_t = 1.0)]
    pub manager_interval: f64,
    /// The manager's `max_submit_per_cycle`.
    #[arg(long, default_value_t = 8)]
    pub max_submit_per_cycle: u64,
    /// The services' `max_empty_claims`.
    #[arg(long, default_value_t = 2)]
    pub max_empty_claims: u64,
    #[command(flatten)]
    pub store: StoreArgs,
}

struct Phase<'a> {
    servers: &'a BenchServers,
    dir: &'a Path,
    b: &'a ManagersBench,
}

impl Phase<'_> {
    /// The compute-service settings lines, `indent`ed.
    fn service_yaml(&self, name: &str, indent: &str) -> String {
        let base = self.dir.join(name);
        [
            format!("api_url: {}", self.servers.compute_url),
            "identifier: bench-compute".into(),
            "key: bench-key".into(),
            format!("name: {name}"),
            format!("shared_basedir: {}", base.join("shared").display()),
            format!("scratch_basedir: {}", base.join("scratch").display()),
            "sleep_interval: 1".into(),
            "heartbeat_interval: 5".into(),
            format!("max_empty_claims: {}", self.b.max_empty_claims),
            "loglevel: WARN".into(),
        ]
        .iter()
        .map(|l| format!("{indent}{l}\n"))
        .collect()
    }

    /// A network whose tasks are created and actioned through the user API.
    async fn tasks(&self, tag: &str) -> anyhow::Result<Vec<ScopedKey>> {
        let user = &self.servers.user;
        let scope: Scope = "bench-managers-tasks".parse()?;
        let n = self.b.tasks.max(1);
        let chain = network_chain_json_with_settings(n + 1, n, tag, &[("sleep_seconds", Value::from(self.b.task_seconds))]);
        let network = user.create_network(&chain, &scope, "active").await?;
        let tfs = alchemiscale_client::parse_keys(&user.get(&format!("/networks/{network}/transformations")).await?)?;
        let mut tasks = Vec::with_capacity(n);
        for tf in &tfs {
            tasks.extend(user.create_tasks(tf, 1, None).await?);
        }
        user.action_tasks(&network, &tasks, None).await?;
        Ok(tasks)
    }

    async fn all_complete(&self, tasks: &[ScopedKey]) -> anyhow::Result<bool> {
        let statuses = self.servers.user.get_tasks_status(tasks).await?;
        ensure!(!statuses.iter().any(|s| s.as_deref() == Some("error")), "a task failed");
        Ok(statuses.iter().all(|s| s.as_deref() == Some("complete")))
    }

    /// Seconds until every task is complete (polling every 50 ms), at most 10 minutes.
    async fn drain_time(&self, tasks: &[ScopedKey], t0: Instant) -> anyhow::Result<f64> {
        while !self.all_complete(tasks).await? {
            ensure!(t0.elapsed() < Duration::from_secs(600), "tasks not complete after 10 minutes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}

fn spawn(program: &Path, args: &[&str], config: &Path, log: &Path) -> anyhow::Result<Child> {
    Command::new(program)
        .args(args)
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

fn live_pids(dir: &Path) -> Vec<u32> {
    let pids: Vec<u32> =
        std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()).unwrap_or_default();
    pids.into_iter().filter(|p| alive(*p)).collect()
}

pub async fn run(b: ManagersBench) -> anyhow::Result<()> {
    let servers = BenchServers::start(&b.store).await?;
    let backend = servers.store.backend().name();
    let dir = tempfile::tempdir()?;
    let program: PathBuf = std::env::current_exe().context("locating the alchemiscale executable")?;
    let phase = Phase { servers: &servers, dir: dir.path(), b: &b };
    println!(
        "bench managers: {backend} backend, {} tasks of {} s each, at most {} services (manager cycle {} s, up to {} started per cycle)",
        b.tasks, b.task_seconds, b.max_services, b.manager_interval, b.max_submit_per_cycle
    );

    // baseline: the services started by hand, all at once
    let tasks = phase.tasks("upfront").await?;
    let config = dir.path().join("upfront.yaml");
    std::fs::write(&config, phase.service_yaml("upfront", ""))?;
    let t0 = Instant::now();
    let mut children = Vec::new();
    for i in 0..b.max_services {
        children.push(spawn(&program, &["compute", "synchronous", "-c"], &config, &dir.path().join(format!("upfront-{i}.log")))?);
    }
    let upfront_s = phase.drain_time(&tasks, t0).await?;
    for c in &mut children {
        c.wait()?; // they leave by themselves once idle
    }
    println!("  {} services started up front: all tasks complete in {upfront_s:.2} s", b.max_services);

    // the manager, from nothing
    let tasks = phase.tasks("managed").await?;
    let work = dir.path().join("manager-work");
    let config = dir.path().join("manager.yaml");
    std::fs::write(
        &config,
        format!(
            "name: bench\nmax_compute_services: {}\nmax_submit_per_cycle: {}\nsleep_interval: {}\nloglevel: INFO\nwork_dir: {}\n\
             service:\n{}backend:\n  kind: local\n",
            b.max_services,
            b.max_submit_per_cycle,
            b.manager_interval,
            work.display(),
            phase.service_yaml("managed", "  ")
        ),
    )?;
    let manager_log = dir.path().join("manager.log");
    let t0 = Instant::now();
    let mut manager = spawn(&program, &["compute", "manager", "-c"], &config, &manager_log)?;
    let mut most = 0;
    let managed_s = loop {
        if phase.all_complete(&tasks).await? {
            break t0.elapsed().as_secs_f64();
        }
        ensure!(manager.try_wait()?.is_none(), "the manager exited: {}", std::fs::read_to_string(&manager_log).unwrap_or_default());
        ensure!(t0.elapsed() < Duration::from_secs(600), "tasks not complete after 10 minutes");
        most = most.max(live_pids(&work.join("local-services")).len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = Instant::now();
    while !live_pids(&work.join("local-services")).is_empty() {
        ensure!(done.elapsed() < Duration::from_secs(300), "services still running 5 minutes after the work was done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scale_down_s = done.elapsed().as_secs_f64();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(manager.id() as i32, libc::SIGTERM) };
    let status = manager.wait()?;
    ensure!(status.success(), "the manager ended with {status}");
    let started = std::fs::read_to_string(&manager_log).unwrap_or_default().matches("Started compute service process").count();
    println!("  manager from 0 services: all tasks complete in {managed_s:.2} s ({started} services started, at most {most} at once)");
    println!("  ramp vs up front: {:.2} (up front / managed)", upfront_s / managed_s);
    println!("  last completion to last service gone: {scale_down_s:.2} s");
    let summary = json!({
        "bench": "managers",
        "backend": backend,
        "tasks": b.tasks,
        "task_seconds": b.task_seconds,
        "max_services": b.max_services,
        "managed_s": managed_s,
        "upfront_s": upfront_s,
        "ramp_vs_upfront": upfront_s / managed_s,
        "scale_down_s": scale_down_s,
        "services_started": started,
        "most_services_at_once": most,
    });
    servers.close().await?;
    if std::env::var_os("ALCHEMISCALE_BENCH_KEEP").is_some() {
        println!("  kept: {}", dir.keep().display());
    }
    println!("{summary}");
    Ok(())
}
