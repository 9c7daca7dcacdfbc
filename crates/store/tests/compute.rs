//! Compute services and claiming; compute managers are in
//! `managers.rs`.
//!
//! Claiming is random by design (upstream's tie-breaking): tests assert set membership,
//! counts and the priority/weight-driven guarantees only.

mod common;
#[path = "support/compute.rs"]
mod support;

use std::collections::{HashMap, HashSet};

use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{ComputeServiceId, NetworkState, Scope, ScopedKey, TaskStatus};
use alchemiscale_store::compute::{ClaimOutcome, MAX_CLAIM_COUNT};
use alchemiscale_store::tasks::{TaskRequest, Weights};
use alchemiscale_store::{store_test, Store, StoreError, StoreOptions};
use chrono::{Duration, Utc};
use common::*;
use support::*;

// -- registrations -------------------------------------------------------

store_test!(registration_lifecycle, |store| async move {
    let a = sid(1);
    let t0 = Utc::now();
    store.register_compute_service(&a, None).await.unwrap();
    let list = store.list_compute_services().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].identifier, a);
    assert_eq!(list[0].registered, list[0].heartbeat);
    assert!(list[0].registered >= t0 - Duration::seconds(1));
    assert_eq!((list[0].manager_name.as_deref(), list[0].claimed_tasks, list[0].failures), (None, 0, 0));

    // duplicate identifier
    assert!(matches!(store.register_compute_service(&a, None).await, Err(StoreError::Conflict(_))));

    // manager by name: unknown → Invalid, nothing stored
    let m = mid("mgr", 1);
    let b = sid(2);
    assert_eq!(invalid(store.register_compute_service(&b, Some(&m)).await.unwrap_err()), "Could not find ComputeManagerRegistration");
    assert_eq!(store.list_compute_services().await.unwrap().len(), 1);
    // any uuid of a registered manager's name will do
    store.register_compute_manager(&m, false).await.unwrap();
    store.register_compute_service(&b, Some(&mid("mgr", 99))).await.unwrap();
    let list = store.list_compute_services().await.unwrap();
    assert_eq!(list.iter().find(|s| s.identifier == b).unwrap().manager_name.as_deref(), Some("mgr"));

    // heartbeat moves the heartbeat only
    let later = Utc::now() + Duration::seconds(5);
    store.heartbeat_compute_service_at(&a, 1800, later).await.unwrap();
    let info = store.list_compute_services().await.unwrap().into_iter().find(|s| s.identifier == a).unwrap();
    assert_eq!(info.heartbeat.timestamp_micros(), later.timestamp_micros());
    assert!(info.registered < info.heartbeat);
    // heartbeat of an unknown service: no error, nothing created
    store.heartbeat_compute_service(&sid(3), 1800).await.unwrap();
    assert_eq!(store.list_compute_services().await.unwrap().len(), 2);

    // deregistration is idempotent
    store.deregister_compute_service(&a).await.unwrap();
    store.deregister_compute_service(&a).await.unwrap();
    store.deregister_compute_service(&sid(4)).await.unwrap();
    let left: Vec<ComputeServiceId> = store.list_compute_services().await.unwrap().into_iter().map(|s| s.identifier).collect();
    assert_eq!(left, vec![b.clone()]);
    // and the id can be registered again
    store.register_compute_service(&a, None).await.unwrap();

    // negative durations are refused
    assert!(matches!(store.expire_compute_services(-1).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.heartbeat_compute_service(&a, -1).await, Err(StoreError::Invalid(_))));
});

store_test!(deregistration_returns_running_tasks_to_waiting, |store| async move {
    let (net, _, tfs) = network(&store, "dereg").await;
    let ts = tasks(&store, &tfs, 6).await;
    action(&store, &net, &ts).await;
    let (a, b) = (sid(1), sid(2));
    store.register_compute_service(&a, None).await.unwrap();
    store.register_compute_service(&b, None).await.unwrap();
    let mine = keys(&claim(&store, &a, 4).await, 4);
    let theirs = keys(&claim(&store, &b, 2).await, 2);
    assert_eq!(claims_by_service(&store).await.1, 6);
    // one of a's tasks finished with an error meanwhile (its claim went with it)
    set(&store, &mine[..1], TaskStatus::Error).await;
    assert_eq!(claims_by_service(&store).await.0[&a.to_string()], 3);

    store.deregister_compute_service(&a).await.unwrap();
    assert_eq!(statuses(&store, &mine[1..]).await, vec![TaskStatus::Waiting; 3]);
    assert_eq!(status(&store, &mine[0]).await, TaskStatus::Error);
    assert_eq!(statuses(&store, &theirs).await, vec![TaskStatus::Running; 2]);
    let (by, total) = claims_by_service(&store).await;
    assert_eq!((by.len(), total), (1, 2));
    // the released tasks can be claimed again
    let again = keys(&claim(&store, &b, 5).await, 5);
    assert_eq!(set_of(&again), set_of(&mine[1..]));
});

