//! Reading requests: bodies (gzip, size limits, CPython's JSON dialect), path keys and
//! query parameters, with the error shapes

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
        let frames = Frames::open(req, limit).await?;
        // sized from Content-Length, so a large upload is written once, not grown and copied
        let guess = frames.declared.unwrap_or(0).saturating_mul(if frames.gzip { 4 } else { 1 }).min(limit);
        let sink = Limited { buf: Vec::with_capacity(guess), limit };
        let Limited { buf, .. } = stream_body(frames, sink).await?;
        Ok(RawBody(Bytes::from(buf)))
    }
}

/// A result upload (C14) decoded while it streams in: the payload string becomes bytes as
/// it arrives instead of being held as JSON text first (see `alchemiscale_model::upload`),
/// and a large payload is stored and analysed as it is decoded ([`Tee`]).
///
/// Receiving (and inflating, for a gzip body) runs here; decoding runs on a blocking
/// thread fed through a channel, so the two overlap: for the Python client's gzip bodies
/// inflating costs as much as decoding.
pub struct ResultUpload(pub Upload<Tee>);

/// Body bytes go to the decoding thread in pieces of about this size…
const PIECE: usize = 256 * 1024;
/// …with this many in flight.
const PIECES_IN_FLIGHT: usize = 16;

/// How a stage of the upload pipeline ended.
enum Stage<T> {
    Done(T),
    /// The next stage stopped taking input (it failed, and says why).
    Stopped,
    Failed(ApiError),
}

impl FromRequest<AppState> for ResultUpload {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.settings().max_body_bytes;
        let tee = Tee::new(state.objects()?.clone(), limit);
        let frames = Frames::open(req, limit).await?;
        let (decode_tx, mut decode_rx) = tokio::sync::mpsc::channel::<Bytes>(PIECES_IN_FLIGHT);
        let rt = tokio::runtime::Handle::current();
        // decoding: fails only for what it meets while input still arrives (a body cut
        // short just ends its input; the caller then reports the cause)
        let decoding = tokio::task::spawn_blocking(move || -> ApiResult<UploadDecoder<Tee>> {
            let mut decoder = UploadDecoder::with_output(limit, tee);
            while let Some(piece) = decode_rx.blocking_recv() {
                decoder.feed(&piece).map_err(upload_error)?;
                if let Some(tee) = decoder.output_mut() {
                    rt.block_on(tee.pass_on())?;
                }
            }
            Ok(decoder)
        });
        // inflating a gzip body (as the Python client sends) on a thread of its own
        let (frames_tx, inflating) = if frames.gzip {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(PIECES_IN_FLIGHT);
            let inflating = tokio::task::spawn_blocking(move || -> Stage<()> {
                let out = Pieces { tx: decode_tx, piece: Vec::with_capacity(PIECE), inflated: 0, limit };
                let mut gz = flate2::write::GzDecoder::new(out);
                while let Some(frame) = rx.blocking_recv() {
                    if let Err(e) = gz.write_all(&frame) {
                        return inflate_failure(e, limit);
                    }
                }
                match gz.finish().and_then(|mut out| out.flush()) {
                    Ok(()) => Stage::Done(()),
                    Err(e) => inflate_failure(e, limit),
                }
            });
            (tx, Some(inflating))
        } else {
            (decode_tx, None)
        };
        let received = receive(frames, frames_tx).await;
        let inflated = match inflating {
            Some(h) => h.await.unwrap_or_else(|e| Stage::Failed(ApiError::Internal(e.to_string()))),
            None => Stage::Done(()),
        };
        let decoded = decoding.await.map_err(|e| ApiError::Internal(e.to_string())).and_then(|r| r);
        // the first stage that failed on its own account says why
        if let Stage::Failed(e) = received {
            return Err(e);
        }
        if let Stage::Failed(e) = inflated {
            return Err(e);
        }
        decoded?.finish().map(ResultUpload).map_err(upload_error)
    }
}

/// Receive the body frame by frame into `tx`. When a later stage stops early (it refuses
/// the upload) or the body passes the limit, the rest of the body is drained first, so the
/// client reads the answer ([`Frames::drain`]).
async fn receive(mut frames: Frames, tx: tokio::sync::mpsc::Sender<Bytes>) -> Stage<()> {
    loop {
        match frames.next().await {
            Ok(Some(data)) => {
                if tx.send(data).await.is_err() {
                    frames.drain().await;
                    return Stage::Stopped;
                }
            }
            Ok(None) => return Stage::Done(()),
            Err(e) => return Stage::Failed(frames.refuse(e).await),
        }
    }
}

