//! `alchemiscale api` and `alchemiscale serve`: running the HTTP APIs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use alchemiscale_model::Scope;
use alchemiscale_server::{parse_algorithm, ApiKind, ApiSettings, AppState};
use alchemiscale_store::identities::{hash_key, IdentityKind};
use alchemiscale_store::Store;
use anyhow::{bail, Context};
use clap::Args;

use crate::store_args::{ObjectArgs, StoreArgs};

/// Token signing.
#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// HMAC secret for tokens. Without one a random secret is generated (tokens then die
    /// with the process); `serve` keeps a generated secret in the data directory.
    #[arg(long, env = "JWT_SECRET_KEY", hide_env_values = true, help_heading = "Tokens")]
    pub jwt_secret: Option<String>,
    /// Token lifetime in seconds.
    #[arg(long, env = "JWT_EXPIRE_SECONDS", default_value_t = 1800, help_heading = "Tokens")]
    pub jwt_expire_seconds: u64,
    /// Signing algorithm: HS256, HS384 or HS512.
    #[arg(long, env = "JWT_ALGORITHM", default_value = "HS256", help_heading = "Tokens")]
    pub jwt_algorithm: String,
}

/// HTTP-server settings shared by the API commands.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Largest accepted request body in bytes, measured after gzip inflation (413 above).
    #[arg(long, env = "ALCHEMISCALE_MAX_BODY_BYTES", default_value_t = 1 << 30, help_heading = "HTTP")]
    pub max_body_bytes: usize,
    /// Seconds an identity's disabled/removed state may be cached by a running server.
    #[arg(long, env = "ALCHEMISCALE_IDENTITY_CACHE_SECONDS", default_value_t = 5, help_heading = "HTTP")]
    pub identity_cache_seconds: u64,
    /// Serve the Prometheus metrics (`/metrics`) on this address (e.g. 127.0.0.1:9184)
    /// instead of on the API ports, which then have no `/metrics`; `off` serves them
    /// nowhere. The page names scopes and counts their tasks.
    #[arg(long, env = "ALCHEMISCALE_METRICS_LISTEN", value_name = "ADDR|off", help_heading = "HTTP")]
    pub metrics_listen: Option<String>,
}

impl HttpArgs {
    /// A metrics listener of its own, if one is asked for (`None` also for `off`).
    async fn metrics_listener(&self) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        match self.metrics_listen.as_deref() {
            None | Some("off") => Ok(None),
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for metrics"))?;
                tracing::info!(address = %l.local_addr()?, "metrics listening");
                Ok(Some(l))
            }
        }
    }
}

/// Serve `/metrics` of `state`'s process on its own listener until `stop` resolves.
fn spawn_metrics(listener: Option<tokio::net::TcpListener>, state: AppState, stop: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Some(l) = listener {
        tokio::spawn(async move {
            if let Err(e) = alchemiscale_server::serve(l, alchemiscale_server::metrics::metrics_app(state), stop).await {
                tracing::error!("metrics listener failed: {e}");
            }
        });
    }
}

/// Compute-API behaviour.
#[derive(Debug, Clone, Args)]
pub struct ComputeArgs {
    /// Heartbeat age (seconds) after which a compute service's registration expires and
    /// its running tasks return to waiting.
    #[arg(long, env = "ALCHEMISCALE_COMPUTE_API_REGISTRATION_EXPIRE_SECONDS", default_value_t = 1800, help_heading = "Compute")]
    pub registration_expire_seconds: i64,
    /// Window (seconds) in which a compute service's failures count.
    #[arg(long, env = "ALCHEMISCALE_COMPUTE_API_FORGIVE_TIME_SECONDS", default_value_t = 600, help_heading = "Compute")]
    pub forgive_time_seconds: i64,
    /// Failures tolerated inside the window; above it claims are denied.
    #[arg(long, env = "ALCHEMISCALE_COMPUTE_API_MAX_FAILURES", default_value_t = 3, help_heading = "Compute")]
    pub max_failures: i64,
    /// OK compute managers silent this long (seconds) are removed.
    #[arg(long, env = "ALCHEMISCALE_COMPUTE_API_MANAGER_EXPIRE_SECONDS", default_value_t = 3600, help_heading = "Compute")]
    pub manager_expire_seconds: i64,
    /// ERROR compute managers older than this (seconds) are removed.
    #[arg(long, env = "ALCHEMISCALE_COMPUTE_API_MANAGER_EXPIRE_SECONDS_ERROR", default_value_t = 86400, help_heading = "Compute")]
    pub manager_expire_seconds_error: i64,
}

