//! The alchemiscale HTTP APIs on axum.
//!
//! * [`user_api`] — the user-facing API (routes U1–U62);
//! * the compute API arrives with issue #5.
//!
//! Handlers stay thin: parse ([`extract`]), authorise ([`auth`]), call the store, encode.
//! [`AppState`] carries the store, the settings and the token keys of one API.

pub mod auth;
pub mod background;
pub mod compute_api;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod results;
pub mod service;
pub mod user_api;

#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use alchemiscale_objects::Objects;
use alchemiscale_store::identities::IdentityKind;
use alchemiscale_store::Store;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use jsonwebtoken::Algorithm;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

pub use auth::{Caller, TokenKeys};
pub use background::spawn_reaper;
pub use error::{ApiError, ApiResult};

/// Which of the two APIs a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    User,
    Compute,
}

impl ApiKind {
    /// The JWT audience of this API's tokens.
    pub fn audience(self) -> &'static str {
        match self {
            ApiKind::User => "alchemiscale:user",
            ApiKind::Compute => "alchemiscale:compute",
        }
    }
    /// The identity kinds `/token` checks, in order.
    pub fn token_kinds(self) -> &'static [IdentityKind] {
        match self {
            ApiKind::User => &[IdentityKind::User, IdentityKind::Admin],
            ApiKind::Compute => &[IdentityKind::Compute],
        }
    }
    pub fn accepts(self, kind: IdentityKind) -> bool {
        self.token_kinds().contains(&kind)
    }
    /// `/ping` answer.
    pub fn title(self) -> &'static str {
        match self {
            ApiKind::User => "AlchemiscaleAPI",
            ApiKind::Compute => "AlchemiscaleComputeAPI",
        }
    }
}

/// Settings shared by both APIs.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// HMAC secret for tokens.
    pub jwt_secret: String,
    pub jwt_expire_seconds: u64,
    pub jwt_algorithm: Algorithm,
    /// Largest accepted request body, after gzip inflation (413 above).
    pub max_body_bytes: usize,
    /// How long an identity's enabled/disabled state is cached.
    pub identity_cache_seconds: u64,
    /// Compute API: heartbeat age after which a compute-service registration expires.
    pub registration_expire_seconds: i64,
    /// Compute API: window in which a compute service's failures count.
    pub forgive_time_seconds: i64,
    /// Compute API: failures tolerated inside the window (claims denied above it).
    pub max_failures: i64,
    /// Compute API: OK-status manager registrations silent this long are removed.
    pub manager_expire_seconds: i64,
    /// Compute API: ERROR-status manager registrations older than this are removed.
    pub manager_expire_seconds_error: i64,
    /// Serve `/metrics` on the API's own port (off when the server has a metrics address
    /// of its own, see [`metrics::metrics_app`]).
    pub metrics_on_api: bool,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            jwt_secret: String::new(),
            jwt_expire_seconds: 1800,
            jwt_algorithm: Algorithm::HS256,
            max_body_bytes: 1 << 30,
            identity_cache_seconds: 5,
            registration_expire_seconds: 1800,
            forgive_time_seconds: 600,
            max_failures: 3,
            manager_expire_seconds: 3600,
            manager_expire_seconds_error: 86400,
            metrics_on_api: true,
        }
    }
}

/// Parse a `JWT_ALGORITHM` value (HMAC algorithms only: the secret is a shared key).
pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    match s.to_ascii_uppercase().as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        other => Err(format!("unsupported JWT algorithm '{other}' (use HS256, HS384 or HS512)")),
    }
}

struct Inner {
    api: ApiKind,
    store: Store,
    objects: Option<Objects>,
    settings: ApiSettings,
    keys: TokenKeys,
    identities: auth::IdentityCache,
    metrics: Arc<metrics::Metrics>,
}

/// Everything a handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(api: ApiKind, store: Store, objects: Option<Objects>, settings: ApiSettings) -> AppState {
        AppState::with_metrics(api, store, objects, settings, metrics::Metrics::new())
    }
    /// A state whose metrics are shared with other APIs of the same process.
    pub fn with_metrics(
        api: ApiKind,
        store: Store,
        objects: Option<Objects>,
        settings: ApiSettings,
        metrics: Arc<metrics::Metrics>,
    ) -> AppState {
        let keys = TokenKeys::new(&settings.jwt_secret, settings.jwt_algorithm, Duration::from_secs(settings.jwt_expire_seconds), api);
        let identities = auth::IdentityCache::new(Duration::from_secs(settings.identity_cache_seconds));
        AppState(Arc::new(Inner { api, store, objects, settings, keys, identities, metrics }))
    }
    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.0.metrics
    }
    pub fn api(&self) -> ApiKind {
        self.0.api
    }
    pub fn store(&self) -> &Store {
        &self.0.store
    }
    /// The object store; 503 when the server runs without one.
    pub fn objects(&self) -> ApiResult<&Objects> {
        self.0.objects.as_ref().ok_or_else(|| ApiError::Detail(StatusCode::SERVICE_UNAVAILABLE, "no object store is configured".into()))
    }
    pub fn settings(&self) -> &ApiSettings {
        &self.0.settings
    }
    pub fn keys(&self) -> &TokenKeys {
        &self.0.keys
    }
    pub(crate) fn identity_cache(&self) -> &auth::IdentityCache {
        &self.0.identities
    }
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"detail": "Not Found"})))
}

