//! Task restart patterns: management and restart resolution.

mod common;

use std::collections::HashMap;

use alchemiscale_model::hash::{restart_pattern_key, TracebacksFields};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{NetworkState, Scope, ScopedKey, TaskStatus};
use alchemiscale_store::results::RecordedResult;
use alchemiscale_store::tasks::TaskRequest;
use alchemiscale_store::{store_test, Store, StoreError};
use chrono::{TimeZone, Utc};
use common::*;

fn scope() -> Scope {
    "rorg-rcampaign-rproject".parse().unwrap()
}

/// Submit a synthetic network; returns (network, taskhub, transformations).
async fn network(store: &Store, tag: &str) -> (ScopedKey, ScopedKey, Vec<ScopedKey>) {
    submit(store, &network_chain_json(4, 4, tag)).await
}

async fn submit(store: &Store, text: &str) -> (ScopedKey, ScopedKey, Vec<ScopedKey>) {
    let created = store.create_network(&chain_of(text), &scope(), NetworkState::Active).await.unwrap();
    let mut tfs = store.network_transformations(&created.network).await.unwrap();
    tfs.sort();
    (created.network, created.taskhub, tfs)
}

/// The same network content under another root key: a second network sharing every
/// transformation (keys of submitted chains are taken as given).
fn twin_network(tag: &str, token: &str) -> String {
    let text = network_chain_json(4, 4, tag);
    let root = chain_of(&text).root().key.to_string();
    text.replace(&root, &format!("AlchemicalNetwork-{token}"))
}

async fn tasks(store: &Store, tf: &ScopedKey, n: usize) -> Vec<ScopedKey> {
    let reqs: Vec<TaskRequest> = (0..n).map(|_| TaskRequest { transformation: tf.clone(), extends: None }).collect();
    store.create_tasks(&reqs, Some("alice")).await.unwrap()
}

async fn action(store: &Store, network: &ScopedKey, task: &ScopedKey) {
    assert_eq!(store.action_tasks(network, &[Some(task.clone())], None).await.unwrap(), vec![Some(task.clone())]);
}

async fn status(store: &Store, task: &ScopedKey) -> TaskStatus {
    store.get_task_status(&[Some(task.clone())]).await.unwrap()[0].unwrap()
}

async fn set_running(store: &Store, task: &ScopedKey) {
    assert_eq!(store.set_task_status(&[Some(task.clone())], TaskStatus::Running, true).await.unwrap(), vec![Some(task.clone())]);
}

async fn actioned_on(store: &Store, network: &ScopedKey) -> Vec<ScopedKey> {
    let mut v: Vec<ScopedKey> = store.network_actioned_tasks(network).await.unwrap().into_iter().map(|(t, _)| t).collect();
    v.sort();
    v
}

async fn counts(store: &Store) -> HashMap<&'static str, i64> {
    store.table_counts().await.unwrap().into_iter().collect()
}

fn failure(n: u32, traceback: Option<&str>) -> RecordedResult {
    let obj_key = format!("ProtocolDAGResult-{n:032x}");
    RecordedResult {
        location: format!("protocoldagresult/rorg/rcampaign/rproject/Transformation-x/failures/{obj_key}/obj.json.zst"),
        obj_key,
        ok: false,
        content_sha256: "00".repeat(32),
        size: 10,
        creator: Some("worker-0123456789abcdef0123456789abcdef".into()),
        tracebacks: traceback.map(|t| TracebacksFields {
            tracebacks: vec![format!("Traceback (most recent call last):\n  File \"unit.py\", line 1\n{t}\n")],
            source_keys: vec![format!("ProtocolUnit-{n:032x}")],
            failure_keys: vec![format!("ProtocolUnitFailure-{n:032x}")],
        }),
    }
}

async fn hub_patterns(store: &Store, network: &ScopedKey) -> Vec<(String, i64)> {
    store.get_restart_patterns(std::slice::from_ref(network)).await.unwrap().remove(0)
}

