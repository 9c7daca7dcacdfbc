//! The claim queue stays in step with the tasks through everything that puts a task in it
//! or takes it out: actioning on several hubs, weights, priorities, claims, returns,
//! cancellation, errors and restarts. `database check` (`Store::inconsistencies`) reports
//! a queue row of a task that is not waiting and a waiting, actioned task whose queue row
//! cannot be found by the key its ACTIONS row records.

mod common;
#[path = "support/compute.rs"]
mod support;

use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{NetworkState, TaskStatus};
use alchemiscale_store::tasks::Weights;
use alchemiscale_store::{store_test, Store};
use common::*;
use support::*;

async fn consistent(store: &Store, step: &str) {
    assert_eq!(store.inconsistencies().await.unwrap(), Vec::<String>::new(), "after {step}");
}

store_test!(the_queue_follows_every_change_of_a_task, |store| async move {
    // a twin network shares the transformations, so tasks can be actioned on both hubs
    let text = network_chain_json(4, 4, "queue");
    let root = chain_of(&text).root().key.to_string();
    let twin = text.replace(&root, &format!("AlchemicalNetwork-{:032x}", 1));
    let a = store.create_network(&chain_of(&text), &scope(), NetworkState::Active).await.unwrap();
    let b = store.create_network(&chain_of(&twin), &scope(), NetworkState::Active).await.unwrap();
    let (net_a, hub_a, net_b) = (a.network, a.taskhub, b.network);
    let tfs_a = store.network_transformations(&net_a).await.unwrap();
    let ts = tasks(&store, &tfs_a, 12).await;
    action(&store, &net_a, &ts).await;
    action(&store, &net_b, &ts[..6]).await;
    consistent(&store, "actioning on two hubs").await;

    let weights = Weights::Each((0..4).map(|i| [0.0, 0.3, 0.9, 1.0][i]).collect());
    store.action_tasks(&net_a, &some(&ts[..4]), Some(weights)).await.unwrap();
    consistent(&store, "changing weights").await;
    // new rows take their given weights when they are actioned: weight 0 is not queued
    let extra = tasks(&store, &tfs_a, 2).await;
    store.action_tasks(&net_a, &some(&extra), Some(Weights::Each(vec![0.0, 1.0]))).await.unwrap();
    consistent(&store, "actioning with weights").await;
    store.set_task_priority(&some(&ts[4..8]), 3).await.unwrap();
    consistent(&store, "changing priorities").await;

    // a task claimed through one hub leaves both queues; deregistering puts it back
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();
    let got = keys(&store.claim_taskhub_tasks(&hub_a, &s, 5, None).await.unwrap(), 5);
    assert_eq!(got.len(), 5);
    consistent(&store, "claiming").await;
    store.deregister_compute_service(&s).await.unwrap();
    assert_eq!(statuses(&store, &got).await, vec![TaskStatus::Waiting; 5]);
    consistent(&store, "returning claimed tasks").await;

    store.cancel_tasks(&net_b, &some(&ts[..3])).await.unwrap();
    consistent(&store, "cancelling on one hub").await;
    set(&store, &ts[6..8], TaskStatus::Running).await;
    consistent(&store, "setting running").await;
    set(&store, &ts[6..8], TaskStatus::Error).await;
    consistent(&store, "erroring").await;
    set(&store, &ts[6..7], TaskStatus::Waiting).await;
    consistent(&store, "restarting").await;
    set(&store, &ts[8..9], TaskStatus::Invalid).await;
    set(&store, &ts[9..10], TaskStatus::Deleted).await;
    consistent(&store, "invalidating and deleting").await;

    // what is left waiting with a weight above 0 is claimed, each task once
    let s = sid(2);
    store.register_compute_service(&s, None).await.unwrap();
    let all = keys(&claim(&store, &s, 50).await, 50);
    let mut expected: Vec<_> = ts.iter().enumerate().filter(|(i, _)| *i != 0 && ![7, 8, 9].contains(i)).map(|(_, t)| t.clone()).collect();
    expected.push(extra[1].clone());
    assert_eq!(set_of(&all), set_of(&expected));
    assert_eq!(all.len(), expected.len(), "no task is handed out twice");
    consistent(&store, "claiming everything").await;
});

store_test!(claims_take_shared_and_unshared_tasks_out_of_every_queue, |store| async move {
    // a network of its own (its tasks can be queued on its hub only, and a claim takes them
    // out of the queue by the row it read) beside twins that share their transformations
    let (solo_net, solo_hub, solo_tfs) = network(&store, "solo").await;
    let text = network_chain_json(4, 4, "pair");
    let root = chain_of(&text).root().key.to_string();
    let twin = text.replace(&root, &format!("AlchemicalNetwork-{:032x}", 2));
    let a = store.create_network(&chain_of(&text), &scope(), NetworkState::Active).await.unwrap();
    let b = store.create_network(&chain_of(&twin), &scope(), NetworkState::Active).await.unwrap();
    let shared_tfs = store.network_transformations(&a.network).await.unwrap();
    let solo = tasks(&store, &solo_tfs, 8).await;
    let shared = tasks(&store, &shared_tfs, 8).await;
    action(&store, &solo_net, &solo).await;
    action(&store, &a.network, &shared).await;
    // half of the shared ones on the twin's hub too; the others only on the first hub
    action(&store, &b.network, &shared[..4]).await;
    consistent(&store, "actioning").await;

    let s = sid(3);
    store.register_compute_service(&s, None).await.unwrap();
    let from_solo = keys(&store.claim_taskhub_tasks(&solo_hub, &s, 3, None).await.unwrap(), 3);
    assert_eq!(from_solo.len(), 3);
    consistent(&store, "claiming from the network of its own").await;
    let from_twin = keys(&store.claim_taskhub_tasks(&b.taskhub, &s, 2, None).await.unwrap(), 2);
    assert!(set_of(&from_twin).is_subset(&set_of(&shared[..4])));
    consistent(&store, "claiming tasks actioned on two hubs").await;
    let rest = keys(&claim(&store, &s, 40).await, 40);
    consistent(&store, "claiming across scopes").await;
    let mut all: Vec<_> = [from_solo, from_twin, rest].concat();
    let expected: Vec<_> = [solo.clone(), shared.clone()].concat();
    assert_eq!(set_of(&all), set_of(&expected));
    assert_eq!(all.len(), expected.len(), "no task is handed out twice");
    assert_eq!(statuses(&store, &expected).await, vec![TaskStatus::Running; expected.len()]);

    // returned, every task is back in each queue it was in, and claimed once again
    store.deregister_compute_service(&s).await.unwrap();
    consistent(&store, "returning claimed tasks").await;
    let s = sid(4);
    store.register_compute_service(&s, None).await.unwrap();
    all = keys(&claim(&store, &s, 40).await, 40);
    assert_eq!(set_of(&all), set_of(&expected));
    assert_eq!(all.len(), expected.len());
    consistent(&store, "claiming again").await;
});
