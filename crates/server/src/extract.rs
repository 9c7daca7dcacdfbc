//! Reading requests: bodies (gzip, size limits, CPython's JSON dialect), path keys and
//! query parameters, with the error shapes of api.md §1.4–§1.5.

use std::collections::HashMap;
use std::io::Write;

use alchemiscale_model::json::{self, Value};
use alchemiscale_model::upload::{Upload, UploadDecoder, UploadError};
use alchemiscale_model::{Scope, ScopedKey, ScopedKeyDict};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{ApiError, ApiResult, ValidationItem};
use crate::results::Tee;
use crate::AppState;

/// The raw request body after gzip inflation, within the configured size limit.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.settings().max_body_bytes;
        let (declared, gzip) = body_headers(&req);
        // sized from Content-Length, so a large upload is written once, not grown and copied
        let guess = declared.unwrap_or(0).saturating_mul(if gzip { 4 } else { 1 }).min(limit);
        let sink = Limited { buf: Vec::with_capacity(guess), limit };
        let Limited { buf, .. } = stream_body(req, limit, sink).await?;
        Ok(RawBody(Bytes::from(buf)))
    }
}

/// A result upload (C14) decoded while it streams in: the payload string becomes bytes as
/// it arrives instead of being held as JSON text first (see `alchemiscale_model::upload`),
/// and a large payload is stored and analysed as it is decoded ([`Tee`]).
pub struct ResultUpload(pub Upload<Tee>);

impl FromRequest<AppState> for ResultUpload {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.settings().max_body_bytes;
        let tee = Tee::new(state.objects()?.clone(), limit);
        let decoder = stream_body(req, limit, UploadDecoder::with_output(limit, tee)).await?;
        decoder.finish().map(ResultUpload).map_err(upload_error)
    }
}

/// A body sink that may have work to hand on, asynchronously, between body frames.
pub trait BodySink: Write + Send {
    fn pass_on(&mut self) -> impl std::future::Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }
}

impl BodySink for Limited {}

impl BodySink for UploadDecoder<Tee> {
    async fn pass_on(&mut self) -> ApiResult<()> {
        match self.output_mut() {
            Some(tee) => tee.pass_on().await,
            None => Ok(()),
        }
    }
}

fn upload_error(e: UploadError) -> ApiError {
    match e {
        UploadError::TooLarge(limit) => too_large(limit),
        UploadError::Json { offset, message } => json_invalid(offset, message),
        UploadError::Codec(e) => ApiError::unprocessable(e.to_string()),
        UploadError::Shape(m) => ApiError::unprocessable(m),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::Detail(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds the limit of {limit} bytes"))
}

/// Declared length and whether the body is gzip-encoded.
fn body_headers(req: &Request) -> (Option<usize>, bool) {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let gzip =
        req.headers().get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    (declared, gzip)
}

/// A growing buffer that refuses to pass `limit` bytes.
struct Limited {
    buf: Vec<u8>,
    limit: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("over the body limit")]
struct OverLimit;

impl Write for Limited {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(std::io::Error::other(OverLimit));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Feed the request body, frame by frame and inflated on the way when it is gzip-encoded,
/// into `sink` (which enforces `limit` on the inflated bytes). Errors: 413 over the limit,
/// the sink's own refusal, 400 for a broken connection or invalid gzip.
async fn stream_body<W: BodySink>(req: Request, limit: usize, sink: W) -> ApiResult<W> {
    let (declared, gzip) = body_headers(&req);
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let write_error = |e: std::io::Error| {
        let inner = e.get_ref();
        if let Some(u) = inner.and_then(|x| x.downcast_ref::<UploadError>()) {
            upload_error(u.clone())
        } else if inner.is_some_and(|x| x.is::<OverLimit>()) {
            too_large(limit)
        } else {
            ApiError::bad_request(format!("request body is not valid gzip: {e}"))
        }
    };
    let mut received = 0usize;
    let mut inflate = if gzip { Err(flate2::write::GzDecoder::new(sink)) } else { Ok(sink) };
    let mut body = req.into_body();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            received += data.len();
            if received > limit {
                return Err(too_large(limit));
            }
            match &mut inflate {
                Ok(w) => w.write_all(&data),
                Err(gz) => gz.write_all(&data),
            }
            .map_err(write_error)?;
            match &mut inflate {
                Ok(w) => w.pass_on().await?,
                Err(gz) => gz.get_mut().pass_on().await?,
            }
        }
    }
    match inflate {
        Ok(w) => Ok(w),
        Err(gz) => gz.finish().map_err(write_error),
    }
}

/// The 422 FastAPI gives a body that is not well-formed JSON.
fn json_invalid(offset: usize, error: String) -> ApiError {
    ApiError::Validation(vec![ValidationItem {
        kind: "json_invalid".into(),
        loc: vec![json!("body"), json!(offset)],
        msg: "JSON decode error".into(),
        input: json!({}),
        ctx: Some(json!({ "error": error })),
    }])
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
        json::parse_bytes(&bytes).map(Body).map_err(|e| json_invalid(e.offset, e.to_string()))
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
