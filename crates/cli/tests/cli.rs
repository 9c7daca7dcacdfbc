//! Drive the real `alchemiscale` binary: identity and database commands, their outputs,
//! exit codes and error paths, on SQLite and (when configured) PostgreSQL.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use alchemiscale_store::testing;

struct Cli {
    data_dir: tempfile::TempDir,
    url: Option<String>,
}

impl Cli {
    fn sqlite() -> Cli {
        Cli { data_dir: tempfile::tempdir().unwrap(), url: None }
    }

    async fn postgres() -> Option<Cli> {
        let loc = testing::postgres_location().await?;
        let url = match loc {
            alchemiscale_store::StoreLocation::Postgres { url } => url,
            _ => unreachable!(),
        };
        Some(Cli { data_dir: tempfile::tempdir().unwrap(), url: Some(url) })
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_alchemiscale"));
        cmd.args(args).env("ALCHEMISCALE_DATA_DIR", self.data_dir.path()).env_remove("NEO4J_URL").stdin(Stdio::null());
        match &self.url {
            Some(u) => cmd.env("ALCHEMISCALE_STATE_URL", u),
            None => cmd.env_remove("ALCHEMISCALE_STATE_URL"),
        };
        cmd.output().unwrap()
    }

    /// Run, expect success, return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run, expect failure with `code`, return stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    }
}

