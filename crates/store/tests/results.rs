//! Recording results and result queries.

mod common;

use std::collections::HashMap;

use alchemiscale_model::hash::{PdrrFields, TracebacksFields};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{NetworkState, Scope, ScopedKey, TaskStatus};
use alchemiscale_store::results::RecordedResult;
use alchemiscale_store::tasks::TaskRequest;
use alchemiscale_store::{store_test, Store, StoreError, StoreLocation};
use chrono::{TimeZone, Utc};
use common::*;

fn scope() -> Scope {
    "xorg-xcampaign-xproject".parse().unwrap()
}

async fn network(store: &Store, tag: &str) -> (ScopedKey, Vec<ScopedKey>) {
    let created = store.create_network(&chain_of(&network_chain_json(4, 4, tag)), &scope(), NetworkState::Active).await.unwrap();
    let mut tfs = store.network_transformations(&created.network).await.unwrap();
    tfs.sort();
    (created.network, tfs)
}

async fn tasks(store: &Store, tf: &ScopedKey, n: usize) -> Vec<ScopedKey> {
    let reqs: Vec<TaskRequest> = (0..n).map(|_| TaskRequest { transformation: tf.clone(), extends: None }).collect();
    store.create_tasks(&reqs, Some("alice")).await.unwrap()
}

async fn status(store: &Store, task: &ScopedKey) -> TaskStatus {
    store.get_task_status(&[Some(task.clone())]).await.unwrap()[0].unwrap()
}

async fn set(store: &Store, task: &ScopedKey, s: TaskStatus) {
    assert_eq!(store.set_task_status(&[Some(task.clone())], s, true).await.unwrap(), vec![Some(task.clone())]);
}

async fn actioned(store: &Store, network: &ScopedKey) -> Vec<ScopedKey> {
    store.network_actioned_tasks(network).await.unwrap().into_iter().map(|(t, _)| t).collect()
}

async fn counts(store: &Store) -> HashMap<&'static str, i64> {
    store.table_counts().await.unwrap().into_iter().collect()
}

const SERVICE: &str = "worker-0123456789abcdef0123456789abcdef";

fn result(n: u32, ok: bool) -> RecordedResult {
    let obj_key = format!("ProtocolDAGResult-{n:032x}");
    let dir = if ok { "results" } else { "failures" };
    RecordedResult {
        location: format!("protocoldagresult/xorg/xcampaign/xproject/Transformation-x/{dir}/{obj_key}/obj.json.zst"),
        obj_key,
        ok,
        content_sha256: format!("{n:064x}"),
        size: 1000 + n as i64,
        creator: Some(SERVICE.into()),
        tracebacks: None,
    }
}

fn failure(n: u32, texts: &[&str]) -> RecordedResult {
    RecordedResult {
        tracebacks: Some(TracebacksFields {
            tracebacks: texts.iter().map(|s| s.to_string()).collect(),
            source_keys: (0..texts.len()).map(|i| format!("ProtocolUnit-{n:016x}{i:016x}")).collect(),
            failure_keys: (0..texts.len()).map(|i| format!("ProtocolUnitFailure-{n:016x}{i:016x}")).collect(),
        }),
        ..result(n, false)
    }
}

