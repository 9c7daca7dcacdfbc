//! The user-facing API over HTTP, on SQLite and PostgreSQL: routes, encodings, errors.

mod common;

use alchemiscale_client::{parse_keys, parse_opt_keys, Payload};
use alchemiscale_model::json;
use alchemiscale_server::server_test;
use alchemiscale_store::identities::IdentityKind;
use common::*;
use reqwest::Method;
use serde_json::json;

server_test!(service_routes, |server| async move {
    let c = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    let r = c.send_anonymous(Method::GET, "/ping", Payload::None).await.unwrap();
    expect(&r, 200);
    assert_eq!(r.json(), json!({"api": "AlchemiscaleAPI"}));
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("application/json"));

    let r = c.send_anonymous(Method::GET, "/info", Payload::None).await.unwrap();
    expect(&r, 401);
    assert_eq!(detail(&r), "Not authenticated");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert_eq!(c.get("/info").await.unwrap(), json!({"message": "nothing yet"}));
    assert_eq!(c.get("/check").await.unwrap(), serde_json::Value::Null);

    // token endpoint errors
    let form = |body: &str| Payload::Raw { bytes: body.as_bytes().to_vec(), content_encoding: None };
    let r = c.send_anonymous(Method::POST, "/token", form("username=alice&password=wrong")).await.unwrap();
    expect(&r, 401);
    assert_eq!(detail(&r), "Incorrect identity or key");
    let r = c.send_anonymous(Method::POST, "/token", form("username=nobody&password=x")).await.unwrap();
    expect(&r, 401);
    let r = c.send_anonymous(Method::POST, "/token", form("username=alice")).await.unwrap();
    expect(&r, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "password"]));
    let r = c.send_anonymous(Method::POST, "/token", form("username=alice&password=key-of-alice&grant_type=magic")).await.unwrap();
    expect(&r, 422);
    let r = c.send_anonymous(Method::POST, "/token", form("username=alice&password=key-of-alice&grant_type=password")).await.unwrap();
    expect(&r, 200);
    assert_eq!(r.json()["token_type"], "bearer");

    // unknown routes and methods answer like FastAPI
    let r = get(&c, "/nope").await;
    expect(&r, 404);
    assert_eq!(r.json(), json!({"detail": "Not Found"}));
    let r = c.send(Method::DELETE, "/networks", Payload::None).await.unwrap();
    expect(&r, 405);
    assert_eq!(r.json(), json!({"detail": "Method Not Allowed"}));

    // OpenAPI is generated from the handlers, and a docs page exists
    let r = c.send_anonymous(Method::GET, "/openapi.json", Payload::None).await.unwrap();
    expect(&r, 200);
    let doc = r.json();
    let paths = doc["paths"].as_object().unwrap();
    for p in ["/networks", "/networks/{sk}", "/networks/{sk}/tasks/action", "/bulk/tasks/status/set", "/scopes/{scope}/status", "/token"] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    assert!(doc["paths"]["/networks"]["get"].is_object() && doc["paths"]["/networks"]["post"].is_object());
    let r = c.send_anonymous(Method::GET, "/docs", Payload::None).await.unwrap();
    expect(&r, 200);
    assert!(r.text().contains("redoc"));

    // own scopes readable, others' are not (403, not 401)
    assert_eq!(c.get("/identities/alice/scopes").await.unwrap(), json!(["vecorg-*-*"]));
    let r = get(&c, "/identities/bob/scopes").await;
    expect(&r, 403);
    let admin = server.client(IdentityKind::Admin, "root", &[]).await;
    assert_eq!(admin.get("/identities/alice/scopes").await.unwrap(), json!(["vecorg-*-*"]));
    assert_eq!(admin.get("/identities/nobody/scopes").await.unwrap(), json!([]));
});

