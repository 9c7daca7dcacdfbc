//! A throwaway PostgreSQL cluster of a test's own (initdb in a temporary directory, a
//! random port on 127.0.0.1, fsync off; as `postgres` through `runuser` when run as root),
//! for tests that stop and start PostgreSQL under a running server. The binaries come from
//! `ALCHEMISCALE_TEST_PG_BINDIR` or the newest `/usr/lib/postgresql/*/bin`. The cluster is
//! stopped by PID, also when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The PostgreSQL binaries: `ALCHEMISCALE_TEST_PG_BINDIR`, else the newest Debian install.
pub fn pg_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ALCHEMISCALE_TEST_PG_BINDIR").filter(|d| !d.is_empty()).map(PathBuf::from) {
        if dir.join("initdb").exists() {
            return Some(dir);
        }
        eprintln!("note: ALCHEMISCALE_TEST_PG_BINDIR={} has no initdb; looking in /usr/lib/postgresql", dir.display());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0")))
        .unwrap_or(false)
}

/// A throwaway cluster; stopped by PID when dropped.
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    as_postgres: bool,
    /// `postgres` (or `runuser` running it).
    child: Option<Child>,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &Path) -> Command {
        match self.as_postgres {
            true => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
            false => Command::new(program),
        }
    }

    pub fn create(bin: PathBuf) -> Cluster {
        let dir = tempfile::Builder::new().prefix("alchemiscale-pg-restart").tempdir().unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let s = Command::new("chown").arg("postgres").arg(dir.path()).status().unwrap();
            assert!(s.success(), "cannot hand {} to the postgres user (initdb refuses to run as root)", dir.path().display());
        }
        // Below the kernel's ephemeral range: while the cluster is down for a restart, an
        // outgoing connection of another test cannot take its port.
        let port = portpicker::pick_unused_port().expect("a free port");
        let cluster = Cluster { bin, dir, port, as_postgres, child: None };
        let out = cluster
            .command(&cluster.bin.join("initdb"))
            .arg("-D")
            .arg(cluster.data())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        cluster
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
        let child = self
            .command(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("PostgreSQL exited ({status}): {}", self.log());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "PostgreSQL did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The postmaster's PID (under `runuser` it is not our child's).
    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
    }

    /// Stop by PID: fast shutdown (sessions terminated, SIGINT), immediate after 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = self.postmaster_pid().unwrap_or(child.id() as i32);
        // SAFETY: kill has no memory preconditions; pid is the postmaster we started
        unsafe { libc::kill(pid, libc::SIGINT) };
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                // SAFETY: as above
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// When a [`Cluster::restart`] stopped PostgreSQL, had it stopped, and had it back.
pub struct Restart {
    pub stopping: Instant,
    pub stopped: Instant,
    pub restarted: Instant,
}

impl Cluster {
    /// Stop PostgreSQL (fast shutdown), keep it down for `outage`, start it again; from
    /// async code, without blocking its runtime.
    pub async fn restart(self, outage: Duration) -> (Cluster, Restart) {
        let stopping = Instant::now();
        let mut cluster = tokio::task::spawn_blocking(move || {
            let mut c = self;
            c.stop();
            c
        })
        .await
        .expect("stopping PostgreSQL");
        let stopped = Instant::now();
        tokio::time::sleep(outage).await;
        cluster = tokio::task::spawn_blocking(move || {
            cluster.start();
            cluster
        })
        .await
        .expect("starting PostgreSQL");
        (cluster, Restart { stopping, stopped, restarted: Instant::now() })
    }
}

/// The binaries, or `None` (with a note) when there are none and the environment does not
/// require PostgreSQL (`ALCHEMISCALE_TEST_REQUIRE_POSTGRES=1` makes that a failure).
pub fn pg_bindir_or_skip(what: &str) -> Option<PathBuf> {
    let bin = pg_bindir();
    if bin.is_none() {
        if std::env::var("ALCHEMISCALE_TEST_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!(
                "ALCHEMISCALE_TEST_REQUIRE_POSTGRES=1 but no PostgreSQL binaries: set ALCHEMISCALE_TEST_PG_BINDIR or install postgresql"
            );
        }
        eprintln!("note: {what} skipped (no ALCHEMISCALE_TEST_PG_BINDIR and no /usr/lib/postgresql/*/bin)");
    }
    bin
}