fn inflate_failure(e: std::io::Error, limit: usize) -> Stage<()> {
    if e.get_ref().is_some_and(|x| x.is::<Closed>()) {
        Stage::Stopped
    } else {
        Stage::Failed(inflate_error(e, limit))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the next stage stopped")]
struct Closed;

/// Inflated bytes, sent on in pieces from a blocking thread (which waits while the
/// decoder is behind, so memory stays bounded whatever the compression ratio).
struct Pieces {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    piece: Vec<u8>,
    inflated: usize,
    limit: usize,
}

impl Write for Pieces {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.inflated += data.len();
        if self.inflated > self.limit {
            return Err(std::io::Error::other(OverLimit));
        }
        self.piece.extend_from_slice(data);
        if self.piece.len() >= PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.piece, Vec::with_capacity(PIECE)));
        self.tx.blocking_send(piece).map_err(|_| std::io::Error::other(Closed))
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

/// A request body read frame by frame, held to `limit` bytes as declared and as received
/// (413 past it; 400 for a broken connection).
struct Frames {
    body: axum::body::Body,
    received: usize,
    limit: usize,
    declared: Option<usize>,
    gzip: bool,
}

/// The most of a refused body read and dropped ([`Frames::drain`]), beyond the limit…
const DRAIN_BYTES: usize = 1 << 30;
/// …and for at most this long.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(60);

impl Frames {
    /// A request's body; one declared longer than `limit` is refused (413).
    async fn open(req: Request, limit: usize) -> ApiResult<Frames> {
        let (declared, gzip) = body_headers(&req);
        let frames = Frames { body: req.into_body(), received: 0, limit, declared, gzip };
        if declared.is_some_and(|n| n > limit) {
            return Err(frames.refuse(too_large(limit)).await);
        }
        Ok(frames)
    }

    /// Answer `error` once the rest of the body is drained.
    async fn refuse(mut self, error: ApiError) -> ApiError {
        self.drain().await;
        error
    }

    /// Read and drop the rest of the body (within bounds) before the server answers a
    /// refusal. The Python clients send the whole body before they read the answer; had
    /// the server closed the connection on the rest (which is what hyper does with an
    /// unread body), they would see a reset connection (and retry it) instead of the
    /// 413 or 422. A body longer than the limit plus `DRAIN_BYTES`, or slower than
    /// `DRAIN_TIME`, is cut off as before.
    async fn drain(&mut self) {
        let most = self.limit.saturating_add(DRAIN_BYTES);
        if self.declared.is_some_and(|n| n > most) {
            return;
        }
        let body = &mut self.body;
        let received = &mut self.received;
        let rest = async {
            while let Some(Ok(frame)) = http_body_util::BodyExt::frame(body).await {
                *received += frame.data_ref().map_or(0, |d| d.len());
                if *received > most {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, rest).await;
    }

    /// The next data frame, `None` at the end of the body.
    async fn next(&mut self) -> ApiResult<Option<Bytes>> {
        while let Some(frame) = http_body_util::BodyExt::frame(&mut self.body).await {
            let frame = frame.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                self.received += data.len();
                if self.received > self.limit {
                    return Err(too_large(self.limit));
                }
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// Why inflating a body stopped: 413 past the limit, 400 for invalid gzip.
fn inflate_error(e: std::io::Error, limit: usize) -> ApiError {
    if e.get_ref().is_some_and(|x| x.is::<OverLimit>()) {
        too_large(limit)
    } else {
        ApiError::bad_request(format!("request body is not valid gzip: {e}"))
    }
}

/// Feed the request body, frame by frame and inflated on the way when it is gzip-encoded,
/// into `sink` (which enforces the limit on the inflated bytes). Errors: 413 over the limit,
/// 400 for a broken connection or invalid gzip.
async fn stream_body<W: Write>(mut frames: Frames, sink: W) -> ApiResult<W> {
    let limit = frames.limit;
    let mut inflate = if frames.gzip { Err(flate2::write::GzDecoder::new(sink)) } else { Ok(sink) };
    loop {
        let data = match frames.next().await {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(e) => return Err(frames.refuse(e).await),
        };
        let written = match &mut inflate {
            Ok(w) => w.write_all(&data),
            Err(gz) => gz.write_all(&data),
        };
        if let Err(e) = written {
            return Err(frames.refuse(inflate_error(e, limit)).await);
        }
    }
    match inflate {
        Ok(w) => Ok(w),
        Err(gz) => gz.finish().map_err(|e| inflate_error(e, limit)),
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

/// The 400 for an unusable scope, with `WWW-Authenticate: Bearer`.
pub fn scope_error() -> ApiError {
    ApiError::bad_request(
        "Requested Scope cannot be processed as a 3-part \"X-Y-Z\" tuple: each part must be alphanumeric (letters, digits, underscores, \
         starting with a letter) or \"*\", and every part after a \"*\" must be \"*\" too",
    )
}
