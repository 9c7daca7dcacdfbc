//! The web console over HTTP, on SQLite and PostgreSQL: signing in and out, sessions,
//! scopes, CSRF, the login rate limit, every page, the actions, identities, and markup in
//! stored names and tracebacks rendered inert.

use std::time::Duration;

use alchemiscale_client::Payload;
use alchemiscale_console::{ConsoleSettings, ConsoleState};
use alchemiscale_model::pdr::{python_upload_body, zstd_compress};
use alchemiscale_model::synthetic::{network_chain_json, result_chain_json};
use alchemiscale_model::{ComputeServiceId, Scope, ScopedKey};
use alchemiscale_server::testing::{Backend, TestServer};
use alchemiscale_server::ApiKind;
use alchemiscale_store::identities::{hash_key, IdentityKind};
use reqwest::redirect::Policy;
use reqwest::StatusCode;

const MARKUP: &str = "<script>alert(1)</script>";

async fn server(backend: Backend, settings: ConsoleSettings) -> Option<TestServer> {
    TestServer::user_with(backend, move |state| alchemiscale_console::router(ConsoleState::new(state.clone(), settings))).await
}

/// A browser-like client: keeps cookies, does not follow redirects (the tests look at them).
fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(Policy::none()).build().unwrap()
}

async fn add_identity(s: &TestServer, kind: IdentityKind, who: &str, scopes: &[&str]) {
    s.store.add_identity(kind, who, &hash_key(&format!("key-of-{who}")).unwrap(), false).await.unwrap();
    let scopes: Vec<Scope> = scopes.iter().map(|s| s.parse().unwrap()).collect();
    s.store.add_scopes(kind, who, &scopes).await.unwrap();
}

/// Signs in as a browser does: the sign-in form first (its token and cookie), then the post.
async fn login(s: &TestServer, b: &reqwest::Client, who: &str, key: &str) -> reqwest::Response {
    let (_, form) = get(s, b, "/ui/login").await;
    b.post(format!("{}/ui/login", s.url)).form(&[("identifier", who), ("key", key), ("csrf", &csrf_of(&form))]).send().await.unwrap()
}

