//! A real Prometheus scrapes `alchemiscale serve --metrics-listen ADDR` and answers PromQL
//! with the figures the public API produced: tasks by status, compute services, claims (a
//! counter by route and a gauge of those still held), result pushes, request latency
//! histograms, `up`. The API ports have no `/metrics` in this mode.
//!
//! Prometheus is `$ALCHEMISCALE_TEST_PROMETHEUS` (set by `.ci/run`), else
//! `/usr/bin/prometheus`; with neither the test is skipped. A binary that is named but
//! does not work fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alchemiscale_client::Client;
use alchemiscale_model::pdr::zstd_compress;
use alchemiscale_model::synthetic::{network_chain_json, result_chain_json};
use alchemiscale_model::{ComputeServiceId, Scope};
use common::{free_port, Killed, BIN};

const N: usize = 7; // tasks created and actioned
const BY_CLAIM: usize = 2; // claimed over C11 (`/claim`)
const BY_HUB: usize = 1; // claimed over C10 (`/taskhubs/{sk}/claim`)
const K: usize = BY_CLAIM + BY_HUB; // claimed in all; one of them then completes

fn prometheus_binary() -> Option<PathBuf> {
    match std::env::var_os("ALCHEMISCALE_TEST_PROMETHEUS").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from("/usr/bin/prometheus")).filter(|p| p.exists()),
    }
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(user URL, user key, compute URL, compute key)` from the credentials `serve` writes
/// on first start (identities `user` and `compute`).
fn credentials(data_dir: &Path, server: &mut Child) -> (String, String, String, String) {
    let path = data_dir.join("credentials.txt");
    let field = |text: &str, name: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(name)).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    };
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let f: Vec<Option<String>> = ["user API:", "user key:", "compute API:", "compute key:"].iter().map(|n| field(&text, n)).collect();
        if let [Some(a), Some(b), Some(c), Some(d)] = &f[..] {
            return (a.clone(), b.clone(), c.clone(), d.clone());
        }
        assert!(server.try_wait().unwrap().is_none(), "serve exited early");
        assert!(t0.elapsed() < Duration::from_secs(30), "serve wrote no credentials: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Prometheus's answer to an instant query: the single sample's value, `None` for an
/// empty vector. Panics on an error answer or on more than one sample.
async fn query(http: &reqwest::Client, prometheus: &str, q: &str) -> Option<f64> {
    let url = reqwest::Url::parse_with_params(&format!("{prometheus}/api/v1/query"), [("query", q)]).unwrap();
    let r = http.get(url).send().await.unwrap();
    let status = r.status();
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(status.is_success() && v["status"] == "success", "{q}: {status} {v}");
    let result = v["data"]["result"].as_array().unwrap_or_else(|| panic!("{q}: {v}"));
    assert!(result.len() <= 1, "{q}: more than one series: {v}");
    result.first().map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_metrics_address() {
    let Some(prometheus_bin) = prometheus_binary() else {
        eprintln!("skipping: no Prometheus (set ALCHEMISCALE_TEST_PROMETHEUS or install /usr/bin/prometheus)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server_log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut server = Killed(
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["serve", "--port", "0", "--compute-port", "0", "--metrics-listen", &metrics_addr])
            .env_remove("ALCHEMISCALE_STATE_URL")
            .env_remove("ALCHEMISCALE_METRICS_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(server_log)
            .spawn()
            .unwrap(),
    );
    let (user_url, user_key, compute_url, compute_key) = credentials(&data_dir, &mut server.0);
    wait_until("the metrics address listens", Duration::from_secs(30), || std::net::TcpStream::connect(&metrics_addr).is_ok());

    // --- what Prometheus should see, made through the public APIs ---------------------------
    let user = Client::new(&user_url, "user", &user_key).unwrap();
    let compute = Client::new(&compute_url, "compute", &compute_key).unwrap();
    let scope: Scope = "prom-campaign-project".parse().unwrap();
    let network = user.create_network(&network_chain_json(2, 1, "prometheus"), &scope, "active").await.unwrap();
    let tfs = alchemiscale_client::parse_keys(&user.get(&format!("/networks/{network}/transformations")).await.unwrap()).unwrap();
    let tasks = user.create_tasks(&tfs[0], N as i64, None).await.unwrap();
    assert_eq!(tasks.len(), N);
    let actioned = user.action_tasks(&network, &tasks, None).await.unwrap();
    assert!(actioned.iter().all(Option::is_some), "{actioned:?}");

    let id = ComputeServiceId::mint("prometheus_test").unwrap();
    compute.register(&id, None).await.unwrap();
    let by_claim = compute.claim_tasks(std::slice::from_ref(&scope), None, &id, BY_CLAIM, None).await.unwrap().expect("not denied");
    let hubs = compute.query_taskhubs(std::slice::from_ref(&scope)).await.unwrap();
    assert_eq!(hubs.len(), 1, "{hubs:?}");
    let by_hub = compute.claim_taskhub_tasks(&hubs[0], &id, BY_HUB, None).await.unwrap();
    let claimed: Vec<_> = by_claim.into_iter().chain(by_hub).flatten().collect();
    assert_eq!(claimed.len(), K);
    let blob = zstd_compress(result_chain_json(tfs[0].gufe_key().as_str(), true, 100, 1).as_bytes());
    compute.set_task_result(&claimed[0], &blob, &id).await.unwrap();

    // --- the metrics are on their own address only ------------------------------------------
    let http = reqwest::Client::new();
    for base in [&user_url, &compute_url] {
        let r = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{base}/metrics is served although --metrics-listen is given");
    }
    let page = http.get(format!("http://{metrics_addr}/metrics")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(http.get(format!("http://{metrics_addr}/ping")).send().await.unwrap().status(), 404);

    // --- Prometheus -------------------------------------------------------------------------
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let prom_url = format!("http://{prom_addr}");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: alchemiscale\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .unwrap();
    let prom_log = dir.path().join("prometheus.log");
    let mut prometheus = Killed(
        Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prom_log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", prometheus_bin.display())),
    );
    let log = || std::fs::read_to_string(&prom_log).unwrap_or_default();

    // the first scrape is complete once `up` has a sample (it is appended with the scrape's
    // samples); nothing changes the figures after it
    let up = format!("up{{job=\"alchemiscale\",instance=\"{metrics_addr}\"}}");
    let t0 = Instant::now();
    loop {
        if let Some(status) = prometheus.0.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", log());
        }
        if let Ok(r) = http.get(format!("{prom_url}/-/ready")).send().await {
            if r.status() == 200 && query(&http, &prom_url, &up).await.is_some() {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "prometheus gave no `up` within 30 s:\n{}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (waiting, running, complete) = ((N - K) as f64, (K - 1) as f64, 1.0);
    let expected: Vec<(String, f64)> = vec![
        (up.clone(), 1.0),
        ("alchemiscale_store_up".into(), 1.0),
        ("sum(alchemiscale_tasks{status=\"waiting\"})".into(), waiting),
        ("sum(alchemiscale_tasks{status=\"running\"})".into(), running),
        ("sum(alchemiscale_tasks{status=\"complete\"})".into(), complete),
        ("alchemiscale_tasks{org=\"prom\",campaign=\"campaign\",project=\"project\",status=\"waiting\"}".into(), waiting),
        ("sum(alchemiscale_tasks)".into(), N as f64),
        ("alchemiscale_compute_services".into(), 1.0),
        ("alchemiscale_claimed_tasks".into(), (K - 1) as f64),
        ("sum(alchemiscale_claimed_tasks_total)".into(), K as f64),
        ("alchemiscale_claimed_tasks_total{route=\"claim\"}".into(), BY_CLAIM as f64),
        ("alchemiscale_claimed_tasks_total{route=\"taskhub\"}".into(), BY_HUB as f64),
        ("alchemiscale_result_pushes_total{outcome=\"ok\"}".into(), 1.0),
        ("alchemiscale_result_pushes_total{outcome=\"failure\"}".into(), 0.0),
        (
            "sum(alchemiscale_http_request_duration_seconds_count{api=\"compute\",route=\"/claim\",method=\"POST\",status=\"200\"})".into(),
            1.0,
        ),
        ("sum(alchemiscale_http_request_duration_seconds_count{api=\"compute\",route=\"/taskhubs/{sk}/claim\"})".into(), 1.0),
        (
            "sum(alchemiscale_http_request_duration_seconds_count{api=\"user\",route=\"/networks\",method=\"POST\",status=\"200\"})".into(),
            1.0,
        ),
    ];
    let mut wrong = Vec::new();
    for (q, want) in &expected {
        let got = query(&http, &prom_url, q).await;
        if got != Some(*want) {
            wrong.push(format!("{q}: got {got:?}, want {want}"));
        }
    }
    // the 404s for /metrics above match no route and are not timed
    let q = "alchemiscale_http_request_duration_seconds_count{route=~\".*metrics.*\"}";
    let got = query(&http, &prom_url, q).await;
    if got.is_some() {
        wrong.push(format!("{q}: got {got:?}, want no series"));
    }
    assert!(wrong.is_empty(), "Prometheus answered differently:\n{}", wrong.join("\n"));

    // the histogram is whole: compute requests were timed, every one falls in `+Inf`, and
    // the sum of durations is positive
    let count = query(&http, &prom_url, "sum(alchemiscale_http_request_duration_seconds_count{api=\"compute\"})").await.unwrap();
    let inf = query(&http, &prom_url, "sum(alchemiscale_http_request_duration_seconds_bucket{api=\"compute\",le=\"+Inf\"})").await.unwrap();
    let sum = query(&http, &prom_url, "sum(alchemiscale_http_request_duration_seconds_sum{api=\"compute\"})").await.unwrap();
    assert!(count >= 5.0 && inf == count && sum > 0.0, "count {count}, +Inf bucket {inf}, sum {sum}");
    let q = "histogram_quantile(0.5, sum by (le) (alchemiscale_http_request_duration_seconds_bucket{api=\"compute\"}))";
    let median = query(&http, &prom_url, q).await.unwrap();
    assert!(median > 0.0 && median < 10.0, "median compute request {median} s");

    // Prometheus read the exposition's types
    let r: serde_json::Value = serde_json::from_str(
        &http
            .get(format!("{prom_url}/api/v1/targets/metadata?match_target={{job=\"alchemiscale\"}}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let kind = |metric: &str| {
        r["data"].as_array().into_iter().flatten().find(|m| m["metric"] == metric).map(|m| m["type"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(kind("alchemiscale_http_request_duration_seconds").as_deref(), Some("histogram"), "{r}");
    assert_eq!(kind("alchemiscale_claimed_tasks_total").as_deref(), Some("counter"), "{r}");
    assert_eq!(kind("alchemiscale_tasks").as_deref(), Some("gauge"), "{r}");

    // the server is still well after the scrapes
    assert!(server.0.try_wait().unwrap().is_none(), "serve exited");
}
