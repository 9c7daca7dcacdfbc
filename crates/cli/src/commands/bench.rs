//! `alchemiscale bench …`: performance figures measured on this machine, each against a
//! baseline measured in the same run. Never a pass/fail test.

use std::time::Instant;

use alchemiscale_model::chain::{network_info, KeyedChain};
use alchemiscale_model::json::parse;
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{NetworkState, Scope};
use alchemiscale_store::scratch::ScratchSchema;
use alchemiscale_store::{Store, StoreLocation};
use anyhow::{ensure, Context};
use clap::{Args, Subcommand};

use crate::store_args::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Submit and retrieve a synthetic network on the selected store backend.
    ///
    /// Uses a temporary SQLite file, or with --url postgres://… a scratch schema that is
    /// dropped afterwards: the bench never writes into a real store. The baseline is the
    /// time to parse and validate the same chain (pure CPU work every submission needs).
    /// Last line: a JSON object with submit_s, retrieve_s, transformations, backend ….
    Store(StoreBench),
    /// The user API over HTTP with auth, against a server it starts itself (temporary
    /// SQLite store, or a scratch PostgreSQL schema with --url): network submission and
    /// retrieval, bulk task creation, actioning, bulk statuses, and GET /ping throughput
    /// against a bare axum /ping measured in the same run. Last line: a JSON object with
    /// submit_s, retrieve_s, create_tasks_s, action_s, status_s, ping_rps ….
    Api(super::bench_api::ApiBench),
    /// Claiming over HTTP with auth: simulated compute services each claiming one task
    /// per request, then pushing results; the store's bare claim transaction rate is
    /// measured in the same run, double claims are counted, and a phase with many hubs
    /// is compared with the one-hub rate. Last line: a JSON object with claims_per_s,
    /// raw_claims_per_s, pushes_per_s, double_claims, backend ….
    ///
    /// With --curve: the claim rate (C11, C10, bare store) and the server processes'
    /// memory at growing numbers of actioned tasks (--sizes, default 1,000 to 1,000,000),
    /// each set up through the user API on fresh servers. Last line: a JSON object with
    /// sizes, claims_per_s, rss_mb, double_claims, backend ….
    Claims(super::bench_claims::ClaimsBench),
    /// Results through the API against an `alchemiscale serve` process it starts: many
    /// small results pushed and downloaded concurrently, a few large ones one at a time,
    /// the disk's sequential write rate measured in the same run (median of three
    /// readings), the server's CPU per large push and its peak memory. Give --s3-bucket
    /// (and --s3-endpoint …) to test S3. Last line: a JSON object with small_push_per_s,
    /// small_get_per_s, large_mb_per_s, backend ….
    Objects(super::bench_objects::ObjectsBench),
    /// Strategist cycles over many large networks (default 100 x 2,000 transformations,
    /// ConnectivityStrategy, full mode, half of each network's transformations holding a
    /// result) on the selected store backend, against the store's bare read of the same
    /// graphs and result counts measured in the same run. Last line: a JSON object with
    /// cycle_s, networks, transformations, baseline_s, backend ….
    Strategist(super::bench_strategist::StrategistBench),
    /// A compute manager (local backend) scaling from no services to at most 8 to drain
    /// 200 tasks of ~0.2 s, against 8 services started up front in the same run, and the
    /// time its services take to leave once the work is done. Last line: a JSON object
    /// with managed_s, upfront_s, ramp_vs_upfront, scale_down_s ….
    Managers(super::bench_managers::ManagersBench),
    /// Several `api` and `compute api` processes (--instances, default 3 each) on one
    /// PostgreSQL store (--url) and one object store (--s3-bucket …, else a shared
    /// directory), behind nginx configured from deploy/nginx/alchemiscale.conf: the claim
    /// rate through nginx over one compute-API instance against all of them in the same
    /// run, with the CPU each process group used; then --services of our compute services
    /// drain --tasks tasks (with --kill-one, one instance of each API is SIGKILLed midway),
    /// and every task is checked complete with one readable result. Last line: a JSON
    /// object with claims_per_s_1, claims_per_s_3, double_claims, lost_results, tasks ….
    Scaleout(super::bench_scaleout::ScaleoutBench),
    /// The web console with a million tasks in the store (--tasks): the overview and the
    /// page of a 2,000-transformation network (--transformations) fetched over HTTP with
    /// a session, first render and median of --repeats more, against the user API's
    /// listing of the same network's transformations measured in the same run. Fresh
    /// servers on a temporary SQLite store (or a scratch PostgreSQL schema with --url),
    /// set up through the APIs. Last line: a JSON object with overview_ms, network_ms,
    /// tasks, backend ….
    Console(super::bench_console::ConsoleBench),
}

#[derive(Debug, Args)]
pub struct StoreBench {
    /// Chemical systems in the network.
    #[arg(long, default_value_t = 1000)]
    pub systems: usize,
    /// Transformations in the network.
    #[arg(long, default_value_t = 2000)]
    pub transformations: usize,
    /// Repetitions (each with a fresh network); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Ask the kernel to SIGTERM the child when this process dies, so that a bench stopped
/// by a signal leaves no servers behind.
pub(crate) fn die_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe and touches only the child being started
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        })
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite timings"));
    v[v.len() / 2]
}

