//! Test harness: an API server on a random loopback port over a fresh test store
//! (SQLite, or PostgreSQL when configured), with identities ready to log in.

use alchemiscale_client::Client;
use alchemiscale_model::Scope;
use alchemiscale_objects::testing::TestObjects;
use alchemiscale_objects::Objects;
use alchemiscale_store::identities::{hash_key, IdentityKind};
use alchemiscale_store::testing::{self, TestStore};
use alchemiscale_store::Store;

use crate::{ApiKind, ApiSettings, AppState};

pub mod outage;

/// Which backend a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Which object store a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectsBackend {
    Local,
    S3,
}

pub struct TestServer {
    pub url: String,
    pub store: Store,
    pub objects: Objects,
    pub settings: ApiSettings,
    _store: TestStore,
    _objects: TestObjects,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

type Extra = Box<dyn FnOnce(&AppState) -> axum::Router<AppState>>;

pub const SECRET: &str = "test-secret-0123456789";

pub fn settings() -> ApiSettings {
    ApiSettings { jwt_secret: SECRET.into(), max_body_bytes: 16 << 20, identity_cache_seconds: 0, ..Default::default() }
}

impl TestServer {
    /// Start the user API (None if the PostgreSQL backend was asked for but is not configured).
    pub async fn user(backend: Backend) -> Option<TestServer> {
        Self::start(backend, ObjectsBackend::Local, ApiKind::User, settings()).await
    }

    /// Start an API server (None if PostgreSQL or S3 was asked for but is not configured).
    pub async fn start(backend: Backend, objects: ObjectsBackend, api: ApiKind, settings: ApiSettings) -> Option<TestServer> {
        let ts = match backend {
            Backend::Sqlite => testing::sqlite().await,
            Backend::Postgres => testing::postgres().await?,
        };
        let to = match objects {
            ObjectsBackend::Local => alchemiscale_objects::testing::local(),
            ObjectsBackend::S3 => alchemiscale_objects::testing::s3()?,
        };
        Some(Self::serve(ts, to, api, settings).await)
    }

    /// The user API with more routes beside it (e.g. the web console), built from its state.
    pub async fn user_with(backend: Backend, extra: impl FnOnce(&AppState) -> axum::Router<AppState> + 'static) -> Option<TestServer> {
        let ts = match backend {
            Backend::Sqlite => testing::sqlite().await,
            Backend::Postgres => testing::postgres().await?,
        };
        Some(Self::serve_with(ts, alchemiscale_objects::testing::local(), ApiKind::User, settings(), Some(Box::new(extra))).await)
    }

    /// A second API server over the same stores (e.g. the compute API beside the user API).
    pub async fn sibling(&self, api: ApiKind) -> TestServer {
        let ts = TestStore { store: self.store.clone(), location: self._store.location.clone(), dir: None };
        let to = TestObjects { objects: self.objects.clone(), config: self._objects.config.clone(), dir: None };
        Self::serve(ts, to, api, self.settings.clone()).await
    }

    async fn serve(ts: TestStore, to: TestObjects, api: ApiKind, settings: ApiSettings) -> TestServer {
        Self::serve_with(ts, to, api, settings, None).await
    }

    async fn serve_with(ts: TestStore, to: TestObjects, api: ApiKind, settings: ApiSettings, extra: Option<Extra>) -> TestServer {
        let store = ts.store.clone();
        let objects = to.objects.clone();
        let state = AppState::new(api, store.clone(), Some(objects.clone()), settings.clone());
        let app = match api {
            ApiKind::User => {
                let extra = extra.map(|make| make(&state));
                crate::user_app_with(state, extra)
            }
            ApiKind::Compute => crate::compute_app(state),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            crate::serve(listener, app, async move {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        TestServer { url, store, objects, settings, _store: ts, _objects: to, shutdown: Some(tx), handle: Some(handle) }
    }

    /// Where the test store is, as `--url` takes it (`sqlite:///…` or a PostgreSQL URL
    /// whose `options` select the test's schema), for commands run as processes.
    pub fn store_url(&self) -> String {
        match &self._store.location {
            alchemiscale_store::StoreLocation::Sqlite { path } => format!("sqlite://{}", path.display()),
            alchemiscale_store::StoreLocation::Postgres { url } => url.clone(),
        }
    }

    /// Create an identity of `kind` with `scopes` and return a client logged in as it.
    pub async fn client(&self, kind: IdentityKind, identifier: &str, scopes: &[&str]) -> Client {
        let key = format!("key-of-{identifier}");
        self.store.add_identity(kind, identifier, &hash_key(&key).expect("hash"), false).await.expect("add identity");
        let scopes: Vec<Scope> = scopes.iter().map(|s| s.parse().expect("scope")).collect();
        self.store.add_scopes(kind, identifier, &scopes).await.expect("add scopes");
        let mut c = Client::new(&self.url, identifier, &key).expect("client");
        c.max_retries = 0;
        c
    }

    /// Stop the server and wait for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

/// Define `mod $name { sqlite, postgres }`, each running `$body(Backend)` (an async fn of
/// the backend that sets up what it needs): `backend_test!(name, super::body);`
#[macro_export]
macro_rules! backend_test {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body($crate::testing::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body($crate::testing::Backend::Postgres).await;
            }
        }
    };
}

/// Run one async test body against a user-API server on each backend:
/// `server_test!(name, |server| async move { ... });`
#[macro_export]
macro_rules! server_test {
    ($name:ident, |$server:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $server = $crate::testing::TestServer::user($crate::testing::Backend::Sqlite).await.unwrap();
                $body.await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some($server) = $crate::testing::TestServer::user($crate::testing::Backend::Postgres).await else { return };
                $body.await;
            }
        }
    };
}
