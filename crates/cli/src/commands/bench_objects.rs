//! `alchemiscale bench objects`: results through the API — many small ones and a few large
//! ones — against a `serve` process this command starts, with the disk's sequential write
//! rate measured in the same run and the server's peak memory read from /proc.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alchemiscale_client::{parse_keys, Client, Method, Payload};
use alchemiscale_model::pdr::{python_upload_body, upload_body, zstd_compress};
use alchemiscale_model::synthetic::{network_chain_json, result_chain_json};
use alchemiscale_model::{ComputeServiceId, ScopedKey};
use anyhow::{bail, ensure, Context};
use clap::Args;
use serde_json::json;

use crate::store_args::ObjectArgs;

#[derive(Debug, Args)]
pub struct ObjectsBench {
    /// Number of small results.
    #[arg(long, default_value_t = 1000)]
    pub small: usize,
    /// Size of a small result's stored blob, bytes (approximately).
    #[arg(long, default_value_t = 10_000)]
    pub small_bytes: usize,
    /// Number of large results.
    #[arg(long, default_value_t = 20)]
    pub large: usize,
    /// Size of a large result's stored blob, bytes (approximately).
    #[arg(long, default_value_t = 50_000_000)]
    pub large_bytes: usize,
    /// Send the large results exactly as the Python compute client does: every byte
    /// ≥ 0x80 as a `\u00XX` escape (about four bytes of JSON per byte) and the body
    /// gzip-compressed at level 5 (built before the clock starts; the server inflates
    /// and decodes it). By default they are sent as this project's compute client sends
    /// them: raw UTF-8, not gzip-compressed.
    #[arg(long)]
    pub python_bodies: bool,
    /// Concurrent clients for the small results.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Object store of the server under test (default: a local directory).
    #[command(flatten)]
    pub objects: ObjectArgs,
}

use super::bench_curve::free_port;

/// Peak resident memory of a process, bytes (VmHWM).
fn peak_rss(pid: u32) -> Option<u64> {
    super::bench_curve::proc_status_bytes(pid, "VmHWM:")
}

/// CPU time a process has used so far, seconds (user + system, from /proc).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the fields after the command name (which may contain spaces) in parentheses
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if per_s > 0 { per_s as f64 } else { 100.0 })
}

