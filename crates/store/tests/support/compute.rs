//! Helpers shared by the store's compute-service, claiming and compute-manager tests.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{ComputeManagerId, ComputeServiceId, NetworkState, Scope, ScopedKey, TaskStatus};
use alchemiscale_store::compute::ClaimOutcome;
use alchemiscale_store::results::RecordedResult;
use alchemiscale_store::tasks::TaskRequest;
use alchemiscale_store::{Store, StoreError};

use crate::common::*;

pub fn scope() -> Scope {
    "corg-ccampaign-cproject".parse().unwrap()
}

pub fn all() -> Vec<Scope> {
    vec![Scope::all()]
}

/// A network with `n_tf` transformations in `scope`: (network, hub, transformations).
pub async fn network_in(store: &Store, scope: &Scope, tag: &str, n_tf: usize) -> (ScopedKey, ScopedKey, Vec<ScopedKey>) {
    let created = store.create_network(&chain_of(&network_chain_json(4, n_tf, tag)), scope, NetworkState::Active).await.unwrap();
    let mut tfs = store.network_transformations(&created.network).await.unwrap();
    tfs.sort();
    (created.network, created.taskhub, tfs)
}

pub async fn network(store: &Store, tag: &str) -> (ScopedKey, ScopedKey, Vec<ScopedKey>) {
    network_in(store, &scope(), tag, 4).await
}

/// `n` tasks per transformation (round robin over `tfs`).
pub async fn tasks(store: &Store, tfs: &[ScopedKey], n: usize) -> Vec<ScopedKey> {
    let reqs: Vec<TaskRequest> = (0..n).map(|i| TaskRequest { transformation: tfs[i % tfs.len()].clone(), extends: None }).collect();
    store.create_tasks(&reqs, Some("alice")).await.unwrap()
}

pub fn some(ts: &[ScopedKey]) -> Vec<Option<ScopedKey>> {
    ts.iter().cloned().map(Some).collect()
}

pub async fn action(store: &Store, network: &ScopedKey, ts: &[ScopedKey]) {
    assert_eq!(store.action_tasks(network, &some(ts), None).await.unwrap(), some(ts));
}

pub async fn status(store: &Store, task: &ScopedKey) -> TaskStatus {
    store.get_task_status(&[Some(task.clone())]).await.unwrap()[0].unwrap()
}

pub async fn statuses(store: &Store, ts: &[ScopedKey]) -> Vec<TaskStatus> {
    store.get_task_status(&some(ts)).await.unwrap().into_iter().map(Option::unwrap).collect()
}

pub async fn set(store: &Store, ts: &[ScopedKey], s: TaskStatus) {
    assert_eq!(store.set_task_status(&some(ts), s, true).await.unwrap(), some(ts));
}

pub fn sid(n: usize) -> ComputeServiceId {
    format!("svc{n}-{:032x}", n + 1).parse().unwrap()
}

pub fn mid(name: &str, n: u128) -> ComputeManagerId {
    format!("{name}-{:032x}", n + 1).parse().unwrap()
}

/// Claim across all scopes (no exclusions, no protocol filter, lenient failure policy).
pub async fn claim(store: &Store, service: &ComputeServiceId, count: usize) -> Vec<Option<ScopedKey>> {
    match store.claim_tasks(&all(), &[], service, count, None, 600, 3).await.unwrap() {
        ClaimOutcome::Claimed(v) => v,
        ClaimOutcome::Denied => panic!("claim denied"),
    }
}

/// The claimed keys of a claim answer, checking its shape: exactly `count` entries,
/// keys first, then `None`s.
pub fn keys(answer: &[Option<ScopedKey>], count: usize) -> Vec<ScopedKey> {
    assert_eq!(answer.len(), count);
    let n = answer.iter().take_while(|k| k.is_some()).count();
    assert!(answer[n..].iter().all(Option::is_none), "claimed keys must come first: {answer:?}");
    answer[..n].iter().cloned().map(Option::unwrap).collect()
}

pub fn set_of(ts: &[ScopedKey]) -> HashSet<ScopedKey> {
    ts.iter().cloned().collect()
}

pub fn result(n: u32, ok: bool, creator: &ComputeServiceId) -> RecordedResult {
    let obj_key = format!("ProtocolDAGResult-{n:032x}");
    RecordedResult {
        location: format!("protocoldagresult/corg/ccampaign/cproject/x/{obj_key}/obj.json.zst"),
        obj_key,
        ok,
        content_sha256: format!("{n:064x}"),
        size: 10,
        creator: Some(creator.to_string()),
        tracebacks: None,
    }
}

/// Claims held per service identifier, and the total number of claim rows.
pub async fn claims_by_service(store: &Store) -> (HashMap<String, i64>, i64) {
    let list = store.list_compute_services().await.unwrap();
    let total = list.iter().map(|s| s.claimed_tasks).sum();
    (list.into_iter().map(|s| (s.identifier.to_string(), s.claimed_tasks)).collect(), total)
}

pub fn invalid(e: StoreError) -> String {
    match e {
        StoreError::Invalid(m) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}
