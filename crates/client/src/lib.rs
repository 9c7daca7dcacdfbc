//! A Rust client of the alchemiscale APIs (user-facing and compute).
//!
//! It speaks the same wire protocol as upstream's Python clients: OAuth2 password login at
//! `/token`, bearer tokens refreshed once on a 401, gzip request bodies where upstream
//! sends them, `Accept-Encoding: gzip`, and errors reported as
//! `Status Code <code> : <reason> : <detail>`. Responses holding gufe payloads are parsed
//! with the model's Python-dialect JSON reader so `NaN` and big integers survive.

pub mod compute;
pub mod manager;

use std::io::Write;
use std::time::Duration;

use alchemiscale_model::json::{self, Value};
use alchemiscale_model::{Scope, ScopedKey};
pub use reqwest::Method;
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-2xx status.
    #[error("Status Code {status} : {reason} : {detail}")]
    Http { status: u16, reason: String, detail: String },
    #[error("transport error: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("cannot decode the response: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A raw answer: status and body bytes (for tests of error paths).
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a request body is sent.
pub enum Payload {
    None,
    /// JSON text (already serialised, e.g. Python-dialect gufe JSON).
    Json(String),
    /// JSON text, gzip-compressed with `Content-Encoding: gzip`.
    GzipJson(String),
    /// JSON or other bytes, sent as they are, with an optional Content-Encoding.
    Raw {
        bytes: Vec<u8>,
        content_encoding: Option<String>,
    },
}

/// A request body as sent: encoded once, shared by every attempt.
struct Body {
    bytes: Option<bytes::Bytes>,
    content_encoding: Option<String>,
}

impl From<Payload> for Body {
    fn from(p: Payload) -> Body {
        match p {
            Payload::None => Body { bytes: None, content_encoding: None },
            Payload::Json(s) => Body { bytes: Some(s.into()), content_encoding: None },
            Payload::GzipJson(s) => Body { bytes: Some(gzip(&s).into()), content_encoding: Some("gzip".into()) },
            Payload::Raw { bytes, content_encoding } => Body { bytes: Some(bytes.into()), content_encoding },
        }
    }
}

/// A client of one API (user or compute).
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    identifier: String,
    key: String,
    token: RwLock<Option<String>>,
    /// Retries on connection errors and 502/503/504.
    pub max_retries: u32,
}

/// `text` gzip-compressed as this client sends bodies (level 5, what upstream's client
/// uses); public so benchmarks can prepare bodies before their clocks start.
pub fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(5));
    enc.write_all(text.as_bytes()).expect("in-memory gzip");
    enc.finish().expect("in-memory gzip")
}

impl Client {
    pub fn new(base_url: &str, identifier: &str, key: &str) -> Result<Client> {
        let base = url::Url::parse(base_url).map_err(|e| ClientError::Decode(format!("invalid base URL: {e}")))?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
        Ok(Client { http, base, identifier: identifier.to_string(), key: key.to_string(), token: RwLock::new(None), max_retries: 3 })
    }

    pub fn base_url(&self) -> &url::Url {
        &self.base
    }

    fn url(&self, path: &str) -> url::Url {
        self.base.join(path).expect("route paths are valid")
    }

