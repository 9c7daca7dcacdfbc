//! The `local` backend: compute services as child processes of the manager.
//!
//! ```yaml
//! backend:
//!   kind: local
//!   stop_timeout: 60   # seconds a service gets to stop after SIGTERM before SIGKILL
//! ```
//!
//! Each service runs in its own process group (a Ctrl-C in the manager's terminal reaches
//! only the manager, which then stops its services itself) with its output appended to
//! `<work_dir>/logs/service-<time>-<n>.log`. The pid of every service is kept as a file in
//! `<work_dir>/local-services/`; a manager started later with the same work directory (for
//! example after the previous one was killed with SIGKILL, whose services carry on) adopts
//! the ones still running that service file: it counts them and stops them when it stops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tracing::{info, warn};

use super::{Backend, BackendError, Census, LaunchSpec};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Seconds a service gets to stop (deregister, give back its task) after SIGTERM.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: f64,
}

fn default_stop_timeout() -> f64 {
    60.0
}

/// One service: our child, or adopted from an earlier manager (then only its pid).
struct Tracked {
    pid: u32,
    child: Option<tokio::process::Child>,
}

pub struct LocalBackend {
    spec: LaunchSpec,
    stop_timeout: Duration,
    services: Vec<Tracked>,
    started: u64,
    /// The services of an earlier manager have been looked for (at the first census,
    /// i.e. once this manager is registered).
    adopted: bool,
}

impl LocalBackend {
    /// A backend; at its first census it adopts the services an earlier manager with this
    /// work directory left running.
    pub fn new(spec: LaunchSpec, settings: &LocalSettings) -> Result<LocalBackend, BackendError> {
        let dir = pid_dir(&spec.work_dir);
        std::fs::create_dir_all(&dir).map_err(|e| BackendError(format!("cannot create {}: {e}", dir.display())))?;
        std::fs::create_dir_all(spec.work_dir.join("logs")).map_err(|e| BackendError(format!("cannot create the log directory: {e}")))?;
        Ok(LocalBackend {
            spec,
            stop_timeout: Duration::from_secs_f64(settings.stop_timeout.max(0.0)),
            services: Vec::new(),
            started: 0,
            adopted: false,
        })
    }

    /// Take over the services an earlier manager left running (their pid files).
    fn adopt(&mut self) -> Result<(), BackendError> {
        self.adopted = true;
        let dir = pid_dir(&self.spec.work_dir);
        for entry in std::fs::read_dir(&dir).map_err(|e| BackendError(format!("cannot read {}: {e}", dir.display())))? {
            let Ok(entry) = entry else { continue };
            match entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                Some(pid) if self.services.iter().any(|s| s.pid == pid) => {}
                Some(pid) if runs_service(pid, &self.spec.config) => {
                    info!("Adopting compute service process {pid} left by an earlier manager");
                    self.services.push(Tracked { pid, child: None });
                }
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Forget services that have ended (reaping our children).
    fn reap(&mut self) {
        let config = self.spec.config.clone();
        let dir = pid_dir(&self.spec.work_dir);
        self.services.retain_mut(|s| {
            let alive = match &mut s.child {
                Some(c) => matches!(c.try_wait(), Ok(None)),
                None => runs_service(s.pid, &config),
            };
            if !alive {
                let _ = std::fs::remove_file(dir.join(s.pid.to_string()));
            }
            alive
        });
    }

    fn spawn_one(&mut self) -> Result<(), BackendError> {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        self.started += 1;
        let log_path = self.spec.work_dir.join("logs").join(format!("service-{millis}-{}.log", self.started));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| BackendError(format!("cannot open {}: {e}", log_path.display())))?;
        let err_log = log.try_clone().map_err(|e| BackendError(format!("cannot open {}: {e}", log_path.display())))?;
        let child = tokio::process::Command::new(&self.spec.program)
            .args(self.spec.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0)
            .spawn()
            .map_err(|e| BackendError(format!("cannot start `{}`: {e}", self.spec.program.display())))?;
        let pid = child.id().ok_or_else(|| BackendError("a service ended before it was counted".into()))?;
        let _ = std::fs::write(pid_dir(&self.spec.work_dir).join(pid.to_string()), b"");
        info!("Started compute service process {pid} (output in {})", log_path.display());
        self.services.push(Tracked { pid, child: Some(child) });
        Ok(())
    }
}

impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn census(&mut self) -> Result<Census, BackendError> {
        if !self.adopted {
            self.adopt()?;
        }
        self.reap();
        Ok(Census { running: self.services.len() as u64, pending: 0 })
    }

    async fn start(&mut self, n: u64) -> Result<u64, BackendError> {
        for i in 0..n {
            if let Err(e) = self.spawn_one() {
                if i == 0 {
                    return Err(e);
                }
                warn!("{e}");
                return Ok(i);
            }
        }
        Ok(n)
    }

    async fn stop_all(&mut self) -> Result<(), BackendError> {
        self.reap();
        if self.services.is_empty() {
            return Ok(());
        }
        info!("Stopping {} compute service processes", self.services.len());
        for s in &self.services {
            signal(s.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + self.stop_timeout;
        while Instant::now() < deadline {
            self.reap();
            if self.services.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for s in &self.services {
            warn!("Compute service process {} did not stop within {:?}; killing it", s.pid, self.stop_timeout);
            // its process group: the service and the task executor it may be running
            signal_group(s.pid, libc::SIGKILL);
        }
        for s in &mut self.services {
            if let Some(c) = &mut s.child {
                let _ = c.wait().await;
            }
        }
        self.reap();
        Ok(())
    }
}

fn pid_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("local-services")
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}

fn signal_group(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: as above; a negative pid names the process group.
        unsafe { libc::kill(-pid, sig) };
    }
}

/// Is `pid` a live (not zombie) process running a service with this settings file?
fn runs_service(pid: u32, config: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else { return false };
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else { return false };
    // the state follows the command name in parentheses (which may itself hold ") ")
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    let wanted = config.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn recognises_only_live_services_with_the_same_settings_file() {
        let config = PathBuf::from("/tmp/some/service.yaml");
        // `; true` keeps the shell alive (no exec of the last command)
        // in a process group of its own, so that the `sleep` goes with it (an orphaned
        // `sleep` would hold the test's output pipes for 30 s)
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "sh"])
            .arg(&config)
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // the command line is the new one once the child has exec'd
        let t0 = Instant::now();
        while !runs_service(child.id(), &config) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(runs_service(child.id(), &config));
        assert!(!runs_service(child.id(), Path::new("/tmp/other/service.yaml")));
        // SAFETY: signalling the process group this test created.
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
        // a zombie (killed, not yet waited for) is not alive
        std::thread::sleep(Duration::from_millis(100));
        assert!(!runs_service(child.id(), &config));
        child.wait().unwrap();
        assert!(!runs_service(child.id(), &config));
        assert!(!runs_service(u32::MAX, &config));
    }
}
