//! The deployment files in deploy/ against the real binary: every `alchemiscale` command
//! line they run (compose services, systemd ExecStart, the Dockerfile's CMD) is accepted by
//! its argument parser (`alchemiscale ARGS --help`: unknown flags and bad values fail) and
//! names a command to run; every ALCHEMISCALE_*, JWT_* and AWS_* variable they set is one
//! that command documents (`[env: NAME]` in its help). Plus the compose wiring (depends_on,
//! healthchecks tried on a live server, secrets only from deploy/.env), the systemd units
//! (`systemd-analyze verify` when present), the Dockerfile's stages, and the nginx example:
//! `nginx -t`, then a live TLS proxy in front of `alchemiscale serve`, when
//! `$ALCHEMISCALE_TEST_NGINX` names nginx (`.ci/run` sets it; otherwise that part is skipped).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Killed, Stopped, BIN};
use serde_yaml_ng::Value;

type Env = BTreeMap<String, String>;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy().join(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// `alchemiscale ARGS --help` must succeed and describe a runnable (leaf) command. Returns
/// the command ("alchemiscale database backup") and the variables its help documents.
fn parse_check(args: &[String], origin: &str) -> (String, BTreeSet<String>) {
    let out = Command::new(BIN).args(args).arg("--help").env_clear().env("PATH", "/usr/bin:/bin").output().unwrap();
    let line = args.join(" ");
    assert!(out.status.success(), "{origin}: the parser refuses `alchemiscale {line}`:\n{}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(!help.contains("\nCommands:\n"), "{origin}: `alchemiscale {line}` names no command to run");
    let usage = help.lines().find_map(|l| l.strip_prefix("Usage: ")).expect("a Usage line");
    let path = usage.split(' ').take_while(|w| !w.starts_with(['[', '<', '-'])).collect::<Vec<_>>().join(" ");
    let vars = help
        .split("[env:")
        .skip(1)
        .map(|s| s.trim_start().chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect());
    (path, vars.collect())
}

/// Variables the binary reads: the ones the deployment files must get right.
fn ours(name: &str) -> bool {
    ["ALCHEMISCALE_", "JWT_", "AWS_"].iter().any(|p| name.starts_with(p))
}

/// The simple commands of a shell script (quotes, `\`-newline, `;` `&&` `||` `|` `&`,
/// comments and redirections dropped), `$NAME` and `${NAME}` expanded by `var` (an unknown one panics).
fn shell_commands(script: &str, var: &dyn Fn(&str) -> Option<String>) -> Vec<Vec<String>> {
    let (mut cmds, mut cmd, mut word): (Vec<Vec<String>>, Vec<String>, Option<String>) = (vec![], vec![], None);
    let mut cs = script.chars().peekable();
    let (mut single, mut double) = (false, false);
    while let Some(c) = cs.next() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '\\' if !single => match cs.next() {
                Some('\n') | None => continue,
                Some(n) => word.get_or_insert_with(String::new).push(n),
            },
            '$' if !single && cs.peek().is_some_and(|n| *n == '{' || n.is_ascii_alphabetic() || *n == '_') => {
                let braced = cs.next_if_eq(&'{').is_some();
                let mut name = String::new();
                while let Some(n) = cs.next_if(|n| n.is_ascii_alphanumeric() || *n == '_') {
                    name.push(n);
                }
                if braced {
                    assert_eq!(cs.next(), Some('}'), "only plain ${{NAME}} is understood in {script:?}");
                }
                let value = var(&name).unwrap_or_else(|| panic!("${name} is set nowhere (in {script:?})"));
                word.get_or_insert_with(String::new).push_str(&value);
            }
            c if single || double => word.get_or_insert_with(String::new).push(c),
            '#' if word.is_none() => while cs.next_if(|n| *n != '\n').is_some() {},
            '>' | '<' => {
                // a redirection: dropped with its fd number and its target (unless `>&N`)
                let mut op = String::new();
                while let Some(n) = cs.next_if(|n| matches!(n, '>' | '&' | '<') || n.is_ascii_digit()) {
                    op.push(n);
                }
                if !op.contains('&') {
                    while cs.next_if(|n| *n == ' ').is_some() {}
                    while cs.next_if(|n| !matches!(n, ' ' | '\t' | '\n' | ';' | '&' | '|')).is_some() {}
                }
                word = None;
            }
            ';' | '&' | '|' | '\n' | ' ' | '\t' => {
                cmd.extend(word.take());
                if c != ' ' && c != '\t' && !cmd.is_empty() {
                    cmds.push(std::mem::take(&mut cmd));
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    cmd.extend(word);
    cmds.extend(Some(cmd).filter(|c| !c.is_empty()));
    cmds
}

/// The arguments of every `alchemiscale` run in a script (after `do`, `exec`, …).
fn invocations(cmds: &[Vec<String>]) -> Vec<Vec<String>> {
    let keyword = |w: &String| ["do", "then", "else", "exec", "while", "until", "if", "!", "{"].contains(&w.as_str());
    let mut out = vec![];
    for c in cmds {
        let mut words = c.iter().skip_while(|w| keyword(w));
        if words.next().is_some_and(|w| w == "alchemiscale" || w.ends_with("/alchemiscale")) {
            out.push(words.cloned().collect());
        }
    }
    out
}

/// Compose interpolation of `s` with deploy/env.example's values, recording the names used.
fn interpolate(s: &str, env: &Env, used: &mut BTreeSet<String>) -> String {
    let (mut out, mut rest) = (String::new(), s);
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (expr, after) = match rest.strip_prefix('{') {
            Some(r) => r.split_at(r.find('}').expect("an unclosed ${")),
            None => rest.split_at(rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())),
        };
        rest = after.strip_prefix('}').unwrap_or(after);
        let name_end = expr.find([':', '-', '?']).unwrap_or(expr.len());
        let (name, op) = expr.split_at(name_end);
        used.insert(name.to_string());
        let value = env.get(name).filter(|v| !v.is_empty());
        match (op.trim_start_matches(':').chars().next(), value) {
            (Some('-'), v) => out.push_str(v.map(String::as_str).unwrap_or(&op.trim_start_matches(':')[1..])),
            (Some('?') | None, _) => {
                let v = env.get(name).unwrap_or_else(|| panic!("compose uses ${{{name}}} but deploy/env.example does not define it"));
                out.push_str(if v.is_empty() { "filled-in-secret" } else { v });
            }
            (op, _) => panic!("unexpected interpolation {op:?} in {s:?}"),
        }
    }
    out + rest
}

fn interpolate_all(v: &mut Value, env: &Env, used: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => *s = interpolate(s, env, used),
        Value::Sequence(seq) => seq.iter_mut().for_each(|x| interpolate_all(x, env, used)),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, x)| interpolate_all(x, env, used)),
        _ => {}
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s.iter().map(text).collect(),
        Value::String(s) => shell_commands(s, &|_| None).concat(),
        Value::Null => vec![],
        other => panic!("expected a list, found {other:?}"),
    }
}

