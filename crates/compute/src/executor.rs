//! Running one task in a supervised child process.
//!
//! Every task runs in a child process, so a protocol that hangs, leaks or crashes cannot
//! take the service down (upstream runs protocols inside the service process, where a
//! segfault in a simulation engine kills the service and leaves its task `running` until
//! the registration expires). The child is started in its own process group and, on
//! Linux, with a parent-death signal, so killing it also kills whatever it started, and a
//! service killed with SIGKILL takes its child along. Its standard output and error go to
//! files ([`crate::task_logs`]); the service quotes the end of the error output when it
//! reports a failed execution.
//!
//! Two executors, chosen by the protocol class (`__qualname__` of the transformation's
//! `protocol`):
//!
//! * **native** — protocols implemented in Rust ([`crate::child::NATIVE_PROTOCOLS`]),
//!   run by our own binary as `alchemiscale compute execute --input DIR --output FILE`;
//! * **python** — everything else: gufe's `execute_DAG` in the configured interpreter,
//!   through the driver script [`PYTHON_DRIVER`], written into the task directory.
//!
//! [`supervise`] waits for the child, killing its process group when the time limit
//! passes, when the service is stopped, or when the task is no longer wanted.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;

use crate::environment::python_activation;
use crate::service::StopHandle;
use crate::task_logs::OutputFiles;

/// The python executor's driver script (`python/alchemiscale_rs_execute.py`).
pub const PYTHON_DRIVER: &str = include_str!("../python/alchemiscale_rs_execute.py");
/// Its file name in the task directory.
pub const PYTHON_DRIVER_FILE: &str = "alchemiscale_rs_execute.py";
/// Files receiving the child's output when it is not kept (see [`crate::task_logs`]).
pub const STDOUT_FILE: &str = "stdout.log";
pub const STDERR_FILE: &str = "stderr.log";

/// Which executor runs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    Native,
    Python,
}

impl ExecutorKind {
    /// The executor for a protocol class.
    pub fn for_protocol(protocol: &str) -> ExecutorKind {
        if crate::child::is_native(protocol) {
            ExecutorKind::Native
        } else {
            ExecutorKind::Python
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Native => "native",
            ExecutorKind::Python => "python",
        }
    }
}

/// How to start the executors: the native executor's command line, and the interpreter
/// of the python executor (`executor_python` of the settings).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorConfig {
    /// Program of the native executor; `--input DIR --output FILE` is appended to
    /// `native_args`.
    pub native_program: PathBuf,
    pub native_args: Vec<OsString>,
    /// Interpreter of the python executor.
    pub python: PathBuf,
    /// Extra variables for either executor (`executor_env`), applied last.
    pub env: Vec<(String, String)>,
}

impl ExecutorConfig {
    /// The native executor of the running binary (`<current exe> compute execute`), for
    /// the `alchemiscale` command, and `python` for the python executor.
    pub fn current_exe(python: PathBuf) -> std::io::Result<ExecutorConfig> {
        Ok(ExecutorConfig::new(std::env::current_exe()?, vec!["compute".into(), "execute".into()], python))
    }

    /// A native executor `program args… --input DIR --output FILE`, and `python` for the
    /// python executor.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>, python: impl Into<PathBuf>) -> ExecutorConfig {
        ExecutorConfig { native_program: program.into(), native_args: args, python: python.into(), env: Vec::new() }
    }

    /// The command that runs `kind` on the task directory `dir`, writing `output`, in the
    /// environment [`crate::environment`] describes.
    pub fn command(&self, kind: ExecutorKind, dir: &Path, output: &Path) -> std::io::Result<Command> {
        let mut cmd = match kind {
            ExecutorKind::Native => {
                let mut c = Command::new(&self.native_program);
                c.args(&self.native_args);
                c
            }
            ExecutorKind::Python => {
                let script = dir.join(PYTHON_DRIVER_FILE);
                std::fs::write(&script, PYTHON_DRIVER)?;
                let mut c = Command::new(&self.python);
                c.arg(script);
                python_activation(&self.python, std::env::var_os("PATH").as_deref()).apply(&mut c);
                c
            }
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--input").arg(dir).arg("--output").arg(output);
        Ok(cmd)
    }

    /// The program `kind` starts (for messages).
    pub fn program(&self, kind: ExecutorKind) -> &Path {
        match kind {
            ExecutorKind::Native => &self.native_program,
            ExecutorKind::Python => &self.python,
        }
    }
}

/// How a supervised child ended.
#[derive(Debug)]
pub enum Ended {
    /// It exited by itself.
    Exited(ExitStatus),
    /// It ran past the time limit and was killed.
    TimedOut(Duration),
    /// The service was stopped; the child was killed.
    Stopped,
    /// The task is no longer wanted; the child was killed.
    Unwanted,
}