server_test!(network_submission_and_retrieval, |server| async move {
    let c = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    let r = submit_vector(&c).await;
    expect(&r, 200);
    assert_eq!(
        r.json(),
        json!({"gufe_key": "AlchemicalNetwork-c5a12a2d9a941dbfe56b76c3387ccf6d", "org": "vecorg", "campaign": "veccampaign", "project": "vecproject"})
    );
    // retrieval gives back the client's chain byte for byte (gzip on request)
    let r = get(&c, &format!("/networks/{NETWORK}")).await;
    expect(&r, 200);
    assert_eq!(r.headers.get("content-encoding"), None, "reqwest inflates transparently");
    let sent = json::parse(&u7_text()).unwrap();
    assert_eq!(r.text(), sent.get("network").unwrap().to_python_json());
    assert_eq!(c.get(&format!("/exists/{NETWORK}")).await.unwrap(), json!(true));
    assert_eq!(c.get(&format!("/exists/{}", NETWORK.replace("c5a1", "0000"))).await.unwrap(), json!(false));
    let r = get(&c, "/exists/not-a-key").await;
    expect(&r, 422);
    assert_eq!(detail(&r), "input does not appear to be a `ScopedKey`");
    // the hub and mark exist too
    let hub = alchemiscale_model::hash::taskhub_key(&sk(NETWORK));
    assert_eq!(c.get(&format!("/exists/{hub}-{SCOPE}")).await.unwrap(), json!(true));

    // resubmission is idempotent
    let r = submit_vector(&c).await;
    expect(&r, 200);

    // queries
    assert_eq!(c.get("/networks").await.unwrap(), json!([NETWORK]));
    assert_eq!(c.get("/networks?state=active").await.unwrap(), json!([NETWORK]));
    assert_eq!(c.get("/networks?state=inactive").await.unwrap(), json!([]));
    assert_eq!(c.get("/networks?state=active%7Cinactive&org=vecorg").await.unwrap(), json!([NETWORK]));
    let name = c.get_chain("networks", &sk(NETWORK)).await.unwrap().as_array().unwrap().last().unwrap().as_array().unwrap()[1]
        .get("name")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let q = url::form_urlencoded::byte_serialize(fancy_escape(&name).as_bytes()).collect::<String>();
    assert_eq!(c.get(&format!("/networks?name={q}")).await.unwrap(), json!([NETWORK]));
    assert_eq!(c.get("/networks?name=nothing.*").await.unwrap(), json!([]));
    let r = get(&c, "/networks?name=(").await;
    expect(&r, 400);
    let r = get(&c, "/networks?org=*&campaign=x").await;
    expect(&r, 400);
    let r = get(&c, "/networks?org=0bad").await;
    expect(&r, 400);
    assert_eq!(c.get("/networks?org=other").await.unwrap(), json!([]));

    let tfs = parse_keys(&c.get("/transformations").await.unwrap()).unwrap();
    assert_eq!(tfs.len(), 5);
    let css = parse_keys(&c.get("/chemicalsystems").await.unwrap()).unwrap();
    assert_eq!(css.len(), parse_keys(&c.get(&format!("/networks/{NETWORK}/chemicalsystems")).await.unwrap()).unwrap().len());
    let mut sorted = tfs.clone();
    sorted.sort();
    assert_eq!(tfs, sorted);

    // relationships
    let net_tfs = parse_keys(&c.get(&format!("/networks/{NETWORK}/transformations")).await.unwrap()).unwrap();
    assert_eq!(net_tfs.len(), 5);
    assert_eq!(c.get(&format!("/transformations/{TF0}/networks")).await.unwrap(), json!([NETWORK]));
    let ends = parse_keys(&c.get(&format!("/transformations/{TF0}/chemicalsystems")).await.unwrap()).unwrap();
    assert_eq!(ends.len(), 2);
    let back = parse_keys(&c.get(&format!("/chemicalsystems/{}/transformations", ends[0])).await.unwrap()).unwrap();
    assert!(back.contains(&sk(TF0)));
    assert_eq!(c.get(&format!("/chemicalsystems/{}/networks", ends[0])).await.unwrap(), json!([NETWORK]));
    let missing_tf = TF0.replace("3c2d", "0000");
    assert_eq!(c.get(&format!("/transformations/{missing_tf}/networks")).await.unwrap(), json!([]));

    // object retrieval: a transformation chain rebuilt in dependency order
    let chain = c.get_chain("transformations", &sk(TF0)).await.unwrap();
    let chain = alchemiscale_model::chain::KeyedChain::from_value(chain).unwrap();
    assert_eq!(chain.root().key.as_str(), "Transformation-3c2debf79f5ad85b0bcb6b86e7c390f5");
    let cs = c.get_chain("chemicalsystems", &ends[1]).await.unwrap();
    assert!(cs.as_array().is_some());
    let r = get(&c, &format!("/transformations/{missing_tf}")).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "'No such object in database'");
    let r = get(&c, "/networks/garbage").await;
    expect(&r, 400);
    assert_eq!(detail(&r), "input does not appear to be a `ScopedKey`");

    // network state
    assert_eq!(c.post("/bulk/networks/state/get", &json!({"networks": [NETWORK]})).await.unwrap(), json!(["active"]));
    let missing_net = NETWORK.replace("c5a1", "0000");
    assert_eq!(
        c.post("/bulk/networks/state/set", &json!({"networks": [NETWORK, missing_net], "states": ["inactive", "deleted"]})).await.unwrap(),
        json!([NETWORK, null])
    );
    assert_eq!(c.get("/networks").await.unwrap(), json!([NETWORK]), "no state filter: every state");
    assert_eq!(c.get("/networks?state=active").await.unwrap(), json!([]));
    let r = post(&c, "/bulk/networks/state/set", json!({"networks": [NETWORK], "states": ["notastate"]})).await;
    expect(&r, 400);
    assert!(detail(&r).starts_with("'notastate' is not a valid state. Valid values include: ['"));
    let r = post(&c, "/bulk/networks/state/set", json!({"networks": [NETWORK], "states": []})).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "networks and states must have the same length");
    let r = post(&c, "/bulk/networks/state/set", json!({"networks": [TF0], "states": ["active"]})).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "`network` ScopedKey does not correspond to an `AlchemicalNetwork`");
    assert_eq!(c.post("/bulk/networks/state/get", &json!({"networks": [NETWORK]})).await.unwrap(), json!(["inactive"]));
});

