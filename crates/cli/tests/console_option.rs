//! `serve` serves the web console at /ui, and `--no-console` turns it off.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Killed, BIN};

/// Starts `serve` with `extra` and answers the status of `GET /ui/login` and `GET /ping`.
async fn statuses(extra: &[&str]) -> (u16, u16) {
    let dir = tempfile::tempdir().unwrap();
    let (port, compute_port) = (free_port(), free_port());
    let _serve = Killed(
        Command::new(BIN)
            .args(["--data-dir", dir.path().to_str().unwrap(), "serve", "--no-strategist"])
            .args(["--port", &port.to_string(), "--compute-port", &compute_port.to_string()])
            .args(extra)
            .env_remove("ALCHEMISCALE_STATE_URL")
            .env_remove("ALCHEMISCALE_NO_CONSOLE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let http = http.clone();
        async move { http.get(format!("http://127.0.0.1:{port}{path}")).send().await.unwrap().status().as_u16() }
    };
    (status("/ui/login").await, status("/ping").await)
}

#[tokio::test]
async fn serve_has_the_console_unless_turned_off() {
    assert_eq!(statuses(&[]).await, (200, 200), "the console is on by default");
    assert_eq!(statuses(&["--no-console"]).await, (404, 200), "--no-console: no /ui, the API still serves");
}
