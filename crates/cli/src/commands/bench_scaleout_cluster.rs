//! The cluster `bench scaleout` runs: several `api` and `compute api` processes of this
//! binary on one PostgreSQL store and one object store, behind one nginx.
//!
//! nginx serves the deployment example `deploy/nginx/alchemiscale.conf` (compiled in),
//! rewritten for a bench on one machine: plain HTTP on 127.0.0.1 instead of TLS, the
//! upstream servers replaced by the instances started here, and the compute server block
//! given twice — once over every compute-API instance, once over the first only — so the
//! claim rate through 1 and through N instances is measured against the same nginx and
//! the same store. Everything else (balancing, keep-alive, retry policy, timeouts, body
//! limits) is the example's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::bench::die_with_parent;
use anyhow::{bail, ensure, Context};

/// The deployment example, as shipped in `deploy/`.
const DEPLOY_NGINX_CONF: &str = include_str!("../../../../deploy/nginx/alchemiscale.conf");

/// One server process.
pub struct Instance {
    pub child: Child,
    pub port: u16,
    /// SIGKILLed by the bench (no longer to be stopped or measured).
    pub killed: bool,
}

impl Instance {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.killed = true;
    }
}

/// Stop a process we started: SIGTERM, then SIGKILL after 10 s.
fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on the PID of a child we own and have not reaped
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The processes and their URLs.
pub struct Cluster {
    pub api: Vec<Instance>,
    pub compute: Vec<Instance>,
    nginx: Child,
    /// Through nginx: the user API (every instance).
    pub user_url: String,
    /// Through nginx: the compute API over every instance.
    pub compute_url: String,
    /// Through nginx: the compute API over the first instance only.
    pub compute_one_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        terminate(&mut self.nginx);
        for i in self.api.iter_mut().chain(self.compute.iter_mut()) {
            terminate(&mut i.child);
        }
    }
}

/// How the API processes are started.
pub struct ServerArgs {
    /// `--url …` and the object-store options, passed to every instance.
    pub common: Vec<String>,
    pub jwt_secret: String,
}

pub struct Ports {
    pub user: u16,
    pub compute: u16,
    pub compute_one: u16,
}

impl Cluster {
    pub async fn start(nginx: &Path, instances: usize, args: &ServerArgs) -> anyhow::Result<Cluster> {
        ensure!(instances >= 1, "--instances must be at least 1");
        let dir = tempfile::tempdir()?;
        let mut api = Vec::new();
        let mut compute = Vec::new();
        for i in 0..instances {
            api.push(spawn_server(&["api"], args, dir.path(), &format!("api{i}"))?);
            compute.push(spawn_server(&["compute", "api"], args, dir.path(), &format!("compute{i}"))?);
        }
        let free = super::bench_curve::free_port;
        let ports = Ports { user: free()?, compute: free()?, compute_one: free()? };
        let user_ports: Vec<u16> = api.iter().map(|i| i.port).collect();
        let compute_ports: Vec<u16> = compute.iter().map(|i| i.port).collect();
        let conf = proxy_conf(DEPLOY_NGINX_CONF, &user_ports, &compute_ports, &ports)?;
        let nginx = start_nginx(nginx, dir.path(), &conf)?;
        let cluster = Cluster {
            api,
            compute,
            nginx,
            user_url: format!("http://127.0.0.1:{}", ports.user),
            compute_url: format!("http://127.0.0.1:{}", ports.compute),
            compute_one_url: format!("http://127.0.0.1:{}", ports.compute_one),
            _dir: dir,
        };
        // every instance answers /ping directly, and nginx forwards
        let t0 = Instant::now();
        let mut urls: Vec<String> =
            cluster.api.iter().chain(cluster.compute.iter()).map(|i| format!("http://127.0.0.1:{}", i.port)).collect();
        urls.extend([&cluster.user_url, &cluster.compute_url, &cluster.compute_one_url].map(|u| u.to_string()));
        for url in urls {
            let http = alchemiscale_client::Client::new(&url, "", "")?;
            loop {
                if http.send_anonymous(alchemiscale_client::Method::GET, "/ping", alchemiscale_client::Payload::None).await.is_ok() {
                    break;
                }
                ensure!(t0.elapsed() < Duration::from_secs(60), "{url} did not answer within 60 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(cluster)
    }

    /// PIDs of the live server processes, by kind.
    pub fn pids(&self, compute: bool) -> Vec<u32> {
        let v = if compute { &self.compute } else { &self.api };
        v.iter().filter(|i| !i.killed).map(Instance::pid).collect()
    }

    /// nginx's master and worker processes.
    pub fn nginx_pids(&self) -> Vec<u32> {
        let master = self.nginx.id();
        let mut pids = vec![master];
        pids.extend(children_of(master));
        pids
    }
}

fn spawn_server(subcommand: &[&str], args: &ServerArgs, dir: &Path, name: &str) -> anyhow::Result<Instance> {
    let port = super::bench_curve::free_port()?;
    let data_dir = dir.join(name);
    std::fs::create_dir_all(&data_dir)?;
    let child = die_with_parent(&mut Command::new(std::env::current_exe()?))
        .arg("--data-dir")
        .arg(&data_dir)
        .args(subcommand)
        .args(&args.common)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--loglevel", "warn", "--jwt-secret", &args.jwt_secret])
        .args(["--metrics-listen", "off"])
        .env_remove("ALCHEMISCALE_STATE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Instance { child, port, killed: false })
}

/// PIDs whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            // the fields after the command name (which may hold spaces) start after ')'
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(p);
            }
        }
    }
    out
}