store_test!(expiry_returns_running_tasks_to_waiting, |store| async move {
    let (net, _, tfs) = network(&store, "expire").await;
    let ts = tasks(&store, &tfs, 4).await;
    action(&store, &net, &ts).await;
    let (old, fresh, live) = (sid(1), sid(2), sid(3));
    let now = Utc::now();
    store.register_compute_service_at(&old, None, now - Duration::hours(2)).await.unwrap();
    store.register_compute_service_at(&fresh, None, now - Duration::minutes(10)).await.unwrap();
    store.register_compute_service(&live, None).await.unwrap();
    let held = keys(&claim(&store, &old, 3).await, 3);
    let other = keys(&claim(&store, &fresh, 1).await, 1);

    // nothing is stale yet for a one-day expiry
    assert!(store.expire_compute_services(86_400).await.unwrap().is_empty());
    // a heartbeat by anyone expires the stale registrations first (upstream behaviour)
    store.heartbeat_compute_service(&live, 1800).await.unwrap();
    let left: HashSet<ComputeServiceId> = store.list_compute_services().await.unwrap().into_iter().map(|s| s.identifier).collect();
    assert_eq!(left, HashSet::from([fresh.clone(), live.clone()]));
    assert_eq!(statuses(&store, &held).await, vec![TaskStatus::Waiting; 3]);
    assert_eq!(status(&store, &other[0]).await, TaskStatus::Running);
    assert_eq!(claims_by_service(&store).await.1, 1);
    // an expired service is told it is not registered, and gets no task (fix of Q8/Q9)
    let e = store.claim_tasks(&all(), &[], &old, 1, None, 600, 3).await.unwrap_err();
    assert_eq!(invalid(e), format!("compute service {old} is not registered"));
    // its heartbeat does not resurrect it
    store.heartbeat_compute_service(&old, 1800).await.unwrap();
    assert_eq!(store.list_compute_services().await.unwrap().len(), 2);

    // expiry alone (the reaper), with the expired ids
    let expired = store.expire_compute_services_at(300, Utc::now()).await.unwrap();
    assert_eq!(expired, vec![fresh.to_string()]);
    assert_eq!(status(&store, &other[0]).await, TaskStatus::Waiting);
    assert_eq!(claims_by_service(&store).await.1, 0);
    assert!(store.expire_compute_services(300).await.unwrap().is_empty());
});

store_test!(failures_deny_claims_until_forgiven, |store| async move {
    let (net, _, tfs) = network(&store, "fail").await;
    let ts = tasks(&store, &tfs, 8).await;
    action(&store, &net, &ts).await;
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();
    assert_eq!(store.compute_service_can_claim(&sid(9), 600, 3).await.unwrap(), None);
    assert_eq!(store.compute_service_can_claim(&s, 600, 3).await.unwrap(), Some(true));

    // three recent failures are still allowed (≤ max), the fourth denies
    let now = Utc::now();
    for (i, t) in ts[..3].iter().enumerate() {
        store.record_result_at(t, &result(i as u32, false, &s), now - Duration::seconds(100)).await.unwrap();
    }
    assert_eq!(store.compute_service_can_claim(&s, 600, 3).await.unwrap(), Some(true));
    assert!(matches!(store.claim_tasks(&all(), &[], &s, 1, None, 600, 3).await.unwrap(), ClaimOutcome::Claimed(_)));
    store.record_result_at(&ts[3], &result(3, false, &s), now - Duration::seconds(5)).await.unwrap();
    assert_eq!(store.compute_service_can_claim(&s, 600, 3).await.unwrap(), Some(false));
    assert_eq!(store.claim_tasks(&all(), &[], &s, 2, None, 600, 3).await.unwrap(), ClaimOutcome::Denied);
    // a stricter or laxer policy is the caller's
    assert_eq!(store.compute_service_can_claim(&s, 600, 4).await.unwrap(), Some(true));
    assert_eq!(store.list_compute_services().await.unwrap()[0].failures, 4);

    // failures older than the forgive window are dropped for good
    assert_eq!(store.compute_service_can_claim(&s, 50, 3).await.unwrap(), Some(true));
    assert_eq!(store.list_compute_services().await.unwrap()[0].failures, 1);
    assert_eq!(store.compute_service_can_claim(&s, 600, 0).await.unwrap(), Some(false));
    assert_eq!(store.compute_service_can_claim(&s, 600, 1).await.unwrap(), Some(true));
    let old = now - Duration::hours(1);
    for (i, t) in ts.iter().enumerate().skip(4) {
        store.record_result_at(t, &result(i as u32, false, &s), old).await.unwrap();
    }
    assert_eq!(store.list_compute_services().await.unwrap()[0].failures, 5);
    match store.claim_tasks(&all(), &[], &s, 1, None, 600, 3).await.unwrap() {
        ClaimOutcome::Claimed(v) => assert_eq!(v.len(), 1),
        ClaimOutcome::Denied => panic!("old failures must be forgiven"),
    }
    assert_eq!(store.list_compute_services().await.unwrap()[0].failures, 1);
});

// -- claiming -------------------------------------------------------

store_test!(unregistered_service_is_refused, |store| async move {
    let (net, hub, tfs) = network(&store, "unreg").await;
    let ts = tasks(&store, &tfs, 2).await;
    action(&store, &net, &ts).await;
    let s = sid(1);
    let msg = format!("compute service {s} is not registered");
    assert_eq!(invalid(store.claim_tasks(&all(), &[], &s, 1, None, 600, 3).await.unwrap_err()), msg);
    assert_eq!(invalid(store.claim_taskhub_tasks(&hub, &s, 1, None).await.unwrap_err()), msg);
    // nothing was claimed (upstream Q8 handed out the keys anyway)
    assert_eq!(statuses(&store, &ts).await, vec![TaskStatus::Waiting; 2]);
});

