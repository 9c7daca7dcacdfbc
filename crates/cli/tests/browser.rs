//! The web console in a real headless browser (Chromium driven through chromedriver with
//! fantoccini): sign in, find a network submitted through the API, create and action tasks
//! from the console and watch a compute service (`alchemiscale compute synchronous`, a
//! process) complete them, add an identity as an admin and use it through the API, and
//! check each page's accessibility basics (one h1, labelled controls, named buttons and
//! figures, readable status colours) and that it loaded nothing from elsewhere. A
//! screenshot of every page is written to `target/console-screenshots/`.
//!
//! Chromium and chromedriver are `$ALCHEMISCALE_TEST_CHROMIUM` and
//! `$ALCHEMISCALE_TEST_CHROMEDRIVER` (set by `.ci/run`), else `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`; with neither the test is skipped. The test starts chromedriver
//! on a free 127.0.0.1 port and stops it (and the browser it started) by PID.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alchemiscale_client::{parse_keys, Client};
use alchemiscale_console::{ConsoleSettings, ConsoleState};
use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{Scope, ScopedKey};
use alchemiscale_server::testing::{Backend, TestServer};
use alchemiscale_server::ApiKind;
use alchemiscale_store::identities::{hash_key, IdentityKind};
use common::{free_port, Stopped, BIN};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::json;

fn binary(var: &str, default: &str) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from(default)).filter(|p| p.exists()),
    }
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Accessibility basics of the page in the browser, and that it loaded nothing from
/// elsewhere: problems found, as text.
const A11Y: &str = r#"
const problems = [];
if (!document.documentElement.lang) problems.push("the page has no language");
if (document.querySelectorAll("h1").length !== 1) problems.push("h1 count " + document.querySelectorAll("h1").length);
if (!document.title) problems.push("no title");
for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
  const labelled = el.closest("label") || (el.id && document.querySelector('label[for="' + el.id + '"]')) || el.getAttribute("aria-label");
  if (!labelled) problems.push("unlabelled control " + el.outerHTML.slice(0, 100));
}
for (const b of document.querySelectorAll("button")) {
  if (!(b.textContent.trim() || b.getAttribute("aria-label"))) problems.push("unnamed button");
}
for (const s of document.querySelectorAll("main svg[role=img]")) {
  if (!s.getAttribute("aria-label")) problems.push("figure without a name");
}
function lum(css) {
  const [r, g, b] = css.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map(v => v / 255)
    .map(c => c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4));
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
let badges = 0;
for (const b of document.querySelectorAll(".badge")) {
  badges++;
  const fg = lum(getComputedStyle(b).color), bg = lum(getComputedStyle(b).backgroundColor);
  const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
  if (ratio < 4.5) problems.push("contrast " + ratio.toFixed(2) + " of " + b.className + ": " + b.textContent);
}
// everything the page loaded came from the server itself, and its stylesheet applied
for (const r of performance.getEntriesByType("resource")) {
  if (!r.name.startsWith(location.origin)) problems.push("loaded from elsewhere: " + r.name);
}
if (getComputedStyle(document.body).margin !== "0px") problems.push("the console's stylesheet did not apply");
return {problems: problems, badges: badges};
"#;

/// Every process whose command line names this browser profile directory (Chromium, its
/// helpers, and its crash handler, which outlives it under PID 1), killed by PID when
/// dropped: chromedriver does not always take the browser down with it when a test fails
/// midway.
struct BrowserProcesses(PathBuf);

