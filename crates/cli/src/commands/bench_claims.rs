//! `alchemiscale bench claims`: claiming and result pushes over HTTP with auth, against
//! servers this command starts itself, compared with the store's bare claim transaction
//! measured in the same run.

use std::collections::HashSet;
use std::time::Instant;

use alchemiscale_client::{Client, Payload};
use alchemiscale_model::chain::KeyedChain;
use alchemiscale_model::json::parse;
use alchemiscale_model::pdr::{python_upload_body, zstd_compress};
use alchemiscale_model::synthetic::{network_chain_json, result_chain_json};
use alchemiscale_model::{ComputeServiceId, NetworkState, Scope, ScopedKey};
use alchemiscale_objects::{ObjectStoreConfig, Objects};
use alchemiscale_server::{ApiKind, ApiSettings, AppState};
use alchemiscale_store::identities::{hash_key, IdentityKind};
use alchemiscale_store::tasks::TaskRequest;
use alchemiscale_store::Store;
use anyhow::{ensure, Context};
use clap::Args;
use serde_json::json;

use super::bench::BenchStore;
use crate::store_args::StoreArgs;

#[derive(Debug, Args)]
pub struct ClaimsBench {
    /// Tasks to claim (and push results for) in the one-hub phase.
    #[arg(long, default_value_t = 3000)]
    pub tasks: usize,
    /// Concurrent simulated compute services.
    #[arg(long, default_value_t = 16)]
    pub services: usize,
    /// Size of each pushed result, bytes of incompressible payload.
    #[arg(long, default_value_t = 10_000)]
    pub result_bytes: usize,
    /// Hubs (networks) holding waiting tasks in the many-hubs phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub hubs: usize,
    /// Measure the claim rate and server memory at growing queue sizes instead (see
    /// `bench claims --help`).
    #[arg(long)]
    pub curve: bool,
    /// With --curve: numbers of actioned tasks, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000,1000000")]
    pub sizes: Vec<usize>,
    /// With --curve: claims measured per route, size and round (at most a quarter of the
    /// size).
    #[arg(long, default_value_t = 3000)]
    pub curve_claims: usize,
    /// With --curve: rounds per size; each route's figure is the median of its rounds, and
    /// the claimed tasks return to the queue between rounds (their services deregister).
    #[arg(long, default_value_t = 7)]
    pub curve_rounds: usize,
    /// With --curve: tasks actioned per request (large values make large request bodies:
    /// 250,000 tasks are about 30 MB of JSON).
    #[arg(long, default_value_t = 10_000)]
    pub action_chunk: usize,
    /// With --curve: seconds the servers stay idle before their memory is read.
    #[arg(long, default_value_t = 30)]
    pub idle_seconds: u64,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// User and compute APIs on random ports over a bench store and a temporary object store.
pub struct BenchServers {
    pub bench: BenchStore,
    pub store: Store,
    #[allow(dead_code)]
    pub user: Client,
    pub compute_url: String,
    pub objects: Objects,
    _objects_dir: tempfile::TempDir,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn serve(router: axum::Router) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = alchemiscale_server::serve(listener, router, async move {
            let _ = rx.await;
        })
        .await;
    });
    Ok((url, tx))
}

impl BenchServers {
    pub async fn start(args: &StoreArgs) -> anyhow::Result<BenchServers> {
        let bench = BenchStore::open(args).await?;
        let store = bench.store.clone();
        let objects_dir = tempfile::tempdir()?;
        let objects = Objects::open(&ObjectStoreConfig::Local { root: objects_dir.path().to_path_buf() })?;
        let settings = ApiSettings { jwt_secret: "bench-secret".into(), ..Default::default() };
        let (user_url, s1) =
            serve(alchemiscale_server::user_app(AppState::new(ApiKind::User, store.clone(), Some(objects.clone()), settings.clone())))
                .await?;
        let (compute_url, s2) =
            serve(alchemiscale_server::compute_app(AppState::new(ApiKind::Compute, store.clone(), Some(objects.clone()), settings)))
                .await?;
        let all: Scope = "*-*-*".parse()?;
        for (kind, id) in [(IdentityKind::User, "bench-user"), (IdentityKind::Compute, "bench-compute")] {
            store.add_identity(kind, id, &hash_key("bench-key")?, false).await?;
            store.add_scopes(kind, id, std::slice::from_ref(&all)).await?;
        }
        let user = Client::new(&user_url, "bench-user", "bench-key")?;
        user.login().await?;
        Ok(BenchServers { bench, store, user, compute_url, objects, _objects_dir: objects_dir, stops: vec![s1, s2] })
    }

    pub async fn compute_client(&self) -> anyhow::Result<Client> {
        let c = Client::new(&self.compute_url, "bench-compute", "bench-key")?;
        c.login().await?;
        Ok(c)
    }

    pub async fn close(self) -> anyhow::Result<()> {
        for s in self.stops {
            let _ = s.send(());
        }
        self.bench.close().await
    }
}

