//! Harness for end-to-end compute-service tests: a user API and a compute API over one
//! fresh store (SQLite, or PostgreSQL when configured), a user who submits synthetic
//! networks, and compute services running as tokio tasks whose native executor is this
//! crate's `alchemiscale-execute` binary.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use alchemiscale_client::Client;
use alchemiscale_compute::{ExecutorConfig, RunSummary, Service, ServiceError, Settings, StopHandle};
use alchemiscale_model::json::Value;
use alchemiscale_model::pdr::{latin1_to_bytes, read_result, ResultBlob};
use alchemiscale_model::synthetic::{network_chain_json_with_protocol, SYNTHETIC_MODULE, SYNTHETIC_PROTOCOL};
use alchemiscale_model::{Scope, ScopedKey};
use alchemiscale_server::testing::{settings, Backend, ObjectsBackend, TestServer};
use alchemiscale_server::{ApiKind, ApiSettings};
use alchemiscale_store::identities::IdentityKind;
use serde_json::json;

pub const SCOPE: &str = "synth-campaign-project";
pub const COMPUTE_ID: &str = "worker";

pub struct Env {
    pub user_server: TestServer,
    pub compute_server: TestServer,
    pub user: Client,
    pub dir: tempfile::TempDir,
}

/// Servers with the default test settings (None: PostgreSQL asked for but not configured).
pub async fn env(backend: Backend) -> Option<Env> {
    env_with(backend, settings()).await
}

pub async fn env_with(backend: Backend, api: ApiSettings) -> Option<Env> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,alchemiscale_compute=info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    let user_server = TestServer::start(backend, ObjectsBackend::Local, ApiKind::User, api).await?;
    let compute_server = user_server.sibling(ApiKind::Compute).await;
    let user = user_server.client(IdentityKind::User, "alice", &["synth-*-*"]).await;
    // the compute identity the services log in as ("key-of-worker")
    let _ = compute_server.client(IdentityKind::Compute, COMPUTE_ID, &["synth-*-*"]).await;
    Some(Env { user_server, compute_server, user, dir: tempfile::tempdir().unwrap() })
}

/// The native executor of these tests.
pub fn executors() -> ExecutorConfig {
    ExecutorConfig::new(env!("CARGO_BIN_EXE_alchemiscale-execute"), vec![], "python3")
}

pub fn sk(s: &str) -> ScopedKey {
    s.parse().unwrap()
}

impl Env {
    /// Settings for a service named `name` with short intervals, plus `extra` YAML lines.
    pub fn settings(&self, name: &str, extra: &str) -> Settings {
        let base = self.dir.path().join(name);
        let yaml = format!(
            "api_url: {}\nidentifier: {COMPUTE_ID}\nkey: key-of-{COMPUTE_ID}\nname: {name}\nshared_basedir: {}\nscratch_basedir: {}\n\
             heartbeat_interval: 1\nsleep_interval: 1\ndeep_sleep_interval: 1\nclient_max_retries: 2\nclient_retry_base_seconds: 1.1\n\
             client_retry_max_seconds: 0.5\nwanted_check_interval: 0.3\n{extra}",
            self.compute_server.url,
            base.join("shared").display(),
            base.join("scratch").display(),
        );
        let (s, warnings) = Settings::from_yaml(&yaml).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        s
    }

    /// Build and start a service as a tokio task.
    pub fn start(&self, name: &str, extra: &str) -> Running {
        let service = Service::new(self.settings(name, extra), executors()).unwrap();
        Running::spawn(service)
    }

    /// Submit a synthetic network (`n_transformations` over 3 systems) with protocol
    /// settings `extra`; returns it and its transformations.
    pub async fn submit(&self, tag: &str, n_transformations: usize, extra: &[(&str, Value)]) -> (ScopedKey, Vec<ScopedKey>) {
        self.submit_protocol(tag, n_transformations, (SYNTHETIC_PROTOCOL, SYNTHETIC_MODULE), extra).await
    }