impl JwtArgs {
    fn settings(&self, secret: String, http: &HttpArgs, compute: &ComputeArgs) -> anyhow::Result<ApiSettings> {
        Ok(ApiSettings {
            jwt_secret: secret,
            jwt_expire_seconds: self.jwt_expire_seconds,
            jwt_algorithm: parse_algorithm(&self.jwt_algorithm).map_err(anyhow::Error::msg)?,
            max_body_bytes: http.max_body_bytes,
            identity_cache_seconds: http.identity_cache_seconds,
            registration_expire_seconds: compute.registration_expire_seconds,
            forgive_time_seconds: compute.forgive_time_seconds,
            max_failures: compute.max_failures,
            manager_expire_seconds: compute.manager_expire_seconds,
            manager_expire_seconds_error: compute.manager_expire_seconds_error,
            metrics_on_api: http.metrics_listen.is_none(),
        })
    }
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Write `content` to `path` readable by the owner only.
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

/// Start structured logging at `level` (an `info`-style level or a tracing filter).
pub fn init_logging(level: &str, json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level.to_ascii_lowercase()).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // colour only for a person at a terminal: logs collected from a pipe or a file
    // (systemd, docker, nohup) get no escape codes
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled, so a signal that arrives while the server is still
/// starting is not lost (nor left to kill the process by default).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            async fn recv(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            let (int, term) = handlers;
            tokio::select! { _ = recv(int) => {}, _ = recv(term) => {} }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}

/// What `alchemiscale api` and `alchemiscale compute api` share.
#[derive(Debug, Args)]
pub struct ApiCommon {
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Accepted for compatibility with upstream; the server is multi-threaded and uses
    /// every core.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// YAML mapping of extra HTTP-server settings (upstream's gunicorn settings; `bind` is
    /// honoured, `workers`, `timeout`, `graceful_timeout`, `keepalive` are accepted, others
    /// are ignored with a warning).
    #[arg(short = 'c', long)]
    pub config_file: Option<PathBuf>,
    /// Inline JSON mapping of the same settings; overrides keys from --config-file.
    #[arg(short = 'j', long)]
    pub config_json: Option<String>,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
    #[command(flatten)]
    pub backup: super::backup::BackupScheduleArgs,
}

/// The web console's options (`api` and `serve`).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Web console")]
pub struct ConsoleArgs {
    /// Do not serve the web console at /ui.
    #[arg(long, env = "ALCHEMISCALE_NO_CONSOLE")]
    pub no_console: bool,
    /// How long a console session lasts after signing in.
    #[arg(long, env = "ALCHEMISCALE_CONSOLE_SESSION", default_value = "8h", value_parser = humantime::parse_duration)]
    pub console_session: std::time::Duration,
    /// Always mark the session cookie Secure (it is anyway when the proxy says the request
    /// came over TLS with X-Forwarded-Proto: https).
    #[arg(long, env = "ALCHEMISCALE_CONSOLE_SECURE_COOKIES")]
    pub console_secure_cookies: bool,
    /// Failed sign-ins allowed per identifier and per client address within 5 minutes.
    #[arg(long, env = "ALCHEMISCALE_CONSOLE_LOGIN_FAILURES", default_value_t = 5)]
    pub console_login_failures: usize,
}

impl ConsoleArgs {
    /// The console's routes for a user API, unless turned off.
    pub fn router(&self, state: &AppState) -> Option<axum::Router<AppState>> {
        if self.no_console {
            return None;
        }
        let settings = alchemiscale_console::ConsoleSettings {
            session_ttl: self.console_session,
            secure_cookies: self.console_secure_cookies,
            login_failures: self.console_login_failures.max(1),
            ..Default::default()
        };
        Some(alchemiscale_console::router(alchemiscale_console::ConsoleState::new(state.clone(), settings)))
    }
}

/// Options of `alchemiscale api`.
#[derive(Debug, Args)]
pub struct ApiCommand {
    /// Address to listen on.
    #[arg(long, env = "ALCHEMISCALE_API_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "ALCHEMISCALE_API_PORT", default_value_t = 80)]
    pub port: u16,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, env = "ALCHEMISCALE_API_LOGLEVEL", default_value = "info")]
    pub loglevel: String,
    #[command(flatten)]
    pub common: ApiCommon,
    #[command(flatten)]
    pub console: ConsoleArgs,
}

