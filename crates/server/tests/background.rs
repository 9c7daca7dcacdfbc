//! The compute API's background work with several instances on one store, on SQLite and
//! PostgreSQL: one reaper at a time holds the `reaper` lease and expires registrations;
//! when the holder dies (its task aborted, as a SIGKILL would), another takes over after
//! the lease runs out. The staging sweep is done by one holder per interval, and by
//! another when that holder dies.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use alchemiscale_model::ComputeServiceId;
use alchemiscale_server::background::{self, Reaper, ReaperOptions, REAPER_LEASE, STAGING_LEASE};
use alchemiscale_server::testing::{settings, Backend, ObjectsBackend, TestServer};
use alchemiscale_server::{ApiKind, ApiSettings, AppState};
use bytes::Bytes;

fn sid(n: u32) -> ComputeServiceId {
    format!("reaped-{n:032x}").parse().unwrap()
}

async fn registered(server: &TestServer) -> Vec<String> {
    server.store.list_compute_services().await.unwrap().into_iter().map(|s| s.identifier.to_string()).collect()
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reaper_takeover(backend: Backend) {
    // 2 s expiry: a period of 1 s, a lease of 3 s
    let api = ApiSettings { registration_expire_seconds: 2, ..settings() };
    let Some(server) = TestServer::start(backend, ObjectsBackend::Local, ApiKind::Compute, api.clone()).await else { return };
    let store = server.store.clone();
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    store.register_compute_service_at(&sid(1), None, hour_ago).await.unwrap();

    let state = || AppState::new(ApiKind::Compute, store.clone(), Some(server.objects.clone()), api.clone());
    let options = ReaperOptions::for_settings(&api);
    assert_eq!(options.period, Duration::from_secs(1));
    assert_eq!(options.lease_ttl, Duration::from_secs(3));
    let a = Reaper::spawn(state(), ReaperOptions::for_settings(&api));
    let b = Reaper::spawn(state(), ReaperOptions::for_settings(&api));
    assert_ne!(a.holder, b.holder, "holder names are unique per reaper");

    wait_for("the stale registration expired", Duration::from_secs(10), || async { registered(&server).await.is_empty() }).await;
    // a few periods more: the holder renews, the other never runs expiry
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let holder = store.lease_holder(REAPER_LEASE).await.unwrap().expect("someone holds the reaper lease");
    let (holding, other) = if holder == a.holder { (&a, &b) } else { (&b, &a) };
    assert_eq!(holder, holding.holder);
    assert!(holding.stats.expiry_runs.load(Ordering::Relaxed) >= 3, "the holder renews and expires every period");
    assert_eq!(holding.stats.expired.load(Ordering::Relaxed), 1);
    assert_eq!(other.stats.expiry_runs.load(Ordering::Relaxed), 0, "only the holder expires registrations");
    assert_eq!(other.stats.expired.load(Ordering::Relaxed), 0);

    // the holder dies; a registration goes stale; the other reaper takes over and expires it
    holding.abort();
    let died = Instant::now();
    store.register_compute_service_at(&sid(2), None, hour_ago).await.unwrap();
    wait_for("the other reaper took over and expired the registration", Duration::from_secs(10), || async {
        registered(&server).await.is_empty()
    })
    .await;
    let took = died.elapsed();
    assert!(took <= Duration::from_secs(5), "took over after {took:?} (lease 3 s, period 1 s)");
    assert_eq!(store.lease_holder(REAPER_LEASE).await.unwrap().as_deref(), Some(other.holder.as_str()));
    assert_eq!(other.stats.expired.load(Ordering::Relaxed), 1);
    assert_eq!(holding.stats.expired.load(Ordering::Relaxed), 1);
    other.abort();
    server.stop().await;
}

alchemiscale_server::backend_test!(one_reaper_at_a_time_and_takeover, super::reaper_takeover);

async fn put_stale_staging(server: &TestServer, n: usize) {
    for i in 0..n {
        server.objects.put(&format!("_staging/left-{i}"), Bytes::from_static(b"cut short")).await.unwrap();
    }
    // older than the zero age the tests sweep with
    tokio::time::sleep(Duration::from_millis(20)).await;
}

async fn staging_sweep_one_holder(backend: Backend) {
    let Some(server) = TestServer::start(backend, ObjectsBackend::Local, ApiKind::Compute, settings()).await else { return };
    let (store, objects) = (&server.store, &server.objects);
    let hour = Duration::from_secs(3600);
    put_stale_staging(&server, 3).await;

    // several instances at once: one sweeps, the others find the lease taken
    let sweeps = futures_util::future::join_all(
        (0..4).map(|i| async move { background::sweep_staging(store, objects, &format!("h{i}"), hour, Duration::ZERO).await.unwrap() }),
    )
    .await;
    let done: Vec<usize> = sweeps.iter().flatten().copied().collect();
    assert_eq!(done, vec![3], "exactly one holder sweeps: {sweeps:?}");
    let sweeper = store.lease_holder(STAGING_LEASE).await.unwrap().unwrap();
    // within the interval nobody else sweeps, even with new stale objects
    put_stale_staging(&server, 2).await;
    assert_eq!(background::sweep_staging(store, objects, "late", hour, Duration::ZERO).await.unwrap(), None);
    assert_eq!(objects.remove_stale_staging(Duration::from_secs(3600)).await.unwrap(), 0, "the stale objects are still there");
    // after the lease runs out (here: given up) the next comer sweeps
    store.release_lease(STAGING_LEASE, &sweeper).await.unwrap();
    assert_eq!(background::sweep_staging(store, objects, "late", hour, Duration::ZERO).await.unwrap(), Some(2));

    // the reapers' loops: two reapers, one sweep per interval between them
    store.release_lease(STAGING_LEASE, "late").await.unwrap();
    put_stale_staging(&server, 1).await;
    let options = |holder: &str| ReaperOptions {
        holder: holder.into(),
        expire_seconds: 1800,
        period: Duration::from_millis(200),
        lease_ttl: Duration::from_millis(600),
        sweep_every: hour,
        staging_max_age: Duration::ZERO,
    };
    let state = || AppState::new(ApiKind::Compute, store.clone(), Some(objects.clone()), settings());
    let a = Reaper::spawn(state(), options("a"));
    let b = Reaper::spawn(state(), options("b"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (sa, sb) = (a.stats.sweeps.load(Ordering::Relaxed), b.stats.sweeps.load(Ordering::Relaxed));
    assert_eq!(sa + sb, 1, "one sweep between the two reapers (a: {sa}, b: {sb})");
    let holder = store.lease_holder(STAGING_LEASE).await.unwrap().unwrap();
    assert_eq!(holder, if sa == 1 { "a" } else { "b" });
    assert_eq!(objects.remove_stale_staging(Duration::ZERO).await.unwrap(), 0, "the stale object was swept");
    a.abort();
    b.abort();

    // a sweep every second: the sweeper dies (aborted, as a SIGKILL would), the other
    // sweeps in the next interval
    let every = |holder: &str| ReaperOptions { sweep_every: Duration::from_secs(1), ..options(holder) };
    store.release_lease(STAGING_LEASE, &holder).await.unwrap();
    put_stale_staging(&server, 1).await;
    let (c, d) = (Reaper::spawn(state(), every("c")), Reaper::spawn(state(), every("d")));
    let swept = |r: &Reaper| r.stats.sweeps.load(Ordering::Relaxed);
    wait_for("one of the reapers swept", Duration::from_secs(5), || async { swept(&c) + swept(&d) >= 1 }).await;
    let holder = store.lease_holder(STAGING_LEASE).await.unwrap().unwrap();
    let (gone, stays) = if holder == "c" { (c, d) } else { (d, c) };
    gone.abort();
    let (gone_sweeps, stays_sweeps) = (swept(&gone), swept(&stays));
    put_stale_staging(&server, 2).await;
    wait_for("the other reaper took over the sweep", Duration::from_secs(6), || async { swept(&stays) > stays_sweeps }).await;
    assert_eq!(swept(&gone), gone_sweeps, "the dead reaper swept no more");
    assert_eq!(store.lease_holder(STAGING_LEASE).await.unwrap().as_deref(), Some(stays.holder.as_str()));
    assert_eq!(objects.remove_stale_staging(Duration::ZERO).await.unwrap(), 0, "the new stale objects were swept");
    stays.abort();
    server.stop().await;
}

alchemiscale_server::backend_test!(staging_sweep_by_one_holder, super::staging_sweep_one_holder);