store_test!(claims_are_padded_to_count, |store| async move {
    let (net, hub, tfs) = network(&store, "pad").await;
    let ts = tasks(&store, &tfs, 2).await;
    action(&store, &net, &ts).await;
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();
    assert!(claim(&store, &s, 0).await.is_empty());
    let got = claim(&store, &s, 5).await;
    assert_eq!(set_of(&keys(&got, 5)), set_of(&ts));
    assert_eq!(got.iter().filter(|k| k.is_none()).count(), 3);
    assert_eq!(statuses(&store, &ts).await, vec![TaskStatus::Running; 2]);
    let (by, total) = claims_by_service(&store).await;
    assert_eq!((by[&s.to_string()], total), (2, 2));
    // nothing left: all None, on both routes
    assert_eq!(claim(&store, &s, 3).await, vec![None; 3]);
    assert_eq!(store.claim_taskhub_tasks(&hub, &s, 2, None).await.unwrap(), vec![None; 2]);
    // an empty search space claims nothing
    assert_eq!(store.claim_tasks(&[], &[], &s, 2, None, 600, 3).await.unwrap(), ClaimOutcome::Claimed(vec![None; 2]));
    // an unbounded count is refused rather than allocated
    let too_many = MAX_CLAIM_COUNT + 1;
    assert!(matches!(store.claim_tasks(&all(), &[], &s, too_many, None, 600, 3).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.claim_taskhub_tasks(&hub, &s, usize::MAX, None).await, Err(StoreError::Invalid(_))));
    assert_eq!(claim(&store, &s, MAX_CLAIM_COUNT).await.len(), MAX_CLAIM_COUNT);
});

store_test!(claims_are_logged_for_result_submission, |store| async move {
    let (net, hub, tfs) = network(&store, "log").await;
    let ts = tasks(&store, &tfs, 3).await;
    action(&store, &net, &ts).await;
    let (a, b) = (sid(1), sid(2));
    store.register_compute_service(&a, None).await.unwrap();
    store.register_compute_service(&b, None).await.unwrap();
    let first = keys(&claim(&store, &a, 1).await, 1).remove(0);
    let second = keys(&store.claim_taskhub_tasks(&hub, &b, 1, None).await.unwrap(), 1).remove(0);
    store.check_result_submitter(&first, &a.to_string()).await.unwrap();
    store.check_result_submitter(&second, &b.to_string()).await.unwrap();
    assert!(matches!(store.check_result_submitter(&first, &b.to_string()).await, Err(StoreError::Conflict(_))));
    // the log outlives the claim (expiry, deregistration) …
    store.deregister_compute_service(&a).await.unwrap();
    assert_eq!(status(&store, &first).await, TaskStatus::Waiting);
    store.check_result_submitter(&first, &a.to_string()).await.unwrap();
    // … and a task claimed again by someone else is logged for both
    let again = keys(&claim(&store, &b, 2).await, 2);
    assert!(again.contains(&first));
    store.check_result_submitter(&first, &b.to_string()).await.unwrap();
    store.check_result_submitter(&first, &a.to_string()).await.unwrap();
    // … and a claim that ends by a status change (here: errored) is remembered too
    store.set_task_status(&[Some(first.clone())], TaskStatus::Error, true).await.unwrap();
    store.check_result_submitter(&first, &b.to_string()).await.unwrap();
    assert!(matches!(store.check_result_submitter(&second, &a.to_string()).await, Err(StoreError::Conflict(_))));
});

store_test!(claim_from_a_specific_hub, |store| async move {
    let (net_a, hub_a, tfs_a) = network(&store, "hubA").await;
    let (net_b, hub_b, tfs_b) = network(&store, "hubB").await;
    let ta = tasks(&store, &tfs_a, 4).await;
    let tb = tasks(&store, &tfs_b, 4).await;
    action(&store, &net_a, &ta).await;
    action(&store, &net_b, &tb).await;
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();

    let got = keys(&store.claim_taskhub_tasks(&hub_b, &s, 3, None).await.unwrap(), 3);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|k| tb.contains(k)));
    let rest = keys(&store.claim_taskhub_tasks(&hub_b, &s, 3, None).await.unwrap(), 3);
    assert_eq!(rest.len(), 1);
    assert_eq!(set_of(&[got, rest].concat()), set_of(&tb));
    assert_eq!(statuses(&store, &ta).await, vec![TaskStatus::Waiting; 4]);

    // unknown hubs and keys that are not hubs yield only None
    let missing: ScopedKey = format!("TaskHub-00000000000000000000000000000000-{}", scope()).parse().unwrap();
    assert_eq!(store.claim_taskhub_tasks(&missing, &s, 2, None).await.unwrap(), vec![None; 2]);
    let elsewhere: ScopedKey = format!("{}-o-c-p", hub_a.gufe_key()).parse().unwrap();
    assert_eq!(store.claim_taskhub_tasks(&elsewhere, &s, 1, None).await.unwrap(), vec![None]);
    assert_eq!(store.claim_taskhub_tasks(&net_a, &s, 1, None).await.unwrap(), vec![None]);
    assert_eq!(statuses(&store, &ta).await, vec![TaskStatus::Waiting; 4]);
});

