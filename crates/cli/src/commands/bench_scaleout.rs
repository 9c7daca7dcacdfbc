//! `alchemiscale bench scaleout`: several API instances on one PostgreSQL store and one
//! object store, behind nginx, drained by many compute services.
//!
//! 1. Start `--instances` `api` and as many `compute api` processes (a scratch schema in
//!    the PostgreSQL database `--url` names; the object store `--s3-bucket …` names, else
//!    a shared directory) and nginx in front of them ([`super::bench_scaleout_cluster`]).
//! 2. Set the work up through nginx as a user would: one network, `--tasks` tasks created
//!    per transformation and actioned.
//! 3. Claim rate through nginx, over one compute-API instance and then over all of them:
//!    `--claimers` clients claim one task per request until every task is claimed; then
//!    they deregister, which returns the tasks to the queue. Claimed keys are checked for
//!    doubles; CPU time per process group says where the limit sits.
//! 4. Drain: `--services` of our compute services (native protocol, each task in a child
//!    process) claim, execute and push every task through nginx over all instances. With
//!    `--kill-one`, one compute-API and one user-API instance are SIGKILLed once a third of
//!    the tasks are done, while a reader polls the user API. Claims left behind by the
//!    killed instance (committed, answer lost) return when their services deregister; a
//!    further round drains them.
//! 5. Check through the user API: every task `complete`, none `running`, exactly one
//!    result per task, each readable (the server checks the blob against the hash recorded
//!    at upload).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alchemiscale_client::{parse_keys, Client};
use alchemiscale_compute::{ExecutorConfig, Service};
use alchemiscale_model::{ComputeServiceId, Scope, ScopedKey};
use alchemiscale_store::identities::{hash_key, IdentityKind};
use anyhow::{ensure, Context};
use clap::Args;
use serde_json::{json, Value};

use super::bench::BenchStore;
use super::bench_scaleout_cluster::{find_nginx, Cluster, ServerArgs};
use crate::store_args::{ObjectArgs, StoreArgs};

const KEY: &str = "scaleout-key";

#[derive(Debug, Args)]
pub struct ScaleoutBench {
    /// Tasks to claim in each claim-rate phase, and to drain.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Compute services draining the tasks (ours, native protocol, one child process per task).
    #[arg(long, default_value_t = 64)]
    pub services: usize,
    /// Concurrent clients in the claim-rate phases (default: --services).
    #[arg(long)]
    pub claimers: Option<usize>,
    /// Instances of each API (user and compute) behind nginx.
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// The nginx program.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// SIGKILL one compute-API and one user-API instance when a third of the tasks are done.
    #[arg(long)]
    pub kill_one: bool,
    /// Tasks actioned per request during the set-up.
    #[arg(long, default_value_t = 10_000)]
    pub action_chunk: usize,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
}

/// CPU seconds (user + system, with reaped children) of processes, from /proc.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            // after ')': state ppid … utime(12th) stime cutime cstime
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            Some((n(11) + n(12) + n(13) + n(14)) / tick)
        })
        .sum()
}

/// Every process on this machine whose command is `postgres` (a local PostgreSQL server).
fn postgres_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .collect()
}

/// CPU seconds per process group, read before and after a phase.
struct CpuMeter {
    groups: Vec<(&'static str, Vec<u32>)>,
    start: Vec<f64>,
    t0: Instant,
}

impl CpuMeter {
    fn start(cluster: &Cluster) -> CpuMeter {
        let groups = vec![
            ("user API instances", cluster.pids(false)),
            ("compute API instances", cluster.pids(true)),
            ("nginx", cluster.nginx_pids()),
            ("PostgreSQL (local)", postgres_pids()),
            ("this process (clients, services, executors)", vec![std::process::id()]),
        ];
        let start = groups.iter().map(|(_, p)| cpu_seconds(p)).collect();
        CpuMeter { groups, start, t0: Instant::now() }
    }