fn service_env(svc: &Value) -> Env {
    match &svc["environment"] {
        Value::Mapping(m) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Sequence(s) => s.iter().map(|kv| text(kv).split_once('=').map(|(k, v)| (k.into(), v.into())).unwrap()).collect(),
        _ => Env::new(),
    }
}

/// `KEY=VALUE` lines; with `commented`, also `#KEY=VALUE` examples.
fn env_file(text: &str, commented: bool) -> Env {
    let line = |l: &str| if commented { l.trim_start_matches('#').to_string() } else { l.to_string() };
    text.lines()
        .map(line)
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .collect()
}

/// The value of `--flag` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).map(|i| args[i + 1].as_str())
}

/// Dockerfile instructions (continuations joined, comments dropped): (KEYWORD, rest).
fn dockerfile() -> Vec<(String, String)> {
    let joined =
        read("Dockerfile").lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n").replace("\\\n", " ");
    let split = joined.lines().filter_map(|l| l.trim().split_once(' ').map(|(k, r)| (k.to_uppercase(), r.trim().to_string())));
    split.collect()
}

fn json_args(instr: &[(String, String)], kw: &str) -> Vec<String> {
    let (_, v) = instr.iter().rev().find(|(k, _)| k == kw).unwrap_or_else(|| panic!("the Dockerfile has no {kw}"));
    serde_json::from_str(v).unwrap_or_else(|_| panic!("{kw} must be a JSON array (exec form): {v}"))
}

