//! A claim reads a bounded part of its hub's queue however large the queue is and however
//! many of its tasks are already running: checked on the plan each backend runs, at
//! 100,000 actioned tasks of which 20,000 are claimed, on a freshly loaded store (no
//! ANALYZE, no statistics refreshed by hand), and on PostgreSQL in pages too: past the
//! dead index entries the claims leave at the front of the queue.

#[path = "common.rs"]
mod common;

use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{ComputeServiceId, NetworkState, Scope};
use alchemiscale_store::tasks::TaskRequest;
use alchemiscale_store::{store_test, Backend};
use common::*;

const TASKS: usize = 100_000;
const CLAIMED: usize = 20_000;

store_test!(claims_read_a_bounded_part_of_a_large_queue, |store| async move {
    let scope: Scope = "plan-campaign-project".parse().unwrap();
    let created = store.create_network(&chain_of(&network_chain_json(4, 100, "plan")), &scope, NetworkState::Active).await.unwrap();
    let tfs = store.network_transformations(&created.network).await.unwrap();
    let requests: Vec<TaskRequest> =
        tfs.iter().flat_map(|tf| (0..TASKS / tfs.len()).map(|_| TaskRequest { transformation: tf.clone(), extends: None })).collect();
    let tasks = store.create_tasks(&requests, None).await.unwrap();
    let tasks: Vec<_> = tasks.into_iter().map(Some).collect();
    for chunk in tasks.chunks(10_000) {
        store.action_tasks(&created.network, chunk, None).await.unwrap();
    }
    let service = ComputeServiceId::mint("planner").unwrap();
    store.register_compute_service(&service, None).await.unwrap();
    let mut claimed = 0;
    while claimed < CLAIMED {
        let got = store.claim_taskhub_tasks(&created.taskhub, &service, 5_000, None).await.unwrap();
        claimed += got.iter().flatten().count();
    }

    let plan = store.explain_hub_claim(&created.taskhub, 10).await.unwrap().expect("the hub exists");
    match store.backend() {
        Backend::Sqlite => {
            assert!(plan.text.contains("USING PRIMARY KEY"), "the claim reads the queue in claim order:\n{}", plan.text);
            assert!(!plan.text.contains("TEMP B-TREE"), "the claim sorts nothing:\n{}", plan.text);
            assert!(!plan.text.lines().any(|l| l.starts_with("SCAN")), "the claim scans no table:\n{}", plan.text);
        }
        Backend::Postgres => {
            let read = plan.queue_rows_read.unwrap();
            assert!(read <= 100, "a claim of 10 read {read} queue rows of a queue of {TASKS} ({CLAIMED} running):\n{}", plan.text);
            let read = plan.task_rows_read.unwrap();
            assert!(read <= 100, "a claim of 10 read {read} task rows of a queue of {TASKS} ({CLAIMED} running):\n{}", plan.text);
        }
    }
    // and the claim itself still works after the explanation (nothing was kept locked)
    assert_eq!(store.claim_taskhub_tasks(&created.taskhub, &service, 10, None).await.unwrap().iter().flatten().count(), 10);

    // PostgreSQL: the front of the queue's index is a run of dead entries as long as the
    // claims made since the last VACUUM (20,000 here); a claim starts past it, where the
    // last claim's select began, and reads a few pages (see the store's `claim_select`)
    if store.backend() == Backend::Postgres {
        let start = store.explain_hub_claim(&created.taskhub, 10).await.unwrap().unwrap().queue_pages_read.unwrap();
        let plan = store.explain_hub_claim_from_hint(&created.taskhub, 10).await.unwrap().expect("the claims left a start hint");
        let hinted = plan.queue_pages_read.unwrap();
        eprintln!("pages of task_queue read by a claim of 10: {start} from the queue's start, {hinted} from the hint");
        assert!(hinted <= 60, "a claim of 10 from the hint read {hinted} pages of task_queue:\n{}", plan.text);
        assert!(plan.queue_rows_read.unwrap() <= 100, "{}", plan.text);
    } else {
        assert!(store.explain_hub_claim_from_hint(&created.taskhub, 10).await.unwrap().is_none(), "SQLite keeps no start hint");
    }

    // PostgreSQL: the claims' status changes wrote no index entries (heap-only updates),
    // so a claim's writes do not grow with the indexes either
    if let Some(first) = store.task_updates().await.unwrap() {
        assert!(first.status_indexes.is_empty(), "indexes of task hold the status: {:?}", first.status_indexes);
        assert_eq!(first.fillfactor, Some(80));
        // the statistics collector reports with a delay
        let mut seen = first;
        for _ in 0..100 {
            if seen.updates >= CLAIMED as i64 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            seen = store.task_updates().await.unwrap().unwrap();
        }
        eprintln!("task updates after the claims: {seen:?}");
        assert!(seen.updates >= CLAIMED as i64, "{seen:?}");
        assert!(seen.heap_only as f64 >= 0.9 * seen.updates as f64, "claims' status changes were not heap-only: {seen:?}");
    }
});