store_test!(success_completes_a_running_task, |store| async move {
    let (net, tfs) = network(&store, "ok").await;
    let t = tasks(&store, &tfs[0], 1).await.remove(0);
    store.action_tasks(&net, &[Some(t.clone())], None).await.unwrap();
    set(&store, &t, TaskStatus::Running).await;
    let at = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(678901);
    let r = result(1, true);
    let sk = store.record_result_at(&t, &r, at).await.unwrap();

    assert_eq!(sk.qualname(), "ProtocolDAGResultRef");
    assert_eq!(sk.scope(), t.scope());
    assert_eq!(status(&store, &t).await, TaskStatus::Complete);
    assert!(actioned(&store, &net).await.is_empty());
    assert!(store.exists(&sk).await.unwrap());

    // the key is upstream's default-algorithm key of the stored fields
    let fields = PdrrFields {
        location: Some(r.location.clone()),
        obj_key: r.obj_key.clone(),
        scope: scope().to_string(),
        ok: true,
        datetime_created: Some("2024-01-02T03:04:05.678901+00:00".into()),
        creator: Some(SERVICE.into()),
    };
    assert_eq!(sk.gufe_key(), &fields.key());
    let rec = store.get_pdrr(&sk).await.unwrap().unwrap();
    assert_eq!(rec.fields(), fields);
    assert_eq!(rec.scoped_key, sk);
    assert_eq!(rec.content_sha256.as_deref(), Some(r.content_sha256.as_str()));
    assert_eq!(rec.size, Some(1001));

    assert_eq!(store.task_results(&t, true).await.unwrap(), vec![sk.clone()]);
    assert!(store.task_results(&t, false).await.unwrap().is_empty());
    assert_eq!(store.transformation_results(&tfs[0], true).await.unwrap(), vec![sk.clone()]);
    assert!(store.transformation_results(&tfs[0], false).await.unwrap().is_empty());
    assert!(store.transformation_results(&tfs[1], true).await.unwrap().is_empty());
    // unknown or foreign keys answer empty / None
    assert!(store.task_results(&tfs[0], true).await.unwrap().is_empty());
    assert!(store.get_pdrr(&t).await.unwrap().is_none());
    let missing: ScopedKey = format!("ProtocolDAGResultRef-00000000000000000000000000000000-{}", scope()).parse().unwrap();
    assert!(store.get_pdrr(&missing).await.unwrap().is_none());
    // a success records no failure for the service
    assert_eq!(counts(&store).await["compute_service_failure"], 0);
});

store_test!(success_on_a_waiting_or_error_task_still_completes, |store| async move {
    // deliberate fix of upstream issue #513
    let (net, tfs) = network(&store, "513").await;
    let ts = tasks(&store, &tfs[0], 4).await;
    store.action_tasks(&net, &ts.iter().cloned().map(Some).collect::<Vec<_>>(), None).await.unwrap();

    // waiting (e.g. its claim expired while it ran)
    store.record_result(&ts[0], &result(1, true)).await.unwrap();
    assert_eq!(status(&store, &ts[0]).await, TaskStatus::Complete);

    // error, still actioned (the hub has no restart patterns)
    set(&store, &ts[1], TaskStatus::Running).await;
    store.record_result(&ts[1], &failure(2, &["RuntimeError"])).await.unwrap();
    assert_eq!(status(&store, &ts[1]).await, TaskStatus::Error);
    store.record_result(&ts[1], &result(3, true)).await.unwrap();
    assert_eq!(status(&store, &ts[1]).await, TaskStatus::Complete);
    assert_eq!(store.task_results(&ts[1], true).await.unwrap().len(), 1);
    assert_eq!(store.task_results(&ts[1], false).await.unwrap().len(), 1);

    // invalid stays invalid, but the result is recorded
    set(&store, &ts[2], TaskStatus::Invalid).await;
    let sk = store.record_result(&ts[2], &result(4, true)).await.unwrap();
    assert_eq!(status(&store, &ts[2]).await, TaskStatus::Invalid);
    assert_eq!(store.task_results(&ts[2], true).await.unwrap(), vec![sk]);

    // complete stays complete with a second result
    store.record_result(&ts[0], &result(5, true)).await.unwrap();
    assert_eq!(status(&store, &ts[0]).await, TaskStatus::Complete);
    assert_eq!(store.task_results(&ts[0], true).await.unwrap().len(), 2);
    assert_eq!(store.transformation_results(&tfs[0], true).await.unwrap().len(), 4);

    // completed tasks left every hub; the untouched one is still there
    assert_eq!(actioned(&store, &net).await, vec![ts[3].clone()]);
});