fn patterns(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

store_test!(pattern_management, |store| async move {
    let (net, hub, _) = network(&store, "manage").await;
    store.add_restart_patterns(&net, &patterns(&["Timeout", "RuntimeError: .+", "Timeout"]), 3).await.unwrap();
    assert_eq!(hub_patterns(&store, &net).await, vec![("RuntimeError: .+".to_string(), 3), ("Timeout".to_string(), 3)]);
    // the record is a TaskRestartPattern keyed per hub
    let key = restart_pattern_key("Timeout", &hub);
    let sk = ScopedKey::new(key, scope()).unwrap();
    assert!(store.exists(&sk).await.unwrap());

    // re-adding overwrites max_retries
    store.add_restart_patterns(&net, &patterns(&["Timeout"]), 5).await.unwrap();
    assert_eq!(hub_patterns(&store, &net).await, vec![("RuntimeError: .+".to_string(), 3), ("Timeout".to_string(), 5)]);
    assert_eq!(counts(&store).await["restart_pattern"], 2);

    store.set_restart_pattern_max_retries(&net, &patterns(&["Timeout", "not attached"]), 2).await.unwrap();
    assert_eq!(hub_patterns(&store, &net).await, vec![("RuntimeError: .+".to_string(), 3), ("Timeout".to_string(), 2)]);
    assert!(matches!(store.set_restart_pattern_max_retries(&net, &patterns(&["Timeout"]), 0).await, Err(StoreError::Invalid(_))));

    store.remove_restart_patterns(&net, &patterns(&["RuntimeError: .+", "unknown"])).await.unwrap();
    assert_eq!(hub_patterns(&store, &net).await, vec![("Timeout".to_string(), 2)]);

    // several networks, one missing
    let (other, _, _) = network(&store, "manage-2").await;
    store.add_restart_patterns(&other, &patterns(&["x"]), 1).await.unwrap();
    let missing: ScopedKey = format!("AlchemicalNetwork-00000000000000000000000000000000-{}", scope()).parse().unwrap();
    assert_eq!(
        store.get_restart_patterns(&[net.clone(), missing.clone(), other.clone()]).await.unwrap(),
        vec![vec![("Timeout".to_string(), 2)], vec![], vec![("x".to_string(), 1)]]
    );

    store.clear_restart_patterns(&net).await.unwrap();
    assert_eq!(store.get_restart_patterns(&[net.clone(), other.clone()]).await.unwrap(), vec![vec![], vec![("x".to_string(), 1)]]);
    assert!(!store.exists(&sk).await.unwrap());
    // clearing, removing from or setting on a missing network is a no-op
    store.clear_restart_patterns(&missing).await.unwrap();
    store.remove_restart_patterns(&missing, &patterns(&["x"])).await.unwrap();
    store.set_restart_pattern_max_retries(&missing, &patterns(&["x"]), 2).await.unwrap();
});

store_test!(bad_pattern_input_is_rejected_and_nothing_stored, |store| async move {
    let (net, _, tfs) = network(&store, "bad").await;
    let t = tasks(&store, &tfs[0], 1).await;
    action(&store, &net, &t[0]).await;
    let e = store.add_restart_patterns(&net, &patterns(&["fine", "(unclosed"]), 2).await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid(m) if m.contains("(unclosed")), "{e}");
    assert!(matches!(store.add_restart_patterns(&net, &patterns(&["fine", ""]), 2).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.add_restart_patterns(&net, &patterns(&["fine"]), 0).await, Err(StoreError::Invalid(_))));
    let missing: ScopedKey = format!("AlchemicalNetwork-00000000000000000000000000000000-{}", scope()).parse().unwrap();
    let e = store.add_restart_patterns(&missing, &patterns(&["fine"]), 1).await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid(m) if m.contains("No such TaskHub")), "{e}");
    let e = store.add_restart_patterns(&tfs[0], &patterns(&["fine"]), 1).await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid(m) if m == "`network` ScopedKey does not correspond to an `AlchemicalNetwork`"), "{e}");
    assert!(matches!(store.get_restart_patterns(&[tfs[0].clone()]).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.clear_restart_patterns(&tfs[0]).await, Err(StoreError::Invalid(_))));
    let c = counts(&store).await;
    assert_eq!((c["restart_pattern"], c["restart_applies"]), (0, 0));
    assert_eq!(store.get_restart_patterns(&[net]).await.unwrap(), vec![vec![]]);
    // Python syntax the regex crate alone would refuse is accepted
    let (net2, _, _) = network(&store, "bad-2").await;
    store.add_restart_patterns(&net2, &patterns(&[r"(?<=Error: )time(out)?", r"(\w+) \1"]), 1).await.unwrap();
});

