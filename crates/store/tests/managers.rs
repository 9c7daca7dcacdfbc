//! Compute managers in the store: registration and steal,
//! status validation and expiry, instructions.

mod common;
#[path = "support/compute.rs"]
mod support;

use alchemiscale_model::status::ComputeManagerStatus;
use alchemiscale_store::managers::{parse_compute_manager_status, ManagerInstruction, MANAGER_NOT_FOUND};
use alchemiscale_store::tasks::{TaskRequest, Weights};
use alchemiscale_store::{store_test, StoreError};
use chrono::{DateTime, Duration, Utc};
use support::*;

store_test!(manager_registration_steal_and_deregistration, |store| async move {
    let m1 = mid("mgr", 1);
    let m2 = mid("mgr", 2);
    store.register_compute_manager(&m1, false).await.unwrap();
    let info = store.get_compute_manager("mgr").await.unwrap().unwrap();
    assert_eq!(
        (info.id.clone(), info.status, info.detail.as_deref(), info.saturation),
        (m1.clone(), ComputeManagerStatus::Ok, Some(""), Some(0.0))
    );
    assert_eq!(info.registered, info.last_status_update);

    // same name, any uuid: refused with the status
    let msg = "ComputeManager with this name is already registered with status OK";
    assert_eq!(invalid(store.register_compute_manager(&m2, false).await.unwrap_err()), msg);
    assert_eq!(invalid(store.register_compute_manager(&m1, false).await.unwrap_err()), msg);
    // steal replaces an OK registration
    store.register_compute_manager(&m2, true).await.unwrap();
    assert_eq!(store.get_compute_manager("mgr").await.unwrap().unwrap().id, m2);
    // deregistering the stolen id is a no-op; the owner's works
    store.deregister_compute_manager(&m1).await.unwrap();
    assert!(store.get_compute_manager("mgr").await.unwrap().is_some());
    store.deregister_compute_manager(&m2).await.unwrap();
    assert!(store.get_compute_manager("mgr").await.unwrap().is_none());
    store.deregister_compute_manager(&m2).await.unwrap();
    // steal with nothing registered just registers (upstream: server error)
    store.register_compute_manager(&m1, true).await.unwrap();

    // an ERROR registration can be neither stolen nor deregistered, only cleared
    store.update_compute_manager_status(&m1, ComputeManagerStatus::Error, Some("boom"), None, 3600, 86400).await.unwrap();
    let err_msg = "ComputeManager with this name is already registered with status ERROR";
    assert_eq!(invalid(store.register_compute_manager(&m2, true).await.unwrap_err()), err_msg);
    store.deregister_compute_manager(&m1).await.unwrap();
    let info = store.get_compute_manager("mgr").await.unwrap().unwrap();
    assert_eq!((info.status, info.detail.as_deref(), info.saturation), (ComputeManagerStatus::Error, Some("boom"), None));
    let clear_msg = "Could not find an ERROR compute manager with the provided name and UUID";
    assert_eq!(invalid(store.clear_compute_manager_error("other").await.unwrap_err()), clear_msg);
    store.clear_compute_manager_error("mgr").await.unwrap();
    assert!(store.list_compute_managers().await.unwrap().is_empty());
    assert_eq!(invalid(store.clear_compute_manager_error("mgr").await.unwrap_err()), clear_msg);
    // clearing an OK manager is refused
    store.register_compute_manager(&m2, false).await.unwrap();
    assert_eq!(invalid(store.clear_compute_manager_error("mgr").await.unwrap_err()), clear_msg);
    assert_eq!(store.list_compute_managers().await.unwrap().len(), 1);

    // services started by a manager stay registered when it goes, and are managed again
    // by the next registration of that name
    let s = sid(1);
    store.register_compute_service(&s, Some(&m2)).await.unwrap();
    store.deregister_compute_manager(&m2).await.unwrap();
    assert_eq!(store.list_compute_services().await.unwrap()[0].manager_name.as_deref(), Some("mgr"));
    let m3 = mid("mgr", 3);
    store.register_compute_manager(&m3, false).await.unwrap();
    match store.compute_manager_instruction(&m3, &all(), &[], 600, 3).await.unwrap() {
        ManagerInstruction::Ok { compute_service_ids, .. } => assert_eq!(compute_service_ids, vec![s]),
        other => panic!("{other:?}"),
    }
});