store_test!(failure_records_tracebacks_and_sets_error, |store| async move {
    let (net, tfs) = network(&store, "fail").await;
    let ts = tasks(&store, &tfs[0], 4).await;
    store.action_tasks(&net, &ts.iter().cloned().map(Some).collect::<Vec<_>>(), None).await.unwrap();
    set(&store, &ts[0], TaskStatus::Running).await;
    let f = failure(1, &["Traceback: boom", "Traceback: bang"]);
    let sk = store.record_result(&ts[0], &f).await.unwrap();
    assert_eq!(status(&store, &ts[0]).await, TaskStatus::Error);
    assert_eq!(store.task_results(&ts[0], false).await.unwrap(), vec![sk.clone()]);
    assert!(store.task_results(&ts[0], true).await.unwrap().is_empty());
    assert_eq!(store.transformation_results(&tfs[0], false).await.unwrap(), vec![sk.clone()]);
    assert!(!store.get_pdrr(&sk).await.unwrap().unwrap().ok);
    let tb_sk = ScopedKey::new(f.tracebacks.as_ref().unwrap().key(), scope()).unwrap();
    assert!(store.exists(&tb_sk).await.unwrap());
    assert_eq!(counts(&store).await["tracebacks"], 1);
    // error keeps the task actioned (no restart patterns on this hub)
    assert_eq!(actioned(&store, &net).await.len(), 4);

    // an upstream quirk fixed: a failure without unit failures records no Tracebacks
    set(&store, &ts[1], TaskStatus::Running).await;
    store.record_result(&ts[1], &result(2, false)).await.unwrap();
    set(&store, &ts[2], TaskStatus::Running).await;
    store.record_result(&ts[2], &failure(3, &[])).await.unwrap();
    assert_eq!(status(&store, &ts[1]).await, TaskStatus::Error);
    assert_eq!(status(&store, &ts[2]).await, TaskStatus::Error);
    assert_eq!(counts(&store).await["tracebacks"], 1);

    // a failure for a waiting task is recorded, the status follows the transition table
    store.record_result(&ts[3], &failure(4, &["late"])).await.unwrap();
    assert_eq!(status(&store, &ts[3]).await, TaskStatus::Waiting);
    assert_eq!(store.task_results(&ts[3], false).await.unwrap().len(), 1);
    let c = counts(&store).await;
    assert_eq!((c["pdrr"], c["task_result"], c["tracebacks"]), (4, 4, 2));
    assert_eq!(c["pdrr_tracebacks"], 2);
    // the same failure again: one Tracebacks record now details two results
    let same = RecordedResult { tracebacks: f.tracebacks.clone(), ..result(5, false) };
    store.record_result(&ts[0], &same).await.unwrap();
    let c = counts(&store).await;
    assert_eq!((c["pdrr"], c["tracebacks"], c["pdrr_tracebacks"]), (5, 2, 3));
    // no compute service is registered: nothing logged, nothing failed
    assert_eq!(c["compute_service_failure"], 0);
});

