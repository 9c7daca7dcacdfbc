//! Restart patterns, strategies and result listings over HTTP, and the auth matrix.

mod common;

use alchemiscale_client::{parse_keys, Payload};
use alchemiscale_model::hash::TracebacksFields;
use alchemiscale_model::{ScopedKey, TaskStatus};
use alchemiscale_server::testing::SECRET;
use alchemiscale_server::{server_test, ApiKind, TokenKeys};
use alchemiscale_store::identities::IdentityKind;
use alchemiscale_store::results::RecordedResult;
use common::*;
use reqwest::Method;
use serde_json::json;

server_test!(restart_pattern_routes, |server| async move {
    let c = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    expect(&submit_vector(&c).await, 200);
    let base = format!("/networks/{NETWORK}/restartpatterns");
    assert_eq!(
        c.post(&format!("{base}/add"), &json!({"patterns": ["RuntimeError: .+", "Timeout"], "num_allowed_restarts": 2})).await.unwrap(),
        json!(null)
    );
    let got = c.post("/bulk/networks/restartpatterns/get", &json!({"networks": [NETWORK]})).await.unwrap();
    let mut pairs: Vec<(String, i64)> = serde_json::from_value(got[NETWORK].clone()).unwrap();
    pairs.sort();
    assert_eq!(pairs, vec![("RuntimeError: .+".to_string(), 2), ("Timeout".to_string(), 2)]);
    assert_eq!(c.post(&format!("{base}/maxretries"), &json!({"patterns": ["Timeout"], "max_retries": 5})).await.unwrap(), json!(null));
    let r = post(&c, &format!("{base}/maxretries"), json!({"patterns": ["Timeout"], "max_retries": 0})).await;
    expect(&r, 400);
    assert_eq!(c.post(&format!("{base}/remove"), &json!({"patterns": ["RuntimeError: .+", "unknown"]})).await.unwrap(), json!(null));
    let got = c.post("/bulk/networks/restartpatterns/get", &json!({"networks": [NETWORK]})).await.unwrap();
    assert_eq!(got, json!({ NETWORK: [["Timeout", 5]] }));
    assert_eq!(c.get(&format!("{base}/clear")).await.unwrap(), json!([NETWORK]));
    let missing = NETWORK.replace("c5a1", "0000");
    let got = c.post("/bulk/networks/restartpatterns/get", &json!({"networks": [NETWORK, missing]})).await.unwrap();
    assert_eq!(got, json!({ NETWORK: [], missing.clone(): [] }));
    // bad input
    for body in [
        json!({"patterns": ["("], "num_allowed_restarts": 1}),
        json!({"patterns": [""], "num_allowed_restarts": 1}),
        json!({"patterns": ["x"], "num_allowed_restarts": 0}),
    ] {
        let r = post(&c, &format!("{base}/add"), body.clone()).await;
        expect(&r, 400);
    }
    let r = post(&c, &format!("{base}/add"), json!({"patterns": ["x"]})).await;
    expect(&r, 422);
    let r = post(&c, &format!("/networks/{TF0}/restartpatterns/add"), json!({"patterns": ["x"], "num_allowed_restarts": 1})).await;
    expect(&r, 400);
    let r = post(&c, &format!("/networks/{missing}/restartpatterns/add"), json!({"patterns": ["x"], "num_allowed_restarts": 1})).await;
    expect(&r, 400);
    assert_eq!(c.post("/bulk/networks/restartpatterns/get", &json!({"networks": [NETWORK]})).await.unwrap(), json!({ NETWORK: [] }));
});