/// A store for benchmarking and how to clean it up.
pub struct BenchStore {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
    scratch: Option<ScratchSchema>,
}

impl BenchStore {
    /// A temporary SQLite store, or a scratch schema in the PostgreSQL database `args` names.
    pub async fn open(args: &StoreArgs) -> anyhow::Result<BenchStore> {
        let dir = tempfile::tempdir()?;
        let given = if args.url.is_some() { Some(args.location(dir.path())?) } else { None };
        let (location, scratch, dir) = match given {
            Some(StoreLocation::Postgres { url }) => {
                let scratch = ScratchSchema::create(&url).await.context("cannot create a scratch schema")?;
                (scratch.location.clone(), Some(scratch), None)
            }
            _ => (StoreLocation::Sqlite { path: dir.path().join("bench.db") }, None, Some(dir)),
        };
        let store = Store::connect(&location, &args.options()).await?;
        store.init().await?;
        Ok(BenchStore { store, _dir: dir, scratch })
    }

    /// The scratch schema's URL, when the bench store is on PostgreSQL.
    pub fn postgres_url(&self) -> Option<String> {
        match &self.scratch {
            Some(ScratchSchema { location: StoreLocation::Postgres { url }, .. }) => Some(url.clone()),
            _ => None,
        }
    }

    pub async fn close(self) -> anyhow::Result<()> {
        self.store.close().await;
        if let Some(s) = self.scratch {
            s.drop().await?;
        }
        Ok(())
    }
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Store(b) => store_bench(b).await,
        BenchCommand::Api(b) => super::bench_api::run(b).await,
        BenchCommand::Claims(b) if b.curve => super::bench_curve::run(b).await,
        BenchCommand::Claims(b) => super::bench_claims::run(b).await,
        BenchCommand::Objects(b) => super::bench_objects::run(b).await,
        BenchCommand::Strategist(b) => super::bench_strategist::run(b).await,
        BenchCommand::Managers(b) => super::bench_managers::run(b).await,
        BenchCommand::Scaleout(b) => super::bench_scaleout::run(b).await,
        BenchCommand::Console(b) => super::bench_console::run(b).await,
    }
}

async fn store_bench(b: StoreBench) -> anyhow::Result<()> {
    ensure!(b.systems >= 2, "--systems must be at least 2");
    ensure!(b.repeat >= 1, "--repeat must be at least 1");
    let bench = BenchStore::open(&b.store).await?;
    let store = &bench.store;
    let backend = store.backend().name();
    println!(
        "bench store: {} backend, {} chemical systems, {} transformations, {} repetitions",
        backend, b.systems, b.transformations, b.repeat
    );
    let (mut parse_s, mut submit_s, mut retrieve_s, mut resubmit_s) = (vec![], vec![], vec![], vec![]);
    let (mut objects, mut bytes) = (0, 0);
    for rep in 0..b.repeat {
        let text = network_chain_json(b.systems, b.transformations, &format!("bench{rep}"));
        bytes = text.len();
        let t = Instant::now();
        let chain = KeyedChain::from_value(parse(&text)?)?;
        network_info(&chain)?;
        parse_s.push(t.elapsed().as_secs_f64());
        objects = chain.len();
        let scope: Scope = format!("bench-rep{rep}-store").parse()?;

        let t = Instant::now();
        let created = store.create_network(&chain, &scope, NetworkState::Active).await?;
        submit_s.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let back = store.get_chain(&created.network).await?;
        retrieve_s.push(t.elapsed().as_secs_f64());
        ensure!(back == text, "retrieved chain differs from the submitted one");

        let t = Instant::now();
        let again = store.create_network(&chain, &scope, NetworkState::Active).await?;
        resubmit_s.push(t.elapsed().as_secs_f64());
        ensure!(!again.created, "resubmission created a second network");
    }
    let (parse_s, submit_s, retrieve_s, resubmit_s) = (median(parse_s), median(submit_s), median(retrieve_s), median(resubmit_s));
    println!("  chain: {objects} objects, {:.1} MB of JSON", bytes as f64 / 1e6);
    println!("  baseline: parse + validate the chain   {parse_s:>9.4} s");
    println!("  submit (one transaction)               {submit_s:>9.4} s   ({:.1}x the baseline)", submit_s / parse_s);
    println!("  retrieve (byte-identical chain)        {retrieve_s:>9.4} s   ({:.1}x the baseline)", retrieve_s / parse_s);
    println!("  resubmit (idempotent)                  {resubmit_s:>9.4} s");
    println!("  (upstream alchemiscale reported 103 s to submit and 71 min to retrieve a network of about this size)");
    let summary = serde_json::json!({
        "bench": "store",
        "backend": backend,
        "chemical_systems": b.systems,
        "transformations": b.transformations,
        "objects": objects,
        "chain_bytes": bytes,
        "parse_s": parse_s,
        "submit_s": submit_s,
        "retrieve_s": retrieve_s,
        "resubmit_s": resubmit_s,
        "submit_vs_parse": submit_s / parse_s,
        "retrieve_vs_parse": retrieve_s / parse_s,
    });
    bench.close().await?;
    println!("{summary}");
    Ok(())
}