/// Kills the child's process group when dropped while armed, so a cancelled supervision
/// never leaves a protocol running.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: kill(2) with a negative pid signals the process group we created
            // for the child (it is still our unreaped child, so the group id cannot have
            // been reused).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start `cmd` in its own process group with its output going to `output`'s files, and
/// wait for it: kill the group (SIGKILL) when `timeout` passes,
/// when `stop` fires, or when `still_wanted` (called every `check_every`) answers
/// `Some(false)`; `None` means "could not tell" and changes nothing.
pub async fn supervise<F, Fut>(
    mut cmd: Command,
    output: &OutputFiles,
    timeout: Option<Duration>,
    stop: &StopHandle,
    check_every: Duration,
    mut still_wanted: F,
) -> std::io::Result<Ended>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<bool>>,
{
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&output.stdout)?)
        .stderr(std::fs::File::create(&output.stderr)?)
        .process_group(0)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let mut guard = GroupGuard { pgid: child.id().map(|p| p as i32) };
    let started = tokio::time::Instant::now();
    let deadline = timeout.map(|t| started + t);
    let mut checks = tokio::time::interval_at(started + check_every, check_every);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            status = child.wait() => {
                guard.disarm();
                break Ended::Exited(status?);
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or(started)).await }, if deadline.is_some() => {
                break Ended::TimedOut(timeout.unwrap_or_default());
            }
            _ = stop.wait() => break Ended::Stopped,
            _ = checks.tick() => {
                if still_wanted().await == Some(false) {
                    break Ended::Unwanted;
                }
            }
        }
    };
    if !matches!(ended, Ended::Exited(_)) {
        guard.kill();
        let _ = child.wait().await;
    }
    Ok(ended)
}

/// Human-readable exit status: `status 1` or `signal 9`.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "an unknown status".into(),
    }
}

/// The last `max` bytes of a file, as text (empty if unreadable).
pub fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let skip = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(skip)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if skip > 0 {
        format!("[… {skip} bytes omitted …]\n{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    fn files(dir: &tempfile::TempDir) -> OutputFiles {
        OutputFiles::in_dir(dir.path())
    }

    async fn never() -> Option<bool> {
        Some(true)
    }

    #[tokio::test]
    async fn exit_status_and_output_files() {
        let dir = tempfile::tempdir().unwrap();
        let stop = StopHandle::new();
        let e = supervise(sh("echo out; echo err >&2; exit 3"), &files(&dir), None, &stop, Duration::from_secs(60), never).await.unwrap();
        let Ended::Exited(status) = e else { panic!("{e:?}") };
        assert_eq!(describe_exit(&status), "status 3");
        assert_eq!(std::fs::read_to_string(dir.path().join(STDOUT_FILE)).unwrap(), "out\n");
        assert_eq!(tail(&dir.path().join(STDERR_FILE), 100), "err\n");
        let e = supervise(sh("kill -ABRT $$"), &files(&dir), None, &stop, Duration::from_secs(60), never).await.unwrap();
        let Ended::Exited(status) = e else { panic!("{e:?}") };
        assert_eq!(describe_exit(&status), "signal 6");
    }

    /// A timed-out child is killed with everything it started.
    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let stop = StopHandle::new();
        let t0 = std::time::Instant::now();
        let e =
            supervise(sh(&script), &files(&dir), Some(Duration::from_millis(500)), &stop, Duration::from_secs(60), never).await.unwrap();
        assert!(matches!(e, Ended::TimedOut(_)), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // the grandchild is gone (or a zombie about to be reaped by init)
        let mut gone = false;
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "grandchild {pid} survived the group kill");
    }

    #[tokio::test]
    async fn stop_and_unwanted_end_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let stop = StopHandle::new();
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            s2.stop();
        });
        let e = supervise(sh("sleep 30"), &files(&dir), None, &stop, Duration::from_secs(60), never).await.unwrap();
        assert!(matches!(e, Ended::Stopped), "{e:?}");

        let stop = StopHandle::new();
        let mut asked = 0;
        let e = supervise(sh("sleep 30"), &files(&dir), None, &stop, Duration::from_millis(100), || {
            asked += 1;
            let answer = if asked < 3 { None } else { Some(false) };
            async move { answer }
        })
        .await
        .unwrap();
        assert!(matches!(e, Ended::Unwanted), "{e:?}");
        assert_eq!(asked, 3, "unknown answers are ignored");
    }

    #[test]
    fn tails_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big");
        std::fs::write(&f, "x".repeat(1000) + "END").unwrap();
        let t = tail(&f, 10);
        assert!(t.ends_with("xxxxxxxEND") && t.contains("993 bytes omitted"), "{t}");
        assert_eq!(tail(&dir.path().join("missing"), 10), "");
    }
}