server_test!(strategy_routes, |server| async move {
    let c = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    expect(&submit_vector(&c).await, 200);
    let base = format!("/networks/{NETWORK}/strategy");
    assert_eq!(c.get(&base).await.unwrap(), json!(null));
    assert_eq!(c.get(&format!("{base}/state")).await.unwrap(), json!(null));
    assert_eq!(c.get(&format!("{base}/status")).await.unwrap(), json!(null));
    assert_eq!(c.post(&format!("{base}/awake"), &json!({})).await.unwrap(), json!(null));
    let strategy = r#"[["ConnectivityStrategy-0123456789abcdef0123456789abcdef", {"settings": {"__class__": "ConnectivityStrategySettings", "__module__": "stratocaster.strategies.connectivity", ":is_custom:": true, "cutoff": NaN, "decay_rate": 0.5, "max_runs": null}, "__qualname__": "ConnectivityStrategy", "__module__": "stratocaster.strategies.connectivity", ":version:": 1}]]"#;
    let body = format!("{{\"strategy\": {strategy}, \"max_tasks_per_transformation\": 5, \"task_scaling\": \"linear\", \"mode\": \"full\", \"sleep_interval\": 60}}");
    let r = post_text(&c, &base, &body).await;
    expect(&r, 200);
    assert_eq!(r.json(), json!(format!("ConnectivityStrategy-0123456789abcdef0123456789abcdef-{SCOPE}")));
    let back = get(&c, &base).await;
    expect(&back, 200);
    assert_eq!(back.text(), alchemiscale_model::json::parse(strategy).unwrap().to_python_json());
    let st = c.get(&format!("{base}/state")).await.unwrap();
    assert_eq!(
        st,
        json!({"mode": "full", "status": "awake", "iterations": 0, "sleep_interval": 60, "last_iteration": null, "last_iteration_result_count": 0, "max_tasks_per_transformation": 5, "task_scaling": "linear", "exception": null, "traceback": null})
    );
    assert_eq!(c.get(&format!("{base}/status")).await.unwrap(), json!("awake"));
    assert_eq!(c.post(&format!("{base}/awake"), &json!({})).await.unwrap(), json!(NETWORK));
    // invalid state values and malformed strategies: 422, nothing changed
    for bad in [
        format!("{{\"strategy\": {strategy}, \"mode\": \"sometimes\"}}"),
        format!("{{\"strategy\": {strategy}, \"sleep_interval\": 0}}"),
        "{\"strategy\": [[\"X\"]]}".to_string(),
        "{\"mode\": \"full\"}".to_string(),
    ] {
        let r = post_text(&c, &base, &bad).await;
        expect(&r, 422);
    }
    assert_eq!(c.get(&format!("{base}/state")).await.unwrap()["mode"], "full");
    let r = post_text(&c, &format!("/networks/{TF0}/strategy"), &format!("{{\"strategy\": {strategy}}}")).await;
    expect(&r, 400);
    // removal
    assert_eq!(c.post(&base, &json!({"strategy": null})).await.unwrap(), json!(null));
    assert_eq!(c.get(&base).await.unwrap(), json!(null));
});

server_test!(result_listings, |server| async move {
    let c = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    expect(&submit_vector(&c).await, 200);
    let tasks = c.create_tasks(&sk(TF0), 2, None).await.unwrap();
    let result = |n: u32, ok: bool| RecordedResult {
        obj_key: format!("ProtocolDAGResult-{n:032x}"),
        ok,
        location: format!("protocoldagresult/x/{n}/obj.json.zst"),
        content_sha256: "0".repeat(64),
        size: 10,
        creator: None,
        tracebacks: (!ok).then(|| TracebacksFields {
            tracebacks: vec!["boom".into()],
            source_keys: vec!["U-1".into()],
            failure_keys: vec!["F-1".into()],
        }),
    };
    server.store.set_task_status(&[Some(tasks[0].clone())], TaskStatus::Running, false).await.unwrap();
    let ok = server.store.record_result(&tasks[0], &result(1, true)).await.unwrap();
    server.store.set_task_status(&[Some(tasks[1].clone())], TaskStatus::Running, false).await.unwrap();
    let failed = server.store.record_result(&tasks[1], &result(2, false)).await.unwrap();
    assert_eq!(parse_keys(&c.get(&format!("/transformations/{TF0}/results")).await.unwrap()).unwrap(), vec![ok.clone()]);
    assert_eq!(parse_keys(&c.get(&format!("/transformations/{TF0}/failures")).await.unwrap()).unwrap(), vec![failed.clone()]);
    assert_eq!(parse_keys(&c.get(&format!("/tasks/{}/results", tasks[0])).await.unwrap()).unwrap(), vec![ok]);
    assert_eq!(c.get(&format!("/tasks/{}/failures", tasks[0])).await.unwrap(), json!([]));
    assert_eq!(parse_keys(&c.get(&format!("/tasks/{}/failures", tasks[1])).await.unwrap()).unwrap(), vec![failed]);
    assert_eq!(c.get_tasks_status(&tasks).await.unwrap(), vec![Some("complete".into()), Some("error".into())]);
});

