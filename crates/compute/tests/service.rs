//! The compute service end to end over HTTP: networks submitted over the user API, tasks
//! created and actioned, compute services draining them with the native protocol, results
//! read back over the user API — on SQLite and (when configured) PostgreSQL.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use alchemiscale_compute::synthetic::estimate;
use alchemiscale_compute::StopReason;
use alchemiscale_model::chain::KeyedChain;
use alchemiscale_model::json::{self, Value};
use alchemiscale_model::pdr::{read_result, zstd_compress, zstd_decompress};
use alchemiscale_model::synthetic::result_chain_json;
use alchemiscale_model::{ComputeServiceId, ScopedKey};
use alchemiscale_server::testing::Backend;
use alchemiscale_store::identities::IdentityKind;
use common::*;
use serde_json::json;

/// Two services drain a network (including a task extending another): every task
/// completes exactly once, results are retrievable and are what SyntheticProtocol computes.
async fn drain(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (network, tfs) = env.submit("drain", 4, &[("n_units", Value::from(3i64))]).await;
    let mut tasks = env.tasks(&network, &tfs).await;
    let parent = tasks[0].clone();
    let child = env.user.create_tasks(&tfs[0], 1, Some(&parent)).await.unwrap().remove(0);
    env.action(&network, std::slice::from_ref(&child)).await;
    tasks.push(child.clone());

    let a = env.start("svcA", "claim_limit: 1\n");
    let b = env.start("svcB", "claim_limit: 2\n");
    wait_until(Duration::from_secs(90), "all tasks complete", || async { env.statuses(&tasks).await.iter().all(|s| s == "complete") })
        .await;
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.executed + sb.executed, tasks.len() as u64, "{sa:?} {sb:?}");
    assert_eq!((sa.failed, sb.failed, sa.released, sb.released), (0, 0, 0, 0));
    assert_eq!(sa.stop_reason, Some(StopReason::Stopped));
    assert_eq!(env.registrations().await, 0, "both deregistered");

    let mut pdr_keys: HashMap<String, String> = HashMap::new(); // task → ProtocolDAGResult key
    for task in &tasks {
        let results = env.task_results(task, false).await;
        assert_eq!(results.len(), 1, "task {task} completed exactly once");
        assert!(env.task_results(task, true).await.is_empty());
        let tf = if *task == child || *task == parent { &tfs[0] } else { &tfs[tasks.iter().position(|t| t == task).unwrap()] };
        let r = env.download(tf, &results[0], false).await;
        assert!(r.summary.ok);
        assert_eq!(r.summary.transformation_key.as_deref(), Some(tf.gufe_key().as_str()));
        let text = zstd_decompress(&r.blob, 1 << 30).unwrap();
        let chain = KeyedChain::from_value(json::parse_bytes(&text).unwrap()).unwrap();
        assert_eq!(
            chain.root().dict.get("name").and_then(Value::as_str),
            Some(task.to_string().as_str()),
            "the DAG is named after the task"
        );
        let estimates: Vec<f64> = chain
            .entries()
            .iter()
            .filter(|e| e.qualname() == "ProtocolUnitResult")
            .map(|e| e.dict.get("outputs").unwrap().get("estimate").unwrap().as_number().unwrap().as_f64())
            .collect();
        assert_eq!(estimates, (0..3).map(|i| estimate(tf.gufe_key().as_str(), i)).collect::<Vec<_>>());
        pdr_keys.insert(task.to_string(), r.summary.key.to_string());
        if *task == child {
            assert_eq!(r.summary.extends_key.as_deref(), Some(pdr_keys[&parent.to_string()].as_str()), "the extension records its parent");
        } else {
            assert_eq!(r.summary.extends_key, None);
        }
    }
    assert_eq!(env.transformation_results(&tfs[0], false).await.len(), 2);
    for tf in &tfs[1..] {
        assert_eq!(env.transformation_results(tf, false).await.len(), 1);
    }
}
alchemiscale_server::backend_test!(drain_network, super::drain);