/// Options of `alchemiscale compute api`.
#[derive(Debug, Args)]
pub struct ComputeApiCommand {
    /// Address to listen on.
    #[arg(long, env = "ALCHEMISCALE_COMPUTE_API_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "ALCHEMISCALE_COMPUTE_API_PORT", default_value_t = 80)]
    pub port: u16,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, env = "ALCHEMISCALE_COMPUTE_API_LOGLEVEL", default_value = "info")]
    pub loglevel: String,
    #[command(flatten)]
    pub common: ApiCommon,
}

/// The extra settings mapping: returns the bind address to use.
fn apply_extra_settings(cmd: &ApiCommon, host: &str, port: u16) -> anyhow::Result<String> {
    let mut map = serde_json::Map::new();
    if let Some(path) = &cmd.config_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let v: serde_json::Value = serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not a YAML mapping", path.display()))?;
        map.extend(v.as_object().cloned().unwrap_or_default());
    }
    if let Some(j) = &cmd.config_json {
        let v: serde_json::Value = serde_json::from_str(j).context("--config-json is not a JSON mapping")?;
        map.extend(v.as_object().cloned().context("--config-json is not a JSON mapping")?);
    }
    let mut bind = format!("{host}:{port}");
    for (k, v) in map {
        match (k.as_str(), &v) {
            (_, serde_json::Value::Null) => {}
            ("bind", serde_json::Value::String(b)) => bind = b.clone(),
            ("workers" | "graceful_timeout" | "timeout" | "keepalive", _) => {
                tracing::info!(setting = k.as_str(), "accepted; the Rust server needs no tuning for it")
            }
            _ => tracing::warn!(setting = k.as_str(), "unknown HTTP-server setting ignored"),
        }
    }
    Ok(bind)
}

fn jwt_secret_or_random(given: &Option<String>) -> String {
    match given.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => s.to_string(),
        None => {
            eprintln!("WARNING: no JWT_SECRET_KEY supplied; generating a random JWT secret key. Tokens will not be valid across API processes or restarts.");
            random_hex(32)
        }
    }
}

pub async fn run_user_api(cmd: ApiCommand, data_dir: &Path) -> anyhow::Result<()> {
    run_api(&cmd.host, cmd.port, &cmd.loglevel, cmd.common, data_dir, ApiKind::User, Some(cmd.console)).await
}

pub async fn run_compute_api(cmd: ComputeApiCommand, data_dir: &Path) -> anyhow::Result<()> {
    run_api(&cmd.host, cmd.port, &cmd.loglevel, cmd.common, data_dir, ApiKind::Compute, None).await
}

/// Run one API.
/// glibc's malloc keeps memory freed after a burst (a bulk action's lists, a large request
/// body) in its per-thread arenas: without help a server's resident memory only ever rises
/// to the largest work it has handled (296 MB idle after a million tasks were actioned in
/// 30 MB requests). Every few seconds a server hands what its allocator holds free back to
/// the system (`malloc_trim`, which also releases free pages inside the arenas); that
/// costs milliseconds and brings it back to tens of MB (see ARCHITECTURE.md, "Memory").
fn spawn_memory_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // SAFETY: malloc_trim has no preconditions; it only returns free memory.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}

async fn run_api(
    host: &str,
    port: u16,
    loglevel: &str,
    cmd: ApiCommon,
    data_dir: &Path,
    api: ApiKind,
    console: Option<ConsoleArgs>,
) -> anyhow::Result<()> {
    init_logging(loglevel, cmd.log_json);
    let shutdown = shutdown_signal();
    spawn_memory_trimmer();
    let bind = apply_extra_settings(&cmd, host, port)?;
    let store = cmd.store.connect_ready(data_dir).await?;
    let objects = cmd.objects.open(data_dir)?;
    let settings = cmd.jwt.settings(jwt_secret_or_random(&cmd.jwt.jwt_secret), &cmd.http, &cmd.compute)?;
    cmd.backup.spawn(&store, &cmd.objects.s3)?;
    let state = AppState::new(api, store.clone(), Some(objects.clone()), settings);
    spawn_metrics(cmd.http.metrics_listener().await?, state.clone(), std::future::pending());
    let app = match api {
        ApiKind::User => {
            let console = console.and_then(|c| c.router(&state));
            alchemiscale_server::user_app_with(state, console)
        }
        ApiKind::Compute => {
            alchemiscale_server::spawn_reaper(state.clone());
            alchemiscale_server::compute_app(state)
        }
    };
    let listener = tokio::net::TcpListener::bind(&bind).await.with_context(|| format!("cannot listen on {bind}"))?;
    tracing::info!(address = %listener.local_addr()?, api = api.title(), store = store.location(), objects = objects.description(), "listening");
    alchemiscale_server::serve(listener, app, shutdown).await?;
    store.close().await;
    Ok(())
}