/// A token signed with the server's secret but for the other API.
fn compute_token(identifier: &str, scopes: &[&str]) -> String {
    let keys = TokenKeys::new(SECRET, jsonwebtoken::Algorithm::HS256, std::time::Duration::from_secs(600), ApiKind::Compute);
    keys.issue(identifier, IdentityKind::Compute, scopes.iter().map(|s| s.to_string()).collect()).unwrap()
}

fn raw_token(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

server_test!(auth_matrix, |server| async move {
    let owner = server.client(IdentityKind::User, "owner", &["vecorg-*-*"]).await;
    expect(&submit_vector(&owner).await, 200);
    let task = owner.create_tasks(&sk(TF0), 1, None).await.unwrap().remove(0);
    let stranger = server.client(IdentityKind::User, "stranger", &["other-*-*"]).await;
    let victim = server.client(IdentityKind::User, "victim", &["vecorg-*-*"]).await;
    let victim_token = victim.login().await.unwrap();

    let t = task.to_string();
    let td = json!([task.to_dict()]);
    // (method, path, body) of every route that reaches a scoped object
    let object_routes: Vec<(Method, String, serde_json::Value)> = vec![
        (Method::GET, format!("/exists/{NETWORK}"), json!(null)),
        (Method::GET, format!("/networks/{NETWORK}"), json!(null)),
        (Method::GET, format!("/transformations/{TF0}"), json!(null)),
        (Method::GET, format!("/networks/{NETWORK}/transformations"), json!(null)),
        (Method::GET, format!("/transformations/{TF0}/networks"), json!(null)),
        (Method::GET, format!("/networks/{NETWORK}/chemicalsystems"), json!(null)),
        (Method::GET, format!("/transformations/{TF0}/chemicalsystems"), json!(null)),
        (Method::POST, format!("/transformations/{TF0}/tasks"), json!({"count": 1})),
        (Method::POST, "/bulk/transformations/tasks/create".into(), json!({"transformations": [TF0]})),
        (Method::GET, format!("/networks/{NETWORK}/tasks"), json!(null)),
        (Method::GET, format!("/tasks/{t}/networks"), json!(null)),
        (Method::GET, format!("/transformations/{TF0}/tasks"), json!(null)),
        (Method::GET, format!("/tasks/{t}/transformation"), json!(null)),
        (Method::GET, format!("/networks/{NETWORK}/status"), json!(null)),
        (Method::POST, "/bulk/networks/status".into(), json!({"networks": [NETWORK]})),
        (Method::GET, format!("/transformations/{TF0}/status"), json!(null)),
        (Method::POST, format!("/networks/{NETWORK}/tasks/actioned"), json!({"task_weights": true})),
        (Method::POST, "/bulk/networks/tasks/actioned".into(), json!({"networks": [NETWORK], "task_weights": true})),
        (Method::POST, format!("/tasks/{t}/networks/actioned"), json!({"task_weights": true})),
        (Method::POST, format!("/networks/{NETWORK}/tasks/action"), json!({"tasks": td})),
        (Method::POST, format!("/networks/{NETWORK}/tasks/cancel"), json!({"tasks": td})),
        (Method::GET, format!("/networks/{NETWORK}/weight"), json!(null)),
        (Method::POST, format!("/networks/{NETWORK}/weight"), json!(0.5)),
        (Method::POST, "/bulk/networks/weight/get".into(), json!({"networks": [NETWORK]})),
        (Method::POST, "/bulk/networks/weight/set".into(), json!({"networks": [NETWORK], "weights": [0.5]})),
        (Method::POST, "/bulk/networks/state/get".into(), json!({"networks": [NETWORK]})),
        (Method::POST, "/bulk/networks/state/set".into(), json!({"networks": [NETWORK], "states": ["active"]})),
        (Method::POST, format!("/tasks/{t}/status"), json!("waiting")),
        (Method::GET, format!("/tasks/{t}/status"), json!(null)),
        (Method::POST, format!("/networks/{NETWORK}/restartpatterns/add"), json!({"patterns": ["x"], "num_allowed_restarts": 1})),
        (Method::POST, format!("/networks/{NETWORK}/restartpatterns/remove"), json!({"patterns": ["x"]})),
        (Method::GET, format!("/networks/{NETWORK}/restartpatterns/clear"), json!(null)),
        (Method::POST, "/bulk/networks/restartpatterns/get".into(), json!({"networks": [NETWORK]})),
        (Method::POST, format!("/networks/{NETWORK}/restartpatterns/maxretries"), json!({"patterns": ["x"], "max_retries": 1})),
        (Method::GET, format!("/transformations/{TF0}/results"), json!(null)),
        (Method::GET, format!("/transformations/{TF0}/failures"), json!(null)),
        (Method::GET, format!("/tasks/{t}/results"), json!(null)),
        (Method::GET, format!("/tasks/{t}/failures"), json!(null)),
        (Method::POST, format!("/networks/{NETWORK}/strategy"), json!({"strategy": null})),
        (Method::GET, format!("/networks/{NETWORK}/strategy"), json!(null)),
        (Method::GET, format!("/networks/{NETWORK}/strategy/state"), json!(null)),
        (Method::GET, format!("/networks/{NETWORK}/strategy/status"), json!(null)),
        (Method::POST, format!("/networks/{NETWORK}/strategy/awake"), json!({})),
    ];
    let payload = |m: &Method, b: &serde_json::Value| if *m == Method::GET { Payload::None } else { Payload::Json(b.to_string()) };
    let wrong_audience = compute_token("owner", &["vecorg-*-*"]);
    let exp = chrono::Utc::now().timestamp() as u64;
    let expired =
        raw_token(SECRET, json!({"sub": "owner", "scopes": ["vecorg-*-*"], "exp": exp - 10, "aud": "alchemiscale:user", "kind": "user"}));
    let forged = raw_token(
        "not-the-secret",
        json!({"sub": "owner", "scopes": ["*-*-*"], "exp": exp + 600, "aud": "alchemiscale:user", "kind": "user"}),
    );
    let upstream_style = raw_token(SECRET, json!({"sub": "owner", "scopes": ["vecorg-*-*"], "exp": exp + 600}));
    // the victim is disabled after logging in: its token stops working
    server.store.set_identity_status(IdentityKind::User, "victim", true, None).await.unwrap();

    for (m, path, body) in &object_routes {
        let r = owner.send_anonymous(m.clone(), path, payload(m, body)).await.unwrap();
        assert_eq!((r.status, detail(&r)), (401, "Not authenticated".into()), "{m} {path} without a token");
        for (what, token) in [
            ("wrong audience", &wrong_audience),
            ("expired", &expired),
            ("forged", &forged),
            ("no audience", &upstream_style),
            ("disabled", &victim_token),
        ] {
            let r = owner.send_with_token(m.clone(), path, payload(m, body), token).await.unwrap();
            assert_eq!(r.status, 401, "{m} {path} with a {what} token: {}", r.text());
            assert_eq!(detail(&r), "Could not validate credentials");
        }
        let r = stranger.send(m.clone(), path, payload(m, body)).await.unwrap();
        let bulk_task_route = path.starts_with("/bulk/tasks");
        if bulk_task_route {
            expect(&r, 200);
        } else {
            assert_eq!(r.status, 401, "{m} {path} from another scope: {}", r.text());
            let d = detail(&r);
            assert!(d.contains("Targeted scope 'vecorg-veccampaign-vecproject' not accessible") && d.contains("['other-*-*']"), "{d}");
        }
    }
    // bulk task routes answer null for tasks the caller cannot see (rule B)
    for (path, body) in [
        ("/bulk/tasks/status/get", json!({"tasks": td})),
        ("/bulk/tasks/priority/get", json!({"tasks": td})),
        ("/bulk/tasks/status/set", json!({"tasks": td, "status": "deleted"})),
        ("/bulk/tasks/priority/set", json!({"tasks": td, "priority": 1})),
    ] {
        assert_eq!(stranger.post(path, &body).await.unwrap(), json!([null]), "{path}");
    }
    // queries from another scope see nothing
    for path in ["/networks", "/transformations", "/chemicalsystems", "/tasks", "/networks?org=vecorg"] {
        assert_eq!(stranger.get(path).await.unwrap(), json!([]), "{path}");
    }
    assert_eq!(stranger.get("/scopes/*-*-*/status").await.unwrap(), json!({}));
    // the owner still sees everything unchanged
    assert_eq!(owner.get_tasks_status(std::slice::from_ref(&task)).await.unwrap(), vec![Some("waiting".to_string())]);
    assert_eq!(owner.post("/bulk/tasks/priority/get", &json!({"tasks": td})).await.unwrap(), json!([10]));
    // a compute identity cannot log in to the user API
    let compute = server.client(IdentityKind::Compute, "worker", &["vecorg-*-*"]).await;
    assert_eq!(compute.login().await.unwrap_err().status(), Some(401));
    let _unused: Option<ScopedKey> = None;
});