store_test!(most_urgent_priority_groups_first, |store| async move {
    let (net, hub, tfs) = network(&store, "prio").await;
    let ts = tasks(&store, &tfs, 12).await;
    action(&store, &net, &ts).await;
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();

    // count 1 with a unique most urgent task: always that task, on both routes
    store.set_task_priority(&some(&ts[5..6]), 1).await.unwrap();
    for round in 0..10 {
        let got = if round % 2 == 0 { claim(&store, &s, 1).await } else { store.claim_taskhub_tasks(&hub, &s, 1, None).await.unwrap() };
        assert_eq!(got, vec![Some(ts[5].clone())]);
        set(&store, &ts[5..6], TaskStatus::Waiting).await;
    }

    // groups: p1 = {0, 1}, p5 = {2, 3, 4, 5, 6}, p10 = the rest
    store.set_task_priority(&some(&ts[0..2]), 1).await.unwrap();
    store.set_task_priority(&some(&ts[2..7]), 5).await.unwrap();
    for _ in 0..5 {
        let got = keys(&claim(&store, &s, 4).await, 4);
        assert_eq!(got.len(), 4);
        assert!(got.contains(&ts[0]) && got.contains(&ts[1]), "{got:?}");
        assert_eq!(got.iter().filter(|k| ts[2..7].contains(k)).count(), 2);
        set(&store, &got, TaskStatus::Waiting).await;
    }
    // whole groups that fit are taken: 1 + 5 + 3 of the ten-priority group
    let got = keys(&store.claim_taskhub_tasks(&hub, &s, 10, None).await.unwrap(), 10);
    assert!(set_of(&ts[0..7]).is_subset(&set_of(&got)));
    assert_eq!(got.len(), 10);
    let last = keys(&claim(&store, &s, 10).await, 10);
    assert_eq!(last.len(), 2);
    assert_eq!(set_of(&[got, last].concat()), set_of(&ts));
});

store_test!(actions_weights_drive_the_choice, |store| async move {
    let (net, hub, tfs) = network(&store, "wsample").await;
    let ts = tasks(&store, &tfs, 4).await;
    store.action_tasks(&net, &some(&ts), Some(Weights::Each(vec![1.0, 1.0, 0.001, 0.0]))).await.unwrap();
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();
    let mut rare = 0;
    for round in 0..40 {
        // single draws and multi-task samples, through both routes
        let count = 1 + round % 2;
        let got =
            if round % 4 < 2 { claim(&store, &s, count).await } else { store.claim_taskhub_tasks(&hub, &s, count, None).await.unwrap() };
        let got = keys(&got, count);
        assert_eq!(got.len(), count);
        assert!(!got.contains(&ts[3]), "a weight-0 task was claimed");
        rare += got.iter().filter(|k| **k == ts[2]).count();
        set(&store, &got, TaskStatus::Waiting).await;
    }
    assert!(rare <= 3, "a task with weight 0.001 was drawn {rare} times in 40 rounds");
    // when it is the only candidate left with weight > 0 it is taken; weight 0 never is
    let got = keys(&claim(&store, &s, 4).await, 4);
    assert_eq!(set_of(&got), set_of(&ts[..3]));
    assert_eq!(status(&store, &ts[3]).await, TaskStatus::Waiting);
    assert_eq!(store.claim_taskhub_tasks(&hub, &s, 1, None).await.unwrap(), vec![None]);
});

store_test!(a_returned_task_rejoins_the_race, |store| async move {
    // claims read a queue of pre-drawn ranks (claim_rank.rs): a task set back to waiting
    // must get a fresh draw, not keep the head of the queue
    let (net, _hub, tfs) = network(&store, "rejoin").await;
    let ts = tasks(&store, &tfs, 2).await;
    action(&store, &net, &ts).await;
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();
    let mut last = None;
    let mut repeats = 0;
    for _ in 0..80 {
        let got = keys(&claim(&store, &s, 1).await, 1);
        assert_eq!(got.len(), 1);
        if last.as_ref() == Some(&got[0]) {
            repeats += 1;
        }
        set(&store, &got, TaskStatus::Waiting).await;
        last = Some(got[0].clone());
    }
    // equal weights: the returned task is drawn again about half of the time
    assert!((15..=64).contains(&repeats), "the returned task was drawn again in {repeats} of 79 rounds");
});