/// A failing protocol with a restart pattern allowing 2 restarts: three failures, then
/// the task is cancelled from the hub and stays in `error`.
async fn restarts(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (network, tfs) = env.submit("restart", 1, &[("fail", Value::from(true))]).await;
    let tasks = env.tasks(&network, &tfs).await;
    let task = &tasks[0];
    env.user
        .post(
            &format!("/networks/{network}/restartpatterns/add"),
            &json!({"patterns": ["RuntimeError: synthetic failure"], "num_allowed_restarts": 2}),
        )
        .await
        .unwrap();

    let a = env.start("svcA", "n_retries: 0\n");
    let b = env.start("svcB", "n_retries: 1\n");
    wait_until(Duration::from_secs(90), "three failures and the task cancelled", || async {
        env.task_results(task, true).await.len() == 3 && env.actioned_on(task).await.is_empty()
    })
    .await;
    assert_eq!(env.status(task).await, "error");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.task_results(task, true).await.len(), 3, "no fourth attempt");
    assert_eq!(env.status(task).await, "error");
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.failed + sb.failed, 3);
    assert_eq!(sa.succeeded + sb.succeeded, 0);
    assert!(env.task_results(task, false).await.is_empty());
    for pdrr in env.transformation_results(&tfs[0], true).await {
        let r = env.download(&tfs[0], &pdrr, true).await;
        assert!(!r.summary.ok);
        assert!(!r.summary.failures.is_empty());
        assert!(r.summary.failures.iter().all(|f| f.traceback.contains("RuntimeError: synthetic failure")));
    }
}
alchemiscale_server::backend_test!(restart_patterns, super::restarts);

/// A task running past `task_timeout` and a crashing executor each yield a pushed failure
/// that says what happened; the service carries on with the other tasks.
async fn timeout_and_crash(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (slow_net, slow_tf) = env.submit("slow", 1, &[("sleep_seconds", Value::from(60i64))]).await;
    let (crash_net, crash_tf) = env.submit("crash", 1, &[("crash", Value::from(true))]).await;
    let (fine_net, fine_tf) = env.submit("fine", 2, &[]).await;
    let slow = env.tasks(&slow_net, &slow_tf).await.remove(0);
    let crash = env.tasks(&crash_net, &crash_tf).await.remove(0);
    let fine = env.tasks(&fine_net, &fine_tf).await;

    let t0 = Instant::now();
    let svc = env.start("svc", "task_timeout: 2\n");
    let mut all = vec![slow.clone(), crash.clone()];
    all.extend(fine.iter().cloned());
    wait_until(Duration::from_secs(60), "all four tasks done", || async {
        let s = env.statuses(&all).await;
        s[0] == "error" && s[1] == "error" && s[2] == "complete" && s[3] == "complete"
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(40), "the 60 s task was cut short");
    let summary = svc.stop().await;
    assert_eq!((summary.executed, summary.succeeded, summary.failed), (4, 2, 2), "{summary:?}");

    let failures = env.task_results(&slow, true).await;
    assert_eq!(failures.len(), 1);
    let r = env.download(&slow_tf[0], &failures[0], true).await;
    assert!(!r.summary.ok);
    assert_eq!(r.summary.transformation_key.as_deref(), Some(slow_tf[0].gufe_key().as_str()));
    let tb = &r.summary.failures[0].traceback;
    assert!(tb.starts_with("TimeoutError: task exceeded task_timeout of 2 s\n"), "{tb}");

    let failures = env.task_results(&crash, true).await;
    assert_eq!(failures.len(), 1);
    let r = env.download(&crash_tf[0], &failures[0], true).await;
    let tb = &r.summary.failures[0].traceback;
    assert!(tb.starts_with("ChildProcessError: executor exited with signal 6\n"), "{tb}");
    assert!(tb.contains("crashing as asked"), "the executor's standard error is quoted: {tb}");
    assert_eq!(r.summary.extends_key, None);

    // an extension of a completed task crashes too: its service-built failure names the
    // result it extends (read from the handed-over result only when the failure is built)
    let parent = env.tasks(&crash_net, &crash_tf).await.remove(0);
    let helper = env.compute_server.client(IdentityKind::Compute, "helper", &[SCOPE]).await;
    let helper_id = ComputeServiceId::mint("helper").unwrap();
    helper.register(&helper_id, None).await.unwrap();
    let claimed = helper.claim_tasks(&[SCOPE.parse().unwrap()], None, &helper_id, 1, None).await.unwrap().unwrap();
    assert_eq!(claimed[0].as_ref(), Some(&parent));
    let parent_blob = zstd_compress(result_chain_json(crash_tf[0].gufe_key().as_str(), true, 1000, 7).as_bytes());
    helper.set_task_result(&parent, &parent_blob, &helper_id).await.unwrap();
    let parent_key = read_result(parent_blob, 1 << 30).unwrap().summary.key.to_string();
    let child = env.user.create_tasks(&crash_tf[0], 1, Some(&parent)).await.unwrap();
    env.action(&crash_net, &child).await;
    let svc = env.start("svc2", "");
    wait_until(Duration::from_secs(60), "the extension fails", || async { env.statuses(&child).await[0] == "error" }).await;
    svc.stop().await;
    let failures = env.task_results(&child[0], true).await;
    let r = env.download(&crash_tf[0], &failures[0], true).await;
    assert_eq!(r.summary.extends_key.as_deref(), Some(parent_key.as_str()));
}
alchemiscale_server::backend_test!(timeout_and_crash_are_failures, super::timeout_and_crash);

/// Cancelling a running task makes the service kill it and give it back, without a result.
async fn cancel(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (network, tfs) = env.submit("cancel", 1, &[("sleep_seconds", Value::from(60i64))]).await;
    let task = env.tasks(&network, &tfs).await.remove(0);
    let svc = env.start("svc", "");
    wait_until(Duration::from_secs(30), "the task runs", || async { env.status(&task).await == "running" }).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // let the executor start
    let cancelled = env.user.post(&format!("/networks/{network}/tasks/cancel"), &json!({"tasks": [task.to_dict()]})).await.unwrap();
    assert_eq!(cancelled, json!([task.to_string()]));
    let t0 = Instant::now();
    wait_until(Duration::from_secs(10), "the task is released", || async { env.status(&task).await == "waiting" }).await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.status(&task).await, "waiting", "not actioned any more, so nobody claims it");
    assert!(!svc.handle.is_finished(), "the service keeps running");
    let summary = svc.stop().await;
    assert_eq!((summary.executed, summary.released), (0, 1), "{summary:?}");
    assert!(env.task_results(&task, false).await.is_empty() && env.task_results(&task, true).await.is_empty());
}
alchemiscale_server::backend_test!(cancelled_task_is_stopped_and_released, super::cancel);