/// Escape regex metacharacters for a literal full match.
fn fancy_escape(s: &str) -> String {
    s.chars().flat_map(|c| if "\\.+*?()|[]{}^$#&-~".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

server_test!(network_submission_errors, |server| async move {
    let c = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    let chain = vector_text("network.keyed_chain.json");
    let body = |chain: &str, scope: serde_json::Value, state: &str| {
        format!("{{\"network\": {chain}, \"scope\": {scope}, \"state\": \"{state}\"}}")
    };
    let scope = json!({"org": "vecorg", "campaign": "veccampaign", "project": "vecproject"});
    // invalid state
    let r = post_text(&c, "/networks", &body(&chain, scope.clone(), "sleepy")).await;
    expect(&r, 422);
    assert_eq!(detail(&r), "`state` = sleepy must be one of the following: active, deleted, inactive, invalid");
    // non-specific and foreign scopes
    let r = post_text(&c, "/networks", &body(&chain, json!({"org": "vecorg", "campaign": null, "project": null}), "active")).await;
    expect(&r, 422);
    let r = post_text(&c, "/networks", &body(&chain, json!({"org": "other", "campaign": "c", "project": "p"}), "active")).await;
    expect(&r, 401);
    assert!(detail(&r).contains("Targeted scope 'other-c-p' not accessible via scopes for this identity: ['vecorg-*-*']."));
    let r = post_text(&c, "/networks", &body(&chain, json!({"org": "vecorg", "campaign": "*", "project": "x"}), "active")).await;
    expect(&r, 422);
    // malformed chains
    let r = post_text(&c, "/networks", &body("[[\"A-1\", {}]]", scope.clone(), "active")).await;
    expect(&r, 422);
    let r = post_text(&c, "/networks", &body("{\"no\": 1}", scope.clone(), "active")).await;
    expect(&r, 422);
    let r = post_text(&c, "/networks", &format!("{{\"scope\": {scope}}}")).await;
    expect(&r, 422);
    let r = post_text(&c, "/networks", "{\"network\": [").await;
    expect(&r, 422);
    assert_eq!(r.json()["detail"][0]["type"], "json_invalid");
    let r = c
        .send(Method::POST, "/networks", Payload::Raw { bytes: b"not gzip".to_vec(), content_encoding: Some("gzip".into()) })
        .await
        .unwrap();
    expect(&r, 400);
    // self-transformation
    let m = r#""__module__": "m""#;
    let selfie = format!(
        r#"[["ChemicalSystem-1", {{"__qualname__": "ChemicalSystem", {m}}}], ["P-1", {{"__qualname__": "P", {m}}}],
            ["Transformation-1", {{"__qualname__": "Transformation", {m}, "stateA": {{":gufe-key:": "ChemicalSystem-1"}}, "stateB": {{":gufe-key:": "ChemicalSystem-1"}}, "protocol": {{":gufe-key:": "P-1"}}}}],
            ["AlchemicalNetwork-1", {{"__qualname__": "AlchemicalNetwork", {m}, "nodes": [{{":gufe-key:": "ChemicalSystem-1"}}], "edges": [{{":gufe-key:": "Transformation-1"}}], "name": null}}]]"#
    );
    let r = post_text(&c, "/networks", &body(&selfie, scope.clone(), "active")).await;
    expect(&r, 422);
    assert!(detail(&r).contains("uses the same `ChemicalSystem` 'ChemicalSystem-1' for both states"));
    assert_eq!(c.get("/networks").await.unwrap(), json!([]), "nothing was stored");

    // NaN, Infinity and huge integers inside gufe payloads are preserved, not rejected
    let special = format!(
        r#"[["ChemicalSystem-1", {{"__qualname__": "ChemicalSystem", {m}, "x": [NaN, Infinity, -Infinity, 123456789012345678901234567890, 1.10]}}],
            ["ChemicalSystem-2", {{"__qualname__": "ChemicalSystem", {m}}}], ["P-1", {{"__qualname__": "P", {m}, "e": 1e-300}}],
            ["Transformation-1", {{"__qualname__": "Transformation", {m}, "stateA": {{":gufe-key:": "ChemicalSystem-1"}}, "stateB": {{":gufe-key:": "ChemicalSystem-2"}}, "protocol": {{":gufe-key:": "P-1"}}}}],
            ["AlchemicalNetwork-1", {{"__qualname__": "AlchemicalNetwork", {m}, "nodes": [{{":gufe-key:": "ChemicalSystem-1"}}, {{":gufe-key:": "ChemicalSystem-2"}}], "edges": [{{":gufe-key:": "Transformation-1"}}], "name": "special"}}]]"#
    );
    let r = post_text(&c, "/networks", &body(&special, scope.clone(), "active")).await;
    expect(&r, 200);
    let back = get(&c, &format!("/networks/AlchemicalNetwork-1-{SCOPE}")).await;
    expect(&back, 200);
    assert_eq!(back.text(), json::parse(&special).unwrap().to_python_json());
    assert!(back.text().contains("[NaN, Infinity, -Infinity, 123456789012345678901234567890, 1.10]"));
});