/// Options of `alchemiscale serve`.
#[derive(Debug, Args)]
pub struct ServeCommand {
    /// Address both APIs listen on.
    #[arg(long, env = "ALCHEMISCALE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the user-facing API.
    #[arg(long, env = "ALCHEMISCALE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Port of the compute API.
    #[arg(long, env = "ALCHEMISCALE_COMPUTE_PORT", default_value_t = 8081)]
    pub compute_port: u16,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, env = "ALCHEMISCALE_LOGLEVEL", default_value = "info")]
    pub loglevel: String,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Scope granted to the identities created on first start.
    #[arg(long, default_value = "*-*-*", value_parser = |s: &str| s.parse::<Scope>().map_err(|e| e.to_string()))]
    pub default_scope: Scope,
    /// Do not run the strategist inside the server (strategies then run only where an
    /// `alchemiscale strategist` runs).
    #[arg(long, env = "ALCHEMISCALE_NO_STRATEGIST", help_heading = "Strategist")]
    pub no_strategist: bool,
    /// Strategist settings, as for `alchemiscale strategist -c` (its store options are
    /// the server's). Default: upstream's settings with a 60-second cycle.
    #[arg(long, value_name = "FILE", help_heading = "Strategist")]
    pub strategist_config: Option<PathBuf>,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
    #[command(flatten)]
    pub backup: super::backup::BackupScheduleArgs,
    #[command(flatten)]
    pub console: ConsoleArgs,
}

/// What `serve` prints so a new user can connect at once.
fn connect_instructions(
    user_url: &str,
    compute_url: &str,
    user: &str,
    user_key: &str,
    compute: &str,
    compute_key: &str,
    scope: &Scope,
) -> String {
    format!(
        "alchemiscale-rs is serving\n\
         \n  user API:    {user_url}\n  compute API: {compute_url}\n  web console: {user_url}/ui (sign in with the user identity and key)\n\
         \n  user identity:    {user}\n  user key:         {user_key}\n  compute identity: {compute}\n  compute key:      {compute_key}\n  scope granted:    {scope}\n\
         \nConnect the Python client (alchemiscale 0.8):\n\
         \n    from alchemiscale import AlchemiscaleClient, Scope\n    client = AlchemiscaleClient(\"{user_url}\", \"{user}\", \"{user_key}\")\n    client.get_info()\n"
    )
}

/// First start on an empty store: one user and one compute identity with random keys.
async fn bootstrap_identities(store: &Store, data_dir: &Path, urls: (&str, &str), scope: &Scope) -> anyhow::Result<Option<String>> {
    let empty = store.list_identities(IdentityKind::User).await?.is_empty()
        && store.list_identities(IdentityKind::Compute).await?.is_empty()
        && store.list_identities(IdentityKind::Admin).await?.is_empty();
    if !empty {
        return Ok(None);
    }
    let (user, compute) = ("user", "compute");
    let (user_key, compute_key) = (random_hex(16), random_hex(16));
    store.add_identity(IdentityKind::User, user, &hash_key(&user_key)?, false).await?;
    store.add_scopes(IdentityKind::User, user, std::slice::from_ref(scope)).await?;
    store.add_identity(IdentityKind::Compute, compute, &hash_key(&compute_key)?, false).await?;
    store.add_scopes(IdentityKind::Compute, compute, std::slice::from_ref(scope)).await?;
    let text = connect_instructions(urls.0, urls.1, user, &user_key, compute, &compute_key, scope);
    write_private(&data_dir.join("credentials.txt"), &text)?;
    Ok(Some(text))
}

