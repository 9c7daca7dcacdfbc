//! `/metrics` over HTTP, on SQLite and PostgreSQL: the Prometheus text names what the
//! store holds and what the process did (claims, result pushes, request latency by route).

mod common;

use std::collections::HashMap;

use alchemiscale_client::Client;
use alchemiscale_model::ComputeServiceId;
use alchemiscale_server::testing::{settings, Backend, ObjectsBackend, TestServer};
use alchemiscale_server::ApiKind;
use alchemiscale_store::identities::IdentityKind;
use common::*;
use reqwest::Method;
use serde_json::json;

const SERVICE: &str = "vecservice-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// The samples of an exposition page: `name{labels}` (labels as written) → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(c: &Client) -> (HashMap<String, f64>, String) {
    let r = c.send(Method::GET, "/metrics", alchemiscale_client::Payload::None).await.unwrap();
    assert_eq!(r.status, 200);
    let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = String::from_utf8(r.body).unwrap();
    (samples(&text), text)
}

fn tasks_key(status: &str) -> String {
    format!("alchemiscale_tasks{{campaign=\"veccampaign\",org=\"vecorg\",project=\"vecproject\",status=\"{status}\"}}")
}

async fn metrics_count_the_store_and_the_traffic(backend: Backend) {
    let Some(user_server) = TestServer::start(backend, ObjectsBackend::Local, ApiKind::User, settings()).await else { return };
    let compute_server = user_server.sibling(ApiKind::Compute).await;
    let user = user_server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    let compute = compute_server.client(IdentityKind::Compute, "worker", &["vecorg-*-*"]).await;
    expect(&submit_vector(&user).await, 200);

    // 5 tasks, 4 actioned, 3 claimed over C11, 1 completed by a pushed result
    let tasks = user.create_tasks(&sk(TF0), 5, None).await.unwrap();
    user.action_tasks(&sk(NETWORK), &tasks[..4], Some(1.0)).await.unwrap();
    let id: ComputeServiceId = SERVICE.parse().unwrap();
    expect(&post(&compute, &format!("/computeservice/{id}/register"), json!({"compute_manager_id": null})).await, 200);
    let claim = json!({"scopes": [{"org": "vecorg", "campaign": null, "project": null}], "compute_service_id": SERVICE, "count": 3});
    let r = post(&compute, "/claim", claim).await;
    expect(&r, 200);
    let claimed: Vec<String> = serde_json::from_value(r.json()).unwrap();
    assert_eq!(claimed.len(), 3);
    let c14 = std::fs::read(vector_path("C14_set_task_result.request.gz")).unwrap();
    let r = compute
        .send(
            Method::POST,
            &format!("/tasks/{}/results", claimed[0]),
            alchemiscale_client::Payload::Raw { bytes: c14, content_encoding: Some("gzip".into()) },
        )
        .await
        .unwrap();
    expect(&r, 200);

    // the compute API's page: its own counters and the store's figures
    let (m, text) = scrape(&compute).await;
    assert_eq!(m.get(&tasks_key("waiting")), Some(&2.0), "{text}");
    assert_eq!(m.get(&tasks_key("running")), Some(&2.0), "{text}");
    assert_eq!(m.get(&tasks_key("complete")), Some(&1.0), "{text}");
    assert_eq!(m.get(&tasks_key("error")), Some(&0.0), "an empty status reads 0, not absent: {text}");
    assert_eq!(m["alchemiscale_claimed_tasks_total{route=\"claim\"}"], 3.0);
    assert_eq!(m["alchemiscale_claimed_tasks_total{route=\"taskhub\"}"], 0.0);
    assert_eq!(m["alchemiscale_result_pushes_total{outcome=\"ok\"}"], 1.0);
    assert_eq!(m["alchemiscale_compute_services"], 1.0);
    assert_eq!(m["alchemiscale_claimed_tasks"], 2.0);
    assert_eq!(m["alchemiscale_store_up"], 1.0);
    assert!(m["alchemiscale_store_connections{state=\"open\"}"] >= 1.0);
    let claims_timed = "alchemiscale_http_request_duration_seconds_count{api=\"compute\",method=\"POST\",route=\"/claim\",status=\"200\"}";
    assert_eq!(m.get(claims_timed), Some(&1.0), "{text}");
    let pushes_timed =
        "alchemiscale_http_request_duration_seconds_count{api=\"compute\",method=\"POST\",route=\"/tasks/{sk}/results\",status=\"200\"}";
    assert_eq!(m.get(pushes_timed), Some(&1.0), "{text}");

    // the user API's page counts the same store; its traffic is its own
    let (m, text) = scrape(&user).await;
    assert_eq!(m.get(&tasks_key("waiting")), Some(&2.0), "{text}");
    assert!(!text.contains("api=\"compute\""), "{text}");
    assert!(text.contains("api=\"user\",method=\"POST\",route=\"/networks\",status=\"200\""), "{text}");

    // compute managers (an OK one with its saturation, an errored one) and an errored strategy
    use alchemiscale_model::status::{ComputeManagerStatus, StrategyStatus};
    use alchemiscale_model::ComputeManagerId;
    use alchemiscale_store::strategy::StrategyState;
    let store = &user_server.store;
    let (ok, bad) = (ComputeManagerId::mint("labgpus").unwrap(), ComputeManagerId::mint("labslurm").unwrap());
    for m in [&ok, &bad] {
        store.register_compute_manager(m, false).await.unwrap();
    }
    store.update_compute_manager_status(&ok, ComputeManagerStatus::Ok, None, Some(0.25), 3600, 3600).await.unwrap();
    store.update_compute_manager_status(&bad, ComputeManagerStatus::Error, Some("squeue failed"), None, 3600, 3600).await.unwrap();
    let chain = r#"[["ConnectivityStrategy-abc", {"settings": {"__class__": "ConnectivityStrategySettings", "__module__": "stratocaster.strategies.connectivity", ":is_custom:": true, "decay_rate": 0.5}, "__qualname__": "ConnectivityStrategy", "__module__": "stratocaster.strategies.connectivity", ":version:": 1}]]"#;
    let chain = alchemiscale_model::chain::KeyedChain::from_value(alchemiscale_model::json::parse(chain).unwrap()).unwrap();
    store.set_network_strategy(&sk(NETWORK), Some(&chain), StrategyState::default()).await.unwrap();
    let errored = StrategyState {
        status: StrategyStatus::Error,
        iterations: 7,
        exception: Some(("ValueError".into(), "x".into())),
        ..Default::default()
    };
    store.replace_strategy_state(&sk(NETWORK), errored).await.unwrap();
    let (m, text) = scrape(&compute).await;
    assert_eq!(m.get("alchemiscale_compute_managers{status=\"OK\"}"), Some(&1.0), "{text}");
    assert_eq!(m.get("alchemiscale_compute_managers{status=\"ERROR\"}"), Some(&1.0), "{text}");
    assert_eq!(m.get(&format!("alchemiscale_compute_manager_saturation{{manager=\"{}\"}}", ok.name())), Some(&0.25), "{text}");
    assert_eq!(m.get("alchemiscale_strategies{status=\"error\"}"), Some(&1.0), "{text}");
    assert_eq!(m.get("alchemiscale_strategies{status=\"awake\"}"), Some(&0.0), "{text}");
    assert_eq!(m.get("alchemiscale_strategy_iterations"), Some(&7.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_sqlite() {
    metrics_count_the_store_and_the_traffic(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_postgres() {
    metrics_count_the_store_and_the_traffic(Backend::Postgres).await;
}

/// With a metrics address of its own, the API ports have no `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_kept_off_the_api() {
    let s = alchemiscale_server::ApiSettings { metrics_on_api: false, ..settings() };
    let server = TestServer::start(Backend::Sqlite, ObjectsBackend::Local, ApiKind::User, s).await.unwrap();
    let user = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    let r = user.send(Method::GET, "/metrics", alchemiscale_client::Payload::None).await.unwrap();
    assert_eq!(r.status, 404);
}