server_test!(tasks_actions_and_statuses, |server| async move {
    let c = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    expect(&submit_vector(&c).await, 200);
    let tf = sk(TF0);
    let tasks = c.create_tasks(&tf, 3, None).await.unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|t| t.scope().to_string() == SCOPE && t.qualname() == "Task"));
    assert_eq!(c.create_tasks(&tf, 0, None).await.unwrap(), vec![]);
    // extends
    let child = c.create_tasks(&tf, 2, Some(&tasks[0])).await.unwrap();
    let grandchild = c.create_tasks(&tf, 1, Some(&child[0])).await.unwrap();
    let r = post(&c, &format!("/transformations/{TF0}/tasks"), json!({"count": 1, "extends": sk(NETWORK).to_dict()})).await;
    expect(&r, 400);
    assert!(detail(&r).starts_with("`extends` ScopedKey ("));
    let other_tf = parse_keys(&c.get("/transformations").await.unwrap()).unwrap().into_iter().find(|t| *t != tf).unwrap();
    let r = post(&c, &format!("/transformations/{other_tf}/tasks"), json!({"count": 1, "extends": tasks[0].to_dict()})).await;
    expect(&r, 400);
    assert!(detail(&r).contains("extends a Transformation other than"));
    let r = post(&c, &format!("/transformations/{NETWORK}/tasks"), json!({"count": 1})).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "Got an unsupported `Transformation` type: AlchemicalNetwork");
    let r = post(&c, &format!("/transformations/{TF0}/tasks"), json!({"extends": null})).await;
    expect(&r, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "count"]));
    let r = post(&c, &format!("/transformations/{TF0}/tasks"), json!({"count": "three"})).await;
    expect(&r, 422);
    let r = post(&c, &format!("/transformations/{}/tasks", TF0.replace("3c2d", "0000")), json!({"count": 1})).await;
    expect(&r, 400);

    // bulk creation keeps input order and each transformation's scope
    let bulk = parse_keys(
        &c.post(
            "/bulk/transformations/tasks/create",
            &json!({"transformations": [TF0, other_tf.to_string(), TF0], "extends": [null, "", tasks[1].to_string()]}),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(bulk.len(), 3);
    let tf_of = |t: &alchemiscale_model::ScopedKey| {
        let c = &c;
        let t = t.clone();
        async move { c.get(&format!("/tasks/{t}/transformation")).await.unwrap() }
    };
    assert_eq!(tf_of(&bulk[0]).await, json!(TF0));
    assert_eq!(tf_of(&bulk[1]).await, json!(other_tf.to_string()));
    let r = post(&c, "/bulk/transformations/tasks/create", json!({"transformations": [TF0], "extends": [null, null]})).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "`extends` must either be `None` or have the same length as `transformations`");

    // listings
    let all: Vec<_> = parse_keys(&c.get(&format!("/networks/{NETWORK}/tasks")).await.unwrap()).unwrap();
    assert_eq!(all.len(), 3 + 2 + 1 + 3);
    assert_eq!(parse_keys(&c.get(&format!("/transformations/{TF0}/tasks")).await.unwrap()).unwrap().len(), 3 + 2 + 1 + 2);
    let desc = parse_keys(&c.get(&format!("/transformations/{TF0}/tasks?extends={}", tasks[0])).await.unwrap()).unwrap();
    assert_eq!(desc.len(), 3, "children and grandchild");
    assert!(desc.contains(&grandchild[0]));
    let graph = c.get(&format!("/transformations/{TF0}/tasks?return_as=graph")).await.unwrap();
    assert_eq!(graph[child[0].to_string()], json!(tasks[0].to_string()));
    assert_eq!(graph[tasks[0].to_string()], serde_json::Value::Null);
    let r = get(&c, &format!("/transformations/{TF0}/tasks?return_as=tree")).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "`return_as` takes 'list' or 'graph', not 'tree'");
    let r = get(&c, &format!("/networks/{NETWORK}/tasks?status=bogus")).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "'bogus' is not a valid TaskStatusEnum");
    assert_eq!(c.get("/tasks?status=waiting&org=vecorg").await.unwrap().as_array().unwrap().len(), 9);
    assert_eq!(c.get("/tasks?status=bogus").await.unwrap(), json!([]));
    assert_eq!(parse_keys(&c.get(&format!("/tasks/{}/networks", tasks[0])).await.unwrap()).unwrap(), vec![sk(NETWORK)]);
    let r = get(
        &c,
        &format!("/tasks/{}/transformation", tasks[0].to_string().replace(tasks[0].gufe_key().token(), "00000000000000000000000000000000")),
    )
    .await;
    expect(&r, 400);
    assert_eq!(detail(&r), "'No such object in database'");

    // actioning (weights validated before anything changes)
    let net = sk(NETWORK);
    let r = post(&c, &format!("/networks/{NETWORK}/tasks/action"), json!({"tasks": [tasks[0].to_dict()], "weight": 1.5})).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "weight must be between 0 and 1 (inclusive)");
    let r = post(&c, &format!("/networks/{NETWORK}/tasks/action"), json!({"tasks": [tasks[0].to_dict()], "weight": [0.1, 0.2]})).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "weight (when in a list) must have the same length as tasks");
    assert_eq!(c.post(&format!("/networks/{NETWORK}/tasks/actioned"), &json!({"task_weights": false})).await.unwrap(), json!([]));
    let actioned = c.action_tasks(&net, &[tasks[0].clone(), tasks[1].clone()], None).await.unwrap();
    assert_eq!(actioned, vec![Some(tasks[0].clone()), Some(tasks[1].clone())]);
    // already actioned: reported (not null), weight set on every listed task
    let again = parse_opt_keys(
        &c.post(
            &format!("/networks/{NETWORK}/tasks/action"),
            &json!({"tasks": [tasks[0].to_dict(), tasks[2].to_dict(), net.to_dict()], "weight": 0.25}),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(again, vec![Some(tasks[0].clone()), Some(tasks[2].clone()), None]);
    let weights = c.post(&format!("/networks/{NETWORK}/tasks/actioned"), &json!({"task_weights": true})).await.unwrap();
    assert_eq!(weights[tasks[0].to_string()], json!(0.25));
    assert_eq!(weights[tasks[1].to_string()], json!(0.5));
    assert_eq!(weights[tasks[2].to_string()], json!(0.25));
    let per_task = c.post(&format!("/tasks/{}/networks/actioned", tasks[1]), &json!({"task_weights": true})).await.unwrap();
    assert_eq!(per_task, json!({ NETWORK: 0.5 }));
    let bulk_actioned = c.post("/bulk/networks/tasks/actioned", &json!({"networks": [NETWORK], "task_weights": false})).await.unwrap();
    assert_eq!(bulk_actioned[0].as_array().unwrap().len(), 3);
    let r = post(&c, &format!("/networks/{TF0}/tasks/actioned"), json!({"task_weights": false})).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "`network` ScopedKey does not correspond to an `AlchemicalNetwork`");

    // cancel
    let cancelled = parse_opt_keys(
        &c.post(&format!("/networks/{NETWORK}/tasks/cancel"), &json!({"tasks": [tasks[1].to_dict(), child[1].to_dict()]})).await.unwrap(),
    )
    .unwrap();
    assert_eq!(cancelled, vec![Some(tasks[1].clone()), None]);

    // statuses
    assert_eq!(c.get_tasks_status(&tasks).await.unwrap(), vec![Some("waiting".to_string()); 3]);
    let r = post(&c, "/bulk/tasks/status/set", json!({"tasks": [tasks[0].to_dict()], "status": "running"})).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "Cannot set status to 'TaskStatusEnum.running', must be one of 'waiting', 'invalid', 'deleted'");
    let r = post(&c, "/bulk/tasks/status/set", json!({"tasks": [tasks[0].to_dict()], "status": "sleepy"})).await;
    expect(&r, 400);
    // invalid cascades to descendants and removes actions
    let set =
        parse_opt_keys(&c.post("/bulk/tasks/status/set", &json!({"tasks": [tasks[0].to_dict()], "status": "invalid"})).await.unwrap())
            .unwrap();
    assert_eq!(set, vec![Some(tasks[0].clone())]);
    assert_eq!(
        c.get_tasks_status(&[child[0].clone(), grandchild[0].clone()]).await.unwrap(),
        vec![Some("invalid".into()), Some("invalid".into())]
    );
    let weights = c.post(&format!("/networks/{NETWORK}/tasks/actioned"), &json!({"task_weights": true})).await.unwrap();
    assert!(weights.get(tasks[0].to_string()).is_none());
    // invalid -> waiting is not allowed: null, status unchanged; a deleted task stays deleted
    let set = parse_opt_keys(
        &c.post("/bulk/tasks/status/set", &json!({"tasks": [tasks[0].to_dict(), tasks[2].to_dict()], "status": "waiting"})).await.unwrap(),
    )
    .unwrap();
    assert_eq!(set, vec![None, Some(tasks[2].clone())]);
    assert_eq!(c.post(&format!("/tasks/{}/status", tasks[2]), &json!("deleted")).await.unwrap(), json!(tasks[2].to_string()));
    assert_eq!(c.get(&format!("/tasks/{}/status", tasks[2])).await.unwrap(), json!("deleted"));
    assert_eq!(c.post(&format!("/tasks/{}/status", tasks[2]), &json!("invalid")).await.unwrap(), serde_json::Value::Null);
    let r = post(&c, &format!("/tasks/{}/status", tasks[2]), json!({"status": "waiting"})).await;
    expect(&r, 422);
    let missing_task = tasks[2].to_string().replace(tasks[2].gufe_key().token(), "00000000000000000000000000000000");
    assert_eq!(c.get(&format!("/tasks/{missing_task}/status")).await.unwrap(), serde_json::Value::Null);

    // priorities
    assert_eq!(c.post("/bulk/tasks/priority/get", &json!({"tasks": [tasks[1].to_dict()]})).await.unwrap(), json!([10]));
    assert_eq!(
        c.post("/bulk/tasks/priority/set", &json!({"tasks": [tasks[1].to_dict(), sk(&missing_task).to_dict()], "priority": 3}))
            .await
            .unwrap(),
        json!([tasks[1].to_string(), null])
    );
    assert_eq!(
        c.post("/bulk/tasks/priority/get", &json!({"tasks": [tasks[1].to_dict(), sk(&missing_task).to_dict()]})).await.unwrap(),
        json!([3, null])
    );
    for bad in ["0", "-5", "9223372036854775808", "123456789012345678901234567890"] {
        let r = post_text(&c, "/bulk/tasks/priority/set", &format!("{{\"tasks\": [], \"priority\": {bad}}}")).await;
        expect(&r, 400);
        assert!(detail(&r).starts_with("priority must be between 1 and 2**63 - 1, inclusive"));
    }
    let r = post_text(&c, "/bulk/tasks/priority/set", "{\"tasks\": [], \"priority\": NaN}").await;
    assert!(r.status == 400 || r.status == 422, "{}", r.status);

    // status summaries
    let counts = c.get(&format!("/networks/{NETWORK}/status")).await.unwrap();
    assert_eq!(counts, json!({"deleted": 1, "invalid": 4, "waiting": 4}));
    assert_eq!(c.post("/bulk/networks/status", &json!({"networks": [NETWORK]})).await.unwrap(), json!([counts]));
    assert_eq!(c.get(&format!("/transformations/{TF0}/status")).await.unwrap(), json!({"deleted": 1, "invalid": 4, "waiting": 3}));
    assert_eq!(c.get("/scopes/vecorg-*-*/status").await.unwrap(), counts);
    assert_eq!(c.get("/scopes/*-*-*/status?network_state=active").await.unwrap(), counts);
    assert_eq!(c.get("/scopes/*-*-*/status?network_state=inactive").await.unwrap(), json!({}));
    assert_eq!(c.get("/scopes/other-*-*/status").await.unwrap(), json!({}));
    let r = get(&c, "/scopes/*-x-*/status").await;
    expect(&r, 400);
});

