//! Test harness: a fresh store on each backend.
//!
//! * SQLite: a database file in a temporary directory.
//! * PostgreSQL: a fresh schema in the database named by `ALCHEMISCALE_TEST_POSTGRES_URL`
//!   (connections get `search_path` set to it). Without that variable PostgreSQL tests are
//!   skipped with a note — unless `ALCHEMISCALE_TEST_REQUIRE_POSTGRES=1` (as `.ci/run`
//!   sets), which turns a missing server into a failure.
//!
//! [`store_test!`] writes one test body and runs it on both. [`cluster::Cluster`] is a
//! throwaway PostgreSQL cluster of a test's own, for tests that stop and start it.

use crate::{Store, StoreLocation, StoreOptions};

pub mod cluster;

/// A store for one test; keeps its temporary directory alive.
pub struct TestStore {
    pub store: Store,
    pub location: StoreLocation,
    pub dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = StoreLocation::Sqlite { path: dir.path().join("state.db") };
    let store = Store::connect(&location, &StoreOptions::default()).await.expect("connect sqlite");
    store.init().await.expect("init sqlite");
    TestStore { store, location, dir: Some(dir) }
}

/// The PostgreSQL URL tests use, if configured.
pub fn postgres_url() -> Option<String> {
    match std::env::var("ALCHEMISCALE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("ALCHEMISCALE_TEST_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("ALCHEMISCALE_TEST_REQUIRE_POSTGRES=1 but ALCHEMISCALE_TEST_POSTGRES_URL is not set");
            }
            None
        }
    }
}

/// A location in a brand-new, empty PostgreSQL schema (None if PostgreSQL is not configured).
pub async fn postgres_location() -> Option<StoreLocation> {
    let base = postgres_url()?;
    Some(crate::scratch::ScratchSchema::create(&base).await.expect("create a scratch schema in the test PostgreSQL").location)
}

pub async fn postgres() -> Option<TestStore> {
    let Some(location) = postgres_location().await else {
        eprintln!("note: PostgreSQL test skipped (set ALCHEMISCALE_TEST_POSTGRES_URL to run it)");
        return None;
    };
    let store = Store::connect(&location, &StoreOptions { max_connections: 4, ..Default::default() }).await.expect("connect postgres");
    store.init().await.expect("init postgres");
    Some(TestStore { store, location, dir: None })
}

/// Define a test that runs on SQLite and on PostgreSQL:
///
/// ```ignore
/// store_test!(name, |store| async move { ... });
/// ```
/// expands to a module `name` with tests `sqlite` and `postgres`.
#[macro_export]
macro_rules! store_test {
    ($name:ident, |$store:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let ts = $crate::testing::sqlite().await;
                let $store = ts.store.clone();
                $body.await;
                ts.store.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(ts) = $crate::testing::postgres().await else { return };
                let $store = ts.store.clone();
                $body.await;
                ts.store.close().await;
            }
        }
    };
}
