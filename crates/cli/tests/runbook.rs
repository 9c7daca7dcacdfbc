//! The operations runbook (`docs/operations.md`) followed step by step, as an operator on
//! one machine would, on SQLite and on PostgreSQL (backup targets on S3 when configured).
//!
//! The `sh` blocks of the sections a single machine can run are executed in the order the
//! runbook gives them, with the real binary standing in for `alchemiscale`:
//! the embedded server, identities, a TLS certificate for nginx, taking backups,
//! restoring, checking, upgrading and the identities of a move from upstream. Outputs the runbook shows in a comment (`# ['alice',
//! 'user']`, `# "No inconsistencies …"`) must be what the command prints. Wrappers are
//! stripped to the command they run (`systemd-run … /usr/local/bin/alchemiscale database
//! check`, `docker compose … exec backup alchemiscale …`); lines that need Docker, systemd,
//! a compiler or a database shell are skipped. The runbook's example places are replaced
//! by the test's: `/var/backups/alchemiscale` by a temporary directory,
//! `s3://alchemiscale-backups/state` by the test bucket, `postgres://…@db.internal/…` by
//! a new store, an example backup name by one that exists, and the servers' ports by free
//! ones (on 127.0.0.1 only).
//!
//! So a command, option, default or output that drifts from the runbook fails here.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use alchemiscale_store::{testing, StoreLocation};
use common::{free_port, sigterm, wait_exit, Killed, BIN};

/// The runbook's sections walked, in order.
const WALKED: [&str; 8] = [
    "The embedded server: `serve`",
    "Identities",
    "TLS",
    "Taking backups",
    "Restoring",
    "Checking a store: `database check`",
    "Upgrades",
    "Moving from upstream alchemiscale",
];

/// Programs a single machine without Docker or systemd does not run.
const SKIPPED: [&str; 6] = ["docker", "systemctl", "cargo", "psql", "sqlite3", "curl"];

/// Other programs the walk runs as written (in its working directory).
const RUN_AS_WRITTEN: [&str; 2] = ["mkdir", "openssl"];

/// One command of an `sh` block: continuation lines joined, and the comment after it.
#[derive(Debug)]
struct Line {
    cmd: String,
    comment: String,
}

/// `(heading, text)` for every `##`/`###` section of a Markdown document.
fn sections(doc: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("### ").or_else(|| line.strip_prefix("## ")) {
            out.push((h.trim().to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// Where an unquoted `#` starts a comment in a shell line.
fn comment_at(line: &str) -> Option<usize> {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return Some(i),
            _ => {}
        }
        prev = c;
    }
    None
}

/// The commands of the `sh` blocks in a section's text (indented blocks too).
fn sh_lines(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(fence) = line.strip_prefix("```") {
            in_sh = !in_sh && (fence == "sh" || fence == "bash");
            continue;
        }
        if !in_sh || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (code, comment) = match comment_at(line) {
            Some(i) => (line[..i].trim_end(), line[i + 1..].trim()),
            None => (line, ""),
        };
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        let cmd = std::mem::take(&mut pending) + code;
        out.push(Line { cmd: cmd.split_whitespace().collect::<Vec<_>>().join(" "), comment: comment.to_string() });
    }
    out
}

/// The `alchemiscale …` command a line runs, wrappers (`systemd-run …`, `docker compose
/// … exec SERVICE`) stripped; `None` for other programs.
fn alchemiscale_command(cmd: &str) -> Option<String> {
    let program = cmd.split(' ').next()?;
    let wrapped = program == "systemd-run" || (program == "docker" && cmd.contains(" exec "));
    if !(wrapped || program == "alchemiscale" || program.ends_with("/alchemiscale")) {
        return None;
    }
    let mut at = 0;
    for word in cmd.split(' ') {
        if word == "alchemiscale" || word.ends_with("/alchemiscale") {
            return Some(format!("alchemiscale{}", &cmd[at + word.len()..]));
        }
        at += word.len() + 1;
    }
    None
}

/// `NAME=value` lines (the runbook's `KEY=$(openssl rand -hex 24)`).
fn assignment(cmd: &str) -> Option<(&str, &str)> {
    let (name, value) = cmd.split_once('=')?;
    let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    (name_ok && (!value.contains(' ') || value.starts_with("$("))).then_some((name, value))
}

/// The option's value in a command line (`--to X`).
fn option<'a>(cmd: &'a str, name: &str) -> Option<&'a str> {
    let mut words = cmd.split(' ');
    words.by_ref().find(|w| *w == name)?;
    words.next()
}