store_test!(matching_failures_restart_until_budget_exhausted, |store| async move {
    let (net, _, tfs) = network(&store, "budget").await;
    let t = tasks(&store, &tfs[0], 1).await.remove(0);
    action(&store, &net, &t).await;
    store.add_restart_patterns(&net, &patterns(&["RuntimeError: bo+m"]), 2).await.unwrap();
    assert_eq!(counts(&store).await["restart_applies"], 1);

    for attempt in 1..=2u32 {
        set_running(&store, &t).await;
        store.record_result(&t, &failure(attempt, Some("RuntimeError: boooom happened"))).await.unwrap();
        assert_eq!(status(&store, &t).await, TaskStatus::Waiting, "restart {attempt}");
        assert_eq!(actioned_on(&store, &net).await, vec![t.clone()]);
    }
    // the third failure exceeds max_retries = 2: cancelled from the hub, stays in error
    set_running(&store, &t).await;
    store.record_result(&t, &failure(3, Some("RuntimeError: boom"))).await.unwrap();
    assert_eq!(status(&store, &t).await, TaskStatus::Error);
    assert!(actioned_on(&store, &net).await.is_empty());
    assert_eq!(counts(&store).await["restart_applies"], 0);
    assert_eq!(store.task_results(&t, false).await.unwrap().len(), 3);
});

store_test!(re_adding_a_pattern_re_arms_it, |store| async move {
    let (net, _, tfs) = network(&store, "rearm").await;
    let t = tasks(&store, &tfs[0], 1).await.remove(0);
    action(&store, &net, &t).await;
    store.add_restart_patterns(&net, &patterns(&["Timeout"]), 1).await.unwrap();
    set_running(&store, &t).await;
    store.record_result(&t, &failure(1, Some("Timeout while waiting"))).await.unwrap();
    assert_eq!(status(&store, &t).await, TaskStatus::Waiting);
    // budget used up; re-adding resets the counter (Q3), so one more restart is allowed
    store.add_restart_patterns(&net, &patterns(&["Timeout"]), 1).await.unwrap();
    set_running(&store, &t).await;
    store.record_result(&t, &failure(2, Some("Timeout while waiting"))).await.unwrap();
    assert_eq!(status(&store, &t).await, TaskStatus::Waiting);
    set_running(&store, &t).await;
    store.record_result(&t, &failure(3, Some("Timeout while waiting"))).await.unwrap();
    assert_eq!(status(&store, &t).await, TaskStatus::Error);
    assert!(actioned_on(&store, &net).await.is_empty());
});

store_test!(non_matching_failure_is_cancelled_and_no_patterns_keep_task, |store| async move {
    let (net, _, tfs) = network(&store, "nomatch").await;
    let ts = tasks(&store, &tfs[0], 2).await;
    action(&store, &net, &ts[0]).await;
    store.add_restart_patterns(&net, &patterns(&["Timeout"]), 3).await.unwrap();
    set_running(&store, &ts[0]).await;
    store.record_result(&ts[0], &failure(1, Some("ValueError: bad input"))).await.unwrap();
    assert_eq!(status(&store, &ts[0]).await, TaskStatus::Error);
    assert!(actioned_on(&store, &net).await.is_empty());

    // a hub without patterns neither restarts nor cancels
    let (plain, _, ptfs) = network(&store, "nomatch-plain").await;
    let p = tasks(&store, &ptfs[0], 1).await.remove(0);
    action(&store, &plain, &p).await;
    set_running(&store, &p).await;
    store.record_result(&p, &failure(2, Some("Timeout"))).await.unwrap();
    assert_eq!(status(&store, &p).await, TaskStatus::Error);
    assert_eq!(actioned_on(&store, &plain).await, vec![p.clone()]);

    // a failure without tracebacks on a hub with patterns is cancelled there
    action(&store, &net, &ts[1]).await;
    set_running(&store, &ts[1]).await;
    store.record_result(&ts[1], &failure(3, None)).await.unwrap();
    assert_eq!(status(&store, &ts[1]).await, TaskStatus::Error);
    assert!(actioned_on(&store, &net).await.is_empty());
});

