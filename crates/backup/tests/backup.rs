//! Backups taken while claims and result pushes run restore every result acknowledged
//! before the backup began; failed backups keep the earlier ones; an unreachable target
//! fails clearly while the servers keep serving; the schedule writes one
//! backup per interval between several holders and survives the loss of one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alchemiscale_backup::{Schedule, Target};
use alchemiscale_client::Client;
use alchemiscale_model::synthetic::{network_chain_json, result_chain_json};
use alchemiscale_model::{ComputeServiceId, Scope, ScopedKey};
use alchemiscale_server::testing::{settings, Backend, ObjectsBackend, TestServer};
use alchemiscale_server::ApiKind;
use alchemiscale_store::identities::IdentityKind;
use alchemiscale_store::{Store, StoreLocation, StoreOptions};

type Acked = Arc<Mutex<Vec<(ScopedKey, ScopedKey)>>>;

/// A user API and a compute API over one store, a network with `tasks` actioned tasks.
async fn setup(backend: Backend, tasks: usize) -> Option<(TestServer, TestServer)> {
    let user_server = TestServer::start(backend, ObjectsBackend::Local, ApiKind::User, settings()).await?;
    let compute_server = user_server.sibling(ApiKind::Compute).await;
    let user = user_server.client(IdentityKind::User, "alice", &["bk-*-*"]).await;
    let _ = compute_server.client(IdentityKind::Compute, "worker", &["bk-*-*"]).await;
    let scope: Scope = "bk-campaign-project".parse().unwrap();
    let network = user.create_network(&network_chain_json(4, 3, "backup"), &scope, "active").await.unwrap();
    let tfs = alchemiscale_client::parse_keys(&user.get(&format!("/networks/{network}/transformations")).await.unwrap()).unwrap();
    let mut created = Vec::new();
    for tf in &tfs {
        created.extend(user.create_tasks(tf, tasks.div_ceil(tfs.len()) as i64, None).await.unwrap());
    }
    user.action_tasks(&network, &created, None).await.unwrap();
    Some((user_server, compute_server))
}

/// Claim and push results one at a time until `stop`; every acknowledged push is
/// appended to `acked` (task, result).
async fn worker(url: String, stop: Arc<AtomicBool>, acked: Acked) {
    let c = Client::new(&url, "worker", "key-of-worker").unwrap();
    let id = ComputeServiceId::mint("backupworker").unwrap();
    c.register(&id, None).await.unwrap();
    let mut seed = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let claimed = c.claim_tasks(&[Scope::all()], None, &id, 1, None).await.unwrap().expect("not denied");
        let Some(task) = claimed.into_iter().flatten().next() else { break };
        let t = c.retrieve_task_transformation(&task).await.unwrap();
        let chain = t.chain.as_array().unwrap();
        let tk = chain.last().unwrap().as_array().unwrap()[0].as_str().unwrap().to_string();
        seed += 1;
        let blob = zstd::encode_all(result_chain_json(&tk, true, 2_000, seed).as_bytes(), 3).unwrap();
        let result = c.set_task_result(&task, &blob, &id).await.unwrap();
        acked.lock().unwrap().push((task, result));
    }
}

async fn scratch_store(dir: &std::path::Path) -> Store {
    let location = StoreLocation::Sqlite { path: dir.join("restored.db") };
    Store::connect(&location, &StoreOptions::default()).await.unwrap()
}

async fn backup_under_load(backend: Backend) {
    let Some((_user_server, compute_server)) = setup(backend, 400).await else { return };
    let (stop, acked): (_, Acked) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let handle = tokio::spawn(worker(compute_server.url.clone(), stop.clone(), acked.clone()));
    let t0 = std::time::Instant::now();
    while acked.lock().unwrap().len() < 30 {
        assert!(!handle.is_finished(), "the worker stopped early");
        assert!(t0.elapsed() < Duration::from_secs(60), "only {} pushes in 60 s", acked.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before: Vec<_> = acked.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let target = Target::Dir(dir.path().join("backups")).open(None).unwrap();
    let report = alchemiscale_backup::take(&compute_server.store, &target, 3, dir.path()).await.unwrap();
    let during = acked.lock().unwrap().len();
    stop.store(true, Ordering::Relaxed);
    handle.await.unwrap();
    assert!(during > before.len(), "pushes went on while the backup was taken");

    // restore into a fresh store: every result acknowledged before the backup began is
    // referenced from its task and readable, with its recorded hash
    let path = alchemiscale_backup::fetch(&target, None, dir.path()).await.unwrap();
    assert!(path.ends_with(&report.name));
    let fresh = scratch_store(dir.path()).await;
    let stats = fresh.load_file(&path, false).await.unwrap();
    assert_eq!(stats.rows, report.stats.rows);
    for (task, result) in &before {
        assert!(fresh.task_results(task, true).await.unwrap().contains(result), "{result} of {task} not in the restored store");
        let pdrr = fresh.get_pdrr(result).await.unwrap().expect("result reference");
        let location = pdrr.location.as_deref().expect("location");
        compute_server.objects.get_verified(location, pdrr.content_sha256.as_deref(), pdrr.size).await.unwrap();
    }
    assert!(fresh.inconsistencies().await.unwrap().is_empty());
    // every referenced object is there; one removed is reported
    assert_eq!(alchemiscale_backup::missing_result_objects(&fresh, &compute_server.objects).await.unwrap(), Vec::<String>::new());
    let pdrr = fresh.get_pdrr(&before[0].1).await.unwrap().unwrap();
    compute_server.objects.delete(pdrr.location.as_deref().unwrap()).await.unwrap();
    let missing = alchemiscale_backup::missing_result_objects(&fresh, &compute_server.objects).await.unwrap();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0].contains("is missing"), "{missing:?}");
}
alchemiscale_server::backend_test!(a_backup_under_load_restores_every_acknowledged_result, super::backup_under_load);