/// True once `GET /ping` answers 200 on 127.0.0.1:`port`.
fn pings(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200")
}

fn backups_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| n.starts_with("alchemiscale-backup-") && n.ends_with(".dump.zst"));
    names.sort();
    names
}

/// One walk through the runbook.
struct Walk {
    /// The operator's working directory (the embedded store's default is below it).
    cwd: tempfile::TempDir,
    /// A directory whose `alchemiscale` is the binary under test.
    bin_dir: tempfile::TempDir,
    /// Store and S3 settings, and variables the runbook set (`KEY`).
    env: BTreeMap<String, String>,
    /// The runbook's example places and what stands in for them.
    subs: Vec<(String, String)>,
    /// The names the last `database backups` listed.
    listed: Vec<String>,
    ran: usize,
}

impl Walk {
    fn new(state_url: Option<String>, s3: Option<(String, String)>, moved_to: String) -> Walk {
        let cwd = tempfile::tempdir().unwrap();
        let bin_dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(BIN, bin_dir.path().join("alchemiscale")).unwrap();
        let mut env = BTreeMap::new();
        if let Some(url) = state_url {
            env.insert("ALCHEMISCALE_STATE_URL".to_string(), url);
        }
        let backups = cwd.path().join("var-backups");
        let mut subs = vec![
            ("/var/backups/alchemiscale".to_string(), backups.display().to_string()),
            ("postgres://alchemiscale@db.internal/alchemiscale".to_string(), moved_to),
        ];
        let remote = match s3 {
            Some((endpoint, bucket)) => {
                for (k, v) in [
                    ("AWS_ENDPOINT_URL", endpoint.as_str()),
                    ("AWS_ACCESS_KEY_ID", "testing"),
                    ("AWS_SECRET_ACCESS_KEY", "testing"),
                    ("AWS_DEFAULT_REGION", "us-east-1"),
                ] {
                    env.insert(k.to_string(), v.to_string());
                }
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
                format!("s3://{bucket}/runbook-{}-{nanos}/state", std::process::id())
            }
            None => cwd.path().join("backups-bucket").display().to_string(),
        };
        subs.push(("s3://alchemiscale-backups/state".to_string(), remote));
        Walk { cwd, bin_dir, env, subs, listed: Vec::new(), ran: 0 }
    }

    fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("bash");
        c.args(["-c", cmd]).current_dir(self.cwd.path()).stdin(Stdio::null());
        c.env("PATH", format!("{}:{}", self.bin_dir.path().display(), std::env::var("PATH").unwrap_or_default()));
        for k in ["ALCHEMISCALE_STATE_URL", "ALCHEMISCALE_DATA_DIR", "NEO4J_URL", "JWT_SECRET_KEY", "AWS_S3_BUCKET"] {
            c.env_remove(k);
        }
        c.envs(&self.env);
        c
    }

    /// Run a command to its end; it must succeed.
    fn run(&mut self, cmd: &str) -> String {
        eprintln!("runbook: {cmd}");
        let mut child = self.command(cmd).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(120));
        let mut out = String::new();
        let mut err = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "runbook command `{cmd}` failed ({status}):\n{out}\n{err}");
        self.ran += 1;
        out
    }

    fn output(&self, cmd: &str) -> Output {
        self.command(cmd).output().unwrap()
    }

    /// The runbook's example places replaced by the test's.
    fn localise(&self, cmd: &str) -> String {
        let mut cmd = cmd.to_string();
        for (from, to) in &self.subs {
            cmd = cmd.replace(from, to);
        }
        if let Some(name) = option(&cmd, "--name").map(str::to_string) {
            let listed = self.listed.first().expect("the runbook restores a named backup before listing any");
            cmd = cmd.replace(&name, listed);
        }
        cmd
    }

    /// `serve …`: started, checked to answer (and, with a schedule, to write its first
    /// backup), then stopped with SIGTERM, which must end it cleanly.
    fn serve(&mut self, cmd: &str) {
        let (port, compute_port) = (free_port(), free_port());
        let mut words: Vec<String> = cmd.split(' ').map(str::to_string).collect();
        for (flag, value) in
            [("--host", "127.0.0.1".to_string()), ("--port", port.to_string()), ("--compute-port", compute_port.to_string())]
        {
            match words.iter().position(|w| w == flag) {
                Some(i) => words[i + 1] = value,
                None => words.extend([flag.to_string(), value]),
            }
        }
        let cmd = words.join(" ");
        eprintln!("runbook: {cmd} (until SIGTERM)");
        let backups_to = option(&cmd, "--backup-to").map(PathBuf::from);
        let before = backups_to.as_deref().map(backups_in).unwrap_or_default();
        let child = self.command(&format!("exec {cmd}")).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut child = Killed(child);
        let t0 = Instant::now();
        while !(pings(port) && pings(compute_port)) {
            if let Some(status) = child.0.try_wait().unwrap() {
                let mut err = String::new();
                child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("`{cmd}` exited ({status}):\n{err}");
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "`{cmd}` did not answer /ping within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(dir) = &backups_to {
            while backups_in(dir).len() <= before.len() {
                assert!(t0.elapsed() < Duration::from_secs(60), "`{cmd}` wrote no backup within 60 s");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        sigterm(&child.0);
        let status = wait_exit(&mut child.0, Duration::from_secs(30));
        assert!(status.success(), "`{cmd}` did not stop cleanly on SIGTERM: {status}");
        self.ran += 1;
    }

    /// Every runnable command of one section, with the outputs the runbook shows checked.
    fn section(&mut self, heading: &str, text: &str) {
        let lines = sh_lines(text);
        assert!(!lines.is_empty(), "the runbook's section '{heading}' has no sh block");
        for line in lines {
            if let Some((name, value)) = assignment(&line.cmd) {
                let out = self.run(&format!("printf %s {value}"));
                self.env.insert(name.to_string(), out);
                continue;
            }
            let Some(cmd) = alchemiscale_command(&line.cmd) else {
                let program = line.cmd.split(' ').next().unwrap_or_default();
                if RUN_AS_WRITTEN.contains(&program) {
                    self.run(&self.localise(&line.cmd));
                    continue;
                }
                assert!(SKIPPED.contains(&program), "the runbook's '{heading}' runs `{}`, which this walk does not know", line.cmd);
                continue;
            };
            let cmd = self.localise(&cmd);
            if cmd.starts_with("alchemiscale serve") {
                self.serve(&cmd);
                continue;
            }
            let out = self.run(&cmd);
            if cmd.starts_with("alchemiscale database backups") {
                self.listed = out.lines().map(str::to_string).collect();
                assert!(!self.listed.is_empty(), "`{cmd}` listed no backups");
            }
            // `# ['alice', 'user']` is the whole output; `# "text" …` a line of it
            if line.comment.starts_with('[') {
                assert_eq!(out.trim(), line.comment, "`{cmd}` in '{heading}'");
            } else if let Some(quoted) = line.comment.strip_prefix('"').and_then(|c| c.split('"').next()) {
                assert!(out.contains(quoted), "`{cmd}` in '{heading}' printed {out:?}, the runbook says {quoted:?}");
            }
        }
    }
}

/// What a section left behind, checked by the test rather than by the runbook's text.
fn after(walk: &mut Walk, heading: &str) {
    match heading {
        "The embedded server: `serve`" => {
            let creds = walk.cwd.path().join("alchemiscale-data/credentials.txt");
            let mode = std::fs::metadata(&creds).expect("serve wrote credentials.txt").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "credentials.txt mode");
            let text = std::fs::read_to_string(&creds).unwrap();
            assert!(text.contains("user") && text.contains("compute"), "{text}");
        }
        "Identities" => {
            assert_eq!(walk.run("alchemiscale identity list -t compute").trim(), "['compute', 'hpc-west']");
            assert_eq!(walk.run("alchemiscale identity list-scope -t compute -i hpc-west").trim(), "['acme-*-*']");
        }
        "TLS" => {
            // the certificate the runbook makes is one the nginx example can serve both API names with
            let certs = walk.cwd.path().join("deploy/nginx/certs");
            assert!(certs.join("privkey.pem").exists(), "the runbook's openssl wrote no key");
            let names = walk.run("openssl x509 -in deploy/nginx/certs/fullchain.pem -noout -ext subjectAltName");
            for host in ["api.alchemiscale.example.org", "compute.alchemiscale.example.org"] {
                assert!(names.contains(&format!("DNS:{host}")), "{host} not in the certificate: {names}");
            }
            let conf = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/alchemiscale.conf")).unwrap();
            for file in ["fullchain.pem", "privkey.pem"] {
                assert!(conf.contains(&format!("/etc/nginx/certs/{file}")), "the nginx example does not read certs/{file}");
            }
        }
        "Taking backups" => {
            // written after every backup: the restore must take it away again
            walk.run("alchemiscale identity add -t user -i added-after-the-backups -k k");
        }
        "Restoring" => {
            let users = walk.run("alchemiscale identity list -t user");
            assert!(!users.contains("added-after-the-backups") && users.contains("user"), "after the restore: {users}");
            let moved = walk.subs.iter().find(|(from, _)| from.starts_with("postgres://")).unwrap().1.clone();
            let there = walk.run(&format!("alchemiscale identity list -t compute --url {moved}"));
            assert_eq!(there.trim(), "['compute', 'hpc-west']", "the store moved with dump and load");
        }
        "Moving from upstream alchemiscale" => {
            assert_eq!(walk.run("alchemiscale identity list-scope -t user -i alice").trim(), "['acme-*-*']");
        }
        _ => {}
    }
}

fn walk_runbook(mut walk: Walk) {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md")).unwrap();
    let sections = sections(&doc);
    for heading in WALKED {
        let (_, text) = sections.iter().find(|(h, _)| h == heading).unwrap_or_else(|| panic!("the runbook has no section '{heading}'"));
        walk.section(heading, text);
        after(&mut walk, heading);
    }
    // the backups the runbook took are where it says, in the number it keeps
    let local = backups_in(&walk.cwd.path().join("var-backups"));
    assert!(local.len() >= 3 && local.len() <= 14, "{local:?}");
    let verify = walk.output(&format!("alchemiscale database verify-dump var-backups/{}", local[0]));
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(walk.ran >= 25, "only {} runbook commands ran", walk.ran);
}

fn s3() -> Option<(String, String)> {
    let endpoint = std::env::var("ALCHEMISCALE_TEST_S3_ENDPOINT").ok().filter(|e| !e.is_empty());
    if endpoint.is_none() && std::env::var("ALCHEMISCALE_TEST_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("the runbook's S3 backups need ALCHEMISCALE_TEST_S3_ENDPOINT in CI");
    }
    let bucket = std::env::var("ALCHEMISCALE_TEST_S3_BUCKET").unwrap_or_else(|_| "alchemiscale-test".into());
    endpoint.map(|e| (e, bucket))
}

async fn new_postgres_url() -> Option<String> {
    match testing::postgres_location().await? {
        StoreLocation::Postgres { url } => Some(url),
        other => unreachable!("{other:?}"),
    }
}

/// The store the runbook's `database load … --url postgres://…` moves to: a new
/// PostgreSQL schema, or without PostgreSQL a new SQLite file.
async fn moved_to(dir: &Path) -> String {
    match new_postgres_url().await {
        Some(url) => url,
        None => format!("sqlite://{}", dir.join("moved/state.db").display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_on_the_embedded_store() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("moved")).unwrap();
    let walk = Walk::new(None, s3(), moved_to(scratch.path()).await);
    tokio::task::spawn_blocking(move || walk_runbook(walk)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_on_postgres() {
    let Some(url) = new_postgres_url().await else {
        eprintln!("note: PostgreSQL runbook walk skipped (set ALCHEMISCALE_TEST_POSTGRES_URL to run it)");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("moved")).unwrap();
    let walk = Walk::new(Some(url), s3(), moved_to(scratch.path()).await);
    tokio::task::spawn_blocking(move || walk_runbook(walk)).await.unwrap();
}

#[test]
fn shell_lines_are_read_as_the_runbook_means_them() {
    let text = "```sh\nKEY=$(openssl rand -hex 24)\nalchemiscale identity list -t user   # ['alice', 'user']\n\
                systemd-run --wait --pipe -p X=y \\\n    /usr/local/bin/alchemiscale database check\n# a comment\n```\n\
                ```python\nalchemiscale = 1\n```\n";
    let lines = sh_lines(text);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(assignment(&lines[0].cmd), Some(("KEY", "$(openssl rand -hex 24)")));
    assert_eq!(lines[1].comment, "['alice', 'user']");
    assert_eq!(alchemiscale_command(&lines[1].cmd).unwrap(), "alchemiscale identity list -t user");
    assert_eq!(alchemiscale_command(&lines[2].cmd).unwrap(), "alchemiscale database check");
    assert_eq!(comment_at("psql -c \"UPDATE x SET k = '#1'\" # note"), Some(32));
    assert_eq!(assignment("alchemiscale identity add -k x=y"), None);
    assert_eq!(alchemiscale_command("docker logs alchemiscale"), None);
    assert_eq!(
        alchemiscale_command("docker compose -f c.yaml exec api alchemiscale database check").unwrap(),
        "alchemiscale database check"
    );
}
