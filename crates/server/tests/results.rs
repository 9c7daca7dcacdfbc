//! Results end to end over HTTP: upload (C14) as the Python compute client sends it,
//! listing (U53/U54/U56/U57), download (U55) and the extended-result hand-off (C13), on
//! SQLite and PostgreSQL, with the local directory and S3 object stores, and the faults.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use alchemiscale_client::{parse_keys, Client, Payload};
use alchemiscale_model::pdr::{encode_bytes_codec, python_upload_body, read_result, upload_body, zstd_compress};
use alchemiscale_model::synthetic::result_chain_json;
use alchemiscale_model::{ComputeServiceId, ScopedKey};
use alchemiscale_server::testing::{settings, Backend, ObjectsBackend, TestServer};
use alchemiscale_server::ApiKind;
use alchemiscale_store::identities::IdentityKind;
use common::*;
use reqwest::Method;
use serde_json::json;

const SERVICE: &str = "vecservice-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

struct Setup {
    user_server: TestServer,
    compute_server: TestServer,
    user: Client,
    compute: Client,
}

async fn setup(backend: Backend, objects: ObjectsBackend) -> Option<Setup> {
    let user_server = TestServer::start(backend, objects, ApiKind::User, settings()).await?;
    let compute_server = user_server.sibling(ApiKind::Compute).await;
    let user = user_server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    let compute = compute_server.client(IdentityKind::Compute, "worker", &["vecorg-*-*"]).await;
    expect(&submit_vector(&user).await, 200);
    Some(Setup { user_server, compute_server, user, compute })
}

/// Create a task for `tf`, action it, register `service` (once) and claim the task for it.
async fn claimed_task(s: &Setup, tf: &ScopedKey, service: &str, extends: Option<&ScopedKey>) -> ScopedKey {
    let task = s.user.create_tasks(tf, 1, extends).await.unwrap().remove(0);
    s.user.action_tasks(&sk(NETWORK), std::slice::from_ref(&task), Some(1.0)).await.unwrap();
    let id: ComputeServiceId = service.parse().unwrap();
    let _ = s.compute_server.store.register_compute_service(&id, None).await;
    let hub = alchemiscale_model::hash::taskhub_key(&sk(NETWORK));
    // claim exactly this task: it is the only waiting one on the hub with priority 1
    s.user.post("/bulk/tasks/priority/set", &json!({"tasks": [task.to_dict()], "priority": 1})).await.unwrap();
    let claimed = s.compute_server.store.claim_taskhub_tasks(&format!("{hub}-{SCOPE}").parse().unwrap(), &id, 1, None).await.unwrap();
    assert_eq!(claimed, vec![Some(task.clone())]);
    task
}

fn c14_gzip() -> Vec<u8> {
    std::fs::read(vector_path("C14_set_task_result.request.gz")).unwrap()
}

async fn push_raw(c: &Client, task: &ScopedKey, bytes: Vec<u8>) -> alchemiscale_client::RawResponse {
    c.send(Method::POST, &format!("/tasks/{task}/results"), Payload::Raw { bytes, content_encoding: Some("gzip".into()) }).await.unwrap()
}

async fn push_blob(c: &Client, task: &ScopedKey, blob: &[u8], service: &str) -> alchemiscale_client::RawResponse {
    c.send(Method::POST, &format!("/tasks/{task}/results"), Payload::GzipJson(python_upload_body(blob, service))).await.unwrap()
}

/// A large result as the Python client would send it (codec-compressed, gzip), but with
/// the latin-1 string written as raw UTF-8 (`upload_body`, so that it fits the tests' body
/// limit).
async fn push_large(c: &Client, task: &ScopedKey, blob: &[u8], service: &str) -> alchemiscale_client::RawResponse {
    let bytes = alchemiscale_client::gzip(std::str::from_utf8(&upload_body(blob, service)).unwrap());
    c.send(Method::POST, &format!("/tasks/{task}/results"), Payload::Raw { bytes, content_encoding: Some("gzip".into()) }).await.unwrap()
}