/// Sequential write rate of the disk under `dir`: 256 MiB written and fsynced.
fn disk_write_rate(dir: &std::path::Path) -> anyhow::Result<f64> {
    let path = dir.join("disk-rate.tmp");
    let chunk = vec![0x5Au8; 4 << 20];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for _ in 0..64 {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(256.0 * 1024.0 * 1024.0 / secs)
}

struct ServeProcess {
    child: Child,
    user: Client,
    compute: Client,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn object_flags(o: &ObjectArgs) -> Vec<String> {
    let mut v = Vec::new();
    let mut add = |flag: &str, value: &Option<String>| {
        if let Some(x) = value.as_deref().filter(|s| !s.is_empty()) {
            v.push(flag.to_string());
            v.push(x.to_string());
        }
    };
    add("--s3-bucket", &o.s3_bucket);
    add("--s3-prefix", &Some(o.s3_prefix.clone()));
    add("--default-region", &o.s3.default_region);
    add("--access-key-id", &o.s3.access_key_id);
    add("--secret-access-key", &o.s3.secret_access_key);
    add("--s3-endpoint", &o.s3.s3_endpoint);
    v
}

async fn start_serve(data_dir: &std::path::Path, objects: &ObjectArgs) -> anyhow::Result<ServeProcess> {
    let (port, compute_port) = (free_port()?, free_port()?);
    let child = super::bench::die_with_parent(&mut Command::new(std::env::current_exe()?))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--port", &port.to_string(), "--compute-port", &compute_port.to_string(), "--loglevel", "warn"])
        .args(["--max-body-bytes", &(2u64 << 30).to_string()])
        .args(object_flags(objects))
        .env_remove("ALCHEMISCALE_STATE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start `alchemiscale serve`")?;
    let creds = data_dir.join("credentials.txt");
    let started = Instant::now();
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&creds) {
            if t.contains("compute key") {
                break t;
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("`alchemiscale serve` did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let value = |label: &str| text.lines().find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string())).unwrap_or_default();
    let user = Client::new(&format!("http://127.0.0.1:{port}"), "user", &value("user key:"))?;
    let compute = Client::new(&format!("http://127.0.0.1:{compute_port}"), "compute", &value("compute key:"))?;
    for _ in 0..100 {
        if user.login().await.is_ok() && compute.login().await.is_ok() {
            return Ok(ServeProcess { child, user, compute });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("cannot log in to the server under test")
}

/// A result upload body exactly as the Python compute client sends it: `\u00XX` escapes,
/// gzip level 5 (`Content-Encoding: gzip`).
fn python_body(blob: &[u8], service: &str) -> Vec<u8> {
    alchemiscale_client::gzip(&python_upload_body(blob, service))
}

pub async fn run(b: ObjectsBench) -> anyhow::Result<()> {
    ensure!(b.small >= 1 && b.concurrency >= 1, "sizes must be positive");
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    // the disk's rate swings between measurements on shared machines: measured before the
    // small results, before the large ones and after them, and the median taken
    let mut disk_rates = vec![disk_write_rate(&data_dir)?];
    let server = start_serve(&data_dir, &b.objects).await?;
    let backend = if b.objects.s3_bucket.is_some() { "s3" } else { "local" };
    println!("bench objects: {backend} object store, sqlite state store, server pid {}", server.child.id());

    // a network, tasks for every result, all claimed by one service
    let total = b.small + b.large;
    let net = server.user.create_network(&network_chain_json(10, 20, "objects"), &"bench-objects-p".parse()?, "active").await?;
    let tfs = parse_keys(&server.user.get(&format!("/networks/{net}/transformations")).await?)?;
    let requested: Vec<String> = (0..total).map(|i| tfs[i % tfs.len()].to_string()).collect();
    let tasks = parse_keys(&server.user.post("/bulk/transformations/tasks/create", &json!({ "transformations": requested })).await?)?;
    let dicts: Vec<_> = tasks.iter().map(|t| t.to_dict()).collect();
    server.user.post(&format!("/networks/{net}/tasks/action"), &json!({ "tasks": dicts })).await?;
    let service = ComputeServiceId::mint("benchobjects")?.to_string();
    server.compute.post(&format!("/computeservice/{service}/register"), &json!({"compute_manager_id": null})).await?;
    let mut claimed: Vec<ScopedKey> = Vec::new();
    while claimed.len() < total {
        let v = server.compute.post("/claim", &json!({"scopes": [{"org": null}], "compute_service_id": service, "count": 1000})).await?;
        let got: Vec<ScopedKey> = v.as_array().into_iter().flatten().filter_map(|x| x.as_str()?.parse().ok()).collect();
        ensure!(!got.is_empty(), "claimed only {} of {total} tasks", claimed.len());
        claimed.extend(got);
    }
    let mut work = Vec::with_capacity(total);
    for t in &claimed {
        let tf = parse_keys(&json!([server.compute.get(&format!("/tasks/{t}/transformation")).await?]))?.remove(0);
        work.push((t.clone(), tf));
    }
    let (small_work, large_work) = work.split_at(b.small);

    // small results: prepared first, then pushed by concurrent clients (as the Python
    // compute client sends them)
    let small_bodies: Vec<(ScopedKey, ScopedKey, Vec<u8>)> = small_work
        .iter()
        .enumerate()
        .map(|(i, (t, tf))| {
            let blob = zstd_compress(result_chain_json(tf.gufe_key().as_str(), true, b.small_bytes * 4 / 3, i as u64).as_bytes());
            (t.clone(), tf.clone(), python_body(&blob, &service))
        })
        .collect();
    let per = small_bodies.len().div_ceil(b.concurrency);
    let token = server.compute.login().await?;
    let mut batches = Vec::new();
    for chunk in small_bodies.chunks(per) {
        batches.push((chunk.to_vec(), Client::new(server.compute.base_url().as_str(), "compute", "")?, token.clone()));
    }
    let start = Instant::now();
    let mut handles = Vec::new();
    for (chunk, client, token) in batches {
        handles.push(tokio::spawn(async move {
            let mut refs = Vec::new();
            for (task, tf, body) in chunk {
                let payload = Payload::Raw { bytes: body, content_encoding: Some("gzip".into()) };
                let r = client.send_with_token(Method::POST, &format!("/tasks/{task}/results"), payload, &token).await?;
                anyhow::ensure!(r.status == 200, "push failed: {} {}", r.status, r.text());
                refs.push((tf, format!("{}-{}", r.json()["gufe_key"].as_str().unwrap_or_default(), task.scope())));
            }
            anyhow::Ok(refs)
        }));
    }
    let mut small_refs = Vec::new();
    for h in handles {
        small_refs.extend(h.await??);
    }
    let small_push_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut handles = Vec::new();
    let token = server.user.login().await?;
    for chunk in small_refs.chunks(per) {
        let chunk = chunk.to_vec();
        let client = Client::new(server.user.base_url().as_str(), "user", "")?;
        let token = token.clone();
        handles.push(tokio::spawn(async move {
            let mut bytes = 0usize;
            for (tf, pdrr) in chunk {
                let r =
                    client.send_with_token(Method::GET, &format!("/transformations/{tf}/results/{pdrr}"), Payload::None, &token).await?;
                anyhow::ensure!(r.status == 200, "download failed: {} {}", r.status, r.text());
                bytes += r.body.len();
            }
            anyhow::Ok(bytes)
        }));
    }
    for h in handles {
        h.await??;
    }
    let small_get_s = start.elapsed().as_secs_f64();

    // large results, one at a time (by default as this project's compute client sends
    // them: raw UTF-8, no gzip; the Python client's own gzip of a 200 MB body takes
    // seconds, before the clock starts here); all pushed first, then all downloaded, so
    // the server's peak memory of each is seen
    let mut large_push_s = 0.0;
    let mut large_get_s = 0.0;
    let mut large_total = 0usize;
    let mut large_refs = Vec::new();
    let mut large_cpu_s = 0.0;
    if b.large > 0 {
        disk_rates.push(disk_write_rate(&data_dir)?);
    }
    for (i, (task, tf)) in large_work.iter().enumerate() {
        let blob = zstd_compress(result_chain_json(tf.gufe_key().as_str(), true, b.large_bytes * 4 / 3, 1_000_000 + i as u64).as_bytes());
        large_total += blob.len();
        let payload = if b.python_bodies {
            Payload::Raw { bytes: python_body(&blob, &service), content_encoding: Some("gzip".into()) }
        } else {
            Payload::Raw { bytes: upload_body(&blob, &service), content_encoding: None }
        };
        drop(blob);
        let cpu_before = cpu_seconds(server.child.id()).unwrap_or(0.0);
        let start = Instant::now();
        let r = server.compute.send(Method::POST, &format!("/tasks/{task}/results"), payload).await?;
        large_push_s += start.elapsed().as_secs_f64();
        large_cpu_s += cpu_seconds(server.child.id()).unwrap_or(0.0) - cpu_before;
        ensure!(r.status == 200, "large push failed: {} {}", r.status, r.text());
        large_refs.push((tf, format!("{}-{}", r.json()["gufe_key"].as_str().unwrap_or_default(), task.scope())));
    }
    let push_peak = peak_rss(server.child.id()).unwrap_or(0);
    if b.large > 0 {
        disk_rates.push(disk_write_rate(&data_dir)?);
    }
    let disk_rate = crate::commands::bench::median(disk_rates.clone());
    for (tf, pdrr) in &large_refs {
        let start = Instant::now();
        let r = server.user.send(Method::GET, &format!("/transformations/{tf}/results/{pdrr}"), Payload::None).await?;
        large_get_s += start.elapsed().as_secs_f64();
        ensure!(r.status == 200, "large download failed: {}", r.status);
    }
    let peak = peak_rss(server.child.id()).unwrap_or(0);

    let mb = |bytes: f64| bytes / 1e6;
    let small_push_per_s = b.small as f64 / small_push_s;
    let small_get_per_s = b.small as f64 / small_get_s;
    let large_mb_per_s = if b.large > 0 { mb(large_total as f64) / large_push_s } else { 0.0 };
    let large_get_mb_per_s = if b.large > 0 { mb(large_total as f64) / large_get_s } else { 0.0 };
    let largest = if b.large > 0 { large_total as f64 / b.large as f64 } else { b.small_bytes as f64 };
    let readings: Vec<String> = disk_rates.iter().map(|r| format!("{:.0}", mb(*r))).collect();
    println!("  disk sequential write (fsync)        {:>9.0} MB/s  (median of {} MB/s)", mb(disk_rate), readings.join(", "));
    println!(
        "  small results pushed (~{} B, gzip)  {small_push_per_s:>9.0} results/s  ({} in {small_push_s:.2} s)",
        b.small_bytes, b.small
    );
    println!("  small results downloaded             {small_get_per_s:>9.0} results/s");
    if b.large > 0 {
        println!(
            "  large results pushed ({} x {:.0} MB)   {large_mb_per_s:>9.0} MB/s  ({:.0}% of the disk rate)",
            b.large,
            mb(largest),
            100.0 * large_mb_per_s / mb(disk_rate)
        );
        println!("  server CPU per large push            {:>9.0} ms", 1e3 * large_cpu_s / b.large as f64);
        println!("  large results downloaded             {large_get_mb_per_s:>9.0} MB/s");
    }
    println!(
        "  server peak memory                   {:>9.0} MB  ({:.1}x the largest object; {:.1}x until the downloads)",
        mb(peak as f64),
        peak as f64 / largest,
        push_peak as f64 / largest
    );
    let summary = json!({
        "bench": "objects",
        "backend": backend,
        "large_bodies": if b.python_bodies { "python (\\u00XX escapes, gzip)" } else { "rust client (raw UTF-8)" },
        "small_results": b.small,
        "small_push_per_s": small_push_per_s,
        "small_get_per_s": small_get_per_s,
        "large_results": b.large,
        "large_mb_per_s": large_mb_per_s,
        "large_get_mb_per_s": large_get_mb_per_s,
        "disk_write_mb_per_s": mb(disk_rate),
        "disk_write_readings_mb_per_s": disk_rates.iter().map(|r| mb(*r)).collect::<Vec<_>>(),
        "large_push_server_cpu_ms": if b.large > 0 { 1e3 * large_cpu_s / b.large as f64 } else { 0.0 },
        "large_vs_disk": large_mb_per_s / mb(disk_rate),
        "server_peak_rss_mb": mb(peak as f64),
        "peak_rss_vs_largest_object": peak as f64 / largest,
        "push_peak_rss_vs_largest_object": push_peak as f64 / largest,
    });
    drop(server);
    println!("{summary}");
    Ok(())
}