/// The nginx binary: `--nginx` if it names a file, else found on PATH or in /usr/sbin.
pub fn find_nginx(given: &Path) -> anyhow::Result<PathBuf> {
    if given.components().count() > 1 {
        ensure!(given.is_file(), "{} does not exist", given.display());
        return Ok(given.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")]) {
        let candidate = dir.join(given);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("nginx not found (install the Debian package `nginx`, or pass --nginx PATH)")
}

fn start_nginx(nginx: &Path, dir: &Path, conf: &str) -> anyhow::Result<Child> {
    use std::os::unix::fs::PermissionsExt;
    // when started as root nginx's workers run as an unprivileged user: let them in
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let t = dir.display();
    std::fs::write(dir.join("alchemiscale.conf"), conf)?;
    let temp: String =
        ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].iter().map(|p| format!("{p}_temp_path {t}/{p}_temp;\n")).collect();
    let main = format!(
        "daemon off;\nworker_processes auto;\npid {t}/nginx.pid;\nerror_log {t}/error.log warn;\n\
         events {{ worker_connections 4096; }}\nhttp {{\naccess_log off;\n{temp}include {t}/alchemiscale.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main)?;
    let conf_path = dir.join("nginx.conf");
    let error_log = dir.join("error.log");
    let args = [OsArg::from("-p"), dir.into(), "-c".into(), conf_path.as_path().into(), "-e".into(), error_log.as_path().into()];
    let test = Command::new(nginx).arg("-t").args(&args).output().with_context(|| format!("cannot run {}", nginx.display()))?;
    ensure!(test.status.success(), "nginx -t refused the bench's configuration:\n{}", String::from_utf8_lossy(&test.stderr));
    die_with_parent(&mut Command::new(nginx)).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("cannot start nginx")
}

type OsArg = std::ffi::OsString;

/// Top-level blocks of an nginx configuration (comments and blank lines outside blocks
/// dropped): each block's lines, its header line first.
fn top_level_blocks(conf: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut blocks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut depth = 0i32;
    for line in conf.lines() {
        let code = line.split('#').next().unwrap_or("").trim();
        if depth == 0 && code.is_empty() {
            continue;
        }
        current.push(line.to_string());
        depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
        ensure!(depth >= 0, "unbalanced braces in the nginx example");
        if depth == 0 {
            blocks.push(std::mem::take(&mut current));
        }
    }
    ensure!(depth == 0 && current.is_empty(), "unbalanced braces in the nginx example");
    Ok(blocks)
}

/// The deployment example rewritten for the bench (see the module documentation).
pub fn proxy_conf(example: &str, user: &[u16], compute: &[u16], ports: &Ports) -> anyhow::Result<String> {
    let mut out = String::from("# deploy/nginx/alchemiscale.conf, rewritten by `alchemiscale bench scaleout`\n");
    let (mut upstreams, mut servers) = (0, 0);
    for block in top_level_blocks(example)? {
        let header = block[0].trim();
        if let Some(name) = header.strip_prefix("upstream ").and_then(|h| h.strip_suffix('{')).map(str::trim) {
            upstreams += 1;
            let instances: Vec<(String, &[u16])> = match name {
                "alchemiscale_user_api" => vec![(name.into(), user)],
                "alchemiscale_compute_api" => vec![(name.into(), compute), (format!("{name}_one"), &compute[..1])],
                other => bail!("unexpected upstream `{other}` in the nginx example"),
            };
            for (name, ports) in instances {
                out += &format!("upstream {name} {{\n");
                for line in &block[1..] {
                    let code = line.trim();
                    match code.strip_prefix("server ") {
                        // `server host:port options;` → one line per instance, same options
                        Some(rest) => {
                            let options = rest.split_once(' ').map(|(_, o)| o).unwrap_or(";");
                            for p in ports {
                                out += &format!("    server 127.0.0.1:{p} {options}\n");
                            }
                        }
                        None => {
                            out += line;
                            out.push('\n');
                        }
                    }
                }
            }
        } else if header.starts_with("server") {
            let body = block.join("\n");
            if body.contains("return 308") {
                continue; // the plain-HTTP redirect: the bench speaks plain HTTP
            }
            servers += 1;
            let variants: Vec<(u16, Option<&str>)> = if body.contains("http://alchemiscale_user_api") {
                vec![(ports.user, None)]
            } else if body.contains("http://alchemiscale_compute_api") {
                vec![(ports.compute, None), (ports.compute_one, Some("alchemiscale_compute_api_one"))]
            } else {
                bail!("a server block of the nginx example proxies to neither API")
            };
            for (port, upstream) in variants {
                for line in &block {
                    let code = line.trim();
                    if code.starts_with("listen ") {
                        out += &format!("    listen 127.0.0.1:{port};\n");
                    } else if code.starts_with("ssl_") || code.starts_with("add_header Strict-Transport-Security") {
                        continue;
                    } else if let (Some(up), true) = (upstream, code.starts_with("proxy_pass http://alchemiscale_compute_api;")) {
                        out += &format!("        proxy_pass http://{up};\n");
                    } else {
                        out += line;
                        out.push('\n');
                    }
                }
            }
        } else {
            bail!("unexpected top-level block `{header}` in the nginx example");
        }
    }
    ensure!(upstreams == 2 && servers == 2, "the nginx example has {upstreams} upstreams and {servers} API server blocks, not 2 and 2");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_example_is_rewritten_for_the_bench() {
        let ports = Ports { user: 1000, compute: 1001, compute_one: 1002 };
        let conf = proxy_conf(DEPLOY_NGINX_CONF, &[2000, 2001, 2002], &[3000, 3001, 3002], &ports).unwrap();
        for want in [
            "listen 127.0.0.1:1000;",
            "listen 127.0.0.1:1001;",
            "listen 127.0.0.1:1002;",
            "server 127.0.0.1:2002 max_fails=3 fail_timeout=10s;",
            "upstream alchemiscale_compute_api_one {",
            "proxy_pass http://alchemiscale_compute_api_one;",
            "proxy_next_upstream error timeout http_502 http_503;",
        ] {
            assert!(conf.contains(want), "missing `{want}` in:\n{conf}");
        }
        // the single-instance upstream holds the first compute instance only
        let one = conf.split("upstream alchemiscale_compute_api_one {").nth(1).unwrap().split('}').next().unwrap();
        assert!(one.contains("127.0.0.1:3000") && !one.contains("3001"), "{one}");
        for gone in ["ssl_certificate", "listen 443", "return 308", "api:8000", "compute-api:8001"] {
            assert!(!conf.contains(gone), "`{gone}` left in:\n{conf}");
        }
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }
}