fn identity_commands(cli: &Cli) {
    cli.ok(&["database", "init"]);
    assert_eq!(cli.ok(&["identity", "list"]), "[]\n");
    cli.ok(&["identity", "add", "-t", "user", "-i", "bill", "-k", "k1"]);
    cli.ok(&["identity", "add", "-i", "ted", "-k", "k2"]);
    cli.ok(&["identity", "add", "-t", "COMPUTE", "-i", "worker", "-k", "k3"]);
    assert_eq!(cli.ok(&["identity", "list"]), "['bill', 'ted']\n");
    assert_eq!(cli.ok(&["identity", "list", "-t", "compute"]), "['worker']\n");

    cli.ok(&["identity", "add-scope", "-i", "bill", "-s", "org1-campaign2-project3", "-s", "org7-*-*"]);
    assert_eq!(cli.ok(&["identity", "list-scope", "-i", "bill"]), "['org1-campaign2-project3', 'org7-*-*']\n");
    // an invalid scope is rejected before anything is applied (usage error, exit 2)
    let err = cli.fails(&["identity", "add-scope", "-i", "bill", "-s", "a-b-c", "-s", "*-camp-*"], 2);
    assert!(err.contains("*-camp-*"), "{err}");
    assert_eq!(cli.ok(&["identity", "list-scope", "-i", "bill"]), "['org1-campaign2-project3', 'org7-*-*']\n");
    // a missing identity is an error, not a silent no-op
    let err = cli.fails(&["identity", "add-scope", "-i", "nobody", "-s", "a-b-c"], 1);
    assert!(err.contains("no user identity 'nobody' exists"), "{err}");
    cli.fails(&["identity", "remove-scope", "-t", "compute", "-i", "bill", "-s", "a-b-c"], 1);
    assert_eq!(cli.ok(&["identity", "list-scope", "-i", "nobody"]), "[]\n");

    cli.ok(&["identity", "remove-scope", "-i", "bill", "-s", "org7-*-*", "-s", "x-y-z"]);
    assert_eq!(cli.ok(&["identity", "list-scope", "-i", "bill"]), "['org1-campaign2-project3']\n");

    // overwriting warns; --keep-scopes keeps them
    let out = cli.run(&["identity", "add", "-i", "bill", "-k", "k4", "--keep-scopes"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already existed"));
    assert_eq!(cli.ok(&["identity", "list-scope", "-i", "bill"]), "['org1-campaign2-project3']\n");
    let out = cli.run(&["identity", "add", "-i", "bill", "-k", "k5"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("scopes were removed"));
    assert_eq!(cli.ok(&["identity", "list-scope", "-i", "bill"]), "[]\n");

    cli.ok(&["identity", "remove", "-i", "ted"]);
    cli.ok(&["identity", "remove", "-i", "ted"]); // silent when absent
    assert_eq!(cli.ok(&["identity", "list"]), "['bill']\n");

    // bad input
    cli.fails(&["identity", "add", "-i", "x"], 2); // missing key
    cli.fails(&["identity", "list", "-t", "robot"], 2);
    cli.fails(&["identity", "add", "-i", "a/b", "-k", "k"], 1);
    cli.fails(&["identity", "add", "-i", "long", "-k", &"k".repeat(4097)], 1);
}

fn database_commands(cli: &Cli, dir: &Path) {
    assert_eq!(cli.ok(&["database", "check"]), "No inconsistencies found in database.\n");
    let dump = dir.join("backup.dump");
    let d = dump.to_str().unwrap();
    assert!(cli.ok(&["database", "dump", d]).starts_with("dumped "));
    assert!(cli.ok(&["database", "verify-dump", d]).contains("is intact"));
    let err = cli.fails(&["database", "load", d], 1);
    assert!(err.contains("not empty"), "{err}");
    // reset asks for confirmation; without a terminal it refuses
    let err = cli.fails(&["database", "reset"], 1);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(cli.ok(&["identity", "list"]), "['bill']\n");
    cli.ok(&["database", "reset", "--yes"]);
    let err = cli.fails(&["database", "check"], 1);
    assert!(err.contains("database init"), "{err}");
    // loading into a store with no schema creates it
    cli.ok(&["database", "load", d]);
    assert_eq!(cli.ok(&["identity", "list"]), "['bill']\n");
    cli.ok(&["database", "reset", "--yes"]);
    cli.ok(&["database", "init"]);
    assert_eq!(cli.ok(&["identity", "list"]), "[]\n");
    cli.ok(&["database", "load", d]);
    assert_eq!(cli.ok(&["identity", "list"]), "['bill']\n");
    assert_eq!(cli.ok(&["identity", "list", "-t", "compute"]), "['worker']\n");
    cli.ok(&["database", "load", "--force", d]);
    // a corrupt dump is refused and changes nothing
    let bad = dir.join("bad.dump");
    let mut bytes = std::fs::read(&dump).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&bad, bytes).unwrap();
    cli.fails(&["database", "load", "--force", bad.to_str().unwrap()], 1);
    cli.fails(&["database", "verify-dump", bad.to_str().unwrap()], 1);
    assert_eq!(cli.ok(&["identity", "list"]), "['bill']\n");
    cli.fails(&["database", "load", dir.join("missing.dump").to_str().unwrap()], 1);
    backup_commands(cli, dir);
}

/// `database backup` / `backups` / `restore` (`check` finding a missing result object is in
/// `compute_service.rs`, where a real service pushed one).
fn backup_commands(cli: &Cli, dir: &Path) {
    let to = dir.join("backups");
    let t = to.to_str().unwrap();
    for _ in 0..3 {
        let out = cli.ok(&["database", "backup", "--to", t, "--keep", "2"]);
        assert!(out.contains("verified by loading it into a scratch store"), "{out}");
    }
    let listed = cli.ok(&["database", "backups", "--from", t]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.lines().all(|l| l.starts_with("alchemiscale-backup-") && l.ends_with(".dump.zst")), "{listed}");
    cli.ok(&["identity", "add", "-t", "user", "-i", "carol", "-k", "k"]);
    let err = cli.fails(&["database", "restore", "--from", t], 1);
    assert!(err.contains("not empty"), "{err}");
    cli.ok(&["database", "restore", "--from", t, "--force"]);
    assert_eq!(cli.ok(&["identity", "list"]), "['bill']\n", "the newest backup came back");
    let err = cli.fails(&["database", "backup", "--to", "gs://bucket/x"], 2);
    assert!(err.contains("not supported"), "{err}");
    let err = cli.fails(&["database", "restore", "--from", t, "--name", "other.dump"], 1);
    assert!(err.contains("not a backup name"), "{err}");
}

#[test]
fn sqlite_identity_and_database_commands() {
    let cli = Cli::sqlite();
    identity_commands(&cli);
    let dir = tempfile::tempdir().unwrap();
    database_commands(&cli, dir.path());
    assert!(cli.data_dir.path().join("state.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_identity_and_database_commands() {
    let Some(cli) = Cli::postgres().await else { return };
    identity_commands(&cli);
    let dir = tempfile::tempdir().unwrap();
    database_commands(&cli, dir.path());
    // nothing went to the data directory
    assert!(!cli.data_dir.path().join("state.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_from_sqlite_loads_into_postgres_through_the_cli() {
    let Some(pg) = Cli::postgres().await else { return };
    let lite = Cli::sqlite();
    lite.ok(&["identity", "add", "-i", "carol", "-k", "k"]);
    lite.ok(&["identity", "add-scope", "-i", "carol", "-s", "a-b-*"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("x.dump");
    lite.ok(&["database", "dump", d.to_str().unwrap()]);
    pg.ok(&["database", "init"]);
    pg.ok(&["database", "load", d.to_str().unwrap()]);
    assert_eq!(pg.ok(&["identity", "list-scope", "-i", "carol"]), "['a-b-*']\n");
}

#[test]
fn neo4j_url_is_explained() {
    let cli = Cli::sqlite();
    let out = Command::new(env!("CARGO_BIN_EXE_alchemiscale"))
        .args(["identity", "list"])
        .env("ALCHEMISCALE_DATA_DIR", cli.data_dir.path())
        .env_remove("ALCHEMISCALE_STATE_URL")
        .env("NEO4J_URL", "bolt://neo4j:7687")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Neo4j is not supported") && err.contains("database dump/load"), "{err}");
    let err = cli.fails(&["identity", "list", "--url", "bolt://x"], 1);
    assert!(err.contains("Neo4j is not supported"));
    let err = cli.fails(&["identity", "list", "--url", "mysql://x"], 1);
    assert!(err.contains("unsupported store URL"));
}

/// A small claim curve: every size set up, measured in interleaved rounds, and the JSON
/// the docs describe (a figure per size and route, memory per size, no double claims).
#[test]
fn bench_claims_curve_prints_a_json_summary() {
    let cli = Cli::sqlite();
    let out = cli.ok(&[
        "bench",
        "claims",
        "--curve",
        "--sizes",
        "400,800",
        "--curve-claims",
        "100",
        "--curve-rounds",
        "2",
        "--idle-seconds",
        "0",
    ]);
    let last = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["sizes"], serde_json::json!([400.0, 800.0]), "{last}");
    assert_eq!((&v["backend"], &v["double_claims"], &v["rounds"]), (&"sqlite".into(), &0.into(), &2.into()), "{last}");
    for route in ["c11", "c10", "bare"] {
        let rates = v["claims_per_s"][route].as_array().unwrap();
        assert!(rates.len() == 2 && rates.iter().all(|r| r.as_f64().unwrap() > 0.0), "{route}: {last}");
        for size in v["claims_per_s_rounds"].as_array().unwrap() {
            assert_eq!(size[route].as_array().unwrap().len(), 2, "{route} rounds: {last}");
        }
    }
    for key in ["rss_mb", "peak_rss_mb"] {
        let mb = v[key].as_array().unwrap();
        assert!(mb.len() == 2 && mb.iter().all(|m| m.as_f64().unwrap() > 0.0), "{key}: {last}");
    }
    assert!(!cli.data_dir.path().join("state.db").exists());
}

#[test]
fn bench_store_prints_a_json_summary() {
    let cli = Cli::sqlite();
    let out = cli.ok(&["bench", "store", "--systems", "20", "--transformations", "40", "--repeat", "1"]);
    let last = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    for k in ["submit_s", "retrieve_s", "transformations", "backend"] {
        assert!(v.get(k).is_some(), "{k} missing in {last}");
    }
    assert_eq!(v["transformations"], 40);
    assert_eq!(v["backend"], "sqlite");
    // the bench never touches the operator's store
    assert!(!cli.data_dir.path().join("state.db").exists());
}

#[test]
fn bench_console_prints_a_json_summary() {
    let cli = Cli::sqlite();
    let out = cli.ok(&[
        "bench",
        "console",
        "--tasks",
        "600",
        "--transformations",
        "20",
        "--tasks-per-transformation",
        "5",
        "--claims",
        "10",
        "--repeats",
        "2",
    ]);
    let last = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!((&v["tasks"], &v["transformations"], &v["backend"]), (&600.into(), &20.into(), &"sqlite".into()), "{last}");
    for k in ["overview_ms", "network_ms", "overview_first_ms", "network_first_ms", "baseline_ms"] {
        assert!(v[k].as_f64().is_some_and(|ms| ms > 0.0), "{k}: {last}");
    }
}