/// Deleting (or invalidating) a network stops work on its running task, and its tasks are
/// not claimed while it is in that state; an inactive network's tasks still run (as
/// upstream); reactivating the network lets them run again.
async fn deleted(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (network, tfs) = env.submit("deleted", 1, &[("sleep_seconds", Value::from(60i64))]).await;
    let task = env.tasks(&network, &tfs).await.remove(0);
    let svc = env.start("svc", "");
    wait_until(Duration::from_secs(30), "the task runs", || async { env.status(&task).await == "running" }).await;
    let set_state = |state: &'static str| {
        let network = network.clone();
        let user = &env.user;
        async move { user.post("/bulk/networks/state/set", &json!({"networks": [network.to_string()], "states": [state]})).await.unwrap() }
    };
    // inactive: still wanted, keeps running
    set_state("inactive").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(env.status(&task).await, "running");
    set_state("deleted").await;
    wait_until(Duration::from_secs(10), "the task is released", || async { env.status(&task).await == "waiting" }).await;
    // it stays actioned but is not claimed again while the network is deleted
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(env.status(&task).await, "waiting");
    assert!(env.task_results(&task, false).await.is_empty() && env.task_results(&task, true).await.is_empty());
    let summary = svc.stop().await;
    assert_eq!((summary.executed, summary.released), (0, 1), "{summary:?}");
}
alchemiscale_server::backend_test!(deleted_network_is_not_worked_on, super::deleted);

/// Stopping the service mid-task kills the executor and leaves no task running.
async fn stop_mid_task(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (network, tfs) = env.submit("stop", 1, &[("sleep_seconds", Value::from(60i64))]).await;
    let task = env.tasks(&network, &tfs).await.remove(0);
    let svc = env.start("svc", "");
    wait_until(Duration::from_secs(30), "the task runs", || async { env.status(&task).await == "running" }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let summary = svc.stop().await;
    assert!(t0.elapsed() < Duration::from_secs(10), "stopping is prompt");
    assert_eq!(summary.stop_reason, Some(StopReason::Stopped));
    assert_eq!(summary.executed, 0);
    assert_eq!(env.status(&task).await, "waiting", "deregistration returned the task");
    assert_eq!(env.registrations().await, 0);
    // the task directory and the DAG's directories are gone; the output is kept
    let scratch = env.dir.path().join("svc").join("scratch");
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "task-logs").collect();
    assert!(left.is_empty(), "left behind in scratch: {left:?}");
    assert_eq!(std::fs::read_dir(scratch.join("task-logs")).unwrap().count(), 2, "stdout and stderr kept");
    let shared: Vec<_> = std::fs::read_dir(env.dir.path().join("svc").join("shared")).unwrap().collect();
    assert!(shared.is_empty(), "left behind in shared: {shared:?}");
}
alchemiscale_server::backend_test!(stop_mid_task_returns_the_task, super::stop_mid_task);

