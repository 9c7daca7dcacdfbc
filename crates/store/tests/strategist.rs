//! What the strategist reads and commits.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use alchemiscale_model::status::{StrategyMode, StrategyStatus, StrategyTaskScaling};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{NetworkState, Scope, ScopedKey, TaskStatus};
use alchemiscale_store::results::RecordedResult;
use alchemiscale_store::strategist::{DueStrategy, LeaseGuard, StrategyOutcome};
use alchemiscale_store::strategy::StrategyState;
use alchemiscale_store::tasks::TaskRequest;
use alchemiscale_store::{store_test, Store, StoreError};
use chrono::{TimeZone, Utc};
use common::*;

fn scope(s: &str) -> Scope {
    s.parse().unwrap()
}

fn strategy_chain(token: &str) -> String {
    format!(
        r#"[["ConnectivityStrategy-{token}", {{"settings": {{"__class__": "ConnectivityStrategySettings", "__module__": "stratocaster.strategies.connectivity", ":is_custom:": true, "decay_rate": 0.5, "cutoff": null, "max_runs": 3}}, "__qualname__": "ConnectivityStrategy", "__module__": "stratocaster.strategies.connectivity", ":version:": 1}}]]"#
    )
}

/// A network of `n` transformations over 4 systems in `scope`, with a strategy in `state`.
async fn network(store: &Store, tag: &str, n: usize, scope_text: &str, state: StrategyState) -> ScopedKey {
    let net =
        store.create_network(&chain_of(&network_chain_json(4, n, tag)), &scope(scope_text), NetworkState::Active).await.unwrap().network;
    let token = format!("{:032x}", tag.bytes().fold(7u128, |a, b| a * 31 + b as u128));
    store.set_network_strategy(&net, Some(&chain_of(&strategy_chain(&token))), state).await.unwrap();
    net
}

/// Far enough ahead that every strategy that is neither disabled nor errored is due.
fn later() -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::days(2)
}

async fn due_for(store: &Store, net: &ScopedKey) -> DueStrategy {
    store.due_strategies(&[], 0, later()).await.unwrap().into_iter().find(|d| &d.network == net).expect("due")
}

fn result(tf: &ScopedKey, n: u64, ok: bool) -> RecordedResult {
    let obj_key = format!("ProtocolDAGResult-{n:032x}");
    RecordedResult {
        location: format!("protocoldagresult/{}/{}/{}/results/{obj_key}/obj.json.zst", tf.org(), tf.campaign(), tf.gufe_key()),
        obj_key,
        ok,
        content_sha256: format!("{n:064x}"),
        size: 100,
        creator: None,
        tracebacks: None,
    }
}

async fn create(store: &Store, tf: &ScopedKey, n: usize) -> Vec<ScopedKey> {
    let reqs: Vec<TaskRequest> = (0..n).map(|_| TaskRequest { transformation: tf.clone(), extends: None }).collect();
    store.create_tasks(&reqs, Some("alice")).await.unwrap()
}

/// Per transformation: (statuses of its tasks actioned on `net`, number of its tasks).
async fn actioned_by_tf(store: &Store, net: &ScopedKey) -> HashMap<ScopedKey, Vec<TaskStatus>> {
    let mut out: HashMap<ScopedKey, Vec<TaskStatus>> = HashMap::new();
    for (task, _) in store.network_actioned_tasks(net).await.unwrap() {
        let tf = store.get_task_transformation(&task).await.unwrap();
        let status = store.get_task_status(&[Some(task)]).await.unwrap()[0].unwrap();
        out.entry(tf).or_default().push(status);
    }
    out
}

