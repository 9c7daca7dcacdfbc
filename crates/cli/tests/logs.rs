//! Logs written to a pipe or a file (systemd, docker, nohup) carry no terminal colour codes.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, sigterm, wait_exit, BIN};

#[test]
fn server_logs_to_a_pipe_have_no_ansi_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (port, compute_port) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["--data-dir", dir.path().to_str().unwrap(), "serve", "--loglevel", "debug"])
        .args(["--port", &port.to_string(), "--compute-port", &compute_port.to_string()])
        .env_remove("ALCHEMISCALE_STATE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait until the user API answers, so the start-up has been logged
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("INFO"), "no log lines: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape codes in logs: {stderr:?}");
}