    /// Cores used per group over the phase, largest first.
    fn stop(self) -> Vec<(&'static str, f64)> {
        let secs = self.t0.elapsed().as_secs_f64().max(1e-9);
        let mut v: Vec<(&'static str, f64)> =
            self.groups.iter().zip(&self.start).map(|((name, pids), s0)| (*name, (cpu_seconds(pids) - s0).max(0.0) / secs)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// A suffix no other run shares (S3 prefix, token secret).
fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

fn cores() -> f64 {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64
}

fn describe(cpu: &[(&str, f64)]) -> String {
    cpu.iter().map(|(n, c)| format!("{n} {c:.2}")).collect::<Vec<_>>().join(", ")
}

/// One claim-rate phase: `claimers` clients claim through `url` until every task is
/// claimed, then deregister (their tasks return to the queue). Returns claims/s, the
/// claimed keys and the cores used per group.
async fn claim_phase(
    cluster: &Cluster,
    url: &str,
    claimers: usize,
    tag: &str,
) -> anyhow::Result<(f64, Vec<ScopedKey>, Vec<(&'static str, f64)>)> {
    let mut clients = Vec::with_capacity(claimers);
    let mut ids = Vec::with_capacity(claimers);
    for i in 0..claimers {
        let c = Client::new(url, "scaleout-compute", KEY)?;
        c.login().await?;
        let id = ComputeServiceId::mint(&format!("{tag}{i}"))?;
        c.register(&id, None).await?;
        clients.push(c);
        ids.push(id);
    }
    let deregister = Client::new(url, "scaleout-compute", KEY)?;
    deregister.login().await?;
    let meter = CpuMeter::start(cluster);
    let (claimed, secs) = super::bench_curve::claim_over_http(clients, &ids, usize::MAX, None).await?;
    let cpu = meter.stop();
    for id in &ids {
        deregister.deregister(id).await?;
    }
    Ok((claimed.len() as f64 / secs, claimed.into_iter().map(|(t, _)| t).collect(), cpu))
}

/// Counts of the network's tasks by status, through the user API.
async fn status_counts(user: &Client, network: &ScopedKey) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let v = user.get(&format!("/networks/{network}/status")).await?;
    let obj = v.as_object().context("network status is not an object")?;
    Ok(obj.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0) as usize)).collect())
}

/// One round of `services` compute services, each until the queue is empty.
async fn drain_round(url: &str, services: usize, work: &std::path::Path, round: usize) -> anyhow::Result<(u64, u64, u64)> {
    let mut handles = Vec::with_capacity(services);
    for i in 0..services {
        let base = work.join(format!("r{round}s{i}"));
        let yaml = format!(
            "api_url: {url}\nidentifier: scaleout-compute\nkey: {KEY}\nname: scaleout{round}x{i}\n\
             shared_basedir: {}\nscratch_basedir: {}\nsleep_interval: 1\ndeep_sleep_interval: 1\n\
             heartbeat_interval: 10\nclaim_limit: 1\nmax_empty_claims: 3\nloglevel: WARNING\n\
             client_max_retries: 10\nclient_retry_base_seconds: 1.5\nclient_retry_max_seconds: 5\ntask_logs_max_mb: 0\n",
            base.join("shared").display(),
            base.join("scratch").display(),
        );
        let (settings, _) = alchemiscale_compute::Settings::from_yaml(&yaml)?;
        let service = Service::new(settings, ExecutorConfig::current_exe("python3".into())?)?;
        handles.push(tokio::spawn(async move { service.run().await }));
    }
    let (mut executed, mut succeeded, mut failed) = (0, 0, 0);
    for h in handles {
        let s = h.await?.context("a compute service stopped with an error")?;
        executed += s.executed;
        succeeded += s.succeeded;
        failed += s.failed;
    }
    Ok((executed, succeeded, failed))
}

/// While the drain runs: once a third of the tasks are done, SIGKILL one instance of each
/// API (with `kill`), and keep reading through the user API; returns the reads that failed
/// after the kill and the reads made.
async fn watch(
    user: Client,
    network: ScopedKey,
    tasks: usize,
    kill: bool,
    cluster: Arc<std::sync::Mutex<Cluster>>,
    done: Arc<AtomicBool>,
    killed_at: Arc<AtomicUsize>,
) -> (usize, usize) {
    let (mut failed, mut reads) = (0, 0);
    let mut killed = !kill;
    while !done.load(Ordering::Relaxed) {
        match status_counts(&user, &network).await {
            Ok(counts) => {
                reads += 1;
                let complete = counts.get("complete").copied().unwrap_or(0);
                if !killed && complete >= tasks / 3 {
                    let mut c = cluster.lock().expect("cluster lock");
                    let last = c.compute.len() - 1;
                    c.compute[last].kill();
                    let last = c.api.len() - 1;
                    c.api[last].kill();
                    killed = true;
                    killed_at.store(complete, Ordering::Relaxed);
                }
            }
            Err(_) if killed && kill => failed += 1,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (failed, reads)
}

/// Every task's results through the user API: (tasks with exactly one result, tasks with
/// more than one, results that could not be read).
async fn check_results(url: &str, created: &[(ScopedKey, Vec<ScopedKey>)], readers: usize) -> anyhow::Result<(usize, usize, usize)> {
    let work: Vec<(ScopedKey, ScopedKey)> =
        created.iter().flat_map(|(tf, tasks)| tasks.iter().map(move |t| (tf.clone(), t.clone()))).collect();
    let work = Arc::new(std::sync::Mutex::new(work));
    let mut handles = Vec::new();
    for _ in 0..readers {
        let user = Client::new(url, "scaleout-user", KEY)?;
        user.login().await?;
        let work = work.clone();
        handles.push(tokio::spawn(async move {
            let (mut one, mut many, mut unreadable) = (0, 0, 0);
            loop {
                let next = work.lock().expect("work lock").pop();
                let Some((tf, task)) = next else { break };
                let results = parse_keys(&user.get(&format!("/tasks/{task}/results")).await?)?;
                match results.len() {
                    0 => {}
                    1 => one += 1,
                    _ => many += 1,
                }
                for pdrr in results {
                    let ok = user
                        .get(&format!("/transformations/{tf}/results/{pdrr}"))
                        .await
                        .is_ok_and(|v| v.as_array().and_then(|a| a.first()).and_then(Value::as_str).is_some_and(|s| !s.is_empty()));
                    if !ok {
                        unreadable += 1;
                    }
                }
            }
            anyhow::Ok((one, many, unreadable))
        }));
    }
    let mut total = (0, 0, 0);
    for h in handles {
        let (a, b, c) = h.await??;
        total = (total.0 + a, total.1 + b, total.2 + c);
    }
    Ok(total)
}

pub async fn run(b: ScaleoutBench) -> anyhow::Result<()> {
    ensure!(b.store.url.is_some(), "bench scaleout needs --url postgres://… (several instances share one PostgreSQL store)");
    ensure!(b.tasks >= 1 && b.services >= 1, "--tasks and --services must be at least 1");
    let nginx = find_nginx(&b.nginx)?;
    let bench = BenchStore::open(&b.store).await?;
    let url = bench.postgres_url().context("--url must name a PostgreSQL database")?;
    let all: Scope = "*-*-*".parse()?;
    for (kind, id) in [(IdentityKind::User, "scaleout-user"), (IdentityKind::Compute, "scaleout-compute")] {
        bench.store.add_identity(kind, id, &hash_key(KEY)?, false).await?;
        bench.store.add_scopes(kind, id, std::slice::from_ref(&all)).await?;
    }
    let work = tempfile::tempdir()?;
    let mut objects = b.objects.clone();
    let mut common = vec!["--url".to_string(), url.clone()];
    let object_store = if objects.s3_bucket.as_deref().is_some_and(|s| !s.is_empty()) {
        objects.s3_prefix = format!("{}scaleout-{}", objects.s3_prefix, unique());
        common.extend(super::bench_objects::object_flags(&objects));
        format!("s3://{}/{}", objects.s3_bucket.as_deref().unwrap_or_default(), objects.s3_prefix)
    } else {
        let dir = work.path().join("objects");
        common.extend(["--objects-dir".to_string(), dir.display().to_string()]);
        format!("directory {}", dir.display())
    };
    let args = ServerArgs { common, jwt_secret: format!("scaleout-{}", unique()) };
    let cluster = Cluster::start(&nginx, b.instances, &args).await?;
    println!(
        "bench scaleout: {n} api + {n} compute api processes on PostgreSQL (scratch schema), objects in {object_store}, behind {}",
        nginx.display(),
        n = b.instances
    );

    // ---- set-up through nginx, as a user would ----
    let user = Client::new(&cluster.user_url, "scaleout-user", KEY)?;
    user.login().await?;
    let t = Instant::now();
    let scope: Scope = "scaleout-campaign-project".parse()?;
    let (network, created) = super::bench_curve::set_up(&user, &scope, b.tasks, b.action_chunk).await.context("setting up")?;
    println!("  set-up: {} tasks created and actioned through the user API in {:.1} s", b.tasks, t.elapsed().as_secs_f64());

    // ---- claim rate through nginx: one instance, then all ----
    let claimers = b.claimers.unwrap_or(b.services).max(1);
    let mut double_claims = 0;
    let mut rates = Vec::new();
    let mut cpus = Vec::new();
    for (label, url, tag) in [("1 instance", &cluster.compute_one_url, "one"), ("all instances", &cluster.compute_url, "all")] {
        let (rate, claimed, cpu) = claim_phase(&cluster, url, claimers, tag).await.with_context(|| format!("claims through {label}"))?;
        let distinct: HashSet<&ScopedKey> = claimed.iter().collect();
        double_claims += claimed.len() - distinct.len();
        ensure!(distinct.len() == b.tasks, "{label}: {} of {} tasks claimed", distinct.len(), b.tasks);
        println!(
            "  claims through nginx over {label}: {rate:.0}/s ({claimers} clients, one task per request); cores used: {}",
            describe(&cpu)
        );
        rates.push(rate);
        cpus.push(cpu);
    }
    let counts = status_counts(&user, &network).await?;
    ensure!(counts.get("waiting") == Some(&b.tasks), "after deregistration the tasks are not all waiting again: {counts:?}");

    // ---- drain with compute services ----
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let (compute_url, user_url) = {
        let c = cluster.lock().expect("cluster lock");
        (c.compute_url.clone(), c.user_url.clone())
    };
    let reader = Client::new(&user_url, "scaleout-user", KEY)?;
    reader.login().await?;
    let done = Arc::new(AtomicBool::new(false));
    let killed_at = Arc::new(AtomicUsize::new(0));
    let watcher = tokio::spawn(watch(reader, network.clone(), b.tasks, b.kill_one, cluster.clone(), done.clone(), killed_at.clone()));
    let meter = CpuMeter::start(&cluster.lock().expect("cluster lock"));
    let t = Instant::now();
    let (mut executed, mut succeeded, mut failed) = (0, 0, 0);
    let mut rounds = 0;
    loop {
        rounds += 1;
        let (e, s, f) = drain_round(&compute_url, b.services, work.path(), rounds).await?;
        (executed, succeeded, failed) = (executed + e, succeeded + s, failed + f);
        let counts = status_counts(&user, &network).await?;
        let open = counts.get("waiting").copied().unwrap_or(0) + counts.get("running").copied().unwrap_or(0);
        if open == 0 || rounds == 3 {
            break;
        }
        println!("  round {rounds} left {open} tasks open (claims whose answer was lost return on deregistration); another round");
    }
    let drain_s = t.elapsed().as_secs_f64();
    let drain_cpu = meter.stop();
    done.store(true, Ordering::Relaxed);
    let (read_failures, reads) = watcher.await?;
    println!(
        "  drain: {} services, {executed} tasks executed ({failed} failed) in {drain_s:.1} s = {:.0} tasks/s, {rounds} round(s); cores used: {}",
        b.services,
        executed as f64 / drain_s,
        describe(&drain_cpu)
    );
    if b.kill_one {
        println!(
            "  killed one compute-API and one user-API instance at {} complete tasks; user-API reads failed afterwards: {read_failures} of {reads}",
            killed_at.load(Ordering::Relaxed)
        );
    }

    // ---- checks through the user API ----
    let counts = status_counts(&user, &network).await?;
    let complete = counts.get("complete").copied().unwrap_or(0);
    let left_running = counts.get("running").copied().unwrap_or(0);
    let left_waiting = counts.get("waiting").copied().unwrap_or(0);
    let (one, many, unreadable) = check_results(&user_url, &created, 16).await?;
    double_claims += many;
    // a result acknowledged to a service but not found, or found but not readable
    let lost_results = (succeeded as usize).saturating_sub(one + many) + unreadable + complete.saturating_sub(one + many);
    println!(
        "  after: {complete} complete, {left_running} running, {left_waiting} waiting; {one} tasks with one readable result, {many} with more; {unreadable} unreadable"
    );

    let (c1, c3) = (rates[0], rates[1]);
    let top = &cpus[1][0];
    let busy: f64 = cpus[1].iter().map(|(_, c)| c).sum();
    let limit = if busy >= 0.75 * cores() {
        format!(
            "CPU: {busy:.2} of this machine's {:.0} cores were busy during the {}-instance claims, most of them in {} ({:.2}); \
             every process here shares those cores, so more instances on this machine cannot add claims — \
             spread the instances and PostgreSQL over machines",
            cores(),
            b.instances,
            top.0,
            top.1
        )
    } else {
        format!(
            "not CPU ({busy:.2} of {:.0} cores busy): the claim transactions wait on each other in PostgreSQL, or the clients on latency",
            cores()
        )
    };
    println!("  claims/s with {} compute-API instances against 1: {:.2}x; limit: {limit}", b.instances, c3 / c1);

    let summary = json!({
        "bench": "scaleout",
        "backend": "postgres",
        "objects": if b.objects.s3_bucket.is_some() { "s3" } else { "local" },
        "instances": b.instances,
        "services": b.services,
        "claimers": claimers,
        "tasks": b.tasks,
        "claims_per_s_1": c1,
        "claims_per_s_3": c3,
        "ratio_3_vs_1": c3 / c1,
        "drain_s": drain_s,
        "drain_tasks_per_s": executed as f64 / drain_s,
        "rounds": rounds,
        "executed": executed,
        "failed": failed,
        "complete": complete,
        "left_running": left_running,
        "left_waiting": left_waiting,
        "readable_results": one + many - unreadable.min(one + many),
        "double_claims": double_claims,
        "lost_results": lost_results,
        "killed_one": b.kill_one,
        "killed_at_complete": killed_at.load(Ordering::Relaxed),
        "read_failures_after_kill": read_failures,
        "cores_used_claims_1": cpus[0].iter().map(|(n, c)| (n.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "cores_used_claims_3": cpus[1].iter().map(|(n, c)| (n.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "cores_used_drain": drain_cpu.iter().map(|(n, c)| (n.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "limit": limit,
    });
    drop(cluster);
    bench.close().await?;
    println!("{summary}");
    Ok(())
}