// Statistics taken while every task was claimed, then every claim given back (services
// deregistered or expired en masse): the planner believes no task is claimable. The
// claim must still read the queue in order and look at a bounded number of tasks, in the
// custom plan and in the generic plan a prepared claim may switch to (`bench scaleout`
// found a generic plan that scanned every task per claim, 80-130 ms each; the exact
// statistics that produced it are not reproduced here).
store_test!(claims_stay_bounded_when_statistics_say_everything_is_claimed, |store| async move {
    const N: usize = 20_000;
    let scope: Scope = "stale-campaign-project".parse().unwrap();
    let created = store.create_network(&chain_of(&network_chain_json(4, 100, "stale")), &scope, NetworkState::Active).await.unwrap();
    let tfs = store.network_transformations(&created.network).await.unwrap();
    let requests: Vec<TaskRequest> =
        tfs.iter().flat_map(|tf| (0..N / tfs.len()).map(|_| TaskRequest { transformation: tf.clone(), extends: None })).collect();
    let tasks: Vec<_> = store.create_tasks(&requests, None).await.unwrap().into_iter().map(Some).collect();
    for chunk in tasks.chunks(10_000) {
        store.action_tasks(&created.network, chunk, None).await.unwrap();
    }
    let service = ComputeServiceId::mint("hoarder").unwrap();
    store.register_compute_service(&service, None).await.unwrap();
    let mut claimed = 0;
    while claimed < N {
        let got = store.claim_taskhub_tasks(&created.taskhub, &service, 5_000, None).await.unwrap();
        let n = got.iter().flatten().count();
        assert!(n > 0, "only {claimed} of {N} claimed");
        claimed += n;
    }
    store.refresh_statistics().await.unwrap();
    store.deregister_compute_service(&service).await.unwrap();

    let plan = store.explain_hub_claim(&created.taskhub, 10).await.unwrap().expect("the hub exists");
    match store.backend() {
        Backend::Sqlite => {
            assert!(plan.text.contains("USING PRIMARY KEY"), "the claim reads the queue in claim order:\n{}", plan.text);
            assert!(!plan.text.lines().any(|l| l.starts_with("SCAN")), "the claim scans no table:\n{}", plan.text);
        }
        Backend::Postgres => {
            let (actions, tasks) = (plan.queue_rows_read.unwrap(), plan.task_rows_read.unwrap());
            assert!(actions <= 100 && tasks <= 100, "a claim of 10 read {actions} queue rows and {tasks} task rows:\n{}", plan.text);
        }
    }
    let again = ComputeServiceId::mint("again").unwrap();
    store.register_compute_service(&again, None).await.unwrap();
    assert_eq!(store.claim_taskhub_tasks(&created.taskhub, &again, 10, None).await.unwrap().iter().flatten().count(), 10);
});