store_test!(hub_weights_drive_the_choice, |store| async move {
    let (net_a, _, tfs_a) = network(&store, "heavy").await;
    let (net_b, hub_b, tfs_b) = network(&store, "light").await;
    let (net_z, hub_z, tfs_z) = network(&store, "zero").await;
    let ta = tasks(&store, &tfs_a, 60).await;
    let tb = tasks(&store, &tfs_b, 60).await;
    let tz = tasks(&store, &tfs_z, 10).await;
    action(&store, &net_a, &ta).await;
    action(&store, &net_b, &tb).await;
    action(&store, &net_z, &tz).await;
    store.set_network_weights(&[(net_a.clone(), 1.0), (net_b.clone(), 0.1), (net_z.clone(), 0.0)]).await.unwrap();
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();
    let mut from_a = 0;
    for _ in 0..50 {
        let got = keys(&claim(&store, &s, 1).await, 1);
        assert_eq!(got.len(), 1);
        assert!(!tz.contains(&got[0]), "claimed from a weight-0 hub");
        from_a += ta.contains(&got[0]) as usize;
    }
    assert!(from_a >= 35, "hub weights 1.0 : 0.1, yet only {from_a} of 50 claims came from the heavy hub");
    // a weight-0 hub is never picked, even when it is all that is left…
    let rest = keys(&claim(&store, &s, 200).await, 200);
    assert_eq!(rest.len(), 70);
    assert!(rest.iter().all(|k| !tz.contains(k)));
    assert_eq!(claim(&store, &s, 2).await, vec![None; 2]);
    // …and a hub set to 0 stops at once, although a hub pool may still list it
    store.set_network_weights(&[(net_z.clone(), 1.0)]).await.unwrap();
    assert_eq!(keys(&claim(&store, &s, 2).await, 2).len(), 2);
    store.set_network_weights(&[(net_z.clone(), 0.0)]).await.unwrap();
    assert_eq!(claim(&store, &s, 3).await, vec![None; 3]);
    // naming the hub claims regardless of its weight (only ACTIONS weights count there)
    assert_eq!(keys(&store.claim_taskhub_tasks(&hub_z, &s, 3, None).await.unwrap(), 3).len(), 3);
    assert_eq!(store.claim_taskhub_tasks(&hub_b, &s, 1, None).await.unwrap(), vec![None]);
});

store_test!(extending_tasks_wait_for_their_parents, |store| async move {
    let (net, hub, tfs) = network(&store, "chain").await;
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();
    let root = tasks(&store, &tfs[..1], 1).await.remove(0);
    let mut layers = vec![vec![root.clone()]];
    for _ in 0..2 {
        let parent = layers.last().unwrap()[0].clone();
        let reqs: Vec<TaskRequest> =
            (0..2).map(|_| TaskRequest { transformation: tfs[0].clone(), extends: Some(parent.clone()) }).collect();
        layers.push(store.create_tasks(&reqs, None).await.unwrap());
    }
    let everything: Vec<ScopedKey> = layers.concat();
    action(&store, &net, &everything).await;
    assert_eq!(store.count_claimable_tasks(&all(), &[]).await.unwrap(), 1);

    for (i, layer) in layers.iter().enumerate() {
        let got = keys(&claim(&store, &s, 5).await, 5);
        assert_eq!(set_of(&got), set_of(layer), "layer {i}");
        // a failed parent does not unblock its children
        store.record_result(&layer[0], &result(100 + i as u32, false, &sid(7))).await.unwrap();
        set(&store, &layer[..1], TaskStatus::Waiting).await;
        assert_eq!(
            store.claim_taskhub_tasks(&hub, &s, 5, None).await.unwrap().iter().flatten().cloned().collect::<Vec<_>>(),
            vec![layer[0].clone()]
        );
        // completing the first task of the layer unblocks the next layer
        store.record_result(&layer[0], &result(i as u32, true, &s)).await.unwrap();
        assert_eq!(status(&store, &layer[0]).await, TaskStatus::Complete);
    }
    assert_eq!(claim(&store, &s, 1).await, vec![None]);
});

// On PostgreSQL a claim starts reading a hub's queue where the last claim's select began (a
// start hint; see the store's `claim_select`). Tasks ranked before the hint that become
// claimable later must still be claimed before any claim comes back short.
store_test!(a_claim_reads_the_whole_queue_before_coming_back_short, |store| async move {
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();
    for (i, across_scopes) in [false, true].into_iter().enumerate() {
        let (net, hub, tfs) = network(&store, &format!("hint{i}")).await;
        let parent = tasks(&store, &tfs[..1], 1).await.remove(0);
        let reqs: Vec<TaskRequest> =
            (0..20).map(|_| TaskRequest { transformation: tfs[0].clone(), extends: Some(parent.clone()) }).collect();
        let children = store.create_tasks(&reqs, None).await.unwrap();
        action(&store, &net, &[vec![parent.clone()], children.clone()].concat()).await;
        // the parent is the only claimable task; about half of its children rank before it
        assert_eq!(keys(&store.claim_taskhub_tasks(&hub, &s, 1, None).await.unwrap(), 1), vec![parent.clone()]);
        store.record_result(&parent, &result(i as u32, true, &s)).await.unwrap();
        let got = match across_scopes {
            false => store.claim_taskhub_tasks(&hub, &s, 21, None).await.unwrap(),
            true => claim(&store, &s, 21).await,
        };
        assert_eq!(set_of(&keys(&got, 21)), set_of(&children), "claimed across scopes: {across_scopes}");
    }
});

