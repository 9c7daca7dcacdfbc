//! Logging in and out, the session cookie, and who the caller is.
//!
//! Users and admins log in with their identifier and key (compute identities cannot). A
//! session lives in the state store ([`alchemiscale_store::sessions`]) for
//! [`ConsoleSettings::session_ttl`](crate::ConsoleSettings), and ends at logout, when the
//! identity is removed, disabled or given a new key. Its cookie is `HttpOnly`,
//! `SameSite=Strict`, scoped to `/ui`, and `Secure` behind TLS. Scopes are read from the
//! store on every request, so granting or revoking a scope shows at once.
//!
//! Failed logins are limited per identifier and per client address: past
//! `login_failures` within `login_window` further attempts (right or wrong) answer 429
//! until the window has moved on.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alchemiscale_model::scope::{authorised, minimise};
use alchemiscale_model::Scope;
use alchemiscale_store::identities::IdentityKind;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use crate::error::{ConsoleError, ConsoleResult};
use crate::form::Form;
use crate::layout;
use crate::ConsoleState;

pub const COOKIE: &str = "alchemiscale_session";

/// The logged-in caller of a console route.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub kind: IdentityKind,
    pub identifier: String,
    pub csrf: String,
    /// The identity's scopes now (unparsable entries dropped).
    pub scopes: Vec<Scope>,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.kind == IdentityKind::Admin
    }

    /// The scopes whose contents this session sees: everything for admins, otherwise the
    /// identity's scopes (minimised, so disjoint).
    pub fn visible_scopes(&self) -> Vec<Scope> {
        match self.is_admin() {
            true => vec![Scope::all()],
            false => minimise(&self.scopes),
        }
    }

    /// None for admins (no filter), the visible scopes otherwise.
    pub fn scope_filter(&self) -> Option<Vec<Scope>> {
        (!self.is_admin()).then(|| self.visible_scopes())
    }

    pub fn can_reach(&self, target: &Scope) -> bool {
        self.is_admin() || authorised(target, &self.scopes)
    }

    /// Refuse objects outside the session's scopes (the same rule as the API).
    pub fn require(&self, target: &Scope) -> ConsoleResult<()> {
        match self.can_reach(target) {
            true => Ok(()),
            false => Err(ConsoleError::Forbidden(format!("Scope '{target}' is not accessible to {} '{}'.", self.kind, self.identifier))),
        }
    }

    pub fn require_admin(&self) -> ConsoleResult<()> {
        match self.is_admin() {
            true => Ok(()),
            false => Err(ConsoleError::Forbidden("Only admin identities manage identities.".into())),
        }
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let id = cookie_value(&parts.headers).ok_or(ConsoleError::LoginRequired)?;
        let found = state.store().console_session(&id).await?.ok_or(ConsoleError::LoginRequired)?;
        let scopes = found.scopes.iter().filter_map(|s| s.parse().ok()).collect();
        Ok(Session { id, kind: found.kind, identifier: found.identifier, csrf: found.csrf, scopes })
    }
}

/// Failed-login counts per key within a sliding window.
pub struct LoginLimiter {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(limit: usize, window: Duration) -> LoginLimiter {
        LoginLimiter { limit, window, failures: Mutex::new(HashMap::new()) }
    }

    fn prune(&self, map: &mut HashMap<String, VecDeque<Instant>>) {
        let window = self.window;
        map.retain(|_, q| {
            while q.front().is_some_and(|t| t.elapsed() >= window) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// Whether any of `keys` has used up its failures.
    pub fn blocked(&self, keys: &[String]) -> bool {
        let mut map = self.failures.lock().expect("limiter lock");
        self.prune(&mut map);
        keys.iter().any(|k| map.get(k).is_some_and(|q| q.len() >= self.limit))
    }

    pub fn fail(&self, keys: &[String]) {
        let mut map = self.failures.lock().expect("limiter lock");
        for k in keys {
            map.entry(k.clone()).or_default().push_back(Instant::now());
        }
    }
}

fn login_form(message: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(m) = message {
            p.notice.error role="alert" { (m) }
        }
        form.login method="post" action="/ui/login" {
            label for="identifier" { "Identifier" }
            input #identifier type="text" name="identifier" autocomplete="username" required autofocus;
            label for="key" { "Key" }
            input #key type="password" name="key" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
        p.hint { "Use the identifier and key of a user or admin identity (the same the Python client uses)." }
    }
}

/// `GET /ui/login`.
pub async fn login_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_value(&headers) {
        if matches!(state.store().console_session(&id).await, Ok(Some(_))) {
            return Redirect::to("/ui").into_response();
        }
    }
    layout::bare_page("Sign in", login_form(None)).into_response()
}

fn secure(state: &ConsoleState, headers: &HeaderMap) -> bool {
    state.settings().secure_cookies
        || headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"))
        .expect("cookie is ASCII")
}

/// `POST /ui/login`.
pub async fn login(State(state): State<ConsoleState>, req: Request) -> ConsoleResult<Response> {
    let headers = req.headers().clone();
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_default();
    let form = Form::from_request(req, &()).await?;
    let identifier = form.get("identifier").unwrap_or("").trim().to_string();
    let key = form.get("key").unwrap_or("").to_string();
    let keys = vec![format!("identifier:{identifier}"), format!("address:{peer}")];
    if state.limiter().blocked(&keys) {
        tracing::warn!(identifier, address = peer, "console login refused: too many failed attempts");
        let page = layout::bare_page("Sign in", login_form(Some("Too many failed sign-in attempts. Wait a few minutes and try again.")));
        return Ok((StatusCode::TOO_MANY_REQUESTS, page).into_response());
    }
    let mut who = None;
    if !identifier.is_empty() && !key.is_empty() {
        for kind in [IdentityKind::User, IdentityKind::Admin] {
            if let Some(i) = state.store().authenticate(kind, &identifier, &key).await? {
                who = Some(i);
                break;
            }
        }
    }
    let Some(who) = who else {
        state.limiter().fail(&keys);
        let page = layout::bare_page("Sign in", login_form(Some("Incorrect identifier or key.")));
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    };
    let ttl = state.settings().session_ttl;
    let id = state.store().create_console_session(who.kind, &who.identifier, ttl.as_micros() as i64).await?;
    tracing::info!(identifier = who.identifier, kind = %who.kind, "console login");
    let mut response = Redirect::to("/ui").into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(&id, ttl.as_secs(), secure(&state, &headers)));
    Ok(response)
}

/// `POST /ui/logout`.
pub async fn logout(State(state): State<ConsoleState>, session: Session, headers: HeaderMap, form: Form) -> ConsoleResult<Response> {
    form.check_csrf(&session)?;
    state.store().end_console_session(&session.id).await?;
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie("", 0, secure(&state, &headers)));
    Ok(response)
}
