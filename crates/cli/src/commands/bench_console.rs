//! `alchemiscale bench console`: how long the web console's overview and the page of a
//! 2,000-transformation network take with a million tasks in the store.
//!
//! Fresh servers as separate processes (`serve` on a temporary SQLite store; with
//! `--url postgres://…`, `api` and `compute api` on a scratch schema), set up through the
//! APIs as a user would: the measured network (2,000 transformations, its tasks actioned),
//! more networks of the same size holding the rest of the tasks, and some claims so the
//! activity chart has something to draw. Then the pages are fetched over HTTP with a
//! session, as a browser would: each page's first render (counting, laying out) and the
//! median of the following ones. The baseline, measured in the same run, is the plainest
//! read of the same network through the user API: `GET /networks/{sk}/transformations`.

use std::time::Instant;

use alchemiscale_client::{parse_keys, Client};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{ComputeServiceId, Scope, ScopedKey};
use anyhow::{ensure, Context};
use clap::Args;
use serde_json::json;

use super::bench_curve::{claim_over_http, Servers, KEY};
use crate::store_args::StoreArgs;

#[derive(Debug, Args)]
pub struct ConsoleBench {
    /// Tasks in the store.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: usize,
    /// Transformations of each network (the measured one and the others).
    #[arg(long, default_value_t = 2000)]
    pub transformations: usize,
    /// Tasks per transformation of the measured network (all actioned).
    #[arg(long, default_value_t = 25)]
    pub tasks_per_transformation: usize,
    /// Claims made before measuring (the activity chart's data).
    #[arg(long, default_value_t = 2000)]
    pub claims: usize,
    /// Renders of each page after the first; the median is reported.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Create `per_tf` tasks on each of `tfs` through the bulk route (at most 100,000 a request).
async fn create_tasks(user: &Client, tfs: &[ScopedKey], per_tf: usize) -> anyhow::Result<Vec<ScopedKey>> {
    let wanted: Vec<String> = tfs.iter().flat_map(|t| std::iter::repeat_n(t.to_string(), per_tf)).collect();
    let mut created = Vec::with_capacity(wanted.len());
    for chunk in wanted.chunks(100_000) {
        let v = user.post("/bulk/transformations/tasks/create", &json!({ "transformations": chunk })).await?;
        created.extend(parse_keys(&v)?);
    }
    Ok(created)
}

async fn network(user: &Client, scope: &Scope, transformations: usize, tag: &str) -> anyhow::Result<(ScopedKey, Vec<ScopedKey>)> {
    let n = user.create_network(&network_chain_json((transformations / 2).max(2), transformations, tag), scope, "active").await?;
    let tfs = parse_keys(&user.get(&format!("/networks/{n}/transformations")).await?)?;
    Ok((n, tfs))
}

/// Milliseconds of one GET with the session cookie, and the body's size.
async fn fetch(http: &reqwest::Client, url: &str, cookie: &str) -> anyhow::Result<(f64, usize)> {
    let t = Instant::now();
    let r = http.get(url).header("cookie", cookie).send().await?;
    ensure!(r.status().is_success(), "{url}: {}", r.status());
    let body = r.bytes().await?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, body.len()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(b: ConsoleBench) -> anyhow::Result<()> {
    ensure!(b.repeats >= 1 && b.transformations >= 2 && b.tasks_per_transformation >= 1, "nothing to measure");
    let backend = if b.store.url.is_some() { "postgres" } else { "sqlite" };
    let servers = Servers::start(&b.store).await?;
    let user = &servers.user;
    let scope: Scope = "bench-console-campaign".parse()?;

    // the measured network, its tasks actioned; then the others hold the rest
    let setup = Instant::now();
    let (measured, tfs) = network(user, &scope, b.transformations, "console").await?;
    let mine = create_tasks(user, &tfs, b.tasks_per_transformation).await?;
    for chunk in mine.chunks(10_000) {
        user.action_tasks(&measured, chunk, None).await?;
    }
    let mut total = mine.len();
    let mut others = 0;
    while total < b.tasks {
        let (_, tfs) = network(user, &scope, b.transformations, &format!("other{others}")).await?;
        let per_tf = (b.tasks - total).div_ceil(tfs.len()).min(b.tasks_per_transformation.max(25));
        total += create_tasks(user, &tfs, per_tf).await?.len();
        others += 1;
    }
    let compute = servers.compute().await?;
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for i in 0..4 {
        let id = ComputeServiceId::mint(&format!("console{i}"))?;
        compute.post(&format!("/computeservice/{id}/register"), &json!({"compute_manager_id": null})).await?;
        ids.push(id);
        clients.push(servers.compute().await?);
    }
    let (claimed, _) = claim_over_http(clients, &ids, b.claims.min(mine.len()), None).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    println!(
        "bench console: {backend} backend, {total} tasks in {} networks of {} transformations; measured network: {} tasks actioned, {} claimed; set up in {setup_s:.0} s",
        others + 1,
        b.transformations,
        mine.len(),
        claimed.len()
    );

    // sign in as a browser would
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let base = user.base_url().as_str().trim_end_matches('/').to_string();
    let form = http.get(format!("{base}/ui/login")).send().await?;
    let login_cookie = first_cookie(&form).context("the console's sign-in page set no cookie")?;
    let page = form.text().await?;
    let token = page
        .split_once("name=\"csrf\" value=\"")
        .and_then(|(_, rest)| rest.split('"').next())
        .context("the console's sign-in page has no form token")?;
    let r = http
        .post(format!("{base}/ui/login"))
        .header("cookie", login_cookie)
        .form(&[("identifier", "curve-user"), ("key", KEY), ("csrf", token)])
        .send()
        .await?;
    let cookie = first_cookie(&r).context("signing in to the console gave no session")?;

    let mut figures = Vec::new();
    for (name, url) in [("overview", format!("{base}/ui")), ("network", format!("{base}/ui/networks/{measured}"))] {
        let (first, size) = fetch(&http, &url, &cookie).await?;
        let mut times = Vec::with_capacity(b.repeats);
        for _ in 0..b.repeats {
            times.push(fetch(&http, &url, &cookie).await?.0);
        }
        figures.push((name, first, median(times), size));
    }
    let mut baseline = Vec::with_capacity(b.repeats);
    user.get(&format!("/networks/{measured}/transformations")).await?;
    for _ in 0..b.repeats {
        let t = Instant::now();
        user.get(&format!("/networks/{measured}/transformations")).await?;
        baseline.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let baseline_ms = median(baseline);
    println!("  {:<9} {:>10} {:>10} {:>9}", "page", "first ms", "median ms", "kB");
    for (name, first, med, size) in &figures {
        println!("  {name:<9} {first:>10.1} {med:>10.1} {:>9.0}", *size as f64 / 1000.0);
    }
    println!(
        "  baseline: GET /networks/{{sk}}/transformations (the same {} transformations as JSON) {baseline_ms:.1} ms; network page {:.1}x",
        tfs.len(),
        figures[1].2 / baseline_ms
    );
    let summary = json!({
        "bench": "console",
        "backend": backend,
        "tasks": total,
        "networks": others + 1,
        "transformations": b.transformations,
        "network_tasks": mine.len(),
        "overview_ms": figures[0].2,
        "overview_first_ms": figures[0].1,
        "network_ms": figures[1].2,
        "network_first_ms": figures[1].1,
        "network_page_kb": figures[1].3 as f64 / 1000.0,
        "baseline_ms": baseline_ms,
        "network_vs_baseline": figures[1].2 / baseline_ms,
        "setup_s": setup_s,
    });
    servers.close().await?;
    println!("{summary}");
    Ok(())
}

/// `name=value` of the first cookie a response sets.
fn first_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers().get("set-cookie")?.to_str().ok()?.split(';').next().map(str::to_string)
}