impl Drop for BrowserProcesses {
    fn drop(&mut self) {
        let needle = self.0.display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                // SAFETY: signalling a browser process this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

struct Session {
    browser: Browser,
    base: String,
    shots: PathBuf,
    /// chromedriver's address, for the Chrome DevTools commands it relays.
    driver: String,
}

impl Session {
    async fn goto(&self, path: &str) {
        self.browser.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    async fn text(&self) -> String {
        self.browser.find(Locator::Css("body")).await.unwrap().text().await.unwrap()
    }

    async fn url(&self) -> String {
        self.browser.current_url().await.unwrap().to_string()
    }

    /// Check the page's accessibility basics and keep a screenshot of it.
    async fn check_page(&self, name: &str) -> u64 {
        let v = self.browser.execute(A11Y, vec![]).await.unwrap();
        let problems: Vec<String> = serde_json::from_value(v["problems"].clone()).unwrap();
        assert!(problems.is_empty(), "{name}: {problems:#?}");
        let png = self.browser.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
        v["badges"].as_u64().unwrap_or(0)
    }

    /// Render the page for `media` (`print`, or `""` for the screen) through the DevTools
    /// command chromedriver relays.
    async fn emulate_media(&self, media: &str) {
        let id = self.browser.session_id().await.unwrap().expect("a session");
        let r = reqwest::Client::new()
            .post(format!("{}/session/{id}/goog/cdp/execute", self.driver))
            .json(&json!({"cmd": "Emulation.setEmulatedMedia", "params": {"media": media}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "emulating {media:?} media: {}", r.text().await.unwrap_or_default());
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.browser.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.browser.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
    }

    /// Submit with a click that the console's script first asks to confirm.
    async fn click_and_confirm(&self, css: &str) {
        self.click(css).await;
        let t0 = Instant::now();
        loop {
            match self.browser.accept_alert().await {
                Ok(()) => return,
                Err(e) => assert!(t0.elapsed() < Duration::from_secs(5), "no confirmation asked: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn sign_in(&self, who: &str, key: &str) {
        self.goto("/ui").await;
        assert!(self.url().await.ends_with("/ui/login"), "signed out, the console sends you to sign in");
        self.check_page("sign-in").await;
        self.fill("#identifier", who).await;
        self.fill("#key", key).await;
        self.click("form.login button[type=submit]").await;
        self.wait_text("Overview").await;
        assert!(self.url().await.ends_with("/ui"), "{}", self.url().await);
    }

    /// Wait until the current page (after a submit, once the browser has navigated) says
    /// `want`.
    async fn wait_text(&self, want: &str) {
        let t0 = Instant::now();
        loop {
            let text = self.browser.find(Locator::Css("body")).await.ok().map(|e| async move { e.text().await.unwrap_or_default() });
            let text = match text {
                Some(f) => f.await,
                None => String::new(),
            };
            if text.contains(want) {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "'{want}' did not appear; the page says: {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_text(&self, path: &str, want: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            self.goto(path).await;
            if self.text().await.contains(want) {
                return;
            }
            assert!(t0.elapsed() < limit, "'{want}' did not appear on {path} within {limit:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let (Some(chromium), Some(driver)) =
        (binary("ALCHEMISCALE_TEST_CHROMIUM", "/usr/bin/chromium"), binary("ALCHEMISCALE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
    else {
        eprintln!("skipped: no Chromium/chromedriver (set ALCHEMISCALE_TEST_CHROMIUM and ALCHEMISCALE_TEST_CHROMEDRIVER)");
        return;
    };
    let s = TestServer::user_with(Backend::Sqlite, |state| {
        alchemiscale_console::router(ConsoleState::new(state.clone(), ConsoleSettings::default()))
    })
    .await
    .unwrap();
    let compute_server = s.sibling(ApiKind::Compute).await;
    let alice = s.client(IdentityKind::User, "alice", &["org1-*-*"]).await;
    let _ = compute_server.client(IdentityKind::Compute, "worker", &["org1-*-*"]).await;
    s.store.add_identity(IdentityKind::Admin, "root", &hash_key("key-of-root").unwrap(), false).await.unwrap();
    let scope: Scope = "org1-campaign-project".parse().unwrap();
    let network = alice.create_network(&network_chain_json(7, 12, "browser"), &scope, "active").await.unwrap();
    let tfs = parse_keys(&alice.get(&format!("/networks/{network}/transformations")).await.unwrap()).unwrap();

    // chromedriver on a free loopback port, stopped by PID at the end
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _browsers = BrowserProcesses(dir.path().join("profile"));
    let _driver = Stopped(
        Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", dir.path().join("chromedriver.log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let status = format!("http://127.0.0.1:{port}/status");
    let t0 = Instant::now();
    while reqwest::get(&status).await.is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1366,900",
                     format!("--user-data-dir={}", dir.path().join("profile").display())]
        }),
    );
    let browser = ClientBuilder::rustls()
        .expect("tls")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session");
    let b = Session { browser, base: s.url.clone(), shots: screenshots_dir(), driver: format!("http://127.0.0.1:{port}") };
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run(&b, &s, &compute_server, &network, &tfs))).await;
    let _ = b.browser.clone().close().await;
    compute_server.stop().await;
    match outcome {
        Ok(result) => result.unwrap(),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn run(b: &Session, s: &TestServer, compute_server: &TestServer, network: &ScopedKey, tfs: &[ScopedKey]) -> Result<(), String> {
    // sign in and find the network submitted through the API
    b.sign_in("alice", "key-of-alice").await;
    assert!(b.text().await.contains("Overview"));
    b.check_page("overview").await;
    b.click(&format!("a[href='/ui/networks/{network}']")).await;
    b.wait_text("Drawing").await;
    assert!(b.url().await.ends_with(&format!("/ui/networks/{network}")));
    let edges = b.browser.find_all(Locator::Css("svg.network line")).await.unwrap();
    assert_eq!(edges.len(), tfs.len(), "one edge per transformation in the drawing");
    b.check_page("network").await;

    // create and action two tasks from a transformation's page
    b.click("table a[href^='/ui/transformations/']").await;
    b.wait_text("Create tasks").await;
    let tf_url = b.url().await;
    b.fill("input[name=count]", "2").await;
    b.click_and_confirm("form[action$='/tasks/create'] button[type=submit]").await;
    b.wait_text("Created and actioned 2 task(s).").await;
    assert_eq!(b.browser.find_all(Locator::Css("input[name=task]")).await.unwrap().len(), 2);
    b.check_page("transformation").await;

    // a compute service completes them
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("service.yaml");
    std::fs::write(
        &config,
        format!(
            "api_url: {}\nidentifier: worker\nkey: key-of-worker\nname: browser_service\nshared_basedir: {}\nscratch_basedir: {}\n\
             heartbeat_interval: 1\nsleep_interval: 1\ndeep_sleep_interval: 1\nloglevel: INFO\n",
            compute_server.url,
            work.path().join("shared").display(),
            work.path().join("scratch").display()
        ),
    )
    .unwrap();
    let service = Stopped(
        Command::new(BIN)
            .args(["compute", "synchronous", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("service.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let path = tf_url.trim_start_matches(&b.base).to_string();
    let log = work.path().join("service.stderr");
    let outcome = tokio::time::timeout(Duration::from_secs(60), b.wait_for_text(&path, "complete", Duration::from_secs(60))).await;
    if outcome.is_err() {
        return Err(format!(
            "the compute service did not complete the tasks; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ));
    }
    let t0 = Instant::now();
    loop {
        let statuses = b.browser.find_all(Locator::Css("table .badge")).await.unwrap();
        let mut complete = 0;
        for st in &statuses {
            if st.text().await.unwrap() == "complete" {
                complete += 1;
            }
        }
        if complete == 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{complete} of 2 tasks complete");
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.goto(&path).await;
    }
    b.goto("/ui/compute").await;
    assert!(b.text().await.contains("browser_service"), "the service is listed while it runs");
    b.check_page("compute").await;
    drop(service);

    // the task page: its history and result
    b.goto(&path).await;
    b.click("table a[href^='/ui/tasks/']").await;
    b.wait_text("Status history").await;
    let text = b.text().await;
    assert!(text.contains("claimed by browser_service") && text.contains("result returned"), "{text}");
    b.check_page("task").await;
    b.goto(&format!("/ui/networks/{network}")).await;
    assert!(!b.browser.find_all(Locator::Css("svg.network line[data-state=complete]")).await.unwrap().is_empty(), "a completed edge");
    let badges = b.check_page("network-after").await;
    assert!(badges > 0);

    // printed: the drawing and the tables, without navigation and forms
    b.emulate_media("print").await;
    let shown = b
        .browser
        .execute(
            r#"const d = s => { const e = document.querySelector(s); return e ? getComputedStyle(e).display : "missing"; };
               return [d("header.top nav"), d("main form"), d("svg.network"), d("main table")];"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown[0], "none", "navigation hidden in print: {shown}");
    assert_eq!(shown[1], "none", "forms hidden in print: {shown}");
    assert_ne!(shown[2], "none", "the drawing is printed: {shown}");
    assert_ne!(shown[3], "none", "the tables are printed: {shown}");
    std::fs::write(b.shots.join("network-print.png"), b.browser.screenshot().await.unwrap()).unwrap();
    b.emulate_media("").await;
    b.goto("/ui").await;
    b.check_page("overview-after").await;

    // sign out; an admin adds an identity, which then works through the API
    b.click("form.signout button").await;
    b.wait_text("Sign in").await;
    assert!(b.url().await.ends_with("/ui/login"));
    b.sign_in("root", "key-of-root").await;
    b.click("nav a[href='/ui/identities']").await;
    b.wait_text("Add an identity").await;
    b.fill("form[action='/ui/identities/add'] input[name=identifier]", "carol").await;
    b.fill("form[action='/ui/identities/add'] input[name=key]", "carol-key").await;
    b.click_and_confirm("form[action='/ui/identities/add'] button[type=submit]").await;
    b.wait_text("Identity added.").await;
    b.fill("form[action='/ui/identities/scopes/add'] input[name=identifier]", "carol").await;
    b.fill("form[action='/ui/identities/scopes/add'] input[name=scope]", "org1-campaign-project").await;
    b.click("form[action='/ui/identities/scopes/add'] button[type=submit]").await;
    b.wait_text("Scope granted.").await;
    b.check_page("identities").await;
    let mut carol = Client::new(&s.url, "carol", "carol-key").unwrap();
    carol.max_retries = 0;
    assert_eq!(carol.get("/identities/carol/scopes").await.map_err(|e| e.to_string())?, json!(["org1-campaign-project"]));
    let nets = carol.get("/networks?scope=org1-campaign-project").await.map_err(|e| e.to_string())?;
    assert!(nets.to_string().contains(&network.to_string()), "carol sees the network: {nets}");
    Ok(())
}