#[test]
fn dockerfile_builds_one_binary_and_runs_the_embedded_server() {
    let instr = dockerfile();
    let froms: Vec<&String> = instr.iter().filter(|(k, _)| k == "FROM").map(|(_, v)| v).collect();
    assert!(froms.len() >= 2 && froms[0].starts_with("rust:1-bookworm AS "), "a rust:1-bookworm builder stage first: {froms:?}");
    assert_eq!(froms.last().unwrap().as_str(), "debian:bookworm-slim");
    let builder = froms[0].rsplit(' ').next().unwrap();
    let at_last = instr.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let (build, last) = instr.split_at(at_last);
    assert!(build.iter().any(|(k, v)| k == "RUN" && v.contains("cargo build --release") && v.contains("-p alchemiscale-cli")));
    let copies: Vec<&String> = last.iter().filter(|(k, _)| k == "COPY" || k == "ADD").map(|(_, v)| v).collect();
    assert_eq!(copies, [&format!("--from={builder} /usr/local/bin/alchemiscale /usr/local/bin/alchemiscale")], "only the binary");
    let installs: Vec<&String> = last.iter().filter(|(k, v)| k == "RUN" && v.contains("apt-get install")).map(|(_, v)| v).collect();
    assert!(installs.iter().any(|v| v.contains(" ca-certificates")), "ca-certificates in the final stage");
    assert!(installs.iter().all(|v| v
        .split("apt-get install")
        .nth(1)
        .unwrap()
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .all(|w| w.starts_with('-') || w == "ca-certificates")));
    let user = last.iter().rev().find(|(k, _)| k == "USER").map(|(_, v)| v.as_str()).expect("a USER");
    assert!(user != "root" && user != "0", "runs as root");
    assert_eq!(json_args(&instr, "ENTRYPOINT"), ["alchemiscale"]);
    let cmd = json_args(&instr, "CMD");
    let (path, documented) = parse_check(&cmd, "Dockerfile CMD");
    assert_eq!(path, "alchemiscale serve");
    assert_eq!(flag(&cmd, "--host"), Some("0.0.0.0"), "bound for containers");
    for (_, v) in last.iter().filter(|(k, _)| k == "ENV") {
        let name = v.split(['=', ' ']).next().unwrap();
        assert!(!ours(name) || documented.contains(name), "Dockerfile ENV {name} is not read by `{path}`");
    }
    let exposed: BTreeSet<&str> = last.iter().filter(|(k, _)| k == "EXPOSE").flat_map(|(_, v)| v.split_whitespace()).collect();
    assert_eq!(exposed, [flag(&cmd, "--port").unwrap(), flag(&cmd, "--compute-port").unwrap()].into(), "EXPOSE the CMD's ports");
    let ignore = std::fs::read_to_string(deploy().join("../.dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim_end_matches('/') == "target") && ignore.contains("deploy/.env"), "keep target/ and secrets out");
}

/// The service's healthcheck fails with no server, and passes once the service's own
/// command runs (on a free port, SQLite in a temporary directory).
fn healthcheck_is_real(name: &str, args: &[String], check: &Value) {
    let port = flag(args, "--port").unwrap_or_else(|| panic!("{name}: no --port"));
    let test = strings(&check["test"]);
    assert_eq!(test.first().map(String::as_str), Some("CMD"), "{name}: healthcheck test must be exec form");
    let free = free_port().to_string();
    let probe: Vec<String> = test[1..].iter().map(|w| w.replace(&format!("/{port}"), &format!("/{free}"))).collect();
    assert_ne!(probe, test[1..], "{name}: the healthcheck does not ask port {port}");
    let ok = || Command::new(&probe[0]).args(&probe[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success();
    assert!(!ok(), "{name}: healthcheck passes with no server");
    let mut run: Vec<String> = args.to_vec();
    for (f, v) in [("--host", "127.0.0.1"), ("--port", free.as_str()), ("--metrics-listen", "127.0.0.1:0")] {
        if let Some(i) = run.iter().position(|a| a == f) {
            run[i + 1] = v.to_string();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(BIN);
    server.args(&run).env_clear().env("ALCHEMISCALE_DATA_DIR", dir.path()).env("JWT_SECRET_KEY", "test");
    let server = Killed(server.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(30), "{name}: healthcheck never passed against `alchemiscale {}`", run.join(" "));
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
}

#[test]
fn compose_runs_commands_the_binary_accepts() {
    let example = env_file(&read("env.example"), false);
    let mut raw: Value = serde_yaml_ng::from_str(&read("compose.yaml")).expect("compose.yaml is YAML");
    raw.apply_merge().unwrap();
    let mut used = BTreeSet::new();
    let mut doc = raw.clone();
    interpolate_all(&mut doc, &example, &mut used);
    let services = doc["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().map(text).collect();
    for want in ["postgres", "s3", "api", "compute-api", "proxy", "backup"] {
        assert!(names.contains(want), "no `{want}` service");
    }
    assert_eq!(text(&doc["services"]["postgres"]["image"]), "postgres:15");
    // the image built from deploy/Dockerfile, and what it runs by default
    let built: Vec<&Value> = services.values().filter(|s| s["build"].is_mapping()).collect();
    assert!(built.len() == 1 && text(&built[0]["build"]["dockerfile"]) == "deploy/Dockerfile", "one service builds deploy/Dockerfile");
    let image = text(&built[0]["image"]);
    let entrypoint = json_args(&dockerfile(), "ENTRYPOINT");
    let mut union = BTreeSet::new();
    let mut commands = BTreeMap::new();
    for (name, svc) in services.iter().map(|(k, v)| (text(k), v)) {
        let env = service_env(svc);
        for (k, v) in service_env(&raw["services"][name.as_str()]) {
            let secret = ["PASSWORD", "SECRET"].iter().any(|s| k.contains(s));
            let op = v
                .strip_prefix("${")
                .and_then(|r| r.strip_suffix('}'))
                .map(|r| r.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_'));
            let required = op.is_some_and(|op| op.is_empty() || op.trim_start_matches(':').starts_with('?'));
            assert!(!secret || required, "{name}: {k} must come from deploy/.env, without a default: {v}");
        }
        for (dep, how) in svc["depends_on"].as_mapping().into_iter().flatten().map(|(k, v)| (text(k), text(&v["condition"]))) {
            let target = &doc["services"][dep.as_str()];
            assert!(target.is_mapping(), "{name} depends on a missing service {dep}");
            match how.as_str() {
                "service_healthy" => assert!(target["healthcheck"].is_mapping(), "{name} waits for {dep} to be healthy: no healthcheck"),
                "service_completed_successfully" => assert_eq!(text(&target["restart"]), "no", "{name} waits for {dep} to finish"),
                "service_started" => {}
                other => panic!("{name}: depends_on condition {other}"),
            }
        }
        if text(&svc["image"]) != image {
            assert!(!env.keys().any(|k| ours(k)), "{name} sets alchemiscale variables but does not run alchemiscale");
            continue;
        }
        assert!(svc["ports"].is_null(), "{name}: only the proxy publishes ports");
        let argv: Vec<String> = match &svc["entrypoint"] {
            Value::Null => entrypoint.iter().cloned().chain(strings(&svc["command"])).collect(),
            e => strings(e).into_iter().chain(strings(&svc["command"])).collect(),
        };
        let runs = match argv.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["alchemiscale", ..] => vec![argv[1..].to_vec()],
            [sh, "-c", script, ..] if sh.ends_with("sh") => invocations(&shell_commands(script, &|v| env.get(v).cloned())),
            _ => panic!("{name}: cannot tell what {argv:?} runs"),
        };
        assert!(!runs.is_empty(), "{name} runs the alchemiscale image but no alchemiscale command");
        let mut documented = BTreeSet::new();
        for args in &runs {
            let (path, vars) = parse_check(args, &format!("compose service {name}"));
            documented.extend(vars);
            commands.insert(name.clone(), (path, args.clone()));
        }
        for k in env.keys().filter(|k| ours(k)) {
            assert!(documented.contains(k), "compose service {name} sets {k}, which its command does not read");
        }
        union.extend(documented);
    }
    let path = |s: &str| commands.get(s).map(|(p, _)| p.as_str());
    assert_eq!(path("api"), Some("alchemiscale api"));
    assert_eq!(path("compute-api"), Some("alchemiscale compute api"));
    assert_eq!(path("backup"), Some("alchemiscale database backup"));
    let backup = &commands["backup"].1;
    assert!(flag(backup, "--to").is_some_and(|t| t.starts_with("s3://")) && flag(backup, "--keep").is_some());
    for (name, value) in &example {
        assert!(used.contains(name), "deploy/env.example sets {name}, which compose.yaml never uses");
        assert!(!ours(name) || union.contains(name), "deploy/env.example sets {name}, which no alchemiscale command reads");
        assert!(!(name.contains("PASSWORD") || name.contains("SECRET")) || value.is_empty(), "env.example ships a secret: {name}");
    }
    // the proxy serves deploy/nginx/alchemiscale.conf, certificates where the config says
    let proxy = &doc["services"]["proxy"];
    let mounts = strings(&proxy["volumes"]);
    let conf = mounts.iter().filter_map(|m| m.split(':').nth(1).filter(|_| m.starts_with("./nginx/alchemiscale.conf:")));
    assert!(conf.clone().any(|t| t.starts_with("/etc/nginx/")), "proxy does not mount ./nginx/alchemiscale.conf: {mounts:?}");
    let nginx = read("nginx/alchemiscale.conf");
    for cert in nginx.lines().filter_map(|l| l.trim().strip_prefix("ssl_certificate")).map(|l| l.split_whitespace().last().unwrap()) {
        let dir = Path::new(cert.trim_end_matches(';')).parent().unwrap().to_str().unwrap();
        assert!(mounts.iter().any(|m| m.split(':').nth(1) == Some(dir)), "proxy does not mount {dir} ({cert})");
    }
    // each upstream server is a compose service's --port
    for server in upstream_servers(&nginx) {
        let (host, port) = server.split_once(':').unwrap();
        let args = &commands.get(host).unwrap_or_else(|| panic!("upstream {server}: no such alchemiscale service")).1;
        assert_eq!(flag(args, "--port"), Some(port), "upstream {server}");
    }
    for name in ["api", "compute-api"] {
        healthcheck_is_real(name, &commands[name].1, &doc["services"][name]["healthcheck"]);
    }
}

/// The `server HOST:PORT` lines of the upstream blocks.
fn upstream_servers(nginx: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = vec![];
    for l in nginx.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        inside = (inside || l.starts_with("upstream ")) && l != "}";
        if let Some(s) = l.strip_prefix("server ").filter(|_| inside) {
            out.push(s.split_whitespace().next().unwrap().trim_end_matches(';').to_string());
        }
    }
    out
}

/// A unit file's (section, key, value) entries, continuation lines joined.
fn unit(text: &str) -> Vec<(String, String, String)> {
    let (mut out, mut section) = (vec![], String::new());
    let joined = text.replace("\\\n", " ");
    for l in joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';'])) {
        match l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Some(s) => section = s.to_string(),
            None => {
                let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not an assignment: {l}"));
                assert!(!section.is_empty(), "{l} before any section");
                out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn systemd_units_run_commands_the_binary_accepts() {
    let env_example = env_file(&read("systemd/alchemiscale.env.example"), true);
    let mut union = BTreeSet::new();
    let expected = [
        ("alchemiscale-api.service", "alchemiscale api"),
        ("alchemiscale-compute-api.service", "alchemiscale compute api"),
        ("alchemiscale-backup.service", "alchemiscale database backup"),
    ];
    for (file, want) in expected {
        let entries = unit(&read(&format!("systemd/{file}")));
        let get = |s: &str, k: &str| entries.iter().filter(|(es, ek, _)| es == s && ek == k).map(|e| e.2.as_str()).collect::<Vec<_>>();
        let sections: BTreeSet<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let oneshot = get("Service", "Type") == ["oneshot"];
        let want_sections: &[&str] = if oneshot { &["Unit", "Service"] } else { &["Unit", "Service", "Install"] };
        assert_eq!(sections, want_sections.iter().copied().collect(), "{file}: sections");
        assert!(oneshot || get("Service", "Restart") == ["on-failure"], "{file}: Restart=on-failure");
        for (k, v) in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"), ("ProtectHome", "yes")] {
            assert_eq!(get("Service", k), [v], "{file}: {k}");
        }
        assert!(get("Service", "User").iter().all(|u| *u != "root") && !get("Service", "User").is_empty(), "{file}: a User");
        assert_eq!(get("Service", "EnvironmentFile"), ["/etc/alchemiscale/alchemiscale.env"], "{file}");
        let set: Env = get("Service", "Environment").iter().flat_map(|v| env_file(v, false)).collect();
        let vars = |n: &str| set.get(n).or(env_example.get(n)).cloned();
        let exec = get("Service", "ExecStart");
        assert_eq!(exec.len(), 1, "{file}: one ExecStart");
        let words = shell_commands(exec[0], &vars).concat();
        assert_eq!(words[0], "/usr/local/bin/alchemiscale", "{file}: ExecStart runs the installed binary");
        let (path, documented) = parse_check(&words[1..], file);
        assert_eq!(path, want, "{file}");
        for k in set.keys().filter(|k| ours(k)) {
            assert!(documented.contains(k), "{file}: Environment={k} is not read by `{path}`");
        }
        union.extend(documented);
    }
    for k in env_example.keys() {
        assert!(union.contains(k), "systemd/alchemiscale.env.example sets {k}, which no unit's command reads");
    }
    let timer = unit(&read("systemd/alchemiscale-backup.timer"));
    let get = |s: &str, k: &str| timer.iter().find(|(es, ek, _)| es == s && ek == k).map(|e| e.2.clone());
    assert_eq!(get("Timer", "Unit").as_deref(), Some("alchemiscale-backup.service"));
    assert!(get("Timer", "OnCalendar").is_some() && get("Install", "WantedBy").as_deref() == Some("timers.target"));

    // systemd's own verdict, on copies that run this build's binary
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze not found: `systemd-analyze verify` skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![];
    for f in std::fs::read_dir(deploy().join("systemd")).unwrap().map(|e| e.unwrap().path()) {
        if matches!(f.extension().and_then(|e| e.to_str()), Some("service" | "timer")) {
            let to = dir.path().join(f.file_name().unwrap());
            std::fs::write(&to, std::fs::read_to_string(&f).unwrap().replace("/usr/local/bin/alchemiscale", BIN)).unwrap();
            files.push(to);
        }
    }
    let out = Command::new("systemd-analyze").arg("verify").args(&files).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours = stderr.lines().filter(|l| l.contains("alchemiscale")).collect::<Vec<_>>();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn readme_commands_are_accepted() {
    let readme = read("README.md");
    let top = ["serve", "api", "compute", "identity", "database", "strategist"];
    let mut n = 0;
    for block in readme.split("```").skip(1).step_by(2) {
        for cmd in shell_commands(block, &|v| Some(format!("${v}"))) {
            let at =
                cmd.windows(2).position(|w| (w[0] == "alchemiscale" || w[0].ends_with("/alchemiscale")) && top.contains(&w[1].as_str()));
            if let Some(i) = at {
                parse_check(&cmd[i + 1..], "deploy/README.md");
                n += 1;
            }
        }
    }
    assert!(n >= 3, "deploy/README.md shows {n} alchemiscale commands");
}

/// Every `alchemiscale …` command in the `sh` blocks of the runbook and the other docs
/// is one the binary's parser accepts (synopses with `[…]`/`<…>` placeholders and `text`
/// blocks are not checked).
#[test]
fn docs_commands_are_accepted() {
    let top = ["serve", "api", "compute", "identity", "database", "strategist", "bench"];
    let mut n = 0;
    for doc in ["operations.md", "configuration.md", "compute.md", "strategies.md", "benchmarks.md", "compatibility.md"] {
        let path = deploy().join("../docs").join(doc);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("docs/{doc}: {e}"));
        for block in text.split("```").skip(1).step_by(2) {
            let Some(body) = block.strip_prefix("sh\n").or_else(|| block.strip_prefix("bash\n")) else { continue };
            for cmd in shell_commands(body, &|v| Some(format!("${v}"))) {
                let at = cmd
                    .windows(2)
                    .position(|w| (w[0] == "alchemiscale" || w[0].ends_with("/alchemiscale")) && top.contains(&w[1].as_str()));
                // synopses (`[-n NAME]`, `<FILE>`) describe a command rather than run one
                let synopsis = cmd.iter().any(|w| w.starts_with(['[', '<']) || w.ends_with([']', '>']) || w == "…" || w == "...");
                if let (Some(i), false) = (at, synopsis) {
                    parse_check(&cmd[i + 1..], &format!("docs/{doc}"));
                    n += 1;
                }
            }
        }
    }
    assert!(n >= 20, "the docs show only {n} alchemiscale commands in sh blocks");
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_example_proxies_tls_to_the_apis() {
    let conf = read("nginx/alchemiscale.conf");
    let live: Vec<&str> = conf.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for want in [
        "least_conn;",
        "proxy_next_upstream error timeout http_502 http_503;",
        "client_max_body_size 1g;",
        "proxy_request_buffering off;",
        "return 308 https://$host$request_uri;",
    ] {
        assert!(live.contains(&want), "nginx/alchemiscale.conf lacks `{want}`");
    }
    assert!(live.iter().any(|l| l.starts_with("proxy_next_upstream_tries ")) && !conf.contains(" non_idempotent"));
    assert!(
        upstream_servers(&conf).len() >= 2 && live.iter().filter(|l| l.starts_with("server ") && l.contains("max_fails=")).count() >= 2
    );
    let tls_servers = live.iter().filter(|l| l.starts_with("listen ") && l.contains(" ssl")).count();
    assert_eq!(live.iter().filter(|l| **l == "location ^~ /metrics {").count(), tls_servers, "/metrics denied on every TLS server");

    let Some(nginx) = std::env::var_os("ALCHEMISCALE_TEST_NGINX") else {
        eprintln!("ALCHEMISCALE_TEST_NGINX is not set: nginx -t and the live proxy check skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().to_str().unwrap().to_string();
    std::fs::set_permissions(&t, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let openssl = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1"])
        .args(["-keyout", &format!("{t}/key.pem"), "-out", &format!("{t}/cert.pem")])
        .output()
        .expect("openssl");
    assert!(openssl.status.success(), "openssl: {}", String::from_utf8_lossy(&openssl.stderr));

    // the APIs: `serve` on ephemeral ports, which it prints
    let mut serve = Command::new(BIN);
    serve.args(["serve", "--host", "127.0.0.1", "--port", "0", "--compute-port", "0", "--no-strategist"]);
    serve.env_clear().env("ALCHEMISCALE_DATA_DIR", format!("{t}/data")).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut serve = Killed(serve.spawn().unwrap());
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(serve.0.stdout.take().unwrap()));
    let (mut user, mut compute) = (None, None);
    while user.is_none() || compute.is_none() {
        let l = lines.next().expect("serve printed its addresses").unwrap();
        let addr = || l.rsplit("http://").next().unwrap().trim().to_string();
        match l.trim_start() {
            s if s.starts_with("user API:") => user = Some(addr()),
            s if s.starts_with("compute API:") => compute = Some(addr()),
            _ => {}
        }
    }

    // the example with local addresses: each upstream gets a dead instance before the live one
    let (http, https, dead) = (free_port(), free_port(), free_port());
    let mut rewritten = 0;
    let mut copy = String::new();
    for l in conf.lines() {
        let s = l.trim();
        let line = if let Some(r) = s.strip_prefix("listen 80") {
            format!("listen 127.0.0.1:{http}{r}")
        } else if let Some(r) = s.strip_prefix("listen 443") {
            format!("listen 127.0.0.1:{https}{r}")
        } else if s.starts_with("ssl_certificate_key ") {
            format!("ssl_certificate_key {t}/key.pem;")
        } else if s.starts_with("ssl_certificate ") {
            format!("ssl_certificate {t}/cert.pem;")
        } else if let Some(r) = s.strip_prefix("server api:8000 ") {
            format!("server 127.0.0.1:{dead} {r} server {} {r}", user.as_ref().unwrap())
        } else if let Some(r) = s.strip_prefix("server compute-api:8001 ") {
            format!("server 127.0.0.1:{dead} {r} server {} {r}", compute.as_ref().unwrap())
        } else {
            copy += l;
            copy.push('\n');
            continue;
        };
        rewritten += 1;
        copy += &line;
        copy.push('\n');
    }
    assert_eq!(rewritten, 3 + 3 * tls_servers, "listen lines, certificates and upstream servers to rewrite");
    std::fs::write(format!("{t}/alchemiscale.conf"), copy).unwrap();
    let temp: String =
        ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].iter().map(|p| format!("{p}_temp_path {t}/{p}_temp;\n")).collect();
    let main = format!(
        "daemon off;\npid {t}/nginx.pid;\nerror_log {t}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\naccess_log off;\n{temp}include {t}/alchemiscale.conf;\n}}\n"
    );
    std::fs::write(format!("{t}/nginx.conf"), main).unwrap();
    let args = ["-p", &t, "-c", &format!("{t}/nginx.conf"), "-e", &format!("{t}/error.log")];
    let test = Command::new(&nginx).arg("-t").args(args).output().expect("ALCHEMISCALE_TEST_NGINX runs");
    assert!(test.status.success(), "nginx -t:\n{}", String::from_utf8_lossy(&test.stderr));
    let _nginx = Stopped(Command::new(&nginx).args(args).stderr(Stdio::null()).spawn().unwrap());
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", https)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nginx did not listen:\n{}",
            std::fs::read_to_string(format!("{t}/error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .resolve("api.alchemiscale.example.org", local)
        .resolve("compute.alchemiscale.example.org", local)
        .build()
        .unwrap();
    let api = format!("https://api.alchemiscale.example.org:{https}");
    let compute = format!("https://compute.alchemiscale.example.org:{https}");
    let r = client.get(format!("http://api.alchemiscale.example.org:{http}/ping")).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://api.alchemiscale.example.org/ping");
    for (base, title) in [(&api, "AlchemiscaleAPI"), (&compute, "AlchemiscaleComputeAPI")] {
        // four times: some land on the dead instance first and must be passed on
        for _ in 0..4 {
            let r = client.get(format!("{base}/ping")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{base}/ping");
            assert!(r.headers().contains_key("strict-transport-security"));
            assert_eq!(r.json::<serde_json::Value>().await.unwrap(), serde_json::json!({ "api": title }));
            // a POST larger than nginx's default 1 MB limit reaches the API (which refuses it)
            let r = client.post(format!("{base}/token")).body(vec![b'a'; 3 << 20]).send().await.unwrap();
            assert!(r.status().is_client_error() && r.status() != 413, "POST {base}/token: {}", r.status());
        }
        let r = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 403, "{base}/metrics");
    }
    // the console behind the TLS proxy marks its cookies Secure (nginx passes X-Forwarded-Proto)
    let r = client.get(format!("{api}/ui/login")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{api}/ui/login");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("alchemiscale_login=") && cookie.contains("; Secure"), "{cookie}");
    drop(serve);
}
