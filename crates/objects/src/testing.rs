//! Test harness: an object store per test on the local backend, and on S3 when
//! `ALCHEMISCALE_TEST_S3_ENDPOINT` (an S3-protocol server such as moto) and
//! `ALCHEMISCALE_TEST_S3_BUCKET` are set — each test gets its own prefix. With
//! `ALCHEMISCALE_TEST_REQUIRE_S3=1` (as `.ci/run` sets) a missing server is a failure.

use crate::{ObjectStoreConfig, Objects, S3Config};

pub struct TestObjects {
    pub objects: Objects,
    pub config: ObjectStoreConfig,
    pub dir: Option<tempfile::TempDir>,
}

pub fn local() -> TestObjects {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ObjectStoreConfig::Local { root: dir.path().join("objects") };
    TestObjects { objects: Objects::open(&config).expect("open local objects"), config, dir: Some(dir) }
}

/// S3 settings of the test server, if configured.
pub fn s3_config() -> Option<S3Config> {
    let endpoint = std::env::var("ALCHEMISCALE_TEST_S3_ENDPOINT").ok().filter(|s| !s.is_empty());
    let Some(endpoint) = endpoint else {
        if std::env::var("ALCHEMISCALE_TEST_REQUIRE_S3").as_deref() == Ok("1") {
            panic!("ALCHEMISCALE_TEST_REQUIRE_S3=1 but ALCHEMISCALE_TEST_S3_ENDPOINT is not set");
        }
        return None;
    };
    let bucket = std::env::var("ALCHEMISCALE_TEST_S3_BUCKET").unwrap_or_else(|_| "alchemiscale-test".into());
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let prefix = format!(
        "test-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    Some(S3Config {
        bucket,
        prefix,
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        session_token: None,
        endpoint: Some(endpoint),
    })
}

pub fn s3() -> Option<TestObjects> {
    let config = ObjectStoreConfig::S3(s3_config()?);
    Some(TestObjects { objects: Objects::open(&config).expect("open S3 objects"), config, dir: None })
}

/// Run one async body against the local store and against S3:
/// `objects_test!(name, |objects| async move { ... });`
#[macro_export]
macro_rules! objects_test {
    ($name:ident, |$objects:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                let t = $crate::testing::local();
                let $objects = t.objects.clone();
                $body.await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                let Some(t) = $crate::testing::s3() else {
                    eprintln!("note: S3 test skipped (set ALCHEMISCALE_TEST_S3_ENDPOINT to run it)");
                    return;
                };
                let $objects = t.objects.clone();
                $body.await;
            }
        }
    };
}