    /// As [`Env::submit`], with the protocol class `(qualname, module)`.
    pub async fn submit_protocol(
        &self,
        tag: &str,
        n_transformations: usize,
        protocol: (&str, &str),
        extra: &[(&str, Value)],
    ) -> (ScopedKey, Vec<ScopedKey>) {
        let chain = network_chain_json_with_protocol(3, n_transformations, tag, protocol, extra);
        let scope: Scope = SCOPE.parse().unwrap();
        let network = self.user.create_network(&chain, &scope, "active").await.unwrap();
        let tfs = alchemiscale_client::parse_keys(&self.user.get(&format!("/networks/{network}/transformations")).await.unwrap()).unwrap();
        assert_eq!(tfs.len(), n_transformations);
        (network, tfs)
    }

    /// One task per transformation, actioned on `network`.
    pub async fn tasks(&self, network: &ScopedKey, tfs: &[ScopedKey]) -> Vec<ScopedKey> {
        let mut tasks = Vec::new();
        for tf in tfs {
            tasks.extend(self.user.create_tasks(tf, 1, None).await.unwrap());
        }
        self.action(network, &tasks).await;
        tasks
    }

    pub async fn action(&self, network: &ScopedKey, tasks: &[ScopedKey]) {
        let actioned = self.user.action_tasks(network, tasks, None).await.unwrap();
        assert!(actioned.iter().all(Option::is_some), "{actioned:?}");
    }

    pub async fn status(&self, task: &ScopedKey) -> String {
        self.user.get_tasks_status(std::slice::from_ref(task)).await.unwrap().remove(0).unwrap_or_default()
    }

    pub async fn statuses(&self, tasks: &[ScopedKey]) -> Vec<String> {
        self.user.get_tasks_status(tasks).await.unwrap().into_iter().map(Option::unwrap_or_default).collect()
    }

    /// U56 / U57: a task's results or failures.
    pub async fn task_results(&self, task: &ScopedKey, failures: bool) -> Vec<ScopedKey> {
        let route = if failures { "failures" } else { "results" };
        alchemiscale_client::parse_keys(&self.user.get(&format!("/tasks/{task}/{route}")).await.unwrap()).unwrap()
    }

    /// U53 / U54: a transformation's results or failures.
    pub async fn transformation_results(&self, tf: &ScopedKey, failures: bool) -> Vec<ScopedKey> {
        let route = if failures { "failures" } else { "results" };
        alchemiscale_client::parse_keys(&self.user.get(&format!("/transformations/{tf}/{route}")).await.unwrap()).unwrap()
    }

    /// U55: download and analyse a result.
    pub async fn download(&self, tf: &ScopedKey, pdrr: &ScopedKey, failures: bool) -> ResultBlob {
        let route = if failures { "failures" } else { "results" };
        let v = self.user.get(&format!("/transformations/{tf}/{route}/{pdrr}")).await.unwrap();
        let s = v[0].as_str().expect("a latin-1 string");
        read_result(latin1_to_bytes(s).unwrap(), 1 << 30).unwrap()
    }

    /// U34: networks a task is actioned on.
    pub async fn actioned_on(&self, task: &ScopedKey) -> Vec<String> {
        let v = self.user.post(&format!("/tasks/{task}/networks/actioned"), &json!({"task_weights": false})).await.unwrap();
        serde_json::from_value(v).unwrap()
    }

    /// Compute service registrations in the store.
    pub async fn registrations(&self) -> usize {
        self.compute_server.store.list_compute_services().await.unwrap().len()
    }
}

/// A service running as a tokio task.
pub struct Running {
    pub id: String,
    pub stop: StopHandle,
    pub handle: tokio::task::JoinHandle<Result<RunSummary, ServiceError>>,
}

impl Running {
    pub fn spawn(service: Service) -> Running {
        let id = service.id().to_string();
        let stop = service.stop_handle();
        let handle = tokio::spawn(async move { service.run().await });
        Running { id, stop, handle }
    }

    /// Stop it and wait (at most 20 s) for its summary.
    pub async fn stop(self) -> RunSummary {
        self.stop.stop();
        self.join().await
    }

    /// Wait (at most 60 s) for the run to end by itself.
    pub async fn join(self) -> RunSummary {
        tokio::time::timeout(Duration::from_secs(60), self.handle).await.expect("service did not end in time").unwrap().unwrap()
    }
}

/// Poll `f` every 100 ms until it is true; panic with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