/// A network with `tasks` actioned tasks spread over its transformations, via the store.
async fn network_with_tasks(
    store: &Store,
    tag: &str,
    scope: &Scope,
    transformations: usize,
    tasks: usize,
) -> anyhow::Result<(ScopedKey, Vec<ScopedKey>)> {
    let chain = KeyedChain::from_value(parse(&network_chain_json(transformations.max(2), transformations, tag))?)?;
    let created = store.create_network(&chain, scope, NetworkState::Active).await?;
    let tfs = store.network_transformations(&created.network).await?;
    let requests: Vec<TaskRequest> =
        (0..tasks).map(|i| TaskRequest { transformation: tfs[i % tfs.len()].clone(), extends: None }).collect();
    let keys = store.create_tasks(&requests, None).await?;
    let opt: Vec<Option<ScopedKey>> = keys.iter().cloned().map(Some).collect();
    store.action_tasks(&created.network, &opt, None).await?;
    Ok((created.network, keys))
}

/// `services` workers claim one task per request over HTTP until nothing is left (or
/// `limit` claims are made); returns ((task, claiming service) pairs, seconds).
async fn http_claims(servers: &BenchServers, ids: &[ComputeServiceId], limit: usize) -> anyhow::Result<(Vec<(ScopedKey, String)>, f64)> {
    // clients log in before the clock starts (a login is a deliberately slow key check)
    let mut clients = Vec::with_capacity(ids.len());
    for _ in ids {
        clients.push(servers.compute_client().await?);
    }
    super::bench_curve::claim_over_http(clients, ids, limit, None).await
}

