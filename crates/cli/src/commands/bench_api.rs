//! `alchemiscale bench api`: the user API over HTTP with auth, against a server this
//! command starts itself on a temporary store.

use std::time::{Duration, Instant};

use alchemiscale_client::{parse_keys, Client, Payload};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{Scope, ScopedKey};
use alchemiscale_server::{ApiKind, ApiSettings, AppState};
use alchemiscale_store::identities::{hash_key, IdentityKind};
use anyhow::{ensure, Context};
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bench::BenchStore;
use crate::store_args::StoreArgs;

#[derive(Debug, Args)]
pub struct ApiBench {
    /// Chemical systems in the submitted network.
    #[arg(long, default_value_t = 1000)]
    pub systems: usize,
    /// Transformations in the submitted network.
    #[arg(long, default_value_t = 2000)]
    pub transformations: usize,
    /// Tasks created in one bulk call (and whose statuses are read in one call).
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Tasks actioned in one call.
    #[arg(long, default_value_t = 1000)]
    pub action: usize,
    /// Concurrent connections for the /ping load.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of /ping load (each for the baseline and for the API).
    #[arg(long, default_value_t = 3.0)]
    pub ping_seconds: f64,
    #[command(flatten)]
    pub store: StoreArgs,
}

async fn timed<T, F: std::future::Future<Output = anyhow::Result<T>>>(f: F) -> anyhow::Result<(T, f64)> {
    let t = Instant::now();
    let v = f.await?;
    Ok((v, t.elapsed().as_secs_f64()))
}

/// Drive GET /ping on `addr` from `connections` keep-alive connections for `secs`, with a
/// minimal HTTP/1.1 client so the load generator costs little CPU. Returns requests/s.
async fn ping_load(addr: std::net::SocketAddr, token: &str, connections: usize, secs: f64) -> anyhow::Result<f64> {
    let request = format!("GET /ping HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n").into_bytes();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for _ in 0..connections {
        let request = request.clone();
        handles.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut buf = vec![0u8; 4096];
            let mut done = 0u64;
            while Instant::now() < deadline {
                stream.write_all(&request).await?;
                // read one response: headers, then Content-Length bytes of body
                let mut have = 0usize;
                loop {
                    let n = stream.read(&mut buf[have..]).await?;
                    anyhow::ensure!(n > 0, "server closed the connection");
                    have += n;
                    if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
                        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "unexpected answer: {head}");
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                            .unwrap_or(0);
                        while have < end + 4 + len {
                            let n = stream.read(&mut buf[have..]).await?;
                            anyhow::ensure!(n > 0, "server closed the connection");
                            have += n;
                        }
                        break;
                    }
                }
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64().max(secs))
}

async fn start(router: axum::Router) -> anyhow::Result<(std::net::SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = alchemiscale_server::serve(listener, router, async move {
            let _ = rx.await;
        })
        .await;
    });
    Ok((addr, tx))
}