store_test!(due_selection, |store| async move {
    let now = Utc::now();
    let hour_ago = now - chrono::Duration::seconds(3600);
    let fresh = network(&store, "fresh", 2, "a-b-c", StrategyState::default()).await;
    let recent = network(&store, "recent", 2, "a-b-c", StrategyState { last_iteration: Some(now), ..Default::default() }).await;
    let old = network(
        &store,
        "old",
        2,
        "a-b-d",
        StrategyState { last_iteration: Some(hour_ago), sleep_interval: 600, status: StrategyStatus::Dormant, ..Default::default() },
    )
    .await;
    let disabled = network(&store, "disabled", 2, "a-b-c", StrategyState { mode: StrategyMode::Disabled, ..Default::default() }).await;
    let errored = network(&store, "errored", 2, "a-b-c", StrategyState { status: StrategyStatus::Error, ..Default::default() }).await;
    let deleted = network(&store, "deleted", 2, "x-y-z", StrategyState::default()).await;
    store.set_network_states(&[(deleted.clone(), NetworkState::Deleted)]).await.unwrap();
    let inactive = network(&store, "inactive", 2, "x-y-z", StrategyState::default()).await;
    store.set_network_states(&[(inactive.clone(), NetworkState::Inactive)]).await.unwrap();

    let due = |scopes: Vec<Scope>, min: i64| {
        let store = store.clone();
        async move {
            let mut v: Vec<ScopedKey> = store.due_strategies(&scopes, min, now).await.unwrap().into_iter().map(|d| d.network).collect();
            v.sort();
            v
        }
    };
    let sorted = |mut v: Vec<ScopedKey>| {
        v.sort();
        v
    };
    // never run, or run longer ago than the interval; dormant ones too; never disabled,
    // errored or deleted networks
    assert_eq!(due(vec![], 0).await, sorted(vec![fresh.clone(), old.clone(), inactive.clone()]));
    assert_eq!(due(vec![scope("*-*-*")], 0).await, sorted(vec![fresh.clone(), old.clone(), inactive.clone()]));
    // the service's minimum interval applies when longer than the strategy's
    assert_eq!(due(vec![], 7200).await, sorted(vec![fresh.clone(), inactive.clone()]));
    // concrete scopes work (upstream's query breaks on them)
    assert_eq!(due(vec![scope("a-b-c")], 0).await, vec![fresh.clone()]);
    assert_eq!(due(vec![scope("a-*-*")], 0).await, sorted(vec![fresh.clone(), old.clone()]));
    assert_eq!(due(vec![scope("a-b-d"), scope("x-*-*")], 0).await, sorted(vec![old.clone(), inactive.clone()]));
    assert_eq!(due(vec![scope("q-*-*")], 0).await, Vec::<ScopedKey>::new());
    // what a due strategy carries
    let d = due_for(&store, &old).await;
    assert_eq!(d.strategy.qualname(), "ConnectivityStrategy");
    assert_eq!(d.strategy_module, "stratocaster.strategies.connectivity");
    assert!(d.strategy_body.contains("\"max_runs\": 3"));
    assert_eq!(d.state.status, StrategyStatus::Dormant);
    let _ = (recent, disabled, errored);
});

