//! Horizontal scale, the short form of `alchemiscale bench scaleout`: 3 `api` + 3
//! `compute api` processes on one PostgreSQL database and one S3 server (moto), behind nginx
//! configured from deploy/nginx/alchemiscale.conf; compute services drain the work through
//! nginx while one instance of each API is SIGKILLed; afterwards no task was claimed twice,
//! every task is complete with exactly one readable result, none is left running, and user
//! reads through nginx never failed after the kill.
//!
//! Needs `ALCHEMISCALE_TEST_POSTGRES_URL`, `ALCHEMISCALE_TEST_S3_ENDPOINT` (+ `_BUCKET`) and
//! nginx (`ALCHEMISCALE_TEST_NGINX`, else /usr/sbin/nginx) — `.ci/run` provides all three.
//! Without them the test is skipped, unless `ALCHEMISCALE_TEST_REQUIRE_POSTGRES=1`.

mod common;

use std::process::Command;

use common::BIN;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[test]
fn three_plus_three_instances_behind_nginx_drain_the_work_and_survive_a_killed_instance() {
    let required = env("ALCHEMISCALE_TEST_REQUIRE_POSTGRES").as_deref() == Some("1");
    let nginx = env("ALCHEMISCALE_TEST_NGINX").or_else(|| Some("/usr/sbin/nginx".into()).filter(|p| std::path::Path::new(p).exists()));
    let (Some(pg), Some(s3), Some(nginx)) = (env("ALCHEMISCALE_TEST_POSTGRES_URL"), env("ALCHEMISCALE_TEST_S3_ENDPOINT"), nginx) else {
        assert!(!required, "ALCHEMISCALE_TEST_REQUIRE_POSTGRES=1 but PostgreSQL, S3 or nginx is not configured");
        eprintln!("note: scale-out test skipped (needs ALCHEMISCALE_TEST_POSTGRES_URL, ALCHEMISCALE_TEST_S3_ENDPOINT and nginx)");
        return;
    };
    let bucket = env("ALCHEMISCALE_TEST_S3_BUCKET").unwrap_or_else(|| "alchemiscale-test".into());
    let tasks = 300;
    let out = Command::new(BIN)
        .args(["bench", "scaleout", "--tasks", &tasks.to_string(), "--services", "12", "--instances", "3", "--kill-one"])
        .args(["--url", &pg, "--nginx", &nginx])
        .args(["--s3-bucket", &bucket, "--s3-endpoint", &s3, "--default-region", "us-east-1"])
        .args(["--access-key-id", "testing", "--secret-access-key", "testing"])
        .env("RUST_LOG", "error")
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench scaleout failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().expect("output");
    let r: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"));
    let n = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("`{k}` missing in {r}"));
    assert_eq!(n("tasks"), tasks as f64);
    assert_eq!(r["objects"], "s3", "{r}");
    assert_eq!(n("instances"), 3.0);
    assert!(n("claims_per_s_1") > 0.0 && n("claims_per_s_3") > 0.0, "{r}");
    assert_eq!(n("double_claims"), 0.0, "{stdout}");
    assert_eq!(n("lost_results"), 0.0, "{stdout}");
    assert_eq!(n("complete"), tasks as f64, "{stdout}");
    assert_eq!(n("readable_results"), tasks as f64, "{stdout}");
    assert_eq!(n("left_running"), 0.0, "{stdout}");
    assert_eq!(n("left_waiting"), 0.0, "{stdout}");
    assert_eq!(n("failed"), 0.0, "{stdout}");
    assert_eq!(r["killed_one"], true);
    let killed_at = n("killed_at_complete");
    assert!(killed_at > 0.0 && killed_at < tasks as f64, "the instances were not killed while work remained: {r}");
    assert_eq!(n("read_failures_after_kill"), 0.0, "user reads failed after an instance was killed:\n{stdout}");
    // where the limit sits is named, with the CPU of every process group
    assert!(r["limit"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    for group in ["compute API instances", "nginx"] {
        assert!(r["cores_used_claims_3"][group].as_f64().is_some(), "{group} missing in {r}");
    }
}