server_test!(weights_and_bare_bodies, |server| async move {
    let c = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    expect(&submit_vector(&c).await, 200);
    let missing = NETWORK.replace("c5a1", "0000");
    assert_eq!(c.get(&format!("/networks/{NETWORK}/weight")).await.unwrap(), json!(0.5));
    assert_eq!(c.get(&format!("/networks/{missing}/weight")).await.unwrap(), serde_json::Value::Null);
    assert_eq!(c.post(&format!("/networks/{NETWORK}/weight"), &json!(0.75)).await.unwrap(), json!(NETWORK));
    assert_eq!(c.post(&format!("/networks/{missing}/weight"), &json!(0.75)).await.unwrap(), serde_json::Value::Null);
    let r = post(&c, &format!("/networks/{NETWORK}/weight"), json!({"weight": 0.25})).await;
    expect(&r, 422);
    for bad in ["1.5", "-0.1", "NaN", "Infinity"] {
        let r = post_text(&c, &format!("/networks/{NETWORK}/weight"), bad).await;
        expect(&r, 400);
        assert!(detail(&r).starts_with("all `weights` must be between 0 and 1 (inclusive)"));
    }
    let r = post(&c, &format!("/networks/{TF0}/weight"), json!(0.5)).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "a `networks` ScopedKey does not correspond to an `AlchemicalNetwork`");
    assert_eq!(c.post("/bulk/networks/weight/get", &json!({"networks": [NETWORK, missing]})).await.unwrap(), json!([0.75, null]));
    assert_eq!(
        c.post("/bulk/networks/weight/set", &json!({"networks": [NETWORK, missing], "weights": [0.1, 0.2]})).await.unwrap(),
        json!([NETWORK, null])
    );
    let r = post(&c, "/bulk/networks/weight/set", json!({"networks": [NETWORK], "weights": [0.1, 0.2]})).await;
    expect(&r, 400);
    assert_eq!(detail(&r), "length of `networks` and `weights` must be the same");
    let r = post(&c, "/bulk/networks/weight/set", json!({"networks": [NETWORK], "weights": [2]})).await;
    expect(&r, 400);
    assert_eq!(c.get(&format!("/networks/{NETWORK}/weight")).await.unwrap(), json!(0.1));
});