store_test!(identical_results_share_one_pdrr, |store| async move {
    let (_, tfs) = network(&store, "dedup").await;
    let ts = tasks(&store, &tfs[0], 2).await;
    let at = Utc.with_ymd_and_hms(2025, 5, 6, 7, 8, 9).unwrap();
    let r = result(7, true);
    let a = store.record_result_at(&ts[0], &r, at).await.unwrap();
    let again = store.record_result_at(&ts[0], &r, at).await.unwrap();
    assert_eq!(a, again);
    let c = counts(&store).await;
    assert_eq!((c["pdrr"], c["task_result"]), (1, 1));
    // another task of the same scope points at the same record
    let b = store.record_result_at(&ts[1], &r, at).await.unwrap();
    assert_eq!(a, b);
    let c = counts(&store).await;
    assert_eq!((c["pdrr"], c["task_result"]), (1, 2));
    assert_eq!(store.transformation_results(&tfs[0], true).await.unwrap(), vec![a.clone()]);
    assert_eq!(store.get_pdrr(&a).await.unwrap().unwrap().datetime_created.as_deref(), Some("2025-05-06T07:08:09+00:00"));
    // the same result pushed to the same task later (a retried push whose first answer was
    // lost) is the reference already stored, not a second result of one execution
    let later = store.record_result_at(&ts[1], &r, at + chrono::Duration::seconds(5)).await.unwrap();
    assert_eq!(later, a);
    assert_eq!(store.task_results(&ts[1], true).await.unwrap(), vec![a.clone()]);
    let c = counts(&store).await;
    assert_eq!((c["pdrr"], c["task_result"]), (1, 2));
    // another result of that task (another execution) is another record
    let other = store.record_result_at(&ts[1], &result(8, true), at + chrono::Duration::seconds(6)).await.unwrap();
    assert_ne!(other, a);
    assert_eq!(store.task_results(&ts[1], true).await.unwrap().len(), 2);
    // and a task that had no reference yet gets a new one at any time, even for the same
    // object: only a retry on the same task reuses a reference
    let ts2 = tasks(&store, &tfs[1], 1).await;
    let fresh = store.record_result_at(&ts2[0], &r, at + chrono::Duration::seconds(7)).await.unwrap();
    assert_ne!(fresh, a);
});

store_test!(extended_task_uses_newest_successful_result, |store| async move {
    let (_, tfs) = network(&store, "extends").await;
    let base = tasks(&store, &tfs[0], 1).await.remove(0);
    let ext =
        store.create_tasks(&[TaskRequest { transformation: tfs[0].clone(), extends: Some(base.clone()) }], None).await.unwrap().remove(0);
    assert!(store.extended_result_location(&base).await.unwrap().is_none());
    assert!(store.extended_result_location(&ext).await.unwrap().is_none());

    let t = |y| Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0).unwrap();
    set(&store, &base, TaskStatus::Running).await;
    store.record_result_at(&base, &failure(1, &["boom"]), t(2026)).await.unwrap();
    assert!(store.extended_result_location(&ext).await.unwrap().is_none());
    let newest = store.record_result_at(&base, &result(2, true), t(2025)).await.unwrap();
    store.record_result_at(&base, &result(3, true), t(2024)).await.unwrap();
    let rec = store.extended_result_location(&ext).await.unwrap().unwrap();
    assert_eq!(rec.scoped_key, newest);
    assert!(rec.ok);
    assert_eq!(rec.obj_key, result(2, true).obj_key);
    assert_eq!(rec.location.as_deref(), Some(result(2, true).location.as_str()));

    let missing: ScopedKey = format!("Task-00000000000000000000000000000000-{}", scope()).parse().unwrap();
    assert!(matches!(store.extended_result_location(&missing).await, Err(StoreError::NotFound)));
});

store_test!(bad_input_changes_nothing, |store| async move {
    let (_, tfs) = network(&store, "bad").await;
    let t = tasks(&store, &tfs[0], 1).await.remove(0);
    let missing: ScopedKey = format!("Task-00000000000000000000000000000000-{}", scope()).parse().unwrap();
    assert!(matches!(store.record_result(&missing, &result(1, true)).await, Err(StoreError::NotFound)));
    assert!(matches!(store.record_result(&tfs[0], &result(1, true)).await, Err(StoreError::Invalid(_))));
    let bad_key = RecordedResult { obj_key: "not a key".into(), ..result(1, true) };
    assert!(matches!(store.record_result(&t, &bad_key).await, Err(StoreError::Invalid(_))));
    let mut uneven = failure(2, &["a", "b"]);
    uneven.tracebacks.as_mut().unwrap().source_keys.pop();
    assert!(matches!(store.record_result(&t, &uneven).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.record_result(&t, &failure(3, &["a", ""])).await, Err(StoreError::Invalid(_))));
    let c = counts(&store).await;
    assert_eq!((c["pdrr"], c["task_result"], c["tracebacks"]), (0, 0, 0));
    assert_eq!(status(&store, &t).await, TaskStatus::Waiting);
});