store_test!(manager_status_validation_and_expiry, |store| async move {
    let m = mid("mgr", 1);
    let up = |status: ComputeManagerStatus, detail: Option<&'static str>, saturation: Option<f64>| {
        let store = store.clone();
        let m = m.clone();
        async move { store.update_compute_manager_status(&m, status, detail, saturation, 3600, 86400).await }
    };
    use ComputeManagerStatus::{Error as E, Ok as K};
    let cases: [(ComputeManagerStatus, Option<&'static str>, Option<f64>, &str); 7] = [
        (K, None, None, "saturation is required for the 'OK' status"),
        (K, Some("hi"), Some(0.5), "detail should only be provided for the 'ERROR' status"),
        (E, Some("bad"), Some(0.5), "saturation should only be provided for the 'OK' status"),
        (E, None, None, "detail is required for the 'ERROR' status"),
        (E, Some(""), None, "detail is required for the 'ERROR' status"),
        (K, None, Some(1.5), "saturation must be between 0 and 1"),
        (K, None, Some(f64::NAN), "saturation must be between 0 and 1"),
    ];
    for (status, detail, saturation, msg) in cases {
        assert_eq!(invalid(up(status, detail, saturation).await.unwrap_err()), msg);
    }
    assert_eq!(invalid(up(K, None, Some(-0.1)).await.unwrap_err()), "saturation must be between 0 and 1");
    // validation comes first; then an unknown manager
    assert_eq!(invalid(up(K, None, Some(0.5)).await.unwrap_err()), format!("No record for ComputeManager: {m}"));
    assert_eq!(invalid(parse_compute_manager_status("WARN").unwrap_err()), "\"WARN\" is not a valid ComputeManagerStatus");

    store.register_compute_manager(&m, false).await.unwrap();
    up(K, None, Some(0.25)).await.unwrap();
    up(K, Some(""), Some(1.0)).await.unwrap(); // an empty detail counts as none
    let info = store.get_compute_manager("mgr").await.unwrap().unwrap();
    assert_eq!((info.status, info.detail, info.saturation), (ComputeManagerStatus::Ok, None, Some(1.0)));
    // the same name with another uuid is not this registration
    let other = mid("mgr", 2);
    assert!(store.update_compute_manager_status(&other, K, None, Some(0.0), 3600, 86400).await.is_err());

    // expiry after each update: OK ones after the OK window, ERROR ones after theirs
    let now: DateTime<Utc> = Utc::now();
    let (ok_old, err_old, err_recent) = (mid("okold", 1), mid("errold", 1), mid("errnew", 1));
    for x in [&ok_old, &err_old, &err_recent] {
        store.register_compute_manager(x, false).await.unwrap();
    }
    // (each update expires relative to its own time, so the oldest goes last)
    store.update_compute_manager_status_at(&ok_old, K, None, Some(0.1), 3600, 86400, now - Duration::hours(2)).await.unwrap();
    store.update_compute_manager_status_at(&err_recent, E, Some("y"), None, 3600, 86400, now - Duration::hours(2)).await.unwrap();
    store.update_compute_manager_status_at(&err_old, E, Some("x"), None, 3600, 86400, now - Duration::hours(30)).await.unwrap();
    assert_eq!(store.list_compute_managers().await.unwrap().len(), 4);
    up(K, None, Some(0.5)).await.unwrap();
    let names: Vec<String> = store.list_compute_managers().await.unwrap().into_iter().map(|i| i.id.name().to_string()).collect();
    assert_eq!(names, vec!["errnew".to_string(), "mgr".to_string()]);
    // a failed update expires nothing
    store.update_compute_manager_status_at(&m, K, None, Some(0.5), 3600, 86400, now - Duration::hours(5)).await.unwrap();
    assert!(up(K, None, None).await.is_err());
    assert_eq!(store.list_compute_managers().await.unwrap().len(), 2);
    // a status update by another manager expires the stale one
    store.update_compute_manager_status(&err_recent, E, Some("z"), None, 3600, 3600).await.unwrap();
    let names: Vec<String> = store.list_compute_managers().await.unwrap().into_iter().map(|i| i.id.name().to_string()).collect();
    assert_eq!(names, vec!["errnew".to_string()]);
});