/// `max_tasks` and `max_time` end a run by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_end_the_run() {
    let env = env(Backend::Sqlite).await.unwrap();
    let (network, tfs) = env.submit("limits", 2, &[]).await;
    let tasks = env.tasks(&network, &tfs).await;
    let summary = env.start("svc", "max_tasks: 1\n").join().await;
    assert_eq!((summary.executed, summary.stop_reason), (1, Some(StopReason::MaxTasks)));
    let mut s = env.statuses(&tasks).await;
    s.sort();
    assert_eq!(s, ["complete", "waiting"]);
    assert_eq!(env.registrations().await, 0);

    let t0 = Instant::now();
    let summary = env.start("idle", "max_time: 1\nprotocols: [NoSuchProtocol]\n").join().await;
    assert_eq!((summary.executed, summary.stop_reason), (0, Some(StopReason::MaxTime)));
    assert!(t0.elapsed() < Duration::from_secs(10));

    // `max_empty_claims`: the remaining task is run, then two empty claims end the run
    let summary = env
        .start(
            "scaledown",
            "max_empty_claims: 2
",
        )
        .join()
        .await;
    assert_eq!((summary.executed, summary.stop_reason), (1, Some(StopReason::Idle)));
    assert_eq!(env.statuses(&tasks).await, ["complete", "complete"]);
    assert_eq!(env.registrations().await, 0);
}

/// A service whose credentials are wrong fails to register with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_registration() {
    let env = env(Backend::Sqlite).await.unwrap();
    let mut settings = env.settings("svc", "");
    settings.key = "wrong".into();
    let service = alchemiscale_compute::Service::new(settings, executors()).unwrap();
    let err = service.run().await.unwrap_err().to_string();
    assert!(err.contains("registration failed") && err.contains("401"), "{err}");
}

/// `compute_manager_id` registers the service under that manager, which must exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_under_a_manager() {
    let env = env(Backend::Sqlite).await.unwrap();
    let manager = "mgr-0123456789abcdef0123456789abcdef";
    let settings = env.settings("svc", &format!("compute_manager_id: {manager}\nmax_time: 0\n"));
    let err = alchemiscale_compute::Service::new(settings.clone(), executors()).unwrap().run().await.unwrap_err().to_string();
    assert!(err.contains("registration failed") && err.contains("Could not find ComputeManagerRegistration"), "{err}");
    env.compute_server.store.register_compute_manager(&manager.parse().unwrap(), false).await.unwrap();
    let summary = alchemiscale_compute::Service::new(settings, executors()).unwrap().run().await.unwrap();
    assert_eq!(summary.stop_reason, Some(StopReason::MaxTime));
    assert_eq!(env.registrations().await, 0);
}

/// The test-vector network (gufe's DummyProtocol, so the python executor runs it) with one
/// actioned task, submitted by a user of its scope, which the compute identity can reach:
/// (that user, network, transformation, task).
async fn vector_task(env: &Env) -> (alchemiscale_client::Client, ScopedKey, ScopedKey, ScopedKey) {
    let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vectors");
    let gz = std::fs::read(format!("{vectors}/U7_create_network.request.gz")).unwrap();
    let user = env.user_server.client(alchemiscale_store::identities::IdentityKind::User, "vecuser", &["vecorg-*-*"]).await;
    let r = user
        .send(reqwest::Method::POST, "/networks", alchemiscale_client::Payload::Raw { bytes: gz, content_encoding: Some("gzip".into()) })
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let network = sk("AlchemicalNetwork-c5a12a2d9a941dbfe56b76c3387ccf6d-vecorg-veccampaign-vecproject");
    let tf = sk("Transformation-3c2debf79f5ad85b0bcb6b86e7c390f5-vecorg-veccampaign-vecproject");
    let task = user.create_tasks(&tf, 1, None).await.unwrap().remove(0);
    user.action_tasks(&network, std::slice::from_ref(&task), None).await.unwrap();
    env.compute_server
        .store
        .add_scopes(alchemiscale_store::identities::IdentityKind::Compute, COMPUTE_ID, &["vecorg-*-*".parse().unwrap()])
        .await
        .unwrap();
    (user, network, tf, task)
}