store_test!(inputs_are_the_graph_and_successful_result_counts, |store| async move {
    let net = network(&store, "inputs", 5, "a-b-c", StrategyState::default()).await;
    let d = due_for(&store, &net).await;
    let inputs = store.strategy_inputs(d.network_id).await.unwrap();
    assert_eq!(inputs.graph.nodes.len(), 4);
    assert_eq!(inputs.graph.transformations.len(), 5);
    assert!(inputs.graph.transformations.iter().all(|t| t.state_a != t.state_b && inputs.results(t.id) == 0));
    assert_eq!(inputs.result_count(), 0);

    let mut tfs = store.network_transformations(&net).await.unwrap();
    tfs.sort_by_key(|t| inputs.graph.transformations.iter().position(|i| &i.key == t.gufe_key()).unwrap());
    // tf 0: two successes on two tasks and a failure; tf 1: one success
    let t0 = create(&store, &tfs[0], 3).await;
    store.record_result(&t0[0], &result(&tfs[0], 1, true)).await.unwrap();
    store.record_result(&t0[1], &result(&tfs[0], 2, true)).await.unwrap();
    store.record_result(&t0[2], &result(&tfs[0], 3, false)).await.unwrap();
    let t1 = create(&store, &tfs[1], 1).await;
    store.record_result(&t1[0], &result(&tfs[1], 4, true)).await.unwrap();
    let inputs = store.strategy_inputs(d.network_id).await.unwrap();
    let counts: Vec<i64> = inputs.graph.transformations.iter().map(|t| inputs.results(t.id)).collect();
    assert_eq!(counts, vec![2, 1, 0, 0, 0]);
    assert_eq!(inputs.result_count(), 3);
    assert_eq!(
        store
            .strategy_result_counts(&inputs.graph.transformations.iter().map(|t| t.id).collect::<Vec<_>>())
            .await
            .unwrap()
            .values()
            .sum::<i64>(),
        3
    );
    // the same reference recorded for another task of the transformation counts once
    let again = create(&store, &tfs[0], 1).await;
    let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let first = create(&store, &tfs[0], 1).await;
    let k1 = store.record_result_at(&first[0], &result(&tfs[0], 9, true), at).await.unwrap();
    let k2 = store.record_result_at(&again[0], &result(&tfs[0], 9, true), at).await.unwrap();
    assert_eq!(k1, k2);
    assert_eq!(
        store.strategy_result_counts(&inputs.graph.transformations.iter().map(|t| t.id).collect::<Vec<_>>()).await.unwrap()
            [&inputs.graph.transformations[0].id],
        3
    );
    assert_eq!(store.inconsistencies().await.unwrap(), Vec::<String>::new());
    let refs = store.strategy_result_refs(d.network_id).await.unwrap();
    assert_eq!(refs.len(), 4);
    assert_eq!(refs.iter().filter(|r| r.transformation == tfs[0].gufe_key().as_str()).count(), 3);
    assert!(refs.iter().all(|r| r.location.as_deref().is_some_and(|l| l.contains("/results/"))));
});

