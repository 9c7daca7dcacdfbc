//! The web console: campaigns, tasks, compute and identities at a glance, served by the
//! user API under `/ui`.
//!
//! Pages are rendered on the server ([`maud`] templates, escaped by construction); charts
//! are SVG drawn by `plotters` and network drawings SVG from an `fdg-sim` force-directed
//! layout, both generated from the store's data. Every asset is compiled into the binary
//! and the pages load nothing from elsewhere (a strict Content-Security-Policy says so to
//! the browser). A little JavaScript asks for confirmation before actions; everything works
//! without it.
//!
//! * [`session`] — login with an identity's identifier and key, sessions kept in the state
//!   store (so every API instance knows them), the session cookie, CSRF tokens, the login
//!   rate limit;
//! * [`pages`] — one module per page; [`actions`] — the state-changing forms;
//! * [`layout`] — the page shell, the stylesheet, status colours;
//! * [`chart`], [`graph`] — the SVG figures; [`cache`] — the overview's figures, costly to
//!   count, kept for a few seconds; [`layouts`] — network drawings' layouts, kept in the
//!   store and made in the background after a network is submitted.

pub mod actions;
pub mod cache;
pub mod chart;
pub mod error;
pub mod form;
pub mod graph;
pub mod layout;
pub mod layouts;
pub mod pages;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use alchemiscale_server::AppState;
use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;

/// Console options (`--no-console`, `--console-session`, `--console-secure-cookies`).
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// How long a session lasts after login.
    pub session_ttl: Duration,
    /// Always mark the session cookie `Secure`. Without it the cookie is `Secure` when the
    /// request arrived over TLS at the proxy (`X-Forwarded-Proto: https`).
    pub secure_cookies: bool,
    /// Failed logins allowed per identifier, and per client address, within `login_window`.
    pub login_failures: usize,
    pub login_window: Duration,
    /// How long the overview's counts may be reused before they are counted again.
    pub figures_max_age: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            session_ttl: Duration::from_secs(8 * 3600),
            secure_cookies: false,
            login_failures: 5,
            login_window: Duration::from_secs(300),
            figures_max_age: Duration::from_secs(10),
        }
    }
}

struct Inner {
    app: AppState,
    settings: ConsoleSettings,
    limiter: session::LoginLimiter,
    figures: cache::FiguresCache,
    layouts: layouts::LayoutCache,
}

/// What console handlers reach; cheap to clone.
#[derive(Clone)]
pub struct ConsoleState(Arc<Inner>);

impl ConsoleState {
    pub fn new(app: AppState, settings: ConsoleSettings) -> ConsoleState {
        let limiter = session::LoginLimiter::new(settings.login_failures, settings.login_window);
        let figures = cache::FiguresCache::new(settings.figures_max_age);
        let state = ConsoleState(Arc::new(Inner { app, settings, limiter, figures, layouts: layouts::LayoutCache::new(64) }));
        if tokio::runtime::Handle::try_current().is_ok() {
            state.0.figures.warm(state.store().clone());
            state.spawn_layout_worker();
        }
        state
    }

    /// Lays out new networks in the background ([`layouts::lay_out_new`]) until the console
    /// is dropped.
    fn spawn_layout_worker(&self) {
        let console = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                let Some(store) = console.upgrade().map(|c| c.app.store().clone()) else { return };
                if let Err(e) = layouts::lay_out_new(&store).await {
                    tracing::debug!(error = %e, "console: laying out new networks failed");
                }
                drop(store);
                tokio::time::sleep(layouts::WORKER_EVERY).await;
            }
        });
    }
    pub fn app(&self) -> &AppState {
        &self.0.app
    }
    pub fn store(&self) -> &alchemiscale_store::Store {
        self.0.app.store()
    }
    pub fn settings(&self) -> &ConsoleSettings {
        &self.0.settings
    }
    pub(crate) fn limiter(&self) -> &session::LoginLimiter {
        &self.0.limiter
    }
    pub(crate) fn figures(&self) -> &cache::FiguresCache {
        &self.0.figures
    }
    pub(crate) fn layouts(&self) -> &layouts::LayoutCache {
        &self.0.layouts
    }
}

/// The console's routes, to be nested at `/ui` of the user API
/// (`alchemiscale_server::user_app_with`).
pub fn router(state: ConsoleState) -> Router<AppState> {
    let routes = Router::new()
        .route("/", get(pages::overview::page))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/assets/console.css", get(layout::stylesheet))
        .route("/assets/console.js", get(layout::script))
        .route("/networks/{network}", get(pages::network::page))
        .route("/networks/{network}/state", post(actions::set_state))
        .route("/networks/{network}/weight", post(actions::set_weight))
        .route("/networks/{network}/strategy/wake", post(actions::wake_strategy))
        .route("/networks/{network}/tasks/create", post(actions::create_tasks))
        .route("/networks/{network}/tasks/action", post(actions::action_tasks))
        .route("/networks/{network}/tasks/cancel", post(actions::cancel_tasks))
        .route("/transformations/{transformation}", get(pages::transformation::page))
        .route("/tasks/{task}", get(pages::task::page))
        .route("/compute", get(pages::compute::page))
        .route("/identities", get(pages::identities::page))
        .route("/identities/add", post(pages::identities::add))
        .route("/identities/remove", post(pages::identities::remove))
        .route("/identities/scopes/add", post(pages::identities::add_scope))
        .route("/identities/scopes/remove", post(pages::identities::remove_scope))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state);
    Router::new().nest("/ui", routes)
}

/// Nothing from elsewhere, no inline script, not framed, not sniffed, not cached.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