store_test!(decisions_are_per_hub, |store| async move {
    // three networks sharing every transformation
    let (a, _, tfs) = submit(&store, &twin_network("hubs", "0000000000000000000000000000000a")).await;
    let (b, _, _) = submit(&store, &twin_network("hubs", "0000000000000000000000000000000b")).await;
    let (c, _, _) = submit(&store, &twin_network("hubs", "0000000000000000000000000000000c")).await;
    let t = tasks(&store, &tfs[0], 1).await.remove(0);
    for n in [&a, &b, &c] {
        action(&store, n, &t).await;
    }
    store.add_restart_patterns(&a, &patterns(&["boom"]), 5).await.unwrap();
    store.add_restart_patterns(&c, &patterns(&["other"]), 5).await.unwrap();
    set_running(&store, &t).await;
    store.record_result(&t, &failure(1, Some("RuntimeError: boom"))).await.unwrap();
    // a restarts it, b (no patterns) keeps it, c (no matching pattern) cancels it
    assert_eq!(status(&store, &t).await, TaskStatus::Waiting);
    assert_eq!(actioned_on(&store, &a).await, vec![t.clone()]);
    assert_eq!(actioned_on(&store, &b).await, vec![t.clone()]);
    assert!(actioned_on(&store, &c).await.is_empty());
    assert_eq!(counts(&store).await["restart_applies"], 1);

    // an exhausted matching pattern cancels even if another pattern of the hub has budget
    let t2 = tasks(&store, &tfs[1], 1).await.remove(0);
    action(&store, &a, &t2).await;
    store.add_restart_patterns(&a, &patterns(&["Runtime"]), 1).await.unwrap();
    set_running(&store, &t2).await;
    store.record_result(&t2, &failure(2, Some("RuntimeError: boom"))).await.unwrap();
    assert_eq!(status(&store, &t2).await, TaskStatus::Waiting);
    set_running(&store, &t2).await;
    store.record_result(&t2, &failure(3, Some("RuntimeError: boom"))).await.unwrap();
    assert_eq!(status(&store, &t2).await, TaskStatus::Error);
    assert!(!actioned_on(&store, &a).await.contains(&t2));
});

store_test!(adding_patterns_resolves_tasks_already_in_error, |store| async move {
    let (net, _, tfs) = network(&store, "late").await;
    let ts = tasks(&store, &tfs[0], 4).await;
    for t in &ts {
        action(&store, &net, t).await;
        set_running(&store, t).await;
    }
    let old = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    let new = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::microseconds(5);
    // ts[0]: latest (by datetime_created, not insertion order) failure matches
    store.record_result_at(&ts[0], &failure(1, Some("Timeout")), new).await.unwrap();
    store.record_result_at(&ts[0], &failure(2, Some("KeyError")), old).await.unwrap();
    // ts[1]: the older failure matches, the latest does not
    store.record_result_at(&ts[1], &failure(3, Some("KeyError")), new).await.unwrap();
    store.record_result_at(&ts[1], &failure(4, Some("Timeout")), old).await.unwrap();
    // ts[2]: failed without tracebacks; ts[3]: still running
    store.record_result(&ts[2], &failure(5, None)).await.unwrap();
    for t in &ts[..3] {
        assert_eq!(status(&store, t).await, TaskStatus::Error);
    }
    assert_eq!(actioned_on(&store, &net).await.len(), 4);

    store.add_restart_patterns(&net, &patterns(&["^Traceback[\\s\\S]*Timeout"]), 2).await.unwrap();
    assert_eq!(status(&store, &ts[0]).await, TaskStatus::Waiting);
    assert_eq!(status(&store, &ts[1]).await, TaskStatus::Error);
    assert_eq!(status(&store, &ts[2]).await, TaskStatus::Error);
    assert_eq!(status(&store, &ts[3]).await, TaskStatus::Running);
    let mut expected = vec![ts[0].clone(), ts[3].clone()];
    expected.sort();
    assert_eq!(actioned_on(&store, &net).await, expected);
    assert_eq!(counts(&store).await["restart_applies"], 2);
});

