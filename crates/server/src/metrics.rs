//! `/metrics`: the Prometheus text exposition of an API process.
//!
//! Two kinds of figures:
//! * this process's own: HTTP request latency by route (a histogram labelled with the
//!   route's template, so the label set stays bounded), tasks handed out by claims and
//!   results pushed (counters);
//! * the store's, counted on every scrape ([`Store::census`]): tasks by status per scope,
//!   compute services and the tasks they hold, managers and their saturation, strategies
//!   by status and their executions, this process's store connections, and whether the
//!   store answered at all (`alchemiscale_store_up`). Several instances report the same
//!   store figures; aggregate them with `max`.
//!
//! The page names scopes and counts. It is served on each API (`/metrics`, no
//! authentication, like `/ping`) unless the server is given its own metrics address,
//! which keeps it off the public ports.

use std::sync::Arc;
use std::time::Instant;

use alchemiscale_store::census::Census;
use alchemiscale_store::Store;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{ApiKind, AppState};

/// The metrics of one server process (shared by its APIs).
pub struct Metrics {
    registry: Registry,
    requests: HistogramVec,
    claimed: IntCounterVec,
    pushed: IntCounterVec,
    store_up: IntGauge,
    tasks: IntGaugeVec,
    services: IntGauge,
    claims_held: IntGauge,
    managers: IntGaugeVec,
    saturation: GaugeVec,
    strategies: IntGaugeVec,
    iterations: IntGauge,
    connections: IntGaugeVec,
    /// One scrape at a time sets the store gauges and reads them back.
    scrape: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let requests = HistogramVec::new(
            HistogramOpts::new("alchemiscale_http_request_duration_seconds", "HTTP requests by API, route template, method and status"),
            &["api", "route", "method", "status"],
        )
        .expect("valid histogram");
        let m = Metrics {
            requests: register(&r, requests),
            claimed: register(
                &r,
                IntCounterVec::new(
                    opts("alchemiscale_claimed_tasks_total", "Tasks handed out to compute services, by claim route"),
                    &["route"],
                )
                .expect("valid counter"),
            ),
            pushed: register(
                &r,
                IntCounterVec::new(opts("alchemiscale_result_pushes_total", "ProtocolDAGResults recorded, by outcome"), &["outcome"])
                    .expect("valid counter"),
            ),
            store_up: register(
                &r,
                IntGauge::with_opts(opts("alchemiscale_store_up", "1 if the state store answered this scrape")).unwrap(),
            ),
            tasks: register(
                &r,
                IntGaugeVec::new(opts("alchemiscale_tasks", "Tasks by scope and status"), &["org", "campaign", "project", "status"])
                    .unwrap(),
            ),
            services: register(&r, IntGauge::with_opts(opts("alchemiscale_compute_services", "Registered compute services")).unwrap()),
            claims_held: register(
                &r,
                IntGauge::with_opts(opts("alchemiscale_claimed_tasks", "Tasks currently claimed by compute services")).unwrap(),
            ),
            managers: register(
                &r,
                IntGaugeVec::new(opts("alchemiscale_compute_managers", "Registered compute managers by status"), &["status"]).unwrap(),
            ),
            saturation: register(
                &r,
                GaugeVec::new(opts("alchemiscale_compute_manager_saturation", "Saturation a compute manager last reported"), &["manager"])
                    .unwrap(),
            ),
            strategies: register(
                &r,
                IntGaugeVec::new(opts("alchemiscale_strategies", "Network strategies by status"), &["status"]).unwrap(),
            ),
            iterations: register(
                &r,
                IntGauge::with_opts(opts("alchemiscale_strategy_iterations", "Strategy executions recorded, over every network")).unwrap(),
            ),
            connections: register(
                &r,
                IntGaugeVec::new(opts("alchemiscale_store_connections", "This process's state-store connections"), &["state"]).unwrap(),
            ),
            registry: r,
            scrape: tokio::sync::Mutex::new(()),
        };
        for outcome in ["ok", "failure"] {
            m.pushed.with_label_values(&[outcome]);
        }
        for route in ["claim", "taskhub"] {
            m.claimed.with_label_values(&[route]);
        }
        Arc::new(m)
    }

    /// Tasks handed out by one claim request (`route`: `claim` for C11, `taskhub` for C10).
    pub fn claimed(&self, route: &str, tasks: usize) {
        self.claimed.with_label_values(&[route]).inc_by(tasks as u64);
    }

    /// A result recorded.
    pub fn pushed(&self, ok: bool) {
        self.pushed.with_label_values(&[if ok { "ok" } else { "failure" }]).inc();
    }

    fn set_census(&self, c: &Census) {
        self.tasks.reset();
        let part = |p: Option<&str>| p.unwrap_or("*").to_string();
        // every status of a scope that holds tasks has a series (0 when none), so a
        // status emptied by claims reads 0 instead of vanishing
        for (scope, _, _) in &c.tasks {
            for status in alchemiscale_model::TaskStatus::ALL {
                self.tasks
                    .with_label_values(&[part(scope.org()), part(scope.campaign()), part(scope.project()), status.as_str().to_string()])
                    .set(0);
            }
        }
        for (scope, status, n) in &c.tasks {
            self.tasks.with_label_values(&[part(scope.org()), part(scope.campaign()), part(scope.project()), status.clone()]).set(*n);
        }
        self.services.set(c.compute_services);
        self.claims_held.set(c.claimed_tasks);
        self.managers.reset();
        self.saturation.reset();
        for status in ["OK", "ERROR"] {
            self.managers.with_label_values(&[status]).set(0);
        }
        for (name, status, saturation) in &c.managers {
            self.managers.with_label_values(&[status.as_str()]).inc();
            if let Some(s) = saturation {
                self.saturation.with_label_values(&[name.as_str()]).set(*s);
            }
        }
        self.strategies.reset();
        for status in ["awake", "dormant", "error"] {
            self.strategies.with_label_values(&[status]).set(0);
        }
        for (status, n) in &c.strategies {
            self.strategies.with_label_values(&[status.as_str()]).set(*n);
        }
        self.iterations.set(c.strategy_iterations);
        self.connections.with_label_values(&["open"]).set(i64::from(c.pool.0));
        self.connections.with_label_values(&["idle"]).set(i64::from(c.pool.1));
    }

    /// The exposition text, with the store counted now. A store that does not answer
    /// leaves its figures as they were last read and sets `alchemiscale_store_up` to 0.
    pub async fn render(&self, store: &Store) -> String {
        let _one = self.scrape.lock().await;
        match store.census().await {
            Ok(c) => {
                self.set_census(&c);
                self.store_up.set(1);
            }
            Err(e) => {
                tracing::warn!("metrics: cannot count the store: {e}");
                self.store_up.set(0);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// `GET /metrics`.
pub async fn metrics_page(State(state): State<AppState>) -> Response {
    let text = state.metrics().render(state.store()).await;
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response()
}

/// Route layer: time every request of a matched route.
pub async fn track(State(state): State<AppState>, path: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let res = next.run(req).await;
    let route = path.as_ref().map_or("unmatched", |p| p.as_str());
    let api = match state.api() {
        ApiKind::User => "user",
        ApiKind::Compute => "compute",
    };
    state
        .metrics()
        .requests
        .with_label_values(&[api, route, method.as_str(), res.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    res
}

/// A router serving only `/metrics`, for a listener of its own.
pub fn metrics_app(state: AppState) -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(metrics_page)).fallback(|| async { StatusCode::NOT_FOUND }).with_state(state)
}