store_test!(protocol_filter, |store| async move {
    let other_text = network_chain_json(4, 4, "otherproto").replace("SyntheticProtocol", "OtherProtocol");
    let created = store.create_network(&chain_of(&other_text), &scope(), NetworkState::Active).await.unwrap();
    let other_tfs = store.network_transformations(&created.network).await.unwrap();
    let (net, hub, tfs) = network(&store, "synthproto").await;
    let synth = tasks(&store, &tfs, 3).await;
    let other = tasks(&store, &other_tfs, 3).await;
    action(&store, &net, &synth).await;
    action(&store, &created.network, &other).await;
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();

    let p = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    // validation
    for bad in [p(&[]), p(&["9Bad"]), p(&["Has-Hyphen"]), p(&["OK", "with space"])] {
        assert!(matches!(store.claim_tasks(&all(), &[], &s, 1, Some(&bad), 600, 3).await, Err(StoreError::Invalid(_))), "{bad:?}");
        assert!(matches!(store.claim_taskhub_tasks(&hub, &s, 1, Some(&bad)).await, Err(StoreError::Invalid(_))), "{bad:?}");
    }
    assert_eq!(
        invalid(store.claim_taskhub_tasks(&hub, &s, 1, Some(&p(&["a.b"]))).await.unwrap_err()),
        "Invalid `Protocol` name among `protocols`"
    );
    assert!(matches!(store.count_claimable_tasks(&all(), &p(&["a b"])).await, Err(StoreError::Invalid(_))));

    assert_eq!(store.count_claimable_tasks(&all(), &[]).await.unwrap(), 6);
    assert_eq!(store.count_claimable_tasks(&all(), &p(&["OtherProtocol"])).await.unwrap(), 3);
    assert_eq!(store.count_claimable_tasks(&all(), &p(&["Nope", "SyntheticProtocol"])).await.unwrap(), 3);

    let f = p(&["OtherProtocol", "Unrelated"]);
    let got = match store.claim_tasks(&all(), &[], &s, 10, Some(&f), 600, 3).await.unwrap() {
        ClaimOutcome::Claimed(v) => keys(&v, 10),
        ClaimOutcome::Denied => panic!(),
    };
    assert_eq!(set_of(&got), set_of(&other));
    assert_eq!(store.claim_taskhub_tasks(&hub, &s, 2, Some(&p(&["OtherProtocol"]))).await.unwrap(), vec![None; 2]);
    let got = keys(&store.claim_taskhub_tasks(&hub, &s, 2, Some(&p(&["SyntheticProtocol"]))).await.unwrap(), 2);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|k| synth.contains(k)));
});

store_test!(scopes_and_exclusions, |store| async move {
    let s1: Scope = "orgA-camp1-proj1".parse().unwrap();
    let s2: Scope = "orgA-camp2-proj1".parse().unwrap();
    let s3: Scope = "orgB-camp1-proj1".parse().unwrap();
    let mut by_scope = Vec::new();
    for (i, sc) in [&s1, &s2, &s3].into_iter().enumerate() {
        let (net, _, tfs) = network_in(&store, sc, &format!("scoped{i}"), 2).await;
        let ts = tasks(&store, &tfs, 3).await;
        action(&store, &net, &ts).await;
        by_scope.push(ts);
    }
    let s = sid(1);
    store.register_compute_service(&s, None).await.unwrap();
    let claim_in = |scopes: Vec<Scope>, exclude: Vec<Scope>| {
        let store = store.clone();
        let s = s.clone();
        async move {
            match store.claim_tasks(&scopes, &exclude, &s, 20, None, 600, 3).await.unwrap() {
                ClaimOutcome::Claimed(v) => set_of(&keys(&v, 20)),
                ClaimOutcome::Denied => panic!(),
            }
        }
    };
    let org_a: Scope = "orgA-*-*".parse().unwrap();
    assert_eq!(store.count_claimable_tasks(std::slice::from_ref(&org_a), &[]).await.unwrap(), 6);
    assert_eq!(store.count_claimable_tasks(&[s1.clone(), s3.clone(), org_a.clone()], &[]).await.unwrap(), 9);

    // everything in orgA except campaign 2
    let got = claim_in(vec![org_a.clone()], vec!["orgA-camp2-*".parse().unwrap()]).await;
    assert_eq!(got, set_of(&by_scope[0]));
    // excluding everything claims nothing
    assert!(claim_in(all(), all()).await.is_empty());
    // an exclusion that covers no hub changes nothing
    let got = claim_in(vec![s3.clone(), s2.clone()], vec!["orgC-*-*".parse().unwrap()]).await;
    assert_eq!(got, set_of(&[by_scope[1].clone(), by_scope[2].clone()].concat()));
    assert!(claim_in(all(), vec![]).await.is_empty());
});