/// `(previous, status, cause)` of a task's logged status changes, oldest first.
async fn logged(store: &Store, task: &ScopedKey) -> Vec<(String, String, String)> {
    let detail = store.console_task(task).await.unwrap().unwrap();
    detail.status_changes.into_iter().map(|(_, previous, status, cause)| (previous, status, cause)).collect()
}

fn changes(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

store_test!(status_changes_beyond_claims_and_results_are_logged, |store| async move {
    let (net, hub, tfs) = network(&store, "logged").await;
    let parent = tasks(&store, &tfs[0], 1).await.remove(0);
    let child = TaskRequest { transformation: tfs[0].clone(), extends: Some(parent.clone()) };
    let child = store.create_tasks(&[child], Some("alice")).await.unwrap().remove(0);
    action(&store, &net, &parent).await;
    let service: alchemiscale_model::ComputeServiceId = format!("logsvc-{}", "0".repeat(32)).parse().unwrap();

    // a claim given back by its service, then one whose service's registration expired
    store.register_compute_service(&service, None).await.unwrap();
    assert_eq!(store.claim_taskhub_tasks(&hub, &service, 1, None).await.unwrap(), vec![Some(parent.clone())]);
    assert_eq!(store.release_tasks(std::slice::from_ref(&parent), &service.to_string()).await.unwrap(), vec![Some(parent.clone())]);
    assert_eq!(store.claim_taskhub_tasks(&hub, &service, 1, None).await.unwrap(), vec![Some(parent.clone())]);
    store.expire_compute_services_at(60, Utc::now() + chrono::Duration::hours(1)).await.unwrap();
    assert_eq!(status(&store, &parent).await, TaskStatus::Waiting);
    // a user invalidates the parent; the task extending it follows
    store.set_task_status(&[Some(parent.clone())], TaskStatus::Invalid, true).await.unwrap();
    assert_eq!(
        logged(&store, &parent).await,
        changes(&[("running", "waiting", "released"), ("running", "waiting", "expired"), ("waiting", "invalid", "user")])
    );
    assert_eq!(logged(&store, &child).await, changes(&[("waiting", "invalid", "user")]));
    // re-applying the current status changes nothing and logs nothing
    store.set_task_status(&[Some(parent.clone())], TaskStatus::Invalid, true).await.unwrap();
    assert_eq!(logged(&store, &parent).await.len(), 3);
});

store_test!(restarts_by_restart_patterns_are_logged, |store| async move {
    let (net, _, tfs) = network(&store, "restartlog").await;
    let t = tasks(&store, &tfs[0], 1).await.remove(0);
    action(&store, &net, &t).await;
    store.add_restart_patterns(&net, &patterns(&["RuntimeError"]), 1).await.unwrap();
    set_running(&store, &t).await;
    store.record_result(&t, &failure(1, Some("RuntimeError: once"))).await.unwrap();
    assert_eq!(status(&store, &t).await, TaskStatus::Waiting);
    // claims and results keep their own records: only the user's change and the restart
    assert_eq!(logged(&store, &t).await, changes(&[("waiting", "running", "user"), ("error", "waiting", "restart")]));
});
