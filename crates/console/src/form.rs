//! Submitted forms (`application/x-www-form-urlencoded`), with repeated fields kept (a
//! list of checked tasks), and the CSRF check every state-changing form passes.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;

use crate::error::{ConsoleError, ConsoleResult};
use crate::session::Session;

/// Largest form accepted (a page of checked tasks is a few tens of kB).
const MAX_FORM_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }
    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// A field that must be present and not blank.
    pub fn required(&self, name: &str, label: &str) -> ConsoleResult<&str> {
        match self.get(name).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ConsoleError::BadRequest(format!("{label} is required."))),
        }
    }
    /// Every value of a repeated field.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v == "on" || v == "true" || v == "1")
    }
    /// Refuse the form unless it carries this session's CSRF token (compared in constant
    /// time).
    pub fn check_csrf(&self, session: &Session) -> ConsoleResult<()> {
        self.check_token(&session.csrf)
    }
    /// Refuse the form unless its `csrf` field is `want` (not empty; compared in constant
    /// time).
    pub fn check_token(&self, want: &str) -> ConsoleResult<()> {
        let (given, want) = (self.get("csrf").unwrap_or("").as_bytes(), want.as_bytes());
        let same = given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same && !want.is_empty() {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_form = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(ConsoleError::BadRequest("Expected a submitted form.".into()));
        }
        let _ = state;
        let body: Bytes = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| ConsoleError::BadRequest("The form is too large or was cut off.".into()))?;
        Ok(Form::parse(&body))
    }
}