/// The python executor runs as if its environment were activated: the interpreter's `bin`
/// first on PATH (a program installed there is found), VIRTUAL_ENV set, `executor_env`
/// applied. The interpreter here is a stand-in script in a venv layout that reports what
/// it sees on standard error and fails, so the service's failure quotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_executor_environment() {
    use std::os::unix::fs::PermissionsExt;
    let env = env(Backend::Sqlite).await.unwrap();
    let (user, _network, tf, task) = vector_task(&env).await;
    let venv = env.dir.path().join("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    for (name, text) in [
        ("python", "#!/bin/sh\nantechamber-standin\necho \"VIRTUAL_ENV=$VIRTUAL_ENV THREADS=$OPENMM_CPU_THREADS\" >&2\nexit 3\n"),
        ("antechamber-standin", "#!/bin/sh\necho 'found on PATH' >&2\n"),
    ] {
        std::fs::write(venv.join("bin").join(name), text).unwrap();
        std::fs::set_permissions(venv.join("bin").join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let extra =
        format!("executor_python: {}\nexecutor_env: {{OPENMM_CPU_THREADS: '3'}}\nmax_tasks: 1\n", venv.join("bin/python").display());
    let summary = env.start("envsvc", &extra).join().await;
    assert_eq!((summary.executed, summary.failed), (1, 1), "{summary:?}");
    let failures = alchemiscale_client::parse_keys(&user.get(&format!("/tasks/{task}/failures")).await.unwrap()).unwrap();
    let v = user.get(&format!("/transformations/{tf}/failures/{}", failures[0])).await.unwrap();
    let r =
        alchemiscale_model::pdr::read_result(alchemiscale_model::pdr::latin1_to_bytes(v[0].as_str().unwrap()).unwrap(), 1 << 30).unwrap();
    let tb = &r.summary.failures[0].traceback;
    assert!(tb.contains("found on PATH"), "{tb}");
    assert!(tb.contains(&format!("VIRTUAL_ENV={} THREADS=3", venv.display())), "{tb}");
}

/// The python executor runs a real gufe protocol. Needs an interpreter with gufe and
/// zstandard (e.g. alchemiscale 0.8's environment) in ALCHEMISCALE_TEST_PYTHON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_executor_runs_gufe() {
    let Ok(python) = std::env::var("ALCHEMISCALE_TEST_PYTHON") else {
        eprintln!("note: python executor test skipped (set ALCHEMISCALE_TEST_PYTHON to an interpreter with gufe)");
        return;
    };
    let env = env(Backend::Sqlite).await.unwrap();
    let (user, network, tf, parent) = vector_task(&env).await;
    let extra = format!("executor_python: {python}\nmax_tasks: 2\nn_retries: 0\n");
    let svc = env.start("pysvc", &extra);
    wait_until(Duration::from_secs(120), "the gufe task completes", || async {
        matches!(user.get_tasks_status(std::slice::from_ref(&parent)).await.unwrap()[0].as_deref(), Some("complete" | "error"))
    })
    .await;
    if user.get_tasks_status(std::slice::from_ref(&parent)).await.unwrap()[0].as_deref() != Some("complete") {
        let failures = alchemiscale_client::parse_keys(&user.get(&format!("/tasks/{parent}/failures")).await.unwrap()).unwrap();
        let v = user.get(&format!("/transformations/{tf}/failures/{}", failures[0])).await.unwrap();
        let r = alchemiscale_model::pdr::read_result(alchemiscale_model::pdr::latin1_to_bytes(v[0].as_str().unwrap()).unwrap(), 1 << 30)
            .unwrap();
        panic!("the gufe task failed: {:?}", r.summary.failures);
    }
    // an extension gets the parent's result handed over
    let child = user.create_tasks(&tf, 1, Some(&parent)).await.unwrap().remove(0);
    user.action_tasks(&network, std::slice::from_ref(&child), None).await.unwrap();
    let summary = svc.join().await;
    assert_eq!((summary.executed, summary.succeeded), (2, 2), "{summary:?}");
    let results = alchemiscale_client::parse_keys(&user.get(&format!("/tasks/{child}/results")).await.unwrap()).unwrap();
    assert_eq!(results.len(), 1);
    let v = user.get(&format!("/transformations/{tf}/results/{}", results[0])).await.unwrap();
    let r =
        alchemiscale_model::pdr::read_result(alchemiscale_model::pdr::latin1_to_bytes(v[0].as_str().unwrap()).unwrap(), 1 << 30).unwrap();
    assert!(r.summary.ok);
    assert_eq!(r.summary.transformation_key.as_deref(), Some(tf.gufe_key().as_str()));
    assert!(r.summary.extends_key.is_some(), "the extension was created from its parent's result");
}
