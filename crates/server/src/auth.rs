//! Authentication and authorisation.
//!
//! `POST /token` takes the OAuth2 password form and returns an HS256 (by default) JWT with
//! upstream's claims (`sub`, `scopes`, `exp`) plus two of ours, which fix upstream gaps:
//!
//! * `aud` names the API that issued the token (`alchemiscale:user` or
//!   `alchemiscale:compute`): a user token is refused by the compute API and the other way
//!   round, even when both share a secret (upstream accepts either);
//! * `kind` records the identity type (`user`, `admin`, `compute`).
//!
//! Every authenticated request also checks (through a short-lived cache) that the identity
//! still exists and is neither disabled nor expired (upstream never looks). Key checks are
//! constant-time and run off the async executor; an unknown identifier costs the same as
//! a wrong key and answers the same 401.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alchemiscale_model::scope::{authorised, query_space};
use alchemiscale_model::Scope;
use alchemiscale_store::identities::IdentityKind;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult, ValidationItem};
use crate::extract::RawBody;
use crate::{ApiKind, AppState};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub scopes: Vec<String>,
    pub exp: u64,
    pub aud: String,
    pub kind: String,
}

/// Signing material for one API.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
    audience: &'static str,
    expire: Duration,
}

impl TokenKeys {
    pub fn new(secret: &str, algorithm: Algorithm, expire: Duration, api: ApiKind) -> TokenKeys {
        let audience = api.audience();
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            algorithm,
            audience,
            expire,
        }
    }

    pub fn issue(&self, identifier: &str, kind: IdentityKind, scopes: Vec<String>) -> ApiResult<String> {
        let exp = (chrono::Utc::now().timestamp().max(0) as u64) + self.expire.as_secs();
        let claims = Claims { sub: identifier.to_string(), scopes, exp, aud: self.audience.to_string(), kind: kind.as_str().to_string() };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("cannot sign token: {e}")))
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok().map(|d| d.claims)
    }
}

/// Caches whether identities are still allowed in, so revocation takes effect within
/// `ttl` without a database round trip per request.
pub struct IdentityCache {
    ttl: Duration,
    entries: Mutex<HashMap<(IdentityKind, String), (bool, Instant)>>,
}

impl IdentityCache {
    pub fn new(ttl: Duration) -> IdentityCache {
        IdentityCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    async fn active(&self, state: &AppState, kind: IdentityKind, identifier: &str) -> ApiResult<bool> {
        let key = (kind, identifier.to_string());
        if let Some((ok, at)) = self.entries.lock().expect("cache lock").get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(*ok);
            }
        }
        let found = state.store().get_identity(kind, identifier).await?;
        let now = alchemiscale_store::now_micros();
        let ok = found.is_some_and(|(i, _)| !i.disabled && i.expires.is_none_or(|e| e > now));
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() > 100_000 {
            entries.clear();
        }
        entries.insert(key, (ok, Instant::now()));
        Ok(ok)
    }
}

/// The authenticated caller of a route.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identifier: String,
    pub kind: IdentityKind,
    /// Token scopes (unparsable entries dropped).
    pub scopes: Vec<Scope>,
    scope_strings: Vec<String>,
}

fn not_authenticated() -> ApiError {
    ApiError::Unauthorized("Not authenticated".into())
}
fn invalid_credentials() -> ApiError {
    ApiError::Unauthorized("Could not validate credentials".into())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(not_authenticated)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(not_authenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(not_authenticated());
        }
        let claims = state.keys().verify(token.trim()).ok_or_else(invalid_credentials)?;
        let kind: IdentityKind = claims.kind.parse().map_err(|_| invalid_credentials())?;
        if !state.api().accepts(kind) {
            return Err(invalid_credentials());
        }
        if !state.identity_cache().active(state, kind, &claims.sub).await? {
            return Err(invalid_credentials());
        }
        let scopes = claims.scopes.iter().filter_map(|s| s.parse().ok()).collect();
        Ok(Caller { identifier: claims.sub, kind, scopes, scope_strings: claims.scopes })
    }
}

impl Caller {
    /// Rule (O): the target scope must lie within one of the token's scopes.
    pub fn authorize(&self, target: &Scope) -> ApiResult<()> {
        if authorised(target, &self.scopes) {
            return Ok(());
        }
        let granted = self.scope_strings.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
        Err(ApiError::Unauthorized(format!("Targeted scope '{target}' not accessible via scopes for this identity: [{granted}].")))
    }

    /// Rule (Q): the search space of a query scope.
    pub fn search_space(&self, query: &Scope) -> Vec<Scope> {
        query_space(query, &self.scopes)
    }

    /// Rule (Q) over several requested scopes (deduplicated, in order).
    pub fn search_spaces(&self, requested: &[Scope]) -> Vec<Scope> {
        let mut out: Vec<Scope> = Vec::new();
        for q in alchemiscale_model::scope::minimise(requested) {
            for s in self.search_space(&q) {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        // keep only scopes not covered by another kept scope
        alchemiscale_model::scope::minimise(&out)
    }

    pub fn is_admin(&self) -> bool {
        self.kind == IdentityKind::Admin
    }
}

/// `POST /token`: OAuth2 password form → `{"access_token": …, "token_type": "bearer"}`.
pub async fn token(state: &AppState, RawBody(body): RawBody) -> ApiResult<axum::Json<serde_json::Value>> {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut missing = Vec::new();
    for field in ["username", "password"] {
        if !form.contains_key(field) {
            missing.push(ValidationItem {
                kind: "missing".into(),
                loc: vec![serde_json::json!("body"), serde_json::json!(field)],
                msg: "Field required".into(),
                input: serde_json::Value::Null,
                ctx: None,
            });
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::Validation(missing));
    }
    if let Some(g) = form.get("grant_type") {
        if g != "password" {
            return Err(ApiError::body_field("string_pattern_mismatch", "grant_type", "String should match pattern '^password$'"));
        }
    }
    let (username, password) = (&form["username"], &form["password"]);
    let wrong = || ApiError::Unauthorized("Incorrect identity or key".into());
    let mut identity = None;
    for kind in state.api().token_kinds() {
        if let Some(i) = state.store().authenticate(*kind, username, password).await? {
            identity = Some(i);
            break;
        }
    }
    let identity = identity.ok_or_else(wrong)?;
    let token = state.keys().issue(&identity.identifier, identity.kind, identity.scopes)?;
    Ok(axum::Json(serde_json::json!({ "access_token": token, "token_type": "bearer" })))
}

/// 403 for reading another identity's scopes without being an admin.
pub fn forbidden(msg: &str) -> ApiError {
    ApiError::Detail(StatusCode::FORBIDDEN, msg.to_string())
}

/// A ScopedKey from a path segment that the caller may reach: 400 when malformed, the
/// scope refusal of [`Caller::authorize`] otherwise.
pub fn path_sk(caller: &Caller, raw: &str) -> ApiResult<alchemiscale_model::ScopedKey> {
    let sk = crate::extract::parse_sk(raw)?;
    caller.authorize(sk.scope())?;
    Ok(sk)
}

/// Refuse unless the caller may reach every key's scope.
pub fn authorize_all(caller: &Caller, keys: &[alchemiscale_model::ScopedKey]) -> ApiResult<()> {
    keys.iter().try_for_each(|k| caller.authorize(k.scope()))
}