/// `keep` prunes the oldest; a target that fills up fails the backup with a clear error
/// and keeps the earlier backups whole.
async fn keep_and_full_target(backend: Backend) {
    let Some((_user_server, compute_server)) = setup(backend, 40).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let target = Target::Dir(dir.path().join("backups")).open(None).unwrap();
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(alchemiscale_backup::take(&compute_server.store, &target, 2, dir.path()).await.unwrap().name);
    }
    assert_eq!(alchemiscale_backup::list(&target).await.unwrap(), names[2..].to_vec(), "the newest two are kept");

    // a full file system as the target (a tiny tmpfs; needs root)
    let mnt = dir.path().join("full");
    std::fs::create_dir(&mnt).unwrap();
    // room for exactly one backup of this store, in whole pages
    let first = &names[3];
    let len = std::fs::metadata(dir.path().join("backups").join(first)).unwrap().len();
    let size = len.div_ceil(4096) * 4096;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping the full-target check: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let small = Target::Dir(mnt.clone()).open(None).unwrap();
    // an earlier backup there
    std::fs::write(mnt.join(first), std::fs::read(dir.path().join("backups").join(first)).unwrap()).unwrap();
    let err = alchemiscale_backup::take(&compute_server.store, &small, 1, dir.path()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("cannot write the backup to"), "{text}");
    assert_eq!(alchemiscale_backup::list(&small).await.unwrap(), vec![first.clone()], "the earlier backup is kept");
    alchemiscale_store::dump::verify_dump(&mnt.join(first)).unwrap();
}
alchemiscale_server::backend_test!(keep_prunes_and_a_full_target_keeps_earlier_backups, super::keep_and_full_target);

/// Two schedules on one store (two servers): one backup per interval between them; when
/// the holder is gone, the other takes over.
async fn schedule(backend: Backend) {
    let Some((_user_server, compute_server)) = setup(backend, 4).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let target = Target::Dir(dir.path().join("backups")).open(None).unwrap();
    let every = Duration::from_secs(2);
    let make =
        |holder: &str| Schedule { every, target: target.clone(), keep: 0, work_dir: dir.path().to_path_buf(), holder: holder.into() };
    let a = alchemiscale_backup::spawn_schedule(compute_server.store.clone(), make("a"));
    let b = alchemiscale_backup::spawn_schedule(compute_server.store.clone(), make("b"));
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let n = alchemiscale_backup::list(&target).await.unwrap().len();
    // at 0, 2, 4, 6 s (give or take a poll): never one per holder per interval
    assert!((3..=4).contains(&n), "{n} backups in 6.5 s at one per 2 s");
    // the holder of the current lease goes away; the other writes the next backups
    let holder: String = compute_server.store.lease_holder(alchemiscale_backup::LEASE).await.unwrap().expect("someone holds the lease");
    let (gone, stays) = if holder == "a" { (a, b) } else { (b, a) };
    gone.abort();
    let _ = gone.await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let m = alchemiscale_backup::list(&target).await.unwrap().len();
    assert!(m > n, "the remaining holder took over ({n} then {m})");
    let now_holder = compute_server.store.lease_holder(alchemiscale_backup::LEASE).await.unwrap();
    assert_ne!(now_holder.as_deref(), Some(holder.as_str()));
    stays.abort();
}
alchemiscale_server::backend_test!(one_scheduled_backup_per_interval_and_takeover, super::schedule);

/// A target that cannot be reached (an S3 endpoint where nothing listens) fails the backup
/// with an error naming the target, within seconds, leaving nothing behind in the work
/// directory; a schedule pointed at it logs and retries while the servers keep answering.
async fn unreachable_target(backend: Backend) {
    let Some((user_server, compute_server)) = setup(backend, 4).await else { return };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s3 = alchemiscale_objects::S3Config {
        bucket: String::new(),
        prefix: String::new(),
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        session_token: None,
        endpoint: Some(format!("http://127.0.0.1:{closed}")),
    };
    let target = Target::S3 { bucket: "nowhere".into(), prefix: "backups".into() }.open(Some(&s3)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let err = alchemiscale_backup::take(&compute_server.store, &target, 2, dir.path()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("cannot write the backup to") && text.contains("nowhere"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(60), "the failure takes {:?}", t0.elapsed());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the dump and scratch store are removed");

    let schedule = Schedule { every: Duration::from_secs(1), target, keep: 2, work_dir: dir.path().to_path_buf(), holder: "h".into() };
    let task = alchemiscale_backup::spawn_schedule(compute_server.store.clone(), schedule);
    let mut user = Client::new(&user_server.url, "alice", "key-of-alice").unwrap();
    user.max_retries = 0;
    for _ in 0..10 {
        assert_eq!(user.get("/ping").await.unwrap()["api"], "AlchemiscaleAPI");
        assert!(!user.get("/networks").await.unwrap().as_array().unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!task.is_finished(), "the schedule keeps trying");
    task.abort();
}
alchemiscale_server::backend_test!(an_unreachable_target_fails_clearly_and_the_server_keeps_serving, super::unreachable_target);