store_test!(weights_become_tasks, |store| async move {
    let state = StrategyState { mode: StrategyMode::Full, task_scaling: StrategyTaskScaling::Linear, ..Default::default() };
    let net = network(&store, "weights", 4, "a-b-c", state).await;
    let d = due_for(&store, &net).await;
    let inputs = store.strategy_inputs(d.network_id).await.unwrap();
    let ids: Vec<i64> = inputs.graph.transformations.iter().map(|t| t.id).collect();
    let mut tfs = store.network_transformations(&net).await.unwrap();
    tfs.sort_by_key(|t| inputs.graph.transformations.iter().position(|i| &i.key == t.gufe_key()).unwrap());

    // tf 1 has a running task (not actioned here) and a waiting one; tf 2 has an errored task
    let t1 = create(&store, &tfs[1], 2).await;
    store.set_task_status(&[Some(t1[0].clone())], TaskStatus::Running, true).await.unwrap();
    let t2 = create(&store, &tfs[2], 1).await;
    store.set_task_status(&[Some(t2[0].clone())], TaskStatus::Running, true).await.unwrap();
    store.set_task_status(&[Some(t2[0].clone())], TaskStatus::Error, true).await.unwrap();

    // linear, M = 3: 1.0 -> 3 tasks, 0.5 -> floor(2.5) = 2, 0.2 -> floor(1.6) = 1, null -> 0
    let weights = vec![(ids[0], Some(1.0)), (ids[1], Some(0.5)), (ids[2], Some(0.2)), (ids[3], None)];
    let t0 = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let report = store.commit_strategy_execution(&d, 7, StrategyOutcome::Weights(weights), None, t0).await.unwrap();
    // tf 0: 3 new; tf 1: the running task, then the waiting one; tf 2: errored -> nothing
    assert_eq!((report.created, report.actioned, report.cancelled), (3, 5, 0));
    let a = actioned_by_tf(&store, &net).await;
    assert_eq!(a[&tfs[0]], vec![TaskStatus::Waiting; 3]);
    assert_eq!(a[&tfs[1]].len(), 2);
    assert!(!a.contains_key(&tfs[2]) && !a.contains_key(&tfs[3]));
    // new tasks have no creator and belong to the network's scope
    let created = store.transformation_tasks(&tfs[0], None, None).await.unwrap();
    assert_eq!(created.len(), 3);
    let state = store.get_strategy_state(&net).await.unwrap().unwrap();
    assert_eq!(state, report.state);
    assert_eq!((state.status, state.iterations, state.last_iteration_result_count), (StrategyStatus::Awake, 1, 7));
    assert_eq!(state.last_iteration, Some(t0));

    // full mode, lower targets: 1.0 -> 0.2 (1 task) on tf 0 cancels two waiting ones; tf 1
    // down to null cancels its waiting task, then its running one
    let d = due_for(&store, &net).await;
    let weights = vec![(ids[0], Some(0.2)), (ids[1], None)];
    let report = store.commit_strategy_execution(&d, 7, StrategyOutcome::Weights(weights), None, Utc::now()).await.unwrap();
    assert_eq!((report.created, report.actioned, report.cancelled), (0, 0, 4));
    let a = actioned_by_tf(&store, &net).await;
    assert_eq!(a[&tfs[0]].len(), 1);
    assert!(!a.contains_key(&tfs[1]));
    // the cancelled tasks keep their status
    assert_eq!(store.get_task_status(&[Some(t1[0].clone())]).await.unwrap()[0], Some(TaskStatus::Running));

    // partial mode never cancels
    let mut partial = store.get_strategy_state(&net).await.unwrap().unwrap();
    partial.mode = StrategyMode::Partial;
    store.replace_strategy_state(&net, partial).await.unwrap();
    let d = due_for(&store, &net).await;
    let report = store.commit_strategy_execution(&d, 7, StrategyOutcome::Weights(vec![(ids[0], None)]), None, Utc::now()).await.unwrap();
    assert_eq!((report.created, report.actioned, report.cancelled), (0, 0, 0));
    assert_eq!(actioned_by_tf(&store, &net).await[&tfs[0]].len(), 1);
});

store_test!(dormant_and_failed_outcomes, |store| async move {
    let net = network(&store, "dormant", 3, "a-b-c", StrategyState { mode: StrategyMode::Full, ..Default::default() }).await;
    let d = due_for(&store, &net).await;
    let ids: Vec<i64> = store.strategy_inputs(d.network_id).await.unwrap().graph.transformations.iter().map(|t| t.id).collect();
    let weights = ids.iter().map(|&i| (i, Some(1.0))).collect();
    store.commit_strategy_execution(&d, 0, StrategyOutcome::Weights(weights), None, Utc::now()).await.unwrap();
    assert_eq!(store.network_actioned_tasks(&net).await.unwrap().len(), 9);

    // dormant in full mode: every actioned task is cancelled
    let d = due_for(&store, &net).await;
    let report = store.commit_strategy_execution(&d, 4, StrategyOutcome::Dormant, None, Utc::now()).await.unwrap();
    assert_eq!(report.cancelled, 9);
    assert!(store.network_actioned_tasks(&net).await.unwrap().is_empty());
    let s = store.get_strategy_state(&net).await.unwrap().unwrap();
    assert_eq!((s.status, s.iterations, s.last_iteration_result_count), (StrategyStatus::Dormant, 2, 4));

    // a failure: error status with exception and traceback; nothing else changes
    let d = due_for(&store, &net).await;
    let failed = StrategyOutcome::Failed { exception: ("ValueError".into(), "bad".into()), traceback: "Traceback ...".into() };
    store.commit_strategy_execution(&d, 5, failed, None, Utc::now()).await.unwrap();
    let s = store.get_strategy_state(&net).await.unwrap().unwrap();
    assert_eq!((s.status, s.iterations, s.last_iteration_result_count), (StrategyStatus::Error, 3, 5));
    assert_eq!(s.exception, Some(("ValueError".into(), "bad".into())));
    assert_eq!(s.traceback.as_deref(), Some("Traceback ..."));
    // errored strategies are not due until woken; waking clears the error
    assert!(store.due_strategies(&[], 0, later()).await.unwrap().is_empty());
    store.wake_strategy(&net).await.unwrap();
    let d = due_for(&store, &net).await;
    assert_eq!((d.state.status, d.state.exception.clone()), (StrategyStatus::Awake, None));
});

