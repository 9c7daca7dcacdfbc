//! What several process-level test files share: a user API and a compute API on one store
//! with a user and a compute identity, and waiting for and signalling child processes.
#![allow(dead_code)]

use std::process::Child;
use std::time::{Duration, Instant};

use alchemiscale_client::Client;
use alchemiscale_server::testing::{settings, Backend, ObjectsBackend, TestServer};
use alchemiscale_server::ApiKind;
use alchemiscale_store::identities::IdentityKind;

pub const BIN: &str = env!("CARGO_BIN_EXE_alchemiscale");

/// Both APIs over one store; `user` is logged in as `alice`; the compute identity is
/// `worker` (key `key-of-worker`); both reach `<org>-*-*`.
pub struct Env {
    pub user_server: TestServer,
    pub compute_server: TestServer,
    pub user: Client,
    pub dir: tempfile::TempDir,
}

/// `None` when the backend is not configured (PostgreSQL without a test URL).
pub async fn env(backend: Backend, org: &str) -> Option<Env> {
    let user_server = TestServer::start(backend, ObjectsBackend::Local, ApiKind::User, settings()).await?;
    let compute_server = user_server.sibling(ApiKind::Compute).await;
    let scope = format!("{org}-*-*");
    let user = user_server.client(IdentityKind::User, "alice", &[&scope]).await;
    let _ = compute_server.client(IdentityKind::Compute, "worker", &[&scope]).await;
    Some(Env { user_server, compute_server, user, dir: tempfile::tempdir().unwrap() })
}

/// The child's exit status, killing it (and failing) after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn sigterm(child: &Child) {
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

/// A live, not zombie, process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

/// A child process killed (SIGKILL, by its PID) and reaped when dropped, even on panic.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process stopped with SIGTERM (SIGKILL after 10 s) and reaped when dropped,
/// even on panic: for servers such as nginx whose master must stop its own workers (a
/// SIGKILLed nginx master leaves its workers running).
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        sigterm(&self.0);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port for a child process to listen on: picked below the kernel's ephemeral
/// range, so an outgoing connection of a parallel test cannot take it before the child binds.
pub fn free_port() -> u16 {
    portpicker::pick_unused_port().expect("a free port")
}
