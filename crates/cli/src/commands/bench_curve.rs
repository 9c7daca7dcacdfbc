//! `alchemiscale bench claims --curve`: the claim rate and the server's memory as the work
//! grows, from 1,000 to 1,000,000 actioned tasks.
//!
//! For every size the command starts fresh servers as separate processes (`serve` on a
//! temporary SQLite store; with `--url postgres://…`, `api` and `compute api` on a scratch
//! schema) and sets the work up through the user API as a user would — one network, its
//! tasks created per transformation and actioned in chunks; no ANALYZE, no store access
//! before the clock. Once every size is set up (and the kernel has written out the dirty
//! pages the setups left, `sync`), it measures in `--curve-rounds` rounds, each visiting
//! every size in turn (in alternating order), with `--services` concurrent services
//! claiming one task per request: C11 (`POST /claim`), C10 (`POST /taskhubs/{sk}/claim`)
//! and the store's bare claim transaction (this process, same store, no HTTP). Each route's
//! figure is the median of its rounds; after each route of a round its services
//! deregister, so their tasks return to the queue and every round meets a queue of the
//! same size, and the store settles (its log checkpointed, the disks synced) before the
//! next clock starts. Interleaving the sizes means a machine that slows down for a while (a shared
//! VM's disk, say) weighs on every size alike rather than on whichever was being measured.
//! Memory is the server processes' anonymous resident memory after the claims and
//! `--idle-seconds` of idleness, and their peak resident memory.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alchemiscale_client::{parse_keys, Client};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{ComputeServiceId, Scope, ScopedKey};
use alchemiscale_store::identities::{hash_key, IdentityKind};
use alchemiscale_store::{Store, StoreLocation};
use anyhow::{bail, ensure, Context};
use serde_json::json;

use super::bench::{median, BenchStore};
use super::bench_claims::ClaimsBench;

pub(crate) const KEY: &str = "curve-key";
const JWT: &str = "curve-jwt-secret";

/// The servers under test: their processes and logged-in clients.
pub(crate) struct Servers {
    children: Vec<Child>,
    pub(crate) user: Client,
    pub(crate) compute_url: String,
    /// The store they serve, for the bare claims.
    location: StoreLocation,
    bench: Option<BenchStore>,
    _dir: tempfile::TempDir,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop_processes();
    }
}

impl Servers {
    fn stop_processes(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// Stop the processes and drop the scratch schema (on PostgreSQL); dropping `Servers`
    /// without this (a bench that fails) only stops the processes.
    pub(crate) async fn close(mut self) -> anyhow::Result<()> {
        self.stop_processes();
        match self.bench.take() {
            Some(bench) => bench.close().await,
            None => Ok(()),
        }
    }
}

/// A free port for a server process to listen on, below the kernel's ephemeral range (so the
/// bench's own outgoing connections cannot take it before the server binds).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    portpicker::pick_unused_port().ok_or_else(|| anyhow::anyhow!("no free port on 127.0.0.1"))
}

/// A `/proc/<pid>/status` figure in kB, as bytes.
pub(crate) fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn spawn(args: &[String], data_dir: &Path) -> anyhow::Result<Child> {
    super::bench::die_with_parent(&mut Command::new(std::env::current_exe()?))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .args(["--loglevel", "warn", "--jwt-secret", JWT])
        .env_remove("ALCHEMISCALE_STATE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start a server process")
}