pub async fn run(b: ClaimsBench) -> anyhow::Result<()> {
    ensure!(b.tasks >= b.services && b.services >= 1, "need at least one task per service");
    let servers = BenchServers::start(&b.store).await?;
    let store = servers.store.clone();
    let backend = store.backend().name();
    println!("bench claims: {backend} backend, {} services, {} tasks on one hub, {} B results", b.services, b.tasks, b.result_bytes);

    // one hub
    let scope: Scope = "bench-claims-one".parse()?;
    let (_network, _tasks) = network_with_tasks(&store, "claims-one", &scope, 50, b.tasks).await?;
    // plan claims for the data just loaded, as autovacuum would soon do in a deployment
    store.refresh_statistics().await?;
    let compute = servers.compute_client().await?;
    let mut ids = Vec::new();
    for i in 0..b.services {
        let id = ComputeServiceId::mint(&format!("bench{i}"))?;
        compute.post(&format!("/computeservice/{id}/register"), &json!({"compute_manager_id": null})).await?;
        ids.push(id);
    }
    let (claimed, claim_s) = http_claims(&servers, &ids, usize::MAX).await.context("claiming over HTTP")?;
    let distinct: HashSet<&ScopedKey> = claimed.iter().map(|(t, _)| t).collect();
    let double_claims = claimed.len() - distinct.len();
    ensure!(claimed.len() == b.tasks, "claimed {} of {} tasks", claimed.len(), b.tasks);
    let claims_per_s = claimed.len() as f64 / claim_s;

    // result pushes: a result per claimed task, by the service that claimed it
    let mut work = Vec::with_capacity(claimed.len());
    for (t, id) in &claimed {
        work.push((t.clone(), store.get_task_transformation(t).await?, id.clone()));
    }
    // bodies built (and gzipped, as the Python client sends them) and clients logged in
    // before the clock starts: the figure is the server's, not the simulated clients'
    let per_worker = work.len().div_ceil(b.services);
    let mut workers = Vec::new();
    for (w, chunk) in work.chunks(per_worker).enumerate() {
        let client = servers.compute_client().await?;
        let mut pushes = Vec::with_capacity(chunk.len());
        for (i, (task, tf, holder)) in chunk.iter().enumerate() {
            let blob =
                zstd_compress(result_chain_json(tf.gufe_key().as_str(), true, b.result_bytes, (w * 1_000_000 + i) as u64).as_bytes());
            pushes.push((format!("/tasks/{task}/results"), alchemiscale_client::gzip(&python_upload_body(&blob, &holder.to_string()))));
        }
        workers.push((client, pushes));
    }
    let start = Instant::now();
    let mut handles = Vec::new();
    for (client, pushes) in workers {
        handles.push(tokio::spawn(async move {
            for (path, bytes) in pushes {
                client.post_payload(&path, Payload::Raw { bytes, content_encoding: Some("gzip".into()) }).await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let push_s = start.elapsed().as_secs_f64();
    let pushes_per_s = claimed.len() as f64 / push_s;
    let complete = store.query_tasks(std::slice::from_ref(&scope), Some("complete")).await?.len();
    ensure!(complete == b.tasks, "{complete} of {} tasks complete after the pushes", b.tasks);

    // the store's bare claim transaction, same shape, same concurrency, no HTTP
    let raw_scope: Scope = "bench-claims-raw".parse()?;
    network_with_tasks(&store, "claims-raw", &raw_scope, 50, b.tasks).await?;
    store.refresh_statistics().await?;
    let (raw, raw_s, _) = super::bench_curve::bare_claims(&store, std::slice::from_ref(&raw_scope), b.services, "raw", usize::MAX).await?;
    let raw_claims_per_s = raw.len() as f64 / raw_s;

    // the bare push: object write + state-store record for the tasks just claimed, same
    // concurrency, no HTTP (what the server does after decoding an upload)
    let raw_tasks = store.query_tasks(std::slice::from_ref(&raw_scope), Some("running")).await?;
    let mut raw_work = Vec::with_capacity(raw_tasks.len());
    for t in &raw_tasks {
        let tf = store.get_task_transformation(t).await?;
        let blob =
            zstd_compress(result_chain_json(tf.gufe_key().as_str(), true, b.result_bytes, raw_work.len() as u64 + 9_000_000).as_bytes());
        raw_work.push((t.clone(), tf, blob));
    }
    let per_worker = raw_work.len().div_ceil(b.services).max(1);
    let start = Instant::now();
    let mut handles = Vec::new();
    for chunk in raw_work.chunks(per_worker) {
        let (store, objects, chunk) = (store.clone(), servers.objects.clone(), chunk.to_vec());
        handles.push(tokio::spawn(async move {
            for (task, tf, blob) in chunk {
                let summary = alchemiscale_model::pdr::read_result(blob, 1 << 30)?;
                let path = alchemiscale_objects::result_path(
                    task.org(),
                    task.campaign(),
                    task.project(),
                    tf.gufe_key().as_str(),
                    true,
                    summary.summary.key.as_str(),
                );
                let size = summary.blob.len() as i64;
                let digest = objects.put(&path, bytes::Bytes::from(summary.blob)).await?;
                let recorded = alchemiscale_store::results::RecordedResult {
                    obj_key: summary.summary.key.to_string(),
                    ok: true,
                    location: path,
                    content_sha256: digest,
                    size,
                    creator: None,
                    tracebacks: None,
                };
                store.record_result(&task, &recorded).await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let raw_pushes_per_s = raw_work.len() as f64 / start.elapsed().as_secs_f64();

    // many hubs: one small network (hub) per scope-less slot, each with waiting tasks
    let (many_hub_claims_per_s, setup_s) = if b.hubs > 0 {
        let t = Instant::now();
        let many: Scope = "bench-claims-many".parse()?;
        for h in 0..b.hubs {
            network_with_tasks(&store, &format!("hub{h}"), &many, 1, 2).await?;
        }
        store.refresh_statistics().await?;
        let setup_s = t.elapsed().as_secs_f64();
        let mut ids2 = Vec::new();
        for i in 0..b.services {
            let id = ComputeServiceId::mint(&format!("many{i}"))?;
            compute.post(&format!("/computeservice/{id}/register"), &json!({"compute_manager_id": null})).await?;
            ids2.push(id);
        }
        let (claimed2, s2) = http_claims(&servers, &ids2, b.tasks.min(b.hubs)).await?;
        (claimed2.len() as f64 / s2, setup_s)
    } else {
        (0.0, 0.0)
    };

    println!("  claims over HTTP (1 task/request)        {claims_per_s:>9.0} claims/s  ({} claims in {claim_s:.2} s, {double_claims} double claims)", claimed.len());
    println!(
        "  bare store claim transactions            {raw_claims_per_s:>9.0} claims/s  (ratio HTTP/bare {:.2})",
        claims_per_s / raw_claims_per_s
    );
    println!(
        "  result pushes ({} B, gzip)             {pushes_per_s:>9.0} pushes/s  (bare decode + object write + record: {raw_pushes_per_s:.0}/s, ratio {:.2})",
        b.result_bytes,
        pushes_per_s / raw_pushes_per_s
    );
    if b.hubs > 0 {
        println!(
            "  claims over HTTP with {} hubs          {many_hub_claims_per_s:>9.0} claims/s  ({:.0}% of the one-hub rate; setup {setup_s:.1} s)",
            b.hubs,
            100.0 * many_hub_claims_per_s / claims_per_s
        );
    }
    println!("  (QCFractal claimed 45-75 tasks/s one per request on this machine; upstream serialises claimers per hub)");
    let summary = json!({
        "bench": "claims",
        "backend": backend,
        "services": b.services,
        "tasks": b.tasks,
        "claims_per_s": claims_per_s,
        "raw_claims_per_s": raw_claims_per_s,
        "claims_vs_raw": claims_per_s / raw_claims_per_s,
        "pushes_per_s": pushes_per_s,
        "raw_pushes_per_s": raw_pushes_per_s,
        "double_claims": double_claims,
        "hubs": b.hubs,
        "many_hubs_claims_per_s": many_hub_claims_per_s,
        "many_hubs_vs_one_hub": if b.hubs > 0 { many_hub_claims_per_s / claims_per_s } else { 0.0 },
    });
    servers.close().await?;
    println!("{summary}");
    Ok(())
}
