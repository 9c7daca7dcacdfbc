//! API errors in the shapes the upstream clients expect:
//! `{"detail": "..."}` for deliberate errors, FastAPI's list form for request validation
//! (422), and `text/plain` "Internal Server Error" for anything unexpected.

use alchemiscale_store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// One entry of a 422 validation error list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ValidationItem {
    #[serde(rename = "type")]
    pub kind: String,
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    pub input: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<serde_json::Value>,
}

#[derive(Debug)]
pub enum ApiError {
    /// Any status with a `{"detail": message}` body.
    Detail(StatusCode, String),
    /// 401 with `WWW-Authenticate: Bearer` (clients refresh their token once on 401).
    Unauthorized(String),
    /// 422 with FastAPI's list-form detail.
    Validation(Vec<ValidationItem>),
    /// 500; the cause is logged, the client sees "Internal Server Error".
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::Detail(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn unprocessable(msg: impl Into<String>) -> ApiError {
        ApiError::Detail(StatusCode::UNPROCESSABLE_ENTITY, msg.into())
    }
    /// A single 422 validation item for a body member.
    pub fn body_field(kind: &str, field: &str, msg: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![ValidationItem {
            kind: kind.to_string(),
            loc: vec![json!("body"), json!(field)],
            msg: msg.into(),
            input: serde_json::Value::Null,
            ctx: None,
        }])
    }
    /// The message upstream uses for a missing object (quotes included).
    pub fn no_such_object() -> ApiError {
        ApiError::bad_request("'No such object in database'")
    }
    /// Turn a 400 into a 422 (routes that use 422 for input errors, e.g. network submission).
    pub fn as_unprocessable(self) -> ApiError {
        match self {
            ApiError::Detail(StatusCode::BAD_REQUEST, m) => ApiError::Detail(StatusCode::UNPROCESSABLE_ENTITY, m),
            other => other,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::no_such_object(),
            StoreError::Invalid(m) => ApiError::bad_request(m),
            StoreError::Chain(c) => ApiError::bad_request(c.to_string()),
            StoreError::Conflict(m) => ApiError::Detail(StatusCode::CONFLICT, m),
            StoreError::Unavailable(m) => ApiError::Detail(StatusCode::SERVICE_UNAVAILABLE, format!("state store unavailable: {m}")),
            StoreError::Schema(m) => ApiError::Detail(StatusCode::SERVICE_UNAVAILABLE, m),
            StoreError::Dump(m) => ApiError::bad_request(m),
            StoreError::Database(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<alchemiscale_objects::ObjectError> for ApiError {
    fn from(e: alchemiscale_objects::ObjectError) -> ApiError {
        use alchemiscale_objects::ObjectError;
        match e {
            ObjectError::Unavailable(_) => ApiError::Detail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            // never serve wrong data; say which object is missing or altered
            ObjectError::NotFound { .. } | ObjectError::Corrupt { .. } | ObjectError::Config(_) => {
                tracing::error!(error = %e, "object store");
                ApiError::Detail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Detail(status, msg) => (status, axum::Json(json!({ "detail": msg }))).into_response(),
            ApiError::Unauthorized(msg) => {
                let mut r = (StatusCode::UNAUTHORIZED, axum::Json(json!({ "detail": msg }))).into_response();
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            ApiError::Validation(items) => (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({ "detail": items }))).into_response(),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "Internal Server Error")
                    .into_response()
            }
        }
    }
}