pub async fn run(b: ApiBench) -> anyhow::Result<()> {
    ensure!(b.systems >= 2 && b.transformations >= 1 && b.tasks >= 1 && b.action >= 1, "sizes must be positive");
    let bench = BenchStore::open(&b.store).await?;
    let store = bench.store.clone();
    let backend = store.backend().name();
    let settings = ApiSettings { jwt_secret: "bench-secret".into(), ..Default::default() };
    let (addr, stop) = start(alchemiscale_server::user_app(AppState::new(ApiKind::User, store.clone(), None, settings))).await?;
    store.add_identity(IdentityKind::User, "bench", &hash_key("bench-key")?, false).await?;
    store.add_scopes(IdentityKind::User, "bench", &["*-*-*".parse::<Scope>()?]).await?;
    let client = Client::new(&format!("http://{addr}"), "bench", "bench-key")?;
    let token = client.login().await?;
    println!("bench api: {backend} backend, server at http://{addr}, HTTP with auth");

    // network submission and retrieval
    let chain = network_chain_json(b.systems, b.transformations, "benchapi");
    let scope: Scope = "bench-api-net".parse()?;
    let (network, submit_s) = timed(async { Ok(client.create_network(&chain, &scope, "active").await?) }).await?;
    let (text, retrieve_s) = timed(async { Ok(client.get_text(&format!("/networks/{network}")).await?) }).await?;
    ensure!(text == chain, "retrieved network differs from the submitted one");
    let (_, store_submit_s) = timed(async {
        let c = alchemiscale_model::chain::KeyedChain::from_value(alchemiscale_model::json::parse(&chain)?)?;
        store.create_network(&c, &"bench-api-store".parse()?, alchemiscale_model::NetworkState::Active).await?;
        Ok(())
    })
    .await?;

    // bulk task creation over the network's transformations
    let tfs = parse_keys(&client.get(&format!("/networks/{network}/transformations")).await?)?;
    let requested: Vec<String> = (0..b.tasks).map(|i| tfs[i % tfs.len()].to_string()).collect();
    let (tasks, create_tasks_s) = timed(async {
        Ok(parse_keys(&client.post("/bulk/transformations/tasks/create", &json!({ "transformations": requested })).await?)?)
    })
    .await?;
    ensure!(tasks.len() == b.tasks, "created {} tasks, asked for {}", tasks.len(), b.tasks);

    // actioning
    let to_action: Vec<ScopedKey> = tasks.iter().take(b.action).cloned().collect();
    let (actioned, action_s) = timed(async { Ok(client.action_tasks(&network, &to_action, None).await?) }).await?;
    ensure!(actioned.iter().all(Option::is_some), "some tasks were not actioned");

    // statuses of every task in one call
    let dicts: Vec<_> = tasks.iter().map(|t| t.to_dict()).collect();
    let body = json!({ "tasks": dicts }).to_string();
    let (statuses, status_s) =
        timed(async { Ok(client.post_payload("/bulk/tasks/status/get", Payload::Json(body.clone())).await?) }).await?;
    ensure!(statuses.as_array().map(Vec::len) == Some(b.tasks), "wrong number of statuses");

    // ping throughput: a bare axum /ping as the baseline, then the API's /ping
    let bare = axum::Router::new().route("/ping", axum::routing::get(|| async { axum::Json(json!({"api": "AlchemiscaleAPI"})) }));
    let (bare_addr, bare_stop) = start(bare).await?;
    let bare_rps = ping_load(bare_addr, &token, b.connections, b.ping_seconds).await.context("baseline /ping load")?;
    let _ = bare_stop.send(());
    let ping_rps = ping_load(addr, &token, b.connections, b.ping_seconds).await.context("/ping load")?;

    let _ = stop.send(());
    println!(
        "  submit {} transformations ({:.1} MB, gzip)   {submit_s:>8.3} s   (store alone {store_submit_s:.3} s)",
        b.transformations,
        chain.len() as f64 / 1e6
    );
    println!("  retrieve it (byte-identical)            {retrieve_s:>8.3} s");
    println!("  create {} tasks in one call          {create_tasks_s:>8.3} s", b.tasks);
    println!("  action {} tasks                        {:>8.1} ms", b.action, action_s * 1e3);
    println!("  status of {} tasks                   {:>8.1} ms", b.tasks, status_s * 1e3);
    println!(
        "  GET /ping, {} connections             {ping_rps:>8.0} req/s  (bare axum baseline {bare_rps:.0} req/s, ratio {:.2})",
        b.connections,
        ping_rps / bare_rps
    );
    println!("  (upstream reported 103 s to submit and 71 min to retrieve ~2,000 transformations; 1.6 s to action 1,000 tasks; FastAPI served 3,300-4,300 pings/s here)");
    let summary = json!({
        "bench": "api",
        "backend": backend,
        "transformations": b.transformations,
        "tasks": b.tasks,
        "submit_s": submit_s,
        "store_submit_s": store_submit_s,
        "retrieve_s": retrieve_s,
        "create_tasks_s": create_tasks_s,
        "action_s": action_s,
        "status_s": status_s,
        "ping_rps": ping_rps,
        "baseline_ping_rps": bare_rps,
        "ping_vs_baseline": ping_rps / bare_rps,
    });
    bench.close().await?;
    println!("{summary}");
    Ok(())
}
