//! Reading requests: bodies (gzip, size limits, CPython's JSON dialect), path keys and
//! query parameters, with the error shapes of api.md §1.4–§1.5.

use std::collections::HashMap;
use std::io::Read;

use alchemiscale_model::json::{self, Value};
use alchemiscale_model::{Scope, ScopedKey, ScopedKeyDict};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{ApiError, ApiResult, ValidationItem};
use crate::AppState;

/// The raw request body after gzip inflation, within the configured size limit.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.settings().max_body_bytes;
        let gzip = req
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let too_large = || ApiError::Detail(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds the limit of {limit} bytes"));
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        // read frames straight into one buffer (sized from Content-Length when given) rather
        // than collecting chunks and copying them: a large upload is held once, not twice
        let mut buf: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(limit));
        let mut body = req.into_body();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let frame = frame.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        let bytes = Bytes::from(buf);
        if !gzip {
            return Ok(RawBody(bytes));
        }
        let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(limit));
        let mut decoder = flate2::read::GzDecoder::new(&bytes[..]).take(limit as u64 + 1);
        decoder.read_to_end(&mut out).map_err(|e| ApiError::bad_request(format!("request body is not valid gzip: {e}")))?;
        if out.len() > limit {
            return Err(too_large());
        }
        Ok(RawBody(Bytes::from(out)))
    }
}

/// A JSON body in CPython's dialect (NaN, Infinity, big integers allowed). An empty body
/// reads as an empty object, as routes without body parameters ignore what is sent.
pub struct Body(pub Value);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Body(Value::Object(Default::default())));
        }
        json::parse_bytes(&bytes).map(Body).map_err(|e| {
            ApiError::Validation(vec![ValidationItem {
                kind: "json_invalid".into(),
                loc: vec![json!("body"), json!(e.offset)],
                msg: "JSON decode error".into(),
                input: json!({}),
                ctx: Some(json!({ "error": e.to_string() })),
            }])
        })
    }
}

impl Body {
    /// Read the body into `T`; mismatches become FastAPI-style 422 items.
    pub fn typed<T: DeserializeOwned>(&self) -> ApiResult<T> {
        if !matches!(self.0, Value::Object(_)) {
            return Err(ApiError::Validation(vec![ValidationItem {
                kind: "model_attributes_type".into(),
                loc: vec![json!("body")],
                msg: "Input should be a valid dictionary or object to extract fields from".into(),
                input: serde_json::Value::Null,
                ctx: None,
            }]));
        }
        json::from_value::<T>(&self.0).map_err(|e| {
            let missing = e.message.starts_with("missing field");
            let (field, msg) = if missing {
                let f = e.message.split('`').nth(1).unwrap_or_default().to_string();
                (if e.path.is_empty() || e.path == "." { f } else { format!("{}.{f}", e.path) }, "Field required".to_string())
            } else {
                (e.path.clone(), e.message.clone())
            };
            let mut loc = vec![json!("body")];
            loc.extend(field.split('.').filter(|s| !s.is_empty()).map(|s| json!(s)));
            ApiError::Validation(vec![ValidationItem {
                kind: if missing { "missing" } else { "value_error" }.into(),
                loc,
                msg,
                input: serde_json::Value::Null,
                ctx: None,
            }])
        })
    }
}

/// Parse a ScopedKey from a path segment or body member: 400 on malformed input.
pub fn parse_sk(s: &str) -> ApiResult<ScopedKey> {
    s.parse().map_err(|_| ApiError::bad_request("input does not appear to be a `ScopedKey`"))
}

/// Parse a list of ScopedKey strings.
pub fn parse_sks(list: &[String]) -> ApiResult<Vec<ScopedKey>> {
    list.iter().map(|s| parse_sk(s)).collect()
}

/// Parse a list of ScopedKey objects.
pub fn parse_sk_dicts(list: &[ScopedKeyDict]) -> ApiResult<Vec<ScopedKey>> {
    list.iter().map(|d| d.to_scoped_key().map_err(|_| ApiError::bad_request("input does not appear to be a `ScopedKey`"))).collect()
}

/// Query parameters (last value wins), percent-decoded.
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn from_query(q: Option<&str>) -> Params {
        Params(url::form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A lenient boolean (`True`/`false`/`1`/`no`/`on`/…): 422 for anything else.
    pub fn bool(&self, name: &str, default: bool) -> ApiResult<bool> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
                "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
                _ => Err(ApiError::Validation(vec![ValidationItem {
                    kind: "bool_parsing".into(),
                    loc: vec![json!("query"), json!(name)],
                    msg: "Input should be a valid boolean, unable to interpret input".into(),
                    input: json!(v),
                    ctx: None,
                }])),
            },
        }
    }

    /// The scope given by `org`, `campaign`, `project` (absent or `*` = wildcard); 400 when
    /// a component or the hierarchy is invalid (including `org=*&campaign=x`, which
    /// upstream lets through).
    pub fn scope(&self) -> ApiResult<Scope> {
        Scope::new(self.get("org"), self.get("campaign"), self.get("project")).map_err(|_| scope_error())
    }
}

/// The 400 for an unusable scope (api.md §2.1), with `WWW-Authenticate: Bearer`.
pub fn scope_error() -> ApiError {
    ApiError::bad_request(
        "Requested Scope cannot be processed as a 3-part \"X-Y-Z\" tuple: each part must be alphanumeric (letters, digits, underscores, \
         starting with a letter) or \"*\", and every part after a \"*\" must be \"*\" too",
    )
}
