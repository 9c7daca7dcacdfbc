//! Logging in and out, the session cookie, and who the caller is.
//!
//! Users and admins log in with their identifier and key (compute identities cannot). A
//! session lives in the state store ([`alchemiscale_store::sessions`]) for
//! [`ConsoleSettings::session_ttl`](crate::ConsoleSettings), and ends at logout, when the
//! identity is removed, disabled or given a new key. Its cookie is `HttpOnly`,
//! `SameSite=Strict`, scoped to `/ui`, and `Secure` behind TLS. Scopes are read from the
//! store on every request, so granting or revoking a scope shows at once.
//!
//! The sign-in form carries a token of its own, matched against a short-lived cookie set
//! with the form (a double-submitted token), so another site cannot sign a browser in
//! under an identity of its choosing.
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
/// The sign-in form's token, set with the form and matched when it is sent.
pub const LOGIN_COOKIE: &str = "alchemiscale_login";
/// How long a sign-in form stays usable.
const LOGIN_FORM_SECS: u64 = 3600;

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

fn cookie_value(headers: &HeaderMap, cookie: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let id = cookie_value(&parts.headers, COOKIE).ok_or(ConsoleError::LoginRequired)?;
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

fn login_form(token: &str, message: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(m) = message {
            p.notice.error role="alert" { (m) }
        }
        form.login method="post" action="/ui/login" {
            input type="hidden" name="csrf" value=(token);
            label for="identifier" { "Identifier" }
            input #identifier type="text" name="identifier" autocomplete="username" required autofocus;
            label for="key" { "Key" }
            input #key type="password" name="key" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
        p.hint { "Use the identifier and key of a user or admin identity (the same the Python client uses)." }
    }
}

/// The sign-in page with a fresh form token, and the cookie that token must match.
fn login_response(state: &ConsoleState, headers: &HeaderMap, status: StatusCode, message: Option<&str>) -> Response {
    let mut token = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut token);
    let token = hex::encode(token);
    let mut response = (status, layout::bare_page("Sign in", login_form(&token, message))).into_response();
    let cookie = set_cookie(LOGIN_COOKIE, &token, "/ui/login", LOGIN_FORM_SECS, secure(state, headers));
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

/// `GET /ui/login`.
pub async fn login_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_value(&headers, COOKIE) {
        if matches!(state.store().console_session(&id).await, Ok(Some(_))) {
            return Redirect::to("/ui").into_response();
        }
    }
    login_response(&state, &headers, StatusCode::OK, None)
}

fn secure(state: &ConsoleState, headers: &HeaderMap) -> bool {
    state.settings().secure_cookies
        || headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"))
        .expect("cookie is ASCII")
}

/// `POST /ui/login`.
pub async fn login(State(state): State<ConsoleState>, req: Request) -> ConsoleResult<Response> {
    let headers = req.headers().clone();
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_default();
    let form = Form::from_request(req, &()).await?;
    if form.check_token(&cookie_value(&headers, LOGIN_COOKIE).unwrap_or_default()).is_err() {
        let message = "This sign-in form has expired or did not come from this console. Try again.";
        return Ok(login_response(&state, &headers, StatusCode::FORBIDDEN, Some(message)));
    }
    let identifier = form.get("identifier").unwrap_or("").trim().to_string();
    let key = form.get("key").unwrap_or("").to_string();
    let keys = vec![format!("identifier:{identifier}"), format!("address:{peer}")];
    if state.limiter().blocked(&keys) {
        tracing::warn!(identifier, address = peer, "console login refused: too many failed attempts");
        let message = "Too many failed sign-in attempts. Wait a few minutes and try again.";
        return Ok(login_response(&state, &headers, StatusCode::TOO_MANY_REQUESTS, Some(message)));
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
        return Ok(login_response(&state, &headers, StatusCode::UNAUTHORIZED, Some("Incorrect identifier or key.")));
    };
    let ttl = state.settings().session_ttl;
    let id = state.store().create_console_session(who.kind, &who.identifier, ttl.as_micros() as i64).await?;
    tracing::info!(identifier = who.identifier, kind = %who.kind, "console login");
    let mut response = Redirect::to("/ui").into_response();
    let secure = secure(&state, &headers);
    response.headers_mut().append(header::SET_COOKIE, set_cookie(COOKIE, &id, "/ui", ttl.as_secs(), secure));
    response.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", "/ui/login", 0, secure));
    Ok(response)
}

/// `POST /ui/logout`.
pub async fn logout(State(state): State<ConsoleState>, session: Session, headers: HeaderMap, form: Form) -> ConsoleResult<Response> {
    form.check_csrf(&session)?;
    state.store().end_console_session(&session.id).await?;
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(COOKIE, "", "/ui", 0, secure(&state, &headers)));
    Ok(response)
}