pub async fn run_serve(cmd: ServeCommand, data_dir: &Path) -> anyhow::Result<()> {
    init_logging(&cmd.loglevel, cmd.log_json);
    let shutdown = shutdown_signal();
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let store = cmd.store.connect(data_dir).await?;
    store.init().await?;
    store.require_current_schema().await?;

    let secret = match cmd.jwt.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => s.to_string(),
        None => {
            let path = data_dir.join("jwt-secret");
            match std::fs::read_to_string(&path) {
                Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => {
                    let s = random_hex(32);
                    write_private(&path, &s)?;
                    s
                }
            }
        }
    };
    let settings = cmd.jwt.settings(secret, &cmd.http, &cmd.compute)?;
    let objects = cmd.objects.open(data_dir)?;

    let user_addr: SocketAddr = format!("{}:{}", cmd.host, cmd.port).parse().with_context(|| format!("invalid --host {}", cmd.host))?;
    let compute_addr: SocketAddr = format!("{}:{}", cmd.host, cmd.compute_port).parse()?;
    if user_addr == compute_addr && user_addr.port() != 0 {
        bail!("--port and --compute-port must differ");
    }
    let user_listener = tokio::net::TcpListener::bind(user_addr).await.with_context(|| format!("cannot listen on {user_addr}"))?;
    let user_url = format!("http://{}", user_listener.local_addr()?);
    let compute_listener = tokio::net::TcpListener::bind(compute_addr).await.with_context(|| format!("cannot listen on {compute_addr}"))?;
    let compute_url = format!("http://{}", compute_listener.local_addr()?);

    match bootstrap_identities(&store, data_dir, (&user_url, &compute_url), &cmd.default_scope).await? {
        Some(text) => println!("{text}\n(also written to {}, readable only by you)", data_dir.join("credentials.txt").display()),
        None => println!(
            "alchemiscale-rs is serving\n\n  user API:    {user_url}\n  compute API: {compute_url}\n  web console: {user_url}/ui\n  state store: {}\n\nIdentities already exist; credentials created on first start are in {}.",
            store.location(),
            data_dir.join("credentials.txt").display()
        ),
    }
    let _ = std::io::stdout().flush();

    let strategist = match cmd.no_strategist {
        true => None,
        false => {
            let (strategist_settings, warnings) = match &cmd.strategist_config {
                Some(path) => super::strategist::read_settings(Some(path)).map_err(anyhow::Error::msg)?,
                None => (alchemiscale_strategist::Settings { sleep_interval: 60, ..Default::default() }, Vec::new()),
            };
            for w in warnings {
                tracing::warn!("strategist settings: {w}");
            }
            let objects = super::strategist::object_args(&cmd.objects, &strategist_settings).open(data_dir)?;
            let s = alchemiscale_strategist::Strategist::from_settings(store.clone(), Some(objects), &strategist_settings)
                .context("setting up the strategist")?;
            let stop = s.stop_handle();
            Some((stop, tokio::spawn(async move { s.run().await })))
        }
    };

    // one set of metrics for the process, on both APIs
    let metrics = alchemiscale_server::metrics::Metrics::new();
    let user_state = AppState::with_metrics(ApiKind::User, store.clone(), Some(objects.clone()), settings.clone(), metrics.clone());
    spawn_metrics(cmd.http.metrics_listener().await?, user_state.clone(), std::future::pending());
    let console = cmd.console.router(&user_state);
    let user_app = alchemiscale_server::user_app_with(user_state, console);
    let compute_state = AppState::with_metrics(ApiKind::Compute, store.clone(), Some(objects.clone()), settings, metrics);
    alchemiscale_server::spawn_reaper(compute_state.clone());
    let compute_app = alchemiscale_server::compute_app(compute_state);
    spawn_memory_trimmer();
    cmd.backup.spawn(&store, &cmd.objects.s3)?;
    tracing::info!(user_api = %user_url, compute_api = %compute_url, store = store.location(), objects = objects.description(), "serving");
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut stop_user = stop_tx.subscribe();
    let mut stop_compute = stop_tx.subscribe();
    let user = alchemiscale_server::serve(user_listener, user_app, async move {
        let _ = stop_user.recv().await;
    });
    let compute = alchemiscale_server::serve(compute_listener, compute_app, async move {
        let _ = stop_compute.recv().await;
    });
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(());
    };
    let (u, c, _) = tokio::join!(user, compute, signal);
    if let Some((stop, handle)) = strategist {
        stop.stop();
        let _ = handle.await;
    }
    u?;
    c?;
    store.close().await;
    Ok(())
}