store_test!(edits_while_running_win, |store| async move {
    let net = network(&store, "edits", 3, "a-b-c", StrategyState::default()).await;
    let d = due_for(&store, &net).await;
    let ids: Vec<i64> = store.strategy_inputs(d.network_id).await.unwrap().graph.transformations.iter().map(|t| t.id).collect();
    let weights = StrategyOutcome::Weights(ids.iter().map(|&i| (i, Some(1.0))).collect());

    // the user changes the state while the execution runs: the execution is discarded
    let edited = StrategyState { mode: StrategyMode::Full, max_tasks_per_transformation: 1, ..Default::default() };
    store.replace_strategy_state(&net, edited.clone()).await.unwrap();
    let e = store.commit_strategy_execution(&d, 0, weights.clone(), None, Utc::now()).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    assert!(store.network_actioned_tasks(&net).await.unwrap().is_empty());
    assert_eq!(store.get_strategy_state(&net).await.unwrap(), Some(edited));

    // removed while running: discarded too
    let d = due_for(&store, &net).await;
    store.set_network_strategy(&net, None, StrategyState::default()).await.unwrap();
    assert!(matches!(store.commit_strategy_execution(&d, 0, weights.clone(), None, Utc::now()).await, Err(StoreError::Conflict(_))));

    // a lease lost to another process: discarded
    let net = network(&store, "leased", 3, "a-b-c", StrategyState::default()).await;
    let d = due_for(&store, &net).await;
    let ttl = Duration::from_secs(60);
    assert!(store.acquire_lease("strategy:x", "me", ttl).await.unwrap());
    let guard = LeaseGuard { name: "strategy:x", holder: "me" };
    store.commit_strategy_execution(&d, 0, StrategyOutcome::Weights(vec![]), Some(guard), Utc::now()).await.unwrap();
    // the commit gave the lease up
    assert_eq!(store.lease_holder("strategy:x").await.unwrap(), None);
    let d = due_for(&store, &net).await;
    assert!(store.acquire_lease("strategy:x", "other", ttl).await.unwrap());
    let e = store.commit_strategy_execution(&d, 0, StrategyOutcome::Weights(vec![]), Some(guard), Utc::now()).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(ref m) if m.contains("lease")), "{e:?}");
});

/// `database check` finds a kept result count that disagrees with the results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_result_counts_are_reported() {
    let ts = alchemiscale_store::testing::sqlite().await;
    let store = ts.store.clone();
    let net = network(&store, "tamper", 2, "a-b-c", StrategyState::default()).await;
    let tf = store.network_transformations(&net).await.unwrap().remove(0);
    let task = create(&store, &tf, 1).await.remove(0);
    store.record_result(&task, &result(&tf, 1, true)).await.unwrap();
    assert!(store.inconsistencies().await.unwrap().is_empty());
    let alchemiscale_store::StoreLocation::Sqlite { path } = &ts.location else { unreachable!() };
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("UPDATE transformation SET ok_results = 7").execute(&mut conn).await.unwrap();
    let problems = store.inconsistencies().await.unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains(tf.gufe_key().as_str()) && p.ends_with("counts 7 successful results but has 1")),
        "{problems:?}"
    );
}