store_test!(concurrent_recordings_answer_each_and_fail_alone, |store| async move {
    // concurrent recordings may share one transaction (SQLite); a request that fails
    // must leave the others' results standing, and each caller gets its own answer
    let (_, tfs) = network(&store, "group").await;
    let ts = tasks(&store, &tfs[0], 24).await;
    let missing: ScopedKey = format!("Task-00000000000000000000000000000000-{}", scope()).parse().unwrap();
    let mut handles = Vec::new();
    for (i, t) in ts.iter().enumerate() {
        let (store, t, missing) = (store.clone(), t.clone(), missing.clone());
        handles.push(tokio::spawn(async move {
            // every third request names a task that does not exist
            let target = if i % 3 == 0 { missing } else { t };
            store.record_result(&target, &result(100 + i as u32, true)).await
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.unwrap();
        if i % 3 == 0 {
            assert!(matches!(r, Err(StoreError::NotFound)), "request {i}: {r:?}");
            assert_eq!(status(&store, &ts[i]).await, TaskStatus::Waiting);
        } else {
            let pdrr = r.unwrap();
            assert_eq!(store.task_results(&ts[i], true).await.unwrap(), vec![pdrr]);
            assert_eq!(status(&store, &ts[i]).await, TaskStatus::Complete);
        }
    }
    let c = counts(&store).await;
    assert_eq!((c["pdrr"], c["task_result"]), (16, 16));
});

/// Failure accounting needs a registered compute service, which this crate cannot create
/// yet: the test inserts one with SQL through a second connection.
async fn failure_times(store: Store, location: StoreLocation) {
    let (_, tfs) = network(&store, "failtimes").await;
    let ts = tasks(&store, &tfs[0], 2).await;
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&location.url()).await.unwrap();
    sqlx::query("INSERT INTO compute_service (identifier, registered, heartbeat) VALUES ($1, $2, $2)")
        .bind(SERVICE)
        .bind(Utc::now().timestamp_micros())
        .execute(&raw)
        .await
        .unwrap();
    set(&store, &ts[0], TaskStatus::Running).await;
    let at = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    store.record_result_at(&ts[0], &failure(1, &["boom"]), at).await.unwrap();
    store.record_result_at(&ts[1], &failure(2, &["boom"]), at + chrono::Duration::seconds(1)).await.unwrap();
    // successes and failures from unregistered services log nothing
    store.record_result(&ts[0], &result(3, true)).await.unwrap();
    store
        .record_result(&ts[1], &RecordedResult { creator: Some("other-0123456789abcdef0123456789abcdef".into()), ..failure(4, &["x"]) })
        .await
        .unwrap();
    store.record_result(&ts[1], &RecordedResult { creator: None, ..failure(5, &["y"]) }).await.unwrap();
    let rows = sqlx::query("SELECT f.failed_at FROM compute_service_failure f JOIN compute_service s ON s.id = f.service_id WHERE s.identifier = $1 ORDER BY f.failed_at DESC")
        .bind(SERVICE)
        .fetch_all(&raw)
        .await
        .unwrap();
    let times: Vec<i64> = rows.iter().map(|r| sqlx::Row::try_get::<i64, _>(r, 0).unwrap()).collect();
    assert_eq!(times, vec![(at + chrono::Duration::seconds(1)).timestamp_micros(), at.timestamp_micros()]);
    assert_eq!(counts(&store).await["compute_service_failure"], 2);
    raw.close().await;
}

mod failure_accounting {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let ts = alchemiscale_store::testing::sqlite().await;
        failure_times(ts.store.clone(), ts.location.clone()).await;
        ts.store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(ts) = alchemiscale_store::testing::postgres().await else { return };
        failure_times(ts.store.clone(), ts.location.clone()).await;
        ts.store.close().await;
    }
}