async fn get(s: &TestServer, b: &reqwest::Client, path: &str) -> (StatusCode, String) {
    let r = b.get(format!("{}{path}", s.url)).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn post(s: &TestServer, b: &reqwest::Client, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    b.post(format!("{}{path}", s.url)).form(form).send().await.unwrap()
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    html[at..at + 64].to_string()
}

fn location(r: &reqwest::Response) -> String {
    r.headers().get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

async fn network(s: &TestServer, scope: &str, tag: &str, systems: usize, transformations: usize) -> ScopedKey {
    let c = s.client(IdentityKind::User, &format!("submitter-{}", scope.replace('*', "x")), &[scope]).await;
    c.create_network(&network_chain_json(systems, transformations, tag), &scope.parse().unwrap(), "active").await.unwrap()
}

async fn sign_in_and_browse(backend: Backend) {
    let Some(s) = server(backend, ConsoleSettings::default()).await else { return };
    add_identity(&s, IdentityKind::User, "alice", &["org1-*-*"]).await;
    let mine = network(&s, "org1-c-p", MARKUP, 6, 8).await;
    let theirs = network(&s, "org2-c-p", "other", 3, 3).await;
    let b = browser();

    // nothing without a session
    for path in ["/ui", "/ui/compute", &format!("/ui/networks/{mine}"), "/ui/identities"] {
        let r = b.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(location(&r), "/ui/login");
    }
    let r = post(&s, &b, &format!("/ui/networks/{mine}/weight"), &[("weight", "0.9"), ("csrf", "x")]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(s.store.get_network_weights(std::slice::from_ref(&mine)).await.unwrap(), vec![Some(0.5)]);

    // wrong key, then the right one
    let r = login(&s, &b, "alice", "wrong").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("Incorrect identifier or key."));
    let r = login(&s, &b, "alice", "key-of-alice").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    for part in ["alchemiscale_session=", "HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP without a TLS proxy: {cookie}");

    // the overview: my network, named with markup that stays text; not theirs
    let (status, html) = get(&s, &b, "/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(&mine.to_string()) && !html.contains(&theirs.to_string()));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "names are escaped");
    assert!(!html.contains(MARKUP));
    assert!(html.contains("<svg"), "activity chart");
    assert!(html.contains("org1-c-p") && !html.contains("org2-c-p"));

    // another scope's pages and actions are refused
    let (status, _) = get(&s, &b, &format!("/ui/networks/{theirs}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, page) = get(&s, &b, &format!("/ui/networks/{mine}")).await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&page);
    let r = post(&s, &b, &format!("/ui/networks/{theirs}/weight"), &[("weight", "0.9"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(s.store.get_network_weights(std::slice::from_ref(&theirs)).await.unwrap(), vec![Some(0.5)]);

    // the network page: a drawn edge per transformation, escaped names
    assert_eq!(page.matches("<line ").count(), 8, "one edge per transformation");
    assert!(!page.contains(MARKUP));
    assert!(page.contains("Restart patterns") && page.contains("No strategy is set"));

    // a forged or missing CSRF token changes nothing
    for token in ["", "0".repeat(64).as_str()] {
        let r = post(&s, &b, &format!("/ui/networks/{mine}/weight"), &[("weight", "0.9"), ("csrf", token)]).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(s.store.get_network_weights(std::slice::from_ref(&mine)).await.unwrap(), vec![Some(0.5)]);
    let r = post(&s, &b, &format!("/ui/networks/{mine}/weight"), &[("weight", "0.9"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(s.store.get_network_weights(std::slice::from_ref(&mine)).await.unwrap(), vec![Some(0.9)]);
    let r = post(&s, &b, &format!("/ui/networks/{mine}/weight"), &[("weight", "7"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "weights outside 0..1 are refused");
    let r = post(&s, &b, &format!("/ui/networks/{mine}/state"), &[("state", "inactive"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(location(&r).contains("notice=state"));
    let r = post(&s, &b, &format!("/ui/networks/{mine}/state"), &[("state", "bogus"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // create and action tasks from a transformation's page
    let tf = s.store.network_transformations(&mine).await.unwrap().remove(0);
    let (status, tf_page) = get(&s, &b, &format!("/ui/transformations/{tf}?network={mine}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(tf_page.contains("No tasks yet."));
    let back = format!("/ui/transformations/{tf}?network={mine}");
    let form = [
        ("transformation", tf.to_string()),
        ("count", "3".into()),
        ("action", "on".into()),
        ("return", back.clone()),
        ("csrf", csrf.clone()),
    ];
    let r = b.post(format!("{}/ui/networks/{mine}/tasks/create", s.url)).form(&form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(location(&r).starts_with(&back) && location(&r).contains("notice=created-actioned&n=3"), "{}", location(&r));
    let tasks: Vec<ScopedKey> = s.store.transformation_tasks(&tf, None, None).await.unwrap().into_iter().map(|(t, _)| t).collect();
    assert_eq!(tasks.len(), 3);
    assert_eq!(s.store.network_actioned_tasks(&mine).await.unwrap().len(), 3);
    let r = b
        .post(format!("{}/ui/networks/{mine}/tasks/create", s.url))
        .form(&[("transformation", tf.to_string()), ("count", "5000".into()), ("csrf", csrf.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = b.post(format!("{}{back}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = post(&s, &b, "/ui/login?return=https://evil.example", &[]).await;
    assert!(!location(&r).contains("evil"));

    // cancel one from the page's task list; the return address cannot leave the console
    let (_, tf_page) = get(&s, &b, &back).await;
    assert_eq!(tf_page.matches("name=\"task\"").count(), 3);
    let one = tasks[0].to_string();
    let r =
        post(&s, &b, &format!("/ui/networks/{mine}/tasks/cancel"), &[("task", &one), ("return", "https://evil.example/"), ("csrf", &csrf)])
            .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(location(&r).starts_with(&format!("/ui/networks/{mine}")), "{}", location(&r));
    assert_eq!(s.store.network_actioned_tasks(&mine).await.unwrap().len(), 2);

    // the network page shows each transformation's most urgent waiting priority
    let (_, page) = get(&s, &b, &format!("/ui/networks/{mine}")).await;
    assert!(page.contains("<td class=\"num\">10</td>") && !page.contains("<td class=\"num\">3</td>"), "the default priority");
    s.store.set_task_priority(&[Some(tasks[1].clone())], 3).await.unwrap();
    let (_, page) = get(&s, &b, &format!("/ui/networks/{mine}")).await;
    assert!(page.contains("<td class=\"num\">3</td>"), "the most urgent priority is shown");

    // the task page
    let (status, task_page) = get(&s, &b, &format!("/ui/tasks/{}", tasks[1])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(task_page.contains("Status history") && task_page.contains("created by alice"));
    let (status, _) = get(&s, &b, "/ui/tasks/Task-nonsense").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // a status set by a user is part of the history
    s.store.set_task_status(&[Some(tasks[2].clone())], alchemiscale_model::TaskStatus::Invalid, true).await.unwrap();
    let (_, task_page) = get(&s, &b, &format!("/ui/tasks/{}", tasks[2])).await;
    assert!(task_page.contains("set to invalid by a user (was waiting)"), "{task_page}");

    // compute page; identities are for admins only
    let (status, _) = get(&s, &b, "/ui/compute").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&s, &b, "/ui/identities").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = post(&s, &b, "/ui/identities/add", &[("kind", "user"), ("identifier", "mallory"), ("key", "k"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(s.store.get_identity(IdentityKind::User, "mallory").await.unwrap().is_none());

    // security headers on every page
    let r = b.get(format!("{}/ui", s.url)).send().await.unwrap();
    let csp = r.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(r.headers().get("x-frame-options").unwrap(), "DENY");

    // scopes are read live: revoking alice's scope closes her network page
    s.store.remove_scopes(IdentityKind::User, "alice", &["org1-*-*".parse().unwrap()]).await.unwrap();
    let (status, _) = get(&s, &b, &format!("/ui/networks/{mine}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // signing out ends the session everywhere: the old cookie no longer works
    let (_, page) = get(&s, &b, "/ui").await;
    let r = post(&s, &b, "/ui/logout", &[("csrf", &csrf_of(&page))]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let stale = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
    let session = cookie.split(';').next().unwrap().to_string();
    let r = stale.get(format!("{}/ui", s.url)).header("cookie", &session).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (status, _) = get(&s, &b, "/ui").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}
alchemiscale_server::backend_test!(sign_in_and_browse, super::sign_in_and_browse);

async fn login_attempts_are_limited(backend: Backend) {
    let settings = ConsoleSettings { login_failures: 3, ..Default::default() };
    let Some(s) = server(backend, settings).await else { return };
    add_identity(&s, IdentityKind::User, "alice", &["org1-*-*"]).await;
    let b = browser();
    for _ in 0..3 {
        assert_eq!(login(&s, &b, "alice", "guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    // the right key is refused too while the limit holds
    let r = login(&s, &b, "alice", "key-of-alice").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.text().await.unwrap().contains("Too many failed sign-in attempts"));
}
alchemiscale_server::backend_test!(login_attempts_are_limited, super::login_attempts_are_limited);

async fn sessions_expire_and_end_with_their_identity(backend: Backend) {
    let settings = ConsoleSettings { session_ttl: Duration::from_secs(1), ..Default::default() };
    let Some(s) = server(backend, settings).await else { return };
    add_identity(&s, IdentityKind::User, "alice", &["org1-*-*"]).await;
    add_identity(&s, IdentityKind::User, "bob", &["org1-*-*"]).await;
    let (a, b) = (browser(), browser());
    assert_eq!(login(&s, &a, "alice", "key-of-alice").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(get(&s, &a, "/ui").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&s, &a, "/ui").await.0, StatusCode::SEE_OTHER, "expired");

    let Some(s2) = server(backend, ConsoleSettings::default()).await else { return };
    add_identity(&s2, IdentityKind::User, "bob", &["org1-*-*"]).await;
    assert_eq!(login(&s2, &b, "bob", "key-of-bob").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(get(&s2, &b, "/ui").await.0, StatusCode::OK);
    s2.store.set_identity_status(IdentityKind::User, "bob", true, None).await.unwrap();
    assert_eq!(get(&s2, &b, "/ui").await.0, StatusCode::SEE_OTHER, "disabled identity");
    s2.store.set_identity_status(IdentityKind::User, "bob", false, None).await.unwrap();
    assert_eq!(get(&s2, &b, "/ui").await.0, StatusCode::OK, "re-enabled");
    s2.store.add_identity(IdentityKind::User, "bob", &hash_key("new-key").unwrap(), true).await.unwrap();
    assert_eq!(get(&s2, &b, "/ui").await.0, StatusCode::SEE_OTHER, "a new key ends sessions opened with the old one");
}
alchemiscale_server::backend_test!(sessions_expire_and_end_with_their_identity, super::sessions_expire_and_end_with_their_identity);

async fn admins_manage_identities(backend: Backend) {
    let Some(s) = server(backend, ConsoleSettings::default()).await else { return };
    add_identity(&s, IdentityKind::Admin, "root", &[]).await;
    let b = browser();
    assert_eq!(login(&s, &b, "root", "key-of-root").await.status(), StatusCode::SEE_OTHER);
    let (status, page) = get(&s, &b, "/ui/identities").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&page);

    let r = post(&s, &b, "/ui/identities/add", &[("kind", "user"), ("identifier", "carol"), ("key", "carol-key"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = post(&s, &b, "/ui/identities/scopes/add", &[("kind", "user"), ("identifier", "carol"), ("scope", "org9-c-p"), ("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // the new identity works through the API at once
    let mut carol = alchemiscale_client::Client::new(&s.url, "carol", "carol-key").unwrap();
    carol.max_retries = 0;
    let scopes = carol.get("/identities/carol/scopes").await.unwrap();
    assert_eq!(scopes, serde_json::json!(["org9-c-p"]));

    // the CLI's rules and messages
    let r = post(&s, &b, "/ui/identities/scopes/add", &[("kind", "user"), ("identifier", "carol"), ("scope", "org9-*-p"), ("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post(&s, &b, "/ui/identities/add", &[("kind", "user"), ("identifier", "carol"), ("key", "other"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("user identity &#39;carol&#39; already existed; its key was replaced and its scopes were removed")
            || text.contains("user identity 'carol' already existed"),
        "{text}"
    );
    let r =
        post(&s, &b, "/ui/identities/scopes/add", &[("kind", "user"), ("identifier", "nobody"), ("scope", "a-b-c"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("cannot add scopes"));
    let r = post(&s, &b, "/ui/identities/add", &[("kind", "user"), ("identifier", "dave"), ("key", ""), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post(&s, &b, "/ui/identities/add", &[("kind", "wizard"), ("identifier", "dave"), ("key", "k"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = post(&s, &b, "/ui/identities/remove", &[("kind", "user"), ("identifier", "carol"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(s.store.get_identity(IdentityKind::User, "carol").await.unwrap().is_none());
    let r = post(&s, &b, "/ui/identities/remove", &[("kind", "user"), ("identifier", "carol")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no CSRF token");
}
alchemiscale_server::backend_test!(admins_manage_identities, super::admins_manage_identities);

async fn failures_show_their_tracebacks_as_text(backend: Backend) {
    let Some(s) = server(backend, ConsoleSettings::default()).await else { return };
    add_identity(&s, IdentityKind::User, "alice", &["org1-*-*"]).await;
    let net = network(&s, "org1-c-p", "tb", 3, 2).await;
    let tf = s.store.network_transformations(&net).await.unwrap().remove(0);
    let user = s.client(IdentityKind::User, "alice2", &["org1-*-*"]).await;
    let task = user.create_tasks(&tf, 1, None).await.unwrap().remove(0);
    user.action_tasks(&net, std::slice::from_ref(&task), Some(1.0)).await.unwrap();
    let compute_server = s.sibling(ApiKind::Compute).await;
    let compute = compute_server.client(IdentityKind::Compute, "worker", &["org1-*-*"]).await;
    let service: ComputeServiceId = "svc-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap();
    s.store.register_compute_service(&service, None).await.unwrap();
    let hub: ScopedKey = format!("{}-org1-c-p", alchemiscale_model::hash::taskhub_key(&net)).parse().unwrap();
    assert_eq!(s.store.claim_taskhub_tasks(&hub, &service, 1, None).await.unwrap(), vec![Some(task.clone())]);
    let chain = result_chain_json(tf.gufe_key().as_str(), false, 100, 7)
        .replace("RuntimeError: synthetic failure", &format!("RuntimeError: {MARKUP}"));
    let body = python_upload_body(&zstd_compress(chain.as_bytes()), &service.to_string());
    let r = compute.send(reqwest::Method::POST, &format!("/tasks/{task}/results"), Payload::GzipJson(body)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let b = browser();
    assert_eq!(login(&s, &b, "alice", "key-of-alice").await.status(), StatusCode::SEE_OTHER);
    let (status, page) = get(&s, &b, &format!("/ui/tasks/{task}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt;"), "traceback shown, escaped");
    assert!(!page.contains(MARKUP));
    assert!(page.contains("claimed by svc-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    assert!(page.contains("failure returned"));
    let (status, network_page) = get(&s, &b, &format!("/ui/networks/{net}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(network_page.contains("data-state=\"error\""), "the failed edge is drawn as errored");
    let (_, overview) = get(&s, &b, "/ui").await;
    assert!(overview.contains("error: 1"));
    let (_, compute_page) = get(&s, &b, "/ui/compute").await;
    assert!(compute_page.contains("svc-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    compute_server.stop().await;
}
alchemiscale_server::backend_test!(failures_show_their_tracebacks_as_text, super::failures_show_their_tracebacks_as_text);

async fn an_errored_strategy_is_shown_and_woken(backend: Backend) {
    use alchemiscale_model::chain::KeyedChain;
    use alchemiscale_model::status::StrategyStatus;
    use alchemiscale_store::strategy::StrategyState;
    let Some(s) = server(backend, ConsoleSettings::default()).await else { return };
    add_identity(&s, IdentityKind::User, "alice", &["org1-*-*"]).await;
    let net = network(&s, "org1-c-p", "strat", 3, 3).await;
    let chain = r#"[["ConnectivityStrategy-abc", {"settings": {"__class__": "ConnectivityStrategySettings", "__module__": "stratocaster.strategies.connectivity", ":is_custom:": true, "decay_rate": 0.5}, "__qualname__": "ConnectivityStrategy", "__module__": "stratocaster.strategies.connectivity", ":version:": 1}]]"#;
    let chain = KeyedChain::from_value(alchemiscale_model::json::parse(chain).unwrap()).unwrap();
    s.store.set_network_strategy(&net, Some(&chain), StrategyState::default()).await.unwrap();
    let errored = StrategyState {
        status: StrategyStatus::Error,
        exception: Some(("ValueError".into(), MARKUP.into())),
        traceback: Some(format!("Traceback (most recent call last):\n{MARKUP}")),
        ..Default::default()
    };
    s.store.replace_strategy_state(&net, errored).await.unwrap();

    let b = browser();
    assert_eq!(login(&s, &b, "alice", "key-of-alice").await.status(), StatusCode::SEE_OTHER);
    let (status, page) = get(&s, &b, &format!("/ui/networks/{net}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("ConnectivityStrategy") && page.contains("Wake strategy"));
    assert!(page.contains("ValueError: &lt;script&gt;") && !page.contains(MARKUP), "the exception and traceback are text");
    let r = post(&s, &b, &format!("/ui/networks/{net}/strategy/wake"), &[("csrf", "forged")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(s.store.get_strategy_status(&net).await.unwrap(), Some(StrategyStatus::Error));
    let r = post(&s, &b, &format!("/ui/networks/{net}/strategy/wake"), &[("csrf", &csrf_of(&page))]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(s.store.get_strategy_status(&net).await.unwrap(), Some(StrategyStatus::Awake));
    let (_, page) = get(&s, &b, &location(&r)).await;
    assert!(page.contains("Strategy woken") && !page.contains("Wake strategy"));
}
alchemiscale_server::backend_test!(an_errored_strategy_is_shown_and_woken, super::an_errored_strategy_is_shown_and_woken);

async fn the_sign_in_form_carries_a_token_and_cookies_follow_tls(backend: Backend) {
    let Some(s) = server(backend, ConsoleSettings::default()).await else { return };
    add_identity(&s, IdentityKind::User, "alice", &["org1-*-*"]).await;

    // a sign-in posted without the form's token and cookie (from another site) is refused
    let b = browser();
    let r = b.post(format!("{}/ui/login", s.url)).form(&[("identifier", "alice"), ("key", "key-of-alice")]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let cookies: Vec<String> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(cookies.iter().all(|c| !c.starts_with("alchemiscale_session=")), "no session: {cookies:?}");
    assert!(r.text().await.unwrap().contains("sign-in form has expired"));
    // with the cookie but a forged token: refused too
    let (_, form) = get(&s, &b, "/ui/login").await;
    let forged = "f".repeat(64);
    assert_ne!(csrf_of(&form), forged);
    let r = b
        .post(format!("{}/ui/login", s.url))
        .form(&[("identifier", "alice"), ("key", "key-of-alice"), ("csrf", &forged)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(get(&s, &b, "/ui").await.0, StatusCode::SEE_OTHER, "not signed in");

    // behind a TLS proxy (X-Forwarded-Proto: https) both cookies are Secure
    let r = b.get(format!("{}/ui/login", s.url)).header("x-forwarded-proto", "https").send().await.unwrap();
    assert!(r.headers().get("set-cookie").unwrap().to_str().unwrap().contains("; Secure"));
    let token = csrf_of(&r.text().await.unwrap());
    let r = b
        .post(format!("{}/ui/login", s.url))
        .header("x-forwarded-proto", "https")
        .form(&[("identifier", "alice"), ("key", "key-of-alice"), ("csrf", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let session = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(session.starts_with("alchemiscale_session=") && session.contains("; Secure"), "{session}");

    // --console-secure-cookies marks them Secure on plain HTTP too
    let Some(s2) = server(backend, ConsoleSettings { secure_cookies: true, ..Default::default() }).await else { return };
    add_identity(&s2, IdentityKind::User, "alice", &["org1-*-*"]).await;
    let b2 = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
    let r = b2.get(format!("{}/ui/login", s2.url)).send().await.unwrap();
    let login_cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(login_cookie.contains("; Secure"), "{login_cookie}");
    let token = csrf_of(&r.text().await.unwrap());
    let r = b2
        .post(format!("{}/ui/login", s2.url))
        .header("cookie", login_cookie.split(';').next().unwrap())
        .form(&[("identifier", "alice"), ("key", "key-of-alice"), ("csrf", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers().get("set-cookie").unwrap().to_str().unwrap().contains("; Secure"));
}
alchemiscale_server::backend_test!(
    the_sign_in_form_carries_a_token_and_cookies_follow_tls,
    super::the_sign_in_form_carries_a_token_and_cookies_follow_tls
);

async fn the_login_limit_counts_per_address_and_forgets(backend: Backend) {
    let settings = ConsoleSettings { login_failures: 3, login_window: Duration::from_secs(1), ..Default::default() };
    let Some(s) = server(backend, settings).await else { return };
    add_identity(&s, IdentityKind::User, "alice", &["org1-*-*"]).await;
    let b = browser();
    // three identifiers guessed from one address use up that address's attempts
    for who in ["bob", "carol", "dave"] {
        assert_eq!(login(&s, &b, who, "guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login(&s, &b, "alice", "key-of-alice").await.status(), StatusCode::TOO_MANY_REQUESTS);
    // once the window has moved on, the right key works again
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(login(&s, &b, "alice", "key-of-alice").await.status(), StatusCode::SEE_OTHER);
}
alchemiscale_server::backend_test!(the_login_limit_counts_per_address_and_forgets, super::the_login_limit_counts_per_address_and_forgets);

async fn other_scopes_stay_closed_and_managers_show(backend: Backend) {
    use alchemiscale_model::status::ComputeManagerStatus;
    use alchemiscale_model::ComputeManagerId;
    let Some(s) = server(backend, ConsoleSettings::default()).await else { return };
    add_identity(&s, IdentityKind::User, "alice", &["org1-*-*"]).await;
    let mine = network(&s, "org1-c-p", "mine", 3, 2).await;
    let theirs = network(&s, "org2-c-p", "theirs", 3, 2).await;
    let their_tf = s.store.network_transformations(&theirs).await.unwrap().remove(0);
    let bob = s.client(IdentityKind::User, "bob", &["org2-*-*"]).await;
    let their_tasks = bob.create_tasks(&their_tf, 2, None).await.unwrap();
    bob.action_tasks(&theirs, &their_tasks[..1], Some(1.0)).await.unwrap();

    let b = browser();
    assert_eq!(login(&s, &b, "alice", "key-of-alice").await.status(), StatusCode::SEE_OTHER);
    let (_, page) = get(&s, &b, &format!("/ui/networks/{mine}")).await;
    let csrf = csrf_of(&page);
    for path in [format!("/ui/transformations/{their_tf}?network={theirs}"), format!("/ui/tasks/{}", their_tasks[0])] {
        let (status, html) = get(&s, &b, &path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(!html.contains(&their_tasks[0].to_string()), "{path}");
    }
    let tf = their_tf.to_string();
    let (t0, t1) = (their_tasks[0].to_string(), their_tasks[1].to_string());
    let forms: [(&str, Vec<(&str, &str)>); 5] = [
        ("tasks/create", vec![("transformation", &tf), ("count", "2"), ("action", "on")]),
        ("tasks/action", vec![("task", &t1)]),
        ("tasks/cancel", vec![("task", &t0)]),
        ("state", vec![("state", "deleted")]),
        ("strategy/wake", vec![]),
    ];
    for (action, mut form) in forms {
        form.push(("csrf", &csrf));
        let r = post(&s, &b, &format!("/ui/networks/{theirs}/{action}"), &form).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{action}");
    }
    assert_eq!(s.store.transformation_tasks(&their_tf, None, None).await.unwrap().len(), 2, "no task created");
    let actioned: Vec<ScopedKey> = s.store.network_actioned_tasks(&theirs).await.unwrap().into_iter().map(|(t, _)| t).collect();
    assert_eq!(actioned, vec![their_tasks[0].clone()], "nothing actioned or cancelled");
    let state = s.store.get_network_states(std::slice::from_ref(&theirs)).await.unwrap()[0];
    assert_eq!(state.map(|st| st.as_str()), Some("active"), "state unchanged");

    // compute managers: saturation, and an error's detail shown as text
    let ok = ComputeManagerId::mint("labgpus").unwrap();
    let bad = ComputeManagerId::mint("labslurm").unwrap();
    for id in [&ok, &bad] {
        s.store.register_compute_manager(id, false).await.unwrap();
    }
    s.store.update_compute_manager_status(&ok, ComputeManagerStatus::Ok, None, Some(0.25), 3600, 3600).await.unwrap();
    s.store.update_compute_manager_status(&bad, ComputeManagerStatus::Error, Some(MARKUP), None, 3600, 3600).await.unwrap();
    let (status, page) = get(&s, &b, "/ui/compute").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&ok.to_string()) && page.contains(&bad.to_string()), "{page}");
    assert!(page.contains("25 %"), "saturation shown");
    assert!(page.contains("ERROR") && page.contains("&lt;script&gt;") && !page.contains(MARKUP), "the error detail is text");
}
alchemiscale_server::backend_test!(other_scopes_stay_closed_and_managers_show, super::other_scopes_stay_closed_and_managers_show);

async fn networks_are_laid_out_in_the_background_and_the_layout_kept(backend: Backend) {
    let Some(s) = server(backend, ConsoleSettings::default()).await else { return };
    add_identity(&s, IdentityKind::User, "alice", &["org1-*-*"]).await;
    let net = network(&s, "org1-c-p", "drawn", 12, 14).await;
    let id = s.store.console_network_structure(&net).await.unwrap().unwrap().id;
    // nobody has viewed it: the console's worker lays it out and keeps the layout
    let t0 = std::time::Instant::now();
    let stored = loop {
        if let Some(text) = s.store.console_layout(id).await.unwrap() {
            break text;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no layout was made in the background");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let positions: Vec<(i64, f32, f32)> = serde_json::from_str(&stored).unwrap();
    assert_eq!(positions.len(), 12, "a position per chemical system");
    assert!(s.store.console_networks_without_layout(10).await.unwrap().is_empty());
    // the page draws the kept layout (a fresh computation would place the nodes elsewhere)
    let b = browser();
    assert_eq!(login(&s, &b, "alice", "key-of-alice").await.status(), StatusCode::SEE_OTHER);
    let (status, page) = get(&s, &b, &format!("/ui/networks/{net}")).await;
    assert_eq!(status, StatusCode::OK);
    for (_, x, y) in positions {
        let node = format!("cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\"");
        assert!(page.contains(&node), "{node} not drawn");
    }
}
alchemiscale_server::backend_test!(
    networks_are_laid_out_in_the_background_and_the_layout_kept,
    super::networks_are_laid_out_in_the_background_and_the_layout_kept
);