    /// Log in and keep the token.
    pub async fn login(&self) -> Result<String> {
        let resp = self
            .http
            .post(self.url("/token"))
            .form(&[("username", self.identifier.as_str()), ("password", self.key.as_str())])
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ClientError::Http {
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or("").to_string(),
                detail: String::new(),
            });
        }
        let v: serde_json::Value = resp.json().await?;
        let token = v["access_token"].as_str().ok_or_else(|| ClientError::Decode("no access_token".into()))?.to_string();
        *self.token.write().await = Some(token.clone());
        Ok(token)
    }

    async fn current_token(&self) -> Result<String> {
        if let Some(t) = self.token.read().await.clone() {
            return Ok(t);
        }
        self.login().await
    }

    async fn send_once(&self, method: &Method, path: &str, body: &Body, token: Option<&str>) -> Result<RawResponse> {
        let mut req = self.http.request(method.clone(), self.url(path)).header("Accept-Encoding", "gzip");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(bytes) = &body.bytes {
            // a clone of `Bytes` shares the buffer: retries neither copy nor re-compress
            req = req.header("Content-Type", "application/json").body(bytes.clone());
            if let Some(ce) = &body.content_encoding {
                req = req.header("Content-Encoding", ce);
            }
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?.to_vec();
        Ok(RawResponse { status, headers, body })
    }

    /// Send with the current token; on a 401 log in again and repeat once. Connection
    /// errors and 502/503/504 are retried with backoff up to `max_retries` times.
    pub async fn send(&self, method: Method, path: &str, payload: Payload) -> Result<RawResponse> {
        let payload = Body::from(payload);
        let mut attempt = 0;
        loop {
            let token = self.current_token().await?;
            let result = match self.send_once(&method, path, &payload, Some(&token)).await {
                Ok(r) if r.status == 401 => {
                    let token = self.login().await?;
                    self.send_once(&method, path, &payload, Some(&token)).await
                }
                other => other,
            };
            let retry = match &result {
                Ok(r) => matches!(r.status, 502..=504),
                Err(ClientError::Transport(e)) => e.is_connect() || e.is_timeout(),
                Err(_) => false,
            };
            if retry && attempt < self.max_retries {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * (1 << attempt.min(6)))).await;
                continue;
            }
            return result;
        }
    }

    /// Send without any token (for `/ping` and tests).
    pub async fn send_anonymous(&self, method: Method, path: &str, payload: Payload) -> Result<RawResponse> {
        self.send_once(&method, path, &Body::from(payload), None).await
    }

    /// Send with an explicit Authorization token (tests of the auth matrix).
    pub async fn send_with_token(&self, method: Method, path: &str, payload: Payload, token: &str) -> Result<RawResponse> {
        self.send_once(&method, path, &Body::from(payload), Some(token)).await
    }

    fn check(r: RawResponse) -> Result<RawResponse> {
        if (200..300).contains(&r.status) {
            return Ok(r);
        }
        let detail = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v.get("detail").map(|d| if let Some(s) = d.as_str() { s.to_string() } else { d.to_string() }))
            .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
        let reason = StatusCode::from_u16(r.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("").to_string();
        Err(ClientError::Http { status: r.status, reason, detail })
    }

    /// GET → plain JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let r = Self::check(self.send(Method::GET, path, Payload::None).await?)?;
        serde_json::from_slice(&r.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// GET → Python-dialect JSON text (gufe payloads).
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let r = Self::check(self.send(Method::GET, path, Payload::None).await?)?;
        String::from_utf8(r.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// POST a JSON value → plain JSON.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let r = Self::check(self.send(Method::POST, path, Payload::Json(body.to_string())).await?)?;
        serde_json::from_slice(&r.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// POST an already-serialised body → plain JSON.
    pub async fn post_payload(&self, path: &str, payload: Payload) -> Result<serde_json::Value> {
        let r = Self::check(self.send(Method::POST, path, payload).await?)?;
        serde_json::from_slice(&r.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    // ---- typed helpers for the user API --------------------------------------------------

    /// U7: submit a network chain (JSON text) into `scope`, gzip-compressed like the
    /// Python client does by default.
    pub async fn create_network(&self, chain_json: &str, scope: &Scope, state: &str) -> Result<ScopedKey> {
        let scope_json = serde_json::to_string(&scope.to_dict()).expect("serialisable");
        let body = format!("{{\"network\": {chain_json}, \"scope\": {scope_json}, \"state\": {}}}", json!(state));
        let v = self.post_payload("/networks", Payload::GzipJson(body)).await?;
        let d: alchemiscale_model::ScopedKeyDict = serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))?;
        d.to_scoped_key().map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// U19–U21: an object's keyed chain.
    pub async fn get_chain(&self, route: &str, sk: &ScopedKey) -> Result<Value> {
        let text = self.get_text(&format!("/{route}/{sk}")).await?;
        json::parse(&text).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// U22: create tasks for a transformation.
    pub async fn create_tasks(&self, transformation: &ScopedKey, count: i64, extends: Option<&ScopedKey>) -> Result<Vec<ScopedKey>> {
        let v = self
            .post(&format!("/transformations/{transformation}/tasks"), &json!({"count": count, "extends": extends.map(|e| e.to_dict())}))
            .await?;
        parse_keys(&v)
    }

    /// U35: action tasks on a network.
    pub async fn action_tasks(&self, network: &ScopedKey, tasks: &[ScopedKey], weight: Option<f64>) -> Result<Vec<Option<ScopedKey>>> {
        let dicts: Vec<_> = tasks.iter().map(|t| t.to_dict()).collect();
        let v = self.post(&format!("/networks/{network}/tasks/action"), &json!({"tasks": dicts, "weight": weight})).await?;
        parse_opt_keys(&v)
    }

    /// U43: task statuses.
    pub async fn get_tasks_status(&self, tasks: &[ScopedKey]) -> Result<Vec<Option<String>>> {
        let dicts: Vec<_> = tasks.iter().map(|t| t.to_dict()).collect();
        let v = self.post("/bulk/tasks/status/get", &json!({ "tasks": dicts })).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// Parse a JSON array of ScopedKey strings.
pub fn parse_keys(v: &serde_json::Value) -> Result<Vec<ScopedKey>> {
    let arr = v.as_array().ok_or_else(|| ClientError::Decode("expected an array".into()))?;
    arr.iter()
        .map(|x| x.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| ClientError::Decode(format!("not a ScopedKey: {x}"))))
        .collect()
}

/// Parse a JSON array of ScopedKey strings or nulls.
pub fn parse_opt_keys(v: &serde_json::Value) -> Result<Vec<Option<ScopedKey>>> {
    let arr = v.as_array().ok_or_else(|| ClientError::Decode("expected an array".into()))?;
    arr.iter()
        .map(|x| {
            if x.is_null() {
                Ok(None)
            } else {
                x.as_str().and_then(|s| s.parse().ok()).map(Some).ok_or_else(|| ClientError::Decode(format!("not a ScopedKey: {x}")))
            }
        })
        .collect()
}