/// Many services draining many hubs at once: every task is claimed exactly once.
async fn concurrent_claimers(store: Store) {
    const CLAIMERS: usize = 32;
    // 6 networks × 50 tasks; networks 0–2 have twins sharing their transformations, so
    // every task of those is actioned on two hubs (claims race across hubs too)
    let mut all_tasks = Vec::new();
    for i in 0..3 {
        let text = network_chain_json(4, 10, &format!("conc{i}"));
        let root = chain_of(&text).root().key.to_string();
        let twin = text.replace(&root, &format!("AlchemicalNetwork-{:032x}", i + 1));
        let a = store.create_network(&chain_of(&text), &scope(), NetworkState::Active).await.unwrap();
        let b = store.create_network(&chain_of(&twin), &scope(), NetworkState::Active).await.unwrap();
        let tfs = store.network_transformations(&a.network).await.unwrap();
        let ts = tasks(&store, &tfs, 50).await;
        action(&store, &a.network, &ts).await;
        action(&store, &b.network, &ts).await;
        all_tasks.extend(ts);
    }
    for i in 3..6 {
        let (net, _, tfs) = network_in(&store, &scope(), &format!("conc{i}"), 10).await;
        let ts = tasks(&store, &tfs, 50).await;
        action(&store, &net, &ts).await;
        all_tasks.extend(ts);
    }
    assert_eq!(all_tasks.len(), 300);
    let hubs: Vec<ScopedKey> = store.query_taskhubs(&all()).await.unwrap().into_iter().map(|(h, _, _)| h).collect();
    assert_eq!(hubs.len(), 9);

    let mut handles = Vec::new();
    for c in 0..CLAIMERS {
        let store = store.clone();
        let hubs = hubs.clone();
        handles.push(tokio::spawn(async move {
            let me = sid(100 + c);
            store.register_compute_service(&me, None).await.unwrap();
            let mut mine = Vec::new();
            let mut empty_in_a_row = 0;
            let mut round = 0usize;
            while empty_in_a_row < 3 {
                round += 1;
                let count = 1 + (c + round) % 3;
                let named_hub = (c + round).is_multiple_of(4);
                let answer = if named_hub {
                    store.claim_taskhub_tasks(&hubs[(c + round) % hubs.len()], &me, count, None).await.unwrap()
                } else {
                    match store.claim_tasks(&all(), &[], &me, count, None, 600, 3).await.unwrap() {
                        ClaimOutcome::Claimed(v) => v,
                        ClaimOutcome::Denied => panic!("denied"),
                    }
                };
                let got = keys(&answer, count);
                if got.is_empty() && !named_hub {
                    empty_in_a_row += 1;
                    tokio::task::yield_now().await;
                } else if !got.is_empty() {
                    empty_in_a_row = 0;
                }
                mine.extend(got);
            }
            (me, mine)
        }));
    }
    let mut seen: HashMap<ScopedKey, ComputeServiceId> = HashMap::new();
    let mut per_service = HashMap::new();
    for h in handles {
        let (me, mine) = h.await.unwrap();
        per_service.insert(me.to_string(), mine.len() as i64);
        for t in mine {
            if let Some(first) = seen.insert(t.clone(), me.clone()) {
                panic!("task {t} was claimed by both {first} and {me}");
            }
        }
    }
    // no duplicates, no losses
    assert_eq!(seen.len(), 300);
    assert_eq!(set_of(&seen.keys().cloned().collect::<Vec<_>>()), set_of(&all_tasks));
    assert_eq!(statuses(&store, &all_tasks).await, vec![TaskStatus::Running; 300]);
    // task_claim rows == running tasks, each held by the service that was told
    let (by, total) = claims_by_service(&store).await;
    assert_eq!(total, 300);
    for (svc, n) in per_service {
        assert_eq!(by[&svc], n, "{svc}");
    }
    assert!(store.count_claimable_tasks(&all(), &[]).await.unwrap() == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_sqlite() {
    let ts = alchemiscale_store::testing::sqlite().await;
    concurrent_claimers(ts.store.clone()).await;
    ts.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_postgres() {
    let Some(location) = alchemiscale_store::testing::postgres_location().await else {
        eprintln!("note: PostgreSQL test skipped (set ALCHEMISCALE_TEST_POSTGRES_URL to run it)");
        return;
    };
    // enough connections for the claimers to really run side by side
    let store = Store::connect(&location, &StoreOptions { max_connections: 16, ..Default::default() }).await.unwrap();
    store.init().await.unwrap();
    concurrent_claimers(store.clone()).await;
    store.close().await;
}

store_test!(concurrent_requests_get_their_own_answers, |store| async move {
    // concurrent claims are combined into shared transactions; each still gets its own
    // answer: not registered, denied, or its tasks
    let (net, _, tfs) = network(&store, "mixed").await;
    let ts = tasks(&store, &tfs, 40).await;
    action(&store, &net, &ts).await;
    let (ok, denied, unknown) = (sid(1), sid(2), sid(3));
    store.register_compute_service(&ok, None).await.unwrap();
    store.register_compute_service(&denied, None).await.unwrap();
    for i in 0..4 {
        store.record_result(&ts[39], &result(i, false, &denied)).await.unwrap();
    }
    let mut handles = Vec::new();
    for i in 0..30 {
        let store = store.clone();
        let me = [&ok, &denied, &unknown][i % 3].clone();
        handles.push(tokio::spawn(async move { (me.clone(), store.claim_tasks(&all(), &[], &me, 1 + i % 2, None, 600, 3).await) }));
    }
    let mut got = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            (me, Ok(ClaimOutcome::Claimed(v))) if me == ok => got.extend(v.into_iter().flatten()),
            (me, Ok(ClaimOutcome::Denied)) if me == denied => {}
            (me, Err(StoreError::Invalid(m))) if me == unknown => assert_eq!(m, format!("compute service {unknown} is not registered")),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(got.len(), 15); // 10 requests for 1 task, 5 for 2... from service `ok` (i % 3 == 0)
    assert_eq!(set_of(&got).len(), got.len());
    let (by, total) = claims_by_service(&store).await;
    assert_eq!((by[&ok.to_string()], total), (15, 15));
});

store_test!(cancelled_claimers_leave_consistent_claims, |store| async move {
    let (net, _, tfs) = network(&store, "cancel").await;
    let ts = tasks(&store, &tfs, 120).await;
    action(&store, &net, &ts).await;
    let mut handles = Vec::new();
    for c in 0..24 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let me = sid(200 + c);
            store.register_compute_service(&me, None).await.unwrap();
            let mut mine = Vec::new();
            loop {
                match store.claim_tasks(&all(), &[], &me, 2, None, 600, 3).await.unwrap() {
                    ClaimOutcome::Claimed(v) if v.iter().all(Option::is_none) => break,
                    ClaimOutcome::Claimed(v) => mine.extend(v.into_iter().flatten()),
                    ClaimOutcome::Denied => panic!("denied"),
                }
            }
            mine
        }));
    }
    // abort every other claimer at some point in its work (possibly mid-batch)
    for (i, h) in handles.iter().enumerate() {
        if i % 2 == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            h.abort();
        }
    }
    let mut told = Vec::new();
    for h in handles {
        if let Ok(mine) = h.await {
            told.extend(mine);
        }
    }
    // the survivors drained the hub; nobody was told a task twice; every running task has
    // exactly one claim (claims of aborted callers were committed or rolled back whole)
    assert_eq!(set_of(&told).len(), told.len());
    let running = statuses(&store, &ts).await.into_iter().filter(|s| *s == TaskStatus::Running).count();
    assert_eq!(claims_by_service(&store).await.1, running as i64);
    assert_eq!(running + statuses(&store, &ts).await.into_iter().filter(|s| *s == TaskStatus::Waiting).count(), 120);
    // nothing is left waiting: whatever an aborted claimer did not commit was claimed by others
    assert_eq!(running, 120);
    assert!(told.iter().all(|t| ts.contains(t)));
});