store_test!(manager_instructions, |store| async move {
    let m = mid("mgr", 1);
    let stop = ManagerInstruction::Shutdown { message: MANAGER_NOT_FOUND.into() };
    assert_eq!(store.compute_manager_instruction(&m, &all(), &[], 600, 3).await.unwrap(), stop);
    store.register_compute_manager(&m, false).await.unwrap();
    // right name, wrong uuid
    assert_eq!(store.compute_manager_instruction(&mid("mgr", 2), &all(), &[], 600, 3).await.unwrap(), stop);
    assert_eq!(
        store.compute_manager_instruction(&m, &all(), &[], 600, 3).await.unwrap(),
        ManagerInstruction::Ok { compute_service_ids: vec![], num_tasks: 0 }
    );

    let (net, _, tfs) = network(&store, "instr").await;
    let ts = tasks(&store, &tfs, 6).await;
    let ext = store.create_tasks(&[TaskRequest { transformation: tfs[0].clone(), extends: Some(ts[0].clone()) }], None).await.unwrap();
    action(&store, &net, &ts[..5]).await; // ts[5] is not actioned
    action(&store, &net, &ext).await; // blocked by its parent
                                      // weights are ignored (Q19)
    store.action_tasks(&net, &some(&ts[4..5]), Some(Weights::All(0.0))).await.unwrap();
    let (s1, s2, s3) = (sid(1), sid(2), sid(3));
    store.register_compute_service(&s1, Some(&m)).await.unwrap();
    store.register_compute_service(&s2, Some(&m)).await.unwrap();
    store.register_compute_service(&s3, None).await.unwrap();
    keys(&claim(&store, &s3, 1).await, 1); // a running task does not count
    let ok = |n: i64| ManagerInstruction::Ok { compute_service_ids: vec![s1.clone(), s2.clone()], num_tasks: n };
    assert_eq!(store.compute_manager_instruction(&m, &all(), &[], 600, 3).await.unwrap(), ok(4));
    let p = vec!["SyntheticProtocol".to_string()];
    assert_eq!(store.compute_manager_instruction(&m, &all(), &p, 600, 3).await.unwrap(), ok(4));
    assert_eq!(store.compute_manager_instruction(&m, &all(), &["Other".to_string()], 600, 3).await.unwrap(), ok(0));
    assert_eq!(store.compute_manager_instruction(&m, &["zz-*-*".parse().unwrap()], &[], 600, 3).await.unwrap(), ok(0));
    assert_eq!(store.compute_manager_instruction(&m, &[], &[], 600, 3).await.unwrap(), ok(0));
    assert!(matches!(store.compute_manager_instruction(&m, &all(), &["bad name".to_string()], 600, 3).await, Err(StoreError::Invalid(_))));

    // one managed service over the failure limit: SKIP
    for i in 0..4 {
        store.record_result(&ts[5], &result(i, false, &s2)).await.unwrap();
    }
    assert_eq!(
        store.compute_manager_instruction(&m, &all(), &[], 600, 3).await.unwrap(),
        ManagerInstruction::Skip { compute_service_ids: vec![s1.clone(), s2.clone()] }
    );
    assert_eq!(store.compute_manager_instruction(&m, &all(), &[], 600, 4).await.unwrap(), ok(4));
    // an unmanaged service's failures do not matter
    for i in 10..15 {
        store.record_result(&ts[5], &result(i, false, &s3)).await.unwrap();
    }
    store.deregister_compute_service(&s2).await.unwrap();
    assert_eq!(
        store.compute_manager_instruction(&m, &all(), &[], 600, 3).await.unwrap(),
        ManagerInstruction::Ok { compute_service_ids: vec![s1.clone()], num_tasks: 4 }
    );
    // the task s3 holds counts again once s3 is gone
    store.deregister_compute_service(&s3).await.unwrap();
    assert_eq!(
        store.compute_manager_instruction(&m, &all(), &[], 600, 3).await.unwrap(),
        ManagerInstruction::Ok { compute_service_ids: vec![s1.clone()], num_tasks: 5 }
    );
});