impl Servers {
    /// `serve` on a temporary SQLite store, or with `--url postgres://…` `api` and
    /// `compute api` on a scratch schema; a user and a compute identity with every scope.
    pub(crate) async fn start(args: &crate::store_args::StoreArgs) -> anyhow::Result<Servers> {
        let dir = tempfile::tempdir()?;
        let (user_port, compute_port) = (free_port()?, free_port()?);
        let (location, bench, children) = if args.url.is_some() {
            // a scratch schema, identities added as `identity add` would, two processes
            let bench = BenchStore::open(args).await?;
            add_identities(&bench.store).await?;
            let Some(url) = bench.postgres_url() else { bail!("--url must name a PostgreSQL database") };
            let api = spawn(&["api".into(), "--url".into(), url.clone(), "--port".into(), user_port.to_string()], dir.path())?;
            let compute = spawn(
                &["compute".into(), "api".into(), "--url".into(), url.clone(), "--port".into(), compute_port.to_string()],
                dir.path(),
            )?;
            (StoreLocation::Postgres { url }, Some(bench), vec![api, compute])
        } else {
            // the embedded default: one `serve` process over the data directory's SQLite
            let location = StoreLocation::Sqlite { path: dir.path().join("state.db") };
            let store = Store::connect(&location, &args.options()).await?;
            store.init().await?;
            add_identities(&store).await?;
            store.close().await;
            let serve = spawn(
                &[
                    "serve".into(),
                    "--no-strategist".into(),
                    "--port".into(),
                    user_port.to_string(),
                    "--compute-port".into(),
                    compute_port.to_string(),
                ],
                dir.path(),
            )?;
            (location, None, vec![serve])
        };
        let user = Client::new(&format!("http://127.0.0.1:{user_port}"), "curve-user", KEY)?;
        let compute_url = format!("http://127.0.0.1:{compute_port}");
        let servers = Servers { children, user, compute_url, location, bench, _dir: dir };
        for _ in 0..200 {
            if servers.user.login().await.is_ok() && servers.compute().await.is_ok() {
                return Ok(servers);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the servers under test did not start")
    }

    pub(crate) async fn compute(&self) -> anyhow::Result<Client> {
        let c = Client::new(&self.compute_url, "curve-compute", KEY)?;
        c.login().await?;
        Ok(c)
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Summed over the server processes, MB.
    fn memory_mb(&self, field: &str) -> f64 {
        self.pids().iter().filter_map(|&p| proc_status_bytes(p, field)).sum::<u64>() as f64 / 1e6
    }
}

async fn add_identities(store: &Store) -> anyhow::Result<()> {
    let all: Scope = "*-*-*".parse()?;
    for (kind, id) in [(IdentityKind::User, "curve-user"), (IdentityKind::Compute, "curve-compute")] {
        store.add_identity(kind, id, &hash_key(KEY)?, false).await?;
        store.add_scopes(kind, id, std::slice::from_ref(&all)).await?;
    }
    Ok(())
}

/// `ids.len()` services claim one task per request over HTTP — from `hub` (C10) or
/// across scopes (C11) — until `limit` claims are made or nothing is left; returns the
/// claimed tasks and the seconds taken. Clients log in before the clock starts.
pub(crate) async fn claim_over_http(
    clients: Vec<Client>,
    ids: &[ComputeServiceId],
    limit: usize,
    hub: Option<&ScopedKey>,
) -> anyhow::Result<(Vec<(ScopedKey, String)>, f64)> {
    let done = Arc::new(AtomicUsize::new(0));
    let path = hub.map(|h| format!("/taskhubs/{h}/claim")).unwrap_or_else(|| "/claim".into());
    let start = Instant::now();
    let mut handles = Vec::new();
    for (id, client) in ids.iter().zip(clients) {
        let (id, done, path) = (id.to_string(), done.clone(), path.clone());
        let body = match hub {
            Some(_) => json!({"compute_service_id": id, "count": 1, "protocols": null}),
            None => {
                json!({"scopes": [{"org": null, "campaign": null, "project": null}], "compute_service_id": id, "count": 1, "protocols": null})
            }
        };
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while done.load(Ordering::Relaxed) < limit {
                let v = client.post(&path, &body).await?;
                match v.as_array().and_then(|a| a.first()).and_then(|x| x.as_str()) {
                    Some(k) => {
                        mine.push((k.parse::<ScopedKey>().map_err(|e| anyhow::anyhow!("{e}"))?, id.clone()));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
            anyhow::Ok(mine)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    Ok((all, start.elapsed().as_secs_f64()))
}

/// `services` services (registered before the clock starts, named `<prefix><i>`) claim
/// one task per call through the store itself — no HTTP — in `scopes` until `limit`
/// claims are made or nothing is left; returns the claimed tasks, the seconds taken and
/// the services (still registered, holding their claims).
pub(crate) async fn bare_claims(
    store: &Store,
    scopes: &[Scope],
    services: usize,
    prefix: &str,
    limit: usize,
) -> anyhow::Result<(Vec<ScopedKey>, f64, Vec<ComputeServiceId>)> {
    let mut ids = Vec::with_capacity(services);
    for i in 0..services {
        let id = ComputeServiceId::mint(&format!("{prefix}{i}"))?;
        store.register_compute_service(&id, None).await?;
        ids.push(id);
    }
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for id in ids.clone() {
        let (store, scopes, done) = (store.clone(), scopes.to_vec(), done.clone());
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while done.load(Ordering::Relaxed) < limit {
                match store.claim_tasks(&scopes, &[], &id, 1, None, 600, 3).await? {
                    alchemiscale_store::compute::ClaimOutcome::Claimed(v) if v[0].is_some() => {
                        mine.extend(v.into_iter().flatten());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            anyhow::Ok(mine)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    Ok((all, start.elapsed().as_secs_f64(), ids))
}

/// One network in `scope` with `tasks` actioned tasks, through the user API as a user would
/// (tasks created per transformation, actioned in chunks of `action_chunk`); returns the
/// network and each transformation with its tasks.
pub(crate) async fn set_up(
    user: &Client,
    scope: &Scope,
    tasks: usize,
    action_chunk: usize,
) -> anyhow::Result<(ScopedKey, Vec<(ScopedKey, Vec<ScopedKey>)>)> {
    let transformations = (tasks / 100).clamp(10, 2000);
    let network =
        user.create_network(&network_chain_json(transformations.clamp(2, 200), transformations, "curve"), scope, "active").await?;
    let tfs = parse_keys(&user.get(&format!("/networks/{network}/transformations")).await?)?;
    ensure!(tfs.len() == transformations, "the network has {} transformations", tfs.len());
    let mut created = Vec::with_capacity(tfs.len());
    for (i, tf) in tfs.into_iter().enumerate() {
        let n = tasks / transformations + usize::from(i < tasks % transformations);
        let tasks = user.create_tasks(&tf, n as i64, None).await?;
        created.push((tf, tasks));
    }
    let all: Vec<ScopedKey> = created.iter().flat_map(|(_, t)| t.iter().cloned()).collect();
    for chunk in all.chunks(action_chunk.max(1)) {
        let actioned = user.action_tasks(&network, chunk, None).await?;
        ensure!(actioned.iter().all(Option::is_some), "some tasks were not actioned");
    }
    Ok((network, created))
}

/// Figures of one size.
struct Point {
    size: usize,
    setup_s: f64,
    /// Median of the rounds, and the rounds.
    c11: f64,
    c10: f64,
    bare: f64,
    rounds: serde_json::Value,
    rss_mb: f64,
    peak_mb: f64,
    /// Tasks handed out twice within one round (the rounds give their tasks back).
    double_claims: usize,
}

fn doubles<'a>(keys: impl IntoIterator<Item = &'a ScopedKey>) -> usize {
    let mut seen = HashSet::new();
    keys.into_iter().filter(|k| !seen.insert(*k)).count()
}

/// One size under measurement: its servers, set up and waiting, and the rounds so far.
struct Size {
    size: usize,
    setup_s: f64,
    servers: Servers,
    /// Claims per route and round.
    k: usize,
    compute: Client,
    hub: ScopedKey,
    /// The same store, for the bare claim transaction (this process, no HTTP).
    store: Store,
    c11: Vec<f64>,
    c10: Vec<f64>,
    bare: Vec<f64>,
    double_claims: usize,
}

/// Start servers for `size` tasks and set the work up through the user API.
async fn prepare(b: &ClaimsBench, size: usize) -> anyhow::Result<Size> {
    let servers = Servers::start(&b.store).await?;
    let t = Instant::now();
    set_up(&servers.user, &"curve-campaign-project".parse()?, size, b.action_chunk).await.context("setting up through the user API")?;
    let setup_s = t.elapsed().as_secs_f64();
    let compute = servers.compute().await?;
    let hub = compute.query_taskhubs(&[Scope::all()]).await?.pop().context("no task hub")?;
    let store = Store::connect(&servers.location, &b.store.options()).await?;
    let k = b.curve_claims.min(size / 4).max(b.services);
    Ok(Size { size, setup_s, servers, k, compute, hub, store, c11: vec![], c10: vec![], bare: vec![], double_claims: 0 })
}

impl Size {
    /// One round: C11, C10 and the bare transaction, each with fresh services that
    /// deregister afterwards (their tasks go back to the queue).
    async fn round(&mut self, b: &ClaimsBench, round: usize) -> anyhow::Result<()> {
        let hub = self.hub.clone();
        for (route, c10) in [(None, false), (Some(&hub), true)] {
            let mut ids = Vec::new();
            let mut clients = Vec::with_capacity(b.services);
            for i in 0..b.services {
                let id = ComputeServiceId::mint(&format!("curve{round}r{}s{i}", u8::from(c10)))?;
                self.compute.post(&format!("/computeservice/{id}/register"), &json!({"compute_manager_id": null})).await?;
                ids.push(id);
                clients.push(self.servers.compute().await?);
            }
            let (got, secs) = claim_over_http(clients, &ids, self.k, route).await?;
            ensure!(got.len() >= self.k, "claimed {} of {}", got.len(), self.k);
            if c10 { &mut self.c10 } else { &mut self.c11 }.push(got.len() as f64 / secs);
            self.double_claims += doubles(got.iter().map(|(t, _)| t));
            for id in &ids {
                self.compute.deregister(id).await?;
            }
            self.settle().await?;
        }
        let (mine, secs, ids) = bare_claims(&self.store, &[Scope::all()], b.services, &format!("bare{round}s"), self.k).await?;
        self.bare.push(mine.len() as f64 / secs);
        self.double_claims += doubles(&mine);
        for id in &ids {
            self.store.deregister_compute_service(id).await?;
        }
        self.settle().await
    }

    /// Let the store settle after a route's services deregistered. Their tasks (thousands)
    /// went back to the queue: a burst of writes that is the bench's doing, not the
    /// claims'. At 1,000,000 tasks nearly every one of them dirties a page of its own;
    /// copied back into the database file (checkpoint) and written out by the kernel while
    /// the next route is measured, they would weigh on that route, and more on the large
    /// store than on the small one. So the log is checkpointed and the disks synced before
    /// the next clock starts; what the claims themselves write is still checkpointed inside
    /// their measurement.
    async fn settle(&self) -> anyhow::Result<()> {
        self.store.checkpoint_log().await?;
        sync_disks().await
    }

    /// The figures, memory read now (after the idle time), and the servers stopped.
    async fn finish(self) -> anyhow::Result<Point> {
        self.store.close().await;
        let rounds = json!({"c11": self.c11, "c10": self.c10, "bare": self.bare});
        let (rss_mb, peak_mb) = (self.servers.memory_mb("RssAnon:"), self.servers.memory_mb("VmHWM:"));
        self.servers.close().await?;
        Ok(Point {
            size: self.size,
            setup_s: self.setup_s,
            c11: median(self.c11),
            c10: median(self.c10),
            bare: median(self.bare),
            rounds,
            rss_mb,
            peak_mb,
            double_claims: self.double_claims,
        })
    }
}

/// Every size set up, then measured in interleaved rounds (each round visits every size,
/// in alternating order), so a machine that slows down for a while weighs on all sizes
/// alike instead of on whichever size was measured then.
async fn measure(b: &ClaimsBench) -> anyhow::Result<Vec<Point>> {
    let mut sizes = Vec::with_capacity(b.sizes.len());
    for &size in &b.sizes {
        sizes.push(prepare(b, size).await.with_context(|| format!("setting up {size} tasks"))?);
    }
    // the setups leave up to hundreds of MB of the stores' files dirty in the kernel's page
    // cache; written back in the middle of a measurement they would weigh on whichever
    // size happened to be measured then, so they are written out before the clock
    sync_disks().await?;
    for round in 0..b.curve_rounds.max(1) {
        let order: Vec<usize> = if round % 2 == 0 { (0..sizes.len()).collect() } else { (0..sizes.len()).rev().collect() };
        for i in order {
            let size = sizes[i].size;
            sizes[i].round(b, round).await.with_context(|| format!("size {size}, round {round}"))?;
        }
    }
    tokio::time::sleep(Duration::from_secs(b.idle_seconds)).await;
    let mut points = Vec::with_capacity(sizes.len());
    for s in sizes {
        points.push(s.finish().await?);
    }
    Ok(points)
}

/// Have the kernel write out every dirty page (sync(2)).
async fn sync_disks() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(|| {
        // SAFETY: sync(2) takes no arguments and cannot fail
        unsafe { libc::sync() }
    })
    .await?;
    Ok(())
}

pub async fn run(b: ClaimsBench) -> anyhow::Result<()> {
    ensure!(!b.sizes.is_empty() && b.sizes.iter().all(|&s| s >= 4 * b.services), "every size must hold at least 4 tasks per service");
    let backend = if b.store.url.is_some() { "postgres" } else { "sqlite" };
    println!(
        "bench claims --curve: {backend} backend, {} services claiming one task per request, up to {} claims per route, size and round, {} rounds (medians shown)",
        b.services,
        b.curve_claims,
        b.curve_rounds.max(1)
    );
    println!("  {:>9}  {:>8}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}", "tasks", "setup s", "C11 /s", "C10 /s", "bare /s", "anon MB", "peak MB");
    let points = measure(&b).await?;
    let mut double_claims = 0;
    for p in &points {
        double_claims += p.double_claims;
        println!(
            "  {:>9}  {:>8.1}  {:>9.0}  {:>9.0}  {:>9.0}  {:>8.0}  {:>8.0}",
            p.size, p.setup_s, p.c11, p.c10, p.bare, p.rss_mb, p.peak_mb
        );
    }
    let per = |f: fn(&Point) -> f64| points.iter().map(f).collect::<Vec<f64>>();
    // the largest size against 10,000 tasks (or the smallest size measured)
    let base = points.iter().find(|p| p.size == 10_000).unwrap_or(&points[0]);
    let last = points.last().expect("at least one size");
    println!(
        "  at {} tasks against {}: C11 {:.2}x, C10 {:.2}x, bare {:.2}x; {double_claims} double claims",
        last.size,
        base.size,
        last.c11 / base.c11,
        last.c10 / base.c10,
        last.bare / base.bare
    );
    let summary = json!({
        "bench": "claims-curve",
        "backend": backend,
        "services": b.services,
        "sizes": per(|p| p.size as f64),
        "setup_s": per(|p| p.setup_s),
        "claims_per_s": {"c11": per(|p| p.c11), "c10": per(|p| p.c10), "bare": per(|p| p.bare)},
        "rounds": b.curve_rounds.max(1),
        "claims_per_s_rounds": points.iter().map(|p| p.rounds.clone()).collect::<Vec<_>>(),
        "largest_vs_10k": {"c11": last.c11 / base.c11, "c10": last.c10 / base.c10, "bare": last.bare / base.bare},
        "rss_mb": per(|p| p.rss_mb),
        "peak_rss_mb": per(|p| p.peak_mb),
        "idle_seconds": b.idle_seconds,
        "double_claims": double_claims,
    });
    println!("{summary}");
    Ok(())
}