server_test!(bad_input_never_500, |server| async move {
    let c = server.client(IdentityKind::User, "alice", &["vecorg-*-*"]).await;
    expect(&submit_vector(&c).await, 200);
    let routes_with_bodies = [
        "/bulk/networks/state/set",
        "/bulk/networks/state/get",
        "/bulk/transformations/tasks/create",
        "/bulk/networks/status",
        "/bulk/networks/tasks/actioned",
        "/bulk/networks/weight/get",
        "/bulk/networks/weight/set",
        "/bulk/tasks/priority/get",
        "/bulk/tasks/priority/set",
        "/bulk/tasks/status/get",
        "/bulk/tasks/status/set",
    ];
    let bodies = [
        "",
        "{",
        "[1, 2]",
        "\"text\"",
        "null",
        "{\"networks\": 5}",
        "{\"tasks\": [{\"gufe_key\": 1}]}",
        "{\"tasks\": [{}]}",
        "{\"networks\": [\"x\"]}",
        "{\"networks\": [NaN]}",
    ];
    for route in routes_with_bodies {
        for body in bodies {
            let r = post_text(&c, route, body).await;
            assert!((400..500).contains(&r.status), "{route} with {body:?}: {} {}", r.status, r.text());
        }
    }
    // foreign keys in bodies of bulk task routes are nulls, not errors
    let foreign = json!({"gufe_key": "Task-00000000000000000000000000000000", "org": "other", "campaign": "c", "project": "p"});
    assert_eq!(c.post("/bulk/tasks/status/get", &json!({"tasks": [foreign]})).await.unwrap(), json!([null]));
    // oversized bodies: 413 (the test server's limit is 16 MiB), also after gzip inflation
    let big = format!("{{\"networks\": [\"{}\"]}}", "x".repeat(17 << 20));
    let r = post_text(&c, "/bulk/networks/status", &big).await;
    expect(&r, 413);
    let r = c.send(Method::POST, "/bulk/networks/status", Payload::GzipJson(big)).await.unwrap();
    expect(&r, 413);
    // unknown fields are ignored
    assert_eq!(c.post("/bulk/networks/status", &json!({"networks": [NETWORK], "extra": [1, 2]})).await.unwrap(), json!([{}]));
    // malformed path keys
    for path in ["/networks/x/tasks", "/tasks/A-b-c/status", "/transformations/T-1-a-b-0c/status", "/chemicalsystems/%20/networks"] {
        let r = get(&c, path).await;
        expect(&r, 400);
    }
});