async fn method_not_allowed() -> impl IntoResponse {
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(serde_json::json!({"detail": "Method Not Allowed"})))
}

/// Compress unless the handler marked the response with [`results::NoCompression`].
#[derive(Debug, Clone, Copy)]
struct NotMarked;

impl Predicate for NotMarked {
    fn should_compress<B>(&self, response: &axum::http::Response<B>) -> bool
    where
        B: axum::body::HttpBody,
    {
        response.extensions().get::<results::NoCompression>().is_none()
    }
}

/// Wrap an API's routes with what every route shares: JSON 404/405 answers, gzip
/// responses when the client offers gzip (never br/deflate/zstd), request logs, and a
/// panic guard that answers 500 instead of dropping the connection.
pub fn finish_router(router: Router) -> Router {
    let compress = SizeAbove::new(256).and(NotForContentType::GRPC).and(NotForContentType::IMAGES).and(NotMarked);
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // the fastest level: chains and listings still shrink several-fold, at a fraction
        // of the CPU of the default level
        .layer(
            CompressionLayer::new().no_br().no_deflate().no_zstd().quality(tower_http::CompressionLevel::Fastest).compress_when(compress),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| ApiError::Internal("handler panicked".into()).into_response()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(
                    |req: &axum::http::Request<_>| tracing::info_span!("request", method = %req.method(), path = %req.uri().path()),
                )
                .on_response(|res: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(status = res.status().as_u16(), latency_ms = latency.as_secs_f64() * 1000.0, "response");
                }),
        )
}

/// OpenAPI description and a docs page, served without authentication.
fn with_docs(router: Router<AppState>, openapi: utoipa::openapi::OpenApi) -> Router<AppState> {
    use utoipa_redoc::{Redoc, Servable};
    let doc = Arc::new(serde_json::to_value(&openapi).unwrap_or_default());
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .merge(Redoc::with_url("/docs", openapi))
}

/// The user-facing API as a ready router.
pub fn user_app(state: AppState) -> Router {
    user_app_with(state, None)
}

/// The user-facing API with more routes beside it (the web console at `/ui`), sharing
/// its 404s, compression, logs, metrics and panic guard.
pub fn user_app_with(state: AppState, extra: Option<Router<AppState>>) -> Router {
    let (router, mut openapi) = user_api::router().split_for_parts();
    openapi.info.title = "alchemiscale-rs user API".into();
    openapi.info.description =
        Some("Wire-compatible with the alchemiscale 0.8 AlchemiscaleClient. See docs/compatibility.md in the repository for deliberate differences.".into());
    let router = with_docs(router, openapi);
    let router = match extra {
        Some(extra) => router.merge(extra),
        None => router,
    };
    finish_router(instrument(router, &state).with_state(state))
}

/// `/metrics` (unless the server serves it elsewhere) and request timing for every route.
fn instrument(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    let router = match state.settings().metrics_on_api {
        true => router.route("/metrics", axum::routing::get(metrics::metrics_page)),
        false => router,
    };
    router.route_layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
}

/// The compute API as a ready router.
pub fn compute_app(state: AppState) -> Router {
    let (router, mut openapi) = compute_api::router().split_for_parts();
    openapi.info.title = "alchemiscale-rs compute API".into();
    openapi.info.description =
        Some("Wire-compatible with the alchemiscale 0.8 AlchemiscaleComputeClient and SynchronousComputeService.".into());
    finish_router(instrument(with_docs(router, openapi), &state).with_state(state))
}

/// `GET /check` of both APIs: `null`, or 503 naming what cannot be reached.
pub async fn check_stores(state: &AppState) -> ApiResult<axum::Json<serde_json::Value>> {
    let state_ok = state.store().ping().await.is_ok();
    let objects_ok = match state.objects() {
        Ok(o) => o.check().await.is_ok(),
        Err(_) => false,
    };
    if state_ok && objects_ok {
        return Ok(axum::Json(serde_json::Value::Null));
    }
    let py = |b: bool| if b { "True" } else { "False" };
    Err(ApiError::Detail(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("Attempt to reach services failed, state store reachable: {}, object store reachable: {}", py(state_ok), py(objects_ok)),
    ))
}

/// Serve `router` on `listener` until `shutdown` resolves, then finish in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(shutdown).await
}