/// Wait until the object store's staging place is empty (S3 clean-up runs in the background).
async fn staging_empties(s: &Setup) {
    let start = std::time::Instant::now();
    loop {
        let left = s.compute_server.objects.list(alchemiscale_objects::STAGING_DIR).await.unwrap();
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "staging objects left behind: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn latin1_of(r: &alchemiscale_client::RawResponse) -> Vec<u8> {
    let v: Vec<String> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v.len(), 1);
    v[0].chars().map(|c| c as u32 as u8).collect()
}

async fn round_trip(s: Setup) {
    let ok_blob = std::fs::read(vector_path("pdr_ok.json.zst")).unwrap();
    let tf = sk(TF0);
    let task = claimed_task(&s, &tf, SERVICE, None).await;

    // the exact request the Python compute client sends
    let r = push_raw(&s.compute, &task, c14_gzip()).await;
    expect(&r, 200);
    let d = r.json();
    assert!(d["gufe_key"].as_str().unwrap().starts_with("ProtocolDAGResultRef-"));
    assert_eq!(
        (d["org"].as_str(), d["campaign"].as_str(), d["project"].as_str()),
        (Some("vecorg"), Some("veccampaign"), Some("vecproject"))
    );
    let pdrr = format!("{}-{SCOPE}", d["gufe_key"].as_str().unwrap());
    assert_eq!(s.user.get_tasks_status(std::slice::from_ref(&task)).await.unwrap(), vec![Some("complete".into())]);
    assert_eq!(s.user.get(&format!("/transformations/{TF0}/results")).await.unwrap(), json!([pdrr]));
    assert_eq!(s.user.get(&format!("/tasks/{task}/results")).await.unwrap(), json!([pdrr]));

    // download: the stored blob, byte for byte, as a latin-1 string
    let r = get(&s.user, &format!("/transformations/{TF0}/results/{pdrr}")).await;
    expect(&r, 200);
    assert_eq!(latin1_of(&r), ok_blob);
    let r = get(&s.user, &format!("/transformations/{TF0}/nonsense/{pdrr}")).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "`route` takes 'results' or 'failures', not 'nonsense'");
    let missing = pdrr.replace("ProtocolDAGResultRef-", "ProtocolDAGResultRef-0");
    let r = get(&s.user, &format!("/transformations/{TF0}/results/{}", missing.replacen(&missing[21..53], &"0".repeat(32), 1))).await;
    expect(&r, 400);

    // a large result: stored and analysed while its upload arrives, then moved into place
    let big_task = claimed_task(&s, &tf, SERVICE, None).await;
    let big_blob = zstd_compress(result_chain_json(tf.gufe_key().as_str(), true, 7 << 20, 7).as_bytes());
    assert!(big_blob.len() > 4 << 20, "past the size handled in memory: {}", big_blob.len());
    let r = push_large(&s.compute, &big_task, &big_blob, SERVICE).await;
    expect(&r, 200);
    let big_pdrr = format!("{}-{SCOPE}", r.json()["gufe_key"].as_str().unwrap());
    assert_eq!(s.user.get_tasks_status(std::slice::from_ref(&big_task)).await.unwrap(), vec![Some("complete".into())]);
    let r = get(&s.user, &format!("/transformations/{TF0}/results/{big_pdrr}")).await;
    expect(&r, 200);
    assert!(latin1_of(&r) == big_blob, "the large result comes back byte for byte");
    staging_empties(&s).await;

    // a task extending the completed one gets its result with the transformation (C13)
    let child = claimed_task(&s, &tf, SERVICE, Some(&task)).await;
    let r = get(&s.compute, &format!("/tasks/{child}/transformation/gufe")).await;
    expect(&r, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v[0].is_array());
    assert_eq!(v[0].as_array().unwrap().last().unwrap()[0], "Transformation-3c2debf79f5ad85b0bcb6b86e7c390f5");
    let extended: Vec<u8> = v[1].as_str().unwrap().chars().map(|c| c as u32 as u8).collect();
    assert_eq!(extended, ok_blob);
    let r = get(&s.compute, &format!("/tasks/{task}/transformation/gufe")).await;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()[1], json!(null));
    assert_eq!(s.compute.get(&format!("/tasks/{child}/transformation")).await.unwrap(), json!(TF0));

    // a failure: tracebacks recorded, task in error, listed under failures
    let fail_blob = std::fs::read(vector_path("pdr_failure.json.zst")).unwrap();
    let fail_tf_key = read_result(fail_blob.clone(), 1 << 30).unwrap().summary.transformation_key.unwrap();
    let fail_tf = sk(&format!("{fail_tf_key}-{SCOPE}"));
    let ftask = claimed_task(&s, &fail_tf, SERVICE, None).await;
    let r = push_blob(&s.compute, &ftask, &fail_blob, SERVICE).await;
    expect(&r, 200);
    let fpdrr = format!("{}-{SCOPE}", r.json()["gufe_key"].as_str().unwrap());
    assert_eq!(s.user.get_tasks_status(std::slice::from_ref(&ftask)).await.unwrap(), vec![Some("error".into())]);
    assert_eq!(s.user.get(&format!("/transformations/{fail_tf}/failures")).await.unwrap(), json!([fpdrr]));
    assert_eq!(s.user.get(&format!("/tasks/{ftask}/failures")).await.unwrap(), json!([fpdrr]));
    let counts: std::collections::HashMap<_, _> = s.user_server.store.table_counts().await.unwrap().into_iter().collect();
    assert_eq!(counts["tracebacks"], 1);
    let r = get(&s.user, &format!("/transformations/{fail_tf}/failures/{fpdrr}")).await;
    expect(&r, 200);
    assert_eq!(latin1_of(&r), fail_blob);

    // refused uploads change nothing
    let before = s.user_server.store.table_counts().await.unwrap();
    let other = s.user.create_tasks(&tf, 1, None).await.unwrap().remove(0);
    let r = push_raw(&s.compute, &other, c14_gzip()).await; // never claimed by this service
    expect(&r, 409);
    let wrong_tf = claimed_task(&s, &fail_tf, SERVICE, None).await;
    let r = push_raw(&s.compute, &wrong_tf, c14_gzip()).await; // a result of another transformation
    expect(&r, 422);
    assert!(detail(&r).contains("is for transformation"), "{}", detail(&r));
    let bad_bodies: Vec<String> = vec![
        "{}".into(),
        format!("{{\"compute_service_id\": \"{SERVICE}\"}}"),
        format!("{{\"protocoldagresult\": \"text\", \"compute_service_id\": \"{SERVICE}\"}}"),
        python_upload_body(&[0x28, 0xB5, 0x2F, 0xFD, 9, 9, 9], SERVICE),
        python_upload_body(b"[[\"A-1\", {}]]", SERVICE),
        format!("{{\"protocoldagresult\": {}, \"compute_service_id\": 5}}", encode_bytes_codec(&ok_blob).to_python_json()),
    ];
    for b in bad_bodies {
        let r = s.compute.send(Method::POST, &format!("/tasks/{wrong_tf}/results"), Payload::GzipJson(b.clone())).await.unwrap();
        assert!(r.status == 422 || r.status == 400, "{b}: {} {}", r.status, r.text());
    }
    // large refused uploads (another transformation's result; a truncated frame) leave
    // nothing behind either
    let mut truncated = big_blob.clone();
    truncated.truncate(truncated.len() - 1000);
    for (blob, why) in [(&big_blob, "is for transformation"), (&truncated, "truncated")] {
        let r = push_large(&s.compute, &wrong_tf, blob, SERVICE).await;
        expect(&r, 422);
        assert!(detail(&r).contains(why), "{}", detail(&r));
    }
    staging_empties(&s).await;
    // oversized bodies (the test server's limit is 16 MiB): as sent, and after inflation
    // (each on a connection of its own; the server drains a refused body, so the client
    // reads the 413).
    let token = s.compute.login().await.unwrap();
    let url = format!("{}/tasks/{wrong_tf}/results", s.compute_server.url);
    let fresh_push = |body: Vec<u8>, gzip: bool| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
            let mut req = http.post(url).bearer_auth(token).header("Content-Type", "application/json").body(body);
            if gzip {
                req = req.header("Content-Encoding", "gzip");
            }
            req.send().await.map(|r| r.status().as_u16())
        }
    };
    let bomb = alchemiscale_client::gzip(&" ".repeat(17 << 20));
    assert_eq!(fresh_push(bomb, true).await.unwrap(), 413);
    assert_eq!(fresh_push(vec![b' '; 17 << 20], false).await.unwrap(), 413);
    // a gzip stream damaged in the middle
    let mut damaged = c14_gzip();
    let mid = damaged.len() / 2;
    damaged[mid..mid + 8].copy_from_slice(b"DAMAGED!");
    let status = fresh_push(damaged, true).await.unwrap();
    assert!(status == 400 || status == 422, "{status}");
    let r = push_raw(&s.compute, &wrong_tf, b"not gzip".to_vec()).await;
    expect(&r, 400);
    let r = s
        .user
        .send(
            Method::POST,
            &format!("/tasks/{wrong_tf}/results"),
            Payload::Raw { bytes: c14_gzip(), content_encoding: Some("gzip".into()) },
        )
        .await
        .unwrap();
    expect(&r, 405); // the user API has no result upload route (GET only)
    let after = s.user_server.store.table_counts().await.unwrap();
    fn interesting(c: &[(&'static str, i64)]) -> Vec<(&'static str, i64)> {
        c.iter().filter(|(t, _)| ["pdrr", "task_result", "tracebacks"].contains(t)).cloned().collect()
    }
    assert_eq!(interesting(&before), interesting(&after));
    assert_eq!(s.user.get_tasks_status(std::slice::from_ref(&wrong_tf)).await.unwrap(), vec![Some("running".into())]);

    // a foreign-scope caller cannot push or download
    let stranger = s.compute_server.client(IdentityKind::Compute, "stranger", &["other-*-*"]).await;
    expect(&push_raw(&stranger, &wrong_tf, c14_gzip()).await, 401);
    let ustranger = s.user_server.client(IdentityKind::User, "ustranger", &["other-*-*"]).await;
    expect(&get(&ustranger, &format!("/transformations/{TF0}/results/{pdrr}")).await, 401);
    let _ = parse_keys(&json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_sqlite_local() {
    round_trip(setup(Backend::Sqlite, ObjectsBackend::Local).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_postgres_local() {
    let Some(s) = setup(Backend::Postgres, ObjectsBackend::Local).await else { return };
    round_trip(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_sqlite_s3() {
    let Some(s) = setup(Backend::Sqlite, ObjectsBackend::S3).await else { return };
    round_trip(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_postgres_s3() {
    let Some(s) = setup(Backend::Postgres, ObjectsBackend::S3).await else { return };
    round_trip(s).await;
}

/// An object altered or removed behind the server's back is reported, naming the object;
/// wrong data is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_objects_are_reported() {
    let s = setup(Backend::Sqlite, ObjectsBackend::Local).await.unwrap();
    let task = claimed_task(&s, &sk(TF0), SERVICE, None).await;
    let r = push_raw(&s.compute, &task, c14_gzip()).await;
    expect(&r, 200);
    let pdrr = format!("{}-{SCOPE}", r.json()["gufe_key"].as_str().unwrap());
    let record = s.user_server.store.get_pdrr(&sk(&pdrr)).await.unwrap().unwrap();
    let location = record.location.unwrap();
    s.user_server.objects.put(&location, bytes::Bytes::from_static(b"tampered")).await.unwrap();
    let r = get(&s.user, &format!("/transformations/{TF0}/results/{pdrr}")).await;
    expect(&r, 500);
    assert!(detail(&r).contains("fails its integrity check") && detail(&r).contains(&location), "{}", detail(&r));
    s.user_server.objects.delete(&location).await.unwrap();
    let r = get(&s.user, &format!("/transformations/{TF0}/results/{pdrr}")).await;
    expect(&r, 500);
    assert!(detail(&r).contains("missing") && detail(&r).contains(&location), "{}", detail(&r));
}

/// A TCP proxy to the S3 test server that can be switched off, standing in for an S3
/// outage.
async fn switchable_proxy(target: String, up: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { break };
            if !up.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// S3 stops mid-run: uploads answer 503 (clients retry) and record nothing; when S3 is
/// back the same upload succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_is_503_and_recoverable() {
    let Some(mut cfg) = alchemiscale_objects::testing::s3_config() else { return };
    let up = Arc::new(AtomicBool::new(true));
    let target = cfg.endpoint.clone().unwrap().trim_start_matches("http://").to_string();
    cfg.endpoint = Some(switchable_proxy(target, up.clone()).await);
    let objects = alchemiscale_objects::Objects::open(&alchemiscale_objects::ObjectStoreConfig::S3(cfg)).unwrap();
    let ts = alchemiscale_store::testing::sqlite().await;
    let store = ts.store.clone();
    let user_state = alchemiscale_server::AppState::new(ApiKind::User, store.clone(), Some(objects.clone()), settings());
    let compute_state = alchemiscale_server::AppState::new(ApiKind::Compute, store.clone(), Some(objects.clone()), settings());
    let serve = |app: axum::Router| async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { alchemiscale_server::serve(l, app, std::future::pending()).await.unwrap() });
        url
    };
    let user_url = serve(alchemiscale_server::user_app(user_state)).await;
    let compute_url = serve(alchemiscale_server::compute_app(compute_state)).await;
    for (kind, id) in [(IdentityKind::User, "alice"), (IdentityKind::Compute, "worker")] {
        store.add_identity(kind, id, &alchemiscale_store::identities::hash_key("k").unwrap(), false).await.unwrap();
        store.add_scopes(kind, id, &["vecorg-*-*".parse().unwrap()]).await.unwrap();
    }
    let mut user = Client::new(&user_url, "alice", "k").unwrap();
    user.max_retries = 0;
    let mut compute = Client::new(&compute_url, "worker", "k").unwrap();
    compute.max_retries = 0;
    expect(&submit_vector(&user).await, 200);
    let task = user.create_tasks(&sk(TF0), 1, None).await.unwrap().remove(0);
    user.action_tasks(&sk(NETWORK), std::slice::from_ref(&task), None).await.unwrap();
    let id: ComputeServiceId = SERVICE.parse().unwrap();
    store.register_compute_service(&id, None).await.unwrap();
    let hub = alchemiscale_model::hash::taskhub_key(&sk(NETWORK));
    store.claim_taskhub_tasks(&format!("{hub}-{SCOPE}").parse().unwrap(), &id, 1, None).await.unwrap();

    up.store(false, Ordering::SeqCst);
    let r = push_raw(&compute, &task, c14_gzip()).await;
    expect(&r, 503);
    let r = get(&compute, "/check").await;
    expect(&r, 503);
    assert!(detail(&r).contains("object store reachable: False"));
    let counts: std::collections::HashMap<_, _> = store.table_counts().await.unwrap().into_iter().collect();
    assert_eq!((counts["pdrr"], counts["task_result"]), (0, 0));
    assert_eq!(user.get_tasks_status(std::slice::from_ref(&task)).await.unwrap(), vec![Some("running".into())]);

    up.store(true, Ordering::SeqCst);
    let r = push_raw(&compute, &task, c14_gzip()).await;
    expect(&r, 200);
    assert_eq!(user.get_tasks_status(std::slice::from_ref(&task)).await.unwrap(), vec![Some("complete".into())]);
    assert_eq!(compute.get("/check").await.unwrap(), json!(null));
}

/// Send a whole request on a connection of its own and only then read the answer, as
/// Python's http.client (under the upstream clients) does; the status, or the I/O error a
/// server that stopped reading causes.
async fn whole_then_answer(url: &str, head: &str, body: &[u8]) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("{head}Host: {addr}\r\n\r\n").as_bytes()).await?;
    tcp.write_all(body).await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before answering"));
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(&answer).split(' ').nth(1).and_then(|c| c.parse().ok());
    status.ok_or_else(|| std::io::Error::other(format!("no status in {:?}", String::from_utf8_lossy(&answer))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_read_by_clients_that_send_everything_first() {
    // refused early in a body of many megabytes (which no socket buffer holds): the rest
    // is drained, so the client finishes sending and reads the answer
    let s = setup(Backend::Sqlite, ObjectsBackend::Local).await.unwrap();
    let task = claimed_task(&s, &sk(TF0), SERVICE, None).await;
    let token = s.compute.login().await.unwrap();
    let url = &s.compute_server.url;
    let head = |framing: &str| {
        format!("POST /tasks/{task}/results HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n{framing}")
    };
    // invalid at its start (a raw control character in the payload string): 422
    let mut bad = br#"{"protocoldagresult": {"__class__": "bytes", "latin-1": ""#.to_vec();
    bad.extend(std::iter::repeat_n(b'x', 12 << 20));
    bad.extend_from_slice(br#""}}"#);
    let framing = format!("Content-Length: {}\r\n", bad.len());
    assert_eq!(whole_then_answer(url, &head(&framing), &bad).await.unwrap(), 422);
    // declared longer than the limit (16 MiB here): 413
    let long = vec![b' '; 17 << 20];
    let framing = format!("Content-Length: {}\r\n", long.len());
    assert_eq!(whole_then_answer(url, &head(&framing), &long).await.unwrap(), 413);
    // found longer than the limit while it streams in (chunked): 413
    let mut chunked = Vec::new();
    for piece in long.chunks(1 << 20) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(whole_then_answer(url, &head("Transfer-Encoding: chunked\r\n"), &chunked).await.unwrap(), 413);
    // nothing was recorded, and the task takes its result
    assert_eq!(s.user.get_tasks_status(std::slice::from_ref(&task)).await.unwrap(), vec![Some("running".into())]);
    staging_empties(&s).await;
    let blob = std::fs::read(vector_path("pdr_ok.json.zst")).unwrap();
    let tf_key = read_result(blob.clone(), 1 << 30).unwrap().summary.transformation_key.unwrap();
    let task = claimed_task(&s, &sk(&format!("{tf_key}-{SCOPE}")), SERVICE, None).await;
    expect(&push_blob(&s.compute, &task, &blob, SERVICE).await, 200);
}

/// A compute service that disconnects in the middle of a large upload (the server is
/// already storing and analysing it): nothing is recorded, the staging object goes, the
/// task stays running and the same upload succeeds afterwards.
async fn upload_cut_short(s: Setup, local: bool) {
    use tokio::io::AsyncWriteExt;
    let tf = sk(TF0);
    let task = claimed_task(&s, &tf, SERVICE, None).await;
    let blob = zstd_compress(result_chain_json(tf.gufe_key().as_str(), true, 7 << 20, 11).as_bytes());
    let body = upload_body(&blob, SERVICE);
    let before = s.user_server.store.table_counts().await.unwrap();

    let token = s.compute.login().await.unwrap();
    let addr = s.compute_server.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /tasks/{task}/results HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // past the size where the server starts storing and analysing (4 MiB of payload)
    tcp.write_all(&body[..body.len() * 9 / 10]).await.unwrap();
    tcp.flush().await.unwrap();
    if local {
        // the server is storing it by now (on S3 the staging object is a multipart upload
        // in progress, which is not listed)
        let start = std::time::Instant::now();
        while s.compute_server.objects.list(alchemiscale_objects::STAGING_DIR).await.unwrap().is_empty() {
            assert!(start.elapsed() < std::time::Duration::from_secs(20), "the upload never reached the staging place");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    } else {
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    }
    drop(tcp);

    staging_empties(&s).await;
    assert_eq!(s.user_server.store.table_counts().await.unwrap(), before, "nothing recorded");
    assert_eq!(s.user.get_tasks_status(std::slice::from_ref(&task)).await.unwrap(), vec![Some("running".into())]);
    let r = push_large(&s.compute, &task, &blob, SERVICE).await;
    expect(&r, 200);
    assert_eq!(s.user.get_tasks_status(std::slice::from_ref(&task)).await.unwrap(), vec![Some("complete".into())]);
    staging_empties(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_cut_short_local() {
    upload_cut_short(setup(Backend::Sqlite, ObjectsBackend::Local).await.unwrap(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_cut_short_s3() {
    let Some(s) = setup(Backend::Postgres, ObjectsBackend::S3).await else { return };
    upload_cut_short(s, false).await;
}