store_test!(deleted_and_invalid_networks_are_not_claimed, |store| async move {
    use alchemiscale_model::NetworkState;
    let chain = alchemiscale_model::chain::KeyedChain::from_value(
        alchemiscale_model::json::parse(&alchemiscale_model::synthetic::network_chain_json(3, 2, "state")).unwrap(),
    )
    .unwrap();
    let scope: alchemiscale_model::Scope = "st-c-p".parse().unwrap();
    let net = store.create_network(&chain, &scope, NetworkState::Active).await.unwrap().network;
    let tfs = store.network_transformations(&net).await.unwrap();
    let reqs: Vec<_> =
        (0..4).map(|i| alchemiscale_store::tasks::TaskRequest { transformation: tfs[i % 2].clone(), extends: None }).collect();
    let tasks = store.create_tasks(&reqs, None).await.unwrap();
    store.action_tasks(&net, &tasks.iter().cloned().map(Some).collect::<Vec<_>>(), None).await.unwrap();
    let id: alchemiscale_model::ComputeServiceId = "state-0123456789abcdef0123456789abcdef".parse().unwrap();
    store.register_compute_service(&id, None).await.unwrap();
    let claim = |n| {
        let (store, scope, id) = (store.clone(), scope.clone(), id.clone());
        async move {
            match store.claim_tasks(&[scope], &[], &id, n, None, 600, 3).await.unwrap() {
                alchemiscale_store::compute::ClaimOutcome::Claimed(v) => v.into_iter().flatten().count(),
                other => panic!("{other:?}"),
            }
        }
    };
    for state in [NetworkState::Deleted, NetworkState::Invalid] {
        store.set_network_states(&[(net.clone(), state)]).await.unwrap();
        assert_eq!(claim(4).await, 0, "{state}");
        assert_eq!(store.count_claimable_tasks(std::slice::from_ref(&scope), &[]).await.unwrap(), 0);
    }
    store.set_network_states(&[(net.clone(), NetworkState::Inactive)]).await.unwrap();
    assert_eq!(store.count_claimable_tasks(std::slice::from_ref(&scope), &[]).await.unwrap(), 4);
    assert_eq!(claim(1).await, 1, "inactive networks are still computed");
    store.set_network_states(&[(net.clone(), NetworkState::Active)]).await.unwrap();
    assert_eq!(claim(4).await, 3);
});

store_test!(concurrent_hub_claims_get_their_own_answers, |store| async move {
    // concurrent C10 claims on one hub are combined too; each gets its own answer
    let (net, hub, tfs) = network(&store, "hubmixed").await;
    let ts = tasks(&store, &tfs, 40).await;
    action(&store, &net, &ts).await;
    let (ok, unknown) = (sid(11), sid(13));
    store.register_compute_service(&ok, None).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..30 {
        let (store, hub) = (store.clone(), hub.clone());
        let me = if i % 3 == 0 { unknown.clone() } else { ok.clone() };
        handles.push(tokio::spawn(async move { (me.clone(), 1 + i % 2, store.claim_taskhub_tasks(&hub, &me, 1 + i % 2, None).await) }));
    }
    let mut got = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            (me, count, Ok(v)) if me == ok => {
                assert_eq!(v.len(), count);
                assert!(v.iter().all(Option::is_some), "40 tasks are enough for every request: {v:?}");
                got.extend(v.into_iter().flatten());
            }
            (me, _, Err(StoreError::Invalid(m))) if me == unknown => assert_eq!(m, format!("compute service {unknown} is not registered")),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let expected: usize = (0..30).filter(|i| i % 3 != 0).map(|i| 1 + i % 2).sum();
    assert_eq!(got.len(), expected);
    assert_eq!(set_of(&got).len(), got.len(), "no task handed out twice");
    let (by, total) = claims_by_service(&store).await;
    assert_eq!((by[&ok.to_string()], total), (expected as i64, expected as i64));
    assert_eq!(statuses(&store, &got).await, vec![TaskStatus::Running; expected]);
});
