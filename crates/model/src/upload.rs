//! Decoding a result upload (compute route C14, api.md §2.6) as its bytes arrive.
//!
//! The body is `{"protocoldagresult": {"__class__": "bytes", …, "latin-1": "<payload>"},
//! "compute_service_id": "<id>"}`, where the payload string carries one byte per code
//! point and is most of the body. Parsing the whole body first and converting afterwards
//! holds the expanded JSON text (up to 6 bytes per payload byte with Python's `\u00XX`
//! escapes), the decoded string and the bytes at the same time. [`UploadDecoder`] instead
//! diverts the payload string while the body streams in: its characters go straight to
//! bytes, and those through a streaming zstd decoder when they start a zstd frame (gufe's
//! codec compresses), so what remains at the end is the ProtocolDAGResult blob itself. The
//! rest of the body (its "skeleton", with the payload replaced by `""`) is kept and parsed
//! with the ordinary Python-dialect reader, so malformed JSON anywhere is still refused.
//!
//! The lexer only tracks enough structure to find the payload (nesting, keys, strings); it
//! does not validate. Validation is the skeleton parse plus the payload decoder's own
//! checks (escapes, control characters, code points above U+00FF).

use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use crate::json::{self, Value};
use crate::pdr::{is_zstd, PdrError};

/// Keys longer than this (raw) are never the ones we look for.
const KEY_CAPTURE: usize = 64;
/// Bytes needed to read a zstd frame header with its content size.
const ZSTD_HEADER_MAX: usize = 18;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// Malformed JSON (the API's `json_invalid`), at a byte offset of the body.
    #[error("{message}")]
    Json { offset: usize, message: String },
    #[error(transparent)]
    Codec(#[from] PdrError),
    /// Well-formed JSON of the wrong shape.
    #[error("{0}")]
    Shape(String),
}

/// A decoded upload: who sent it and the ProtocolDAGResult bytes (the codec's content,
/// already zstd-decompressed once when it was a zstd frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub compute_service_id: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
struct Level {
    object: bool,
    expect_key: bool,
    key: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Lex {
    Outside,
    /// Inside a string that is copied to the skeleton (a key when `key`).
    Copy {
        escape: bool,
        key: bool,
    },
    /// Inside the payload string.
    Payload(Esc),
}

#[derive(Debug, Clone, Copy)]
enum Esc {
    None,
    Backslash,
    Unicode { digits: u8, value: u32 },
    Utf8 { lead: u8 },
}

enum Sink {
    /// The first bytes, until it is known whether they start a zstd frame.
    Head(Vec<u8>),
    Raw(Vec<u8>),
    Zstd {
        dec: Box<ZstdDecoder<'static>>,
        out: Vec<u8>,
        finished: bool,
    },
}

/// Push the body in with [`UploadDecoder::feed`] (any chunking), then [`UploadDecoder::finish`].
pub struct UploadDecoder {
    limit: usize,
    fed: usize,
    skeleton: Vec<u8>,
    levels: Vec<Level>,
    lex: Lex,
    key_raw: Vec<u8>,
    key_overflow: bool,
    /// Decoded payload bytes not yet handed to the sink.
    scratch: Vec<u8>,
    sink: Option<Sink>,
    payloads: usize,
    error: Option<UploadError>,
}

impl UploadDecoder {
    /// `limit` bounds the body and the decoded payload (each).
    pub fn new(limit: usize) -> UploadDecoder {
        UploadDecoder {
            limit,
            fed: 0,
            skeleton: Vec::new(),
            levels: Vec::new(),
            lex: Lex::Outside,
            key_raw: Vec::new(),
            key_overflow: false,
            scratch: Vec::new(),
            sink: None,
            payloads: 0,
            error: None,
        }
    }

    /// The first error met, if any (feeding stops at it).
    pub fn error(&self) -> Option<&UploadError> {
        self.error.as_ref()
    }

    /// Consume the next bytes of the (already inflated) body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = self.feed_inner(chunk);
        if let Err(e) = &r {
            self.error = Some(e.clone());
        }
        r
    }

    fn feed_inner(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        let base = self.fed;
        self.fed += chunk.len();
        if self.fed > self.limit {
            return Err(UploadError::TooLarge(self.limit));
        }
        let mut i = 0;
        while i < chunk.len() {
            match self.lex {
                Lex::Payload(esc) => {
                    let (used, done) = self.payload(&chunk[i..], esc, base + i)?;
                    i += used;
                    if done {
                        self.skeleton.push(b'"');
                        self.lex = Lex::Outside;
                    }
                }
                Lex::Copy { escape, key } => {
                    // copy up to the closing quote
                    let rest = &chunk[i..];
                    let mut escape = escape;
                    let mut end = None;
                    for (j, &b) in rest.iter().enumerate() {
                        if escape {
                            escape = false;
                        } else if b == b'\\' {
                            escape = true;
                        } else if b == b'"' {
                            end = Some(j);
                            break;
                        }
                    }
                    let upto = end.map_or(rest.len(), |j| j + 1);
                    self.skeleton.extend_from_slice(&rest[..upto]);
                    if key {
                        let body = &rest[..end.unwrap_or(rest.len())];
                        if self.key_raw.len() + body.len() > KEY_CAPTURE {
                            self.key_overflow = true;
                        } else {
                            self.key_raw.extend_from_slice(body);
                        }
                    }
                    i += upto;
                    self.lex = match end {
                        None => Lex::Copy { escape, key },
                        Some(_) => {
                            if key {
                                self.end_key();
                            }
                            Lex::Outside
                        }
                    };
                }
                Lex::Outside => {
                    let b = chunk[i];
                    i += 1;
                    match b {
                        b'"' => {
                            let is_key = self.levels.last().is_some_and(|l| l.object && l.expect_key);
                            if !is_key && self.at_payload() {
                                self.payloads += 1;
                                if self.payloads > 1 {
                                    return Err(UploadError::Shape("`latin-1` is given more than once".into()));
                                }
                                self.skeleton.push(b'"');
                                self.sink = Some(Sink::Head(Vec::new()));
                                self.lex = Lex::Payload(Esc::None);
                            } else {
                                self.skeleton.push(b);
                                self.key_raw.clear();
                                self.key_overflow = false;
                                self.lex = Lex::Copy { escape: false, key: is_key };
                            }
                        }
                        b'{' | b'[' => {
                            self.skeleton.push(b);
                            self.levels.push(Level { object: b == b'{', expect_key: b == b'{', key: None });
                        }
                        b'}' | b']' => {
                            self.skeleton.push(b);
                            self.levels.pop();
                        }
                        b':' => {
                            self.skeleton.push(b);
                            if let Some(l) = self.levels.last_mut() {
                                l.expect_key = false;
                            }
                        }
                        b',' => {
                            self.skeleton.push(b);
                            if let Some(l) = self.levels.last_mut() {
                                if l.object {
                                    l.expect_key = true;
                                    l.key = None;
                                }
                            }
                        }
                        _ => self.skeleton.push(b),
                    }
                }
            }
        }
        Ok(())
    }

    /// True when the next value is `protocoldagresult.latin-1` at the top of the body.
    fn at_payload(&self) -> bool {
        matches!(
            self.levels.as_slice(),
            [Level { object: true, key: Some(k0), .. }, Level { object: true, expect_key: false, key: Some(k1) }]
                if k0 == "protocoldagresult" && k1 == "latin-1"
        )
    }

    fn end_key(&mut self) {
        let key = if self.key_overflow {
            None
        } else if !self.key_raw.contains(&b'\\') {
            String::from_utf8(std::mem::take(&mut self.key_raw)).ok()
        } else {
            let mut quoted = Vec::with_capacity(self.key_raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(&self.key_raw);
            quoted.push(b'"');
            match json::parse_bytes(&quoted) {
                Ok(Value::String(s)) => Some(s),
                _ => None,
            }
        };
        if let Some(l) = self.levels.last_mut() {
            l.key = key;
        }
    }

    /// Decode payload characters from `data`; returns (bytes used, string ended).
    fn payload(&mut self, data: &[u8], mut esc: Esc, offset: usize) -> Result<(usize, bool), UploadError> {
        let bad = |at: usize, what: &str| UploadError::Json { offset: offset + at, message: what.to_string() };
        // a local buffer (not a field), so the loops keep its length in registers
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.reserve(data.len());
        let mut i = 0;
        let mut ended = false;
        while i < data.len() {
            if let Esc::None = esc {
                i += fast_latin1(&data[i..], &mut out);
                if i == data.len() {
                    break;
                }
            }
            let b = data[i];
            match esc {
                Esc::None => match b {
                    b'"' => {
                        i += 1;
                        ended = true;
                        break;
                    }
                    b'\\' => esc = Esc::Backslash,
                    0x00..=0x1F => return Err(bad(i, "invalid control character in string")),
                    0x20..=0x7F => out.push(b),
                    0xC2 | 0xC3 => esc = Esc::Utf8 { lead: b },
                    _ => return Err(PdrError::NotLatin1.into()),
                },
                Esc::Utf8 { lead } => {
                    if b & 0xC0 != 0x80 {
                        return Err(bad(i, "invalid UTF-8 in string"));
                    }
                    out.push(((lead & 0x1F) << 6) | (b & 0x3F));
                    esc = Esc::None;
                }
                Esc::Backslash => {
                    esc = Esc::None;
                    match b {
                        b'"' | b'\\' | b'/' => out.push(b),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0C),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => esc = Esc::Unicode { digits: 0, value: 0 },
                        _ => return Err(bad(i, "invalid \\escape")),
                    }
                }
                Esc::Unicode { digits, value } => {
                    let d = (b as char).to_digit(16).ok_or_else(|| bad(i, "invalid \\uXXXX escape"))?;
                    let value = value * 16 + d;
                    if digits == 3 {
                        // anything above U+00FF (surrogates included) is not a latin-1 byte
                        let byte = u8::try_from(value).map_err(|_| PdrError::NotLatin1)?;
                        out.push(byte);
                        esc = Esc::None;
                    } else {
                        esc = Esc::Unicode { digits: digits + 1, value };
                    }
                }
            }
            i += 1;
        }
        self.lex = Lex::Payload(esc);
        let r = self.sink_write(&out);
        self.scratch = out;
        r?;
        Ok((i, ended))
    }

    fn sink_write(&mut self, data: &[u8]) -> Result<(), UploadError> {
        let limit = self.limit;
        let too_large = || UploadError::Codec(PdrError::TooLarge(limit));
        match self.sink.as_mut().expect("a payload sink while in the payload") {
            Sink::Head(h) => {
                let take = (ZSTD_HEADER_MAX - h.len()).min(data.len());
                h.extend_from_slice(&data[..take]);
                if h.len() < ZSTD_HEADER_MAX {
                    return Ok(());
                }
                let head = std::mem::take(h);
                self.start_sink(head)?;
                self.sink_write(&data[take..])
            }
            Sink::Raw(v) => {
                if v.len() + data.len() > limit {
                    return Err(too_large());
                }
                v.extend_from_slice(data);
                Ok(())
            }
            Sink::Zstd { dec, out, finished } => {
                let mut input = InBuffer::around(data);
                while input.pos() < data.len() {
                    if *finished {
                        return Err(PdrError::Blob("data after the end of the zstd frame".into()).into());
                    }
                    *finished = zstd_step(dec, out, &mut input, limit)?;
                }
                Ok(())
            }
        }
    }

    /// Decide from the first bytes whether the payload is a zstd frame.
    fn start_sink(&mut self, head: Vec<u8>) -> Result<(), UploadError> {
        if is_zstd(&head) {
            let size = zstd::zstd_safe::get_frame_content_size(&head).ok().flatten();
            if size.is_some_and(|s| s > self.limit as u64) {
                return Err(PdrError::TooLarge(self.limit).into());
            }
            let dec = ZstdDecoder::new().map_err(|e| PdrError::Blob(e.to_string()))?;
            let out = Vec::with_capacity(size.map_or(0, |s| s as usize));
            self.sink = Some(Sink::Zstd { dec: Box::new(dec), out, finished: false });
        } else {
            self.sink = Some(Sink::Raw(Vec::new()));
        }
        self.sink_write(&head)
    }

    /// The body is complete: parse the skeleton and return the upload.
    pub fn finish(mut self) -> Result<Upload, UploadError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let skeleton = std::mem::take(&mut self.skeleton);
        let value = json::parse_bytes(&skeleton).map_err(|e| UploadError::Json { offset: e.offset, message: e.to_string() })?;
        drop(skeleton);
        let Value::Object(mut body) = value else {
            return Err(UploadError::Shape("body must be an object with `protocoldagresult` and `compute_service_id`".into()));
        };
        let compute_service_id = match body.remove("compute_service_id") {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => return Err(UploadError::Shape("missing `compute_service_id`".into())),
            Some(_) => return Err(UploadError::Shape("`compute_service_id` must be a string".into())),
        };
        let codec = body.remove("protocoldagresult").ok_or_else(|| UploadError::Shape("missing `protocoldagresult`".into()))?;
        let is_bytes = codec.get("__class__").and_then(Value::as_str) == Some("bytes");
        if !is_bytes || self.payloads != 1 || codec.get("latin-1").and_then(Value::as_str) != Some("") {
            return Err(PdrError::NotBytes.into());
        }
        let bytes = match self.sink.take() {
            Some(Sink::Head(h)) => {
                // shorter than a zstd frame header: take it as it is unless it is a whole frame
                if is_zstd(&h) {
                    crate::pdr::zstd_decompress(&h, self.limit).unwrap_or(h)
                } else {
                    h
                }
            }
            Some(Sink::Raw(v)) => v,
            Some(Sink::Zstd { mut dec, mut out, mut finished }) => {
                // output the decoder still holds
                while !finished {
                    finished = zstd_step(&mut dec, &mut out, &mut InBuffer::around(&[]), self.limit)?;
                }
                out
            }
            None => return Err(PdrError::NotBytes.into()),
        };
        Ok(Upload { compute_service_id, bytes })
    }
}

/// Hex digit values; 0xF0 marks a byte that is not a hex digit.
static HEX: [u8; 256] = {
    let mut t = [0xF0u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decode the common tokens of a Python-encoded latin-1 payload, printable ASCII and
/// `\u00XX`, from the start of `data` into `out`; stop before anything else (the closing
/// quote, other escapes, invalid bytes) or where an escape might be incomplete, and return
/// the bytes consumed. The byte loop in `payload` takes it from there.
fn fast_latin1(data: &[u8], out: &mut Vec<u8>) -> usize {
    let mut i = 0usize;
    while i + 6 <= data.len() {
        let b = data[i];
        if b == b'\\' {
            let t = &data[i..i + 6];
            let (hi, lo) = (HEX[t[4] as usize], HEX[t[5] as usize]);
            if t[1] != b'u' || t[2] != b'0' || t[3] != b'0' || (hi | lo) >= 16 {
                break;
            }
            out.push((hi << 4) | lo);
            i += 6;
        } else if (0x20..0x80).contains(&b) && b != b'"' {
            out.push(b);
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// One decompression step into `out`, growing it only when the decoder cannot otherwise
/// progress (so an output sized from the frame header is never reallocated). Returns
/// whether the frame is complete; a step that can neither read nor write means the frame
/// is truncated.
fn zstd_step(dec: &mut ZstdDecoder<'static>, out: &mut Vec<u8>, input: &mut InBuffer<'_>, limit: usize) -> Result<bool, UploadError> {
    let too_large = || UploadError::Codec(PdrError::TooLarge(limit));
    for attempt in 0..2 {
        if attempt == 1 || out.capacity() == out.len() {
            if out.len() >= limit {
                return Err(too_large());
            }
            let grow = (out.len() / 4).clamp(64 * 1024, 64 << 20).min(limit - out.len());
            out.reserve_exact(grow.max(1));
        }
        let before = (input.pos(), out.len());
        let pos = out.len();
        let hint = dec.run(input, &mut OutBuffer::around_pos(out, pos)).map_err(|e| PdrError::Blob(e.to_string()))?;
        if out.len() > limit {
            return Err(too_large());
        }
        if hint == 0 {
            return Ok(true);
        }
        if (input.pos(), out.len()) != before {
            return Ok(false);
        }
        if out.capacity() > out.len() {
            // room to write, nothing to read, and no progress: the input has ended early
            break;
        }
    }
    Err(PdrError::Blob("the zstd frame is truncated".into()).into())
}

impl std::io::Write for UploadDecoder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.feed(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::object;
    use crate::pdr::{bytes_to_latin1, encode_bytes_codec, zstd_compress};

    fn body(codec: &Value, id: &str) -> String {
        format!("{{\"protocoldagresult\": {}, \"compute_service_id\": \"{id}\"}}", codec.to_python_json())
    }

    fn decode_in(text: &[u8], chunk: usize) -> Result<Upload, UploadError> {
        let mut d = UploadDecoder::new(1 << 30);
        for c in text.chunks(chunk.max(1)) {
            d.feed(c)?;
        }
        d.finish()
    }

    #[test]
    fn every_chunking_gives_the_same_bytes() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 256) as u8).collect();
        // Python's escapes (ensure_ascii) and raw UTF-8, zstd inside the codec or not
        let zstd_codec = encode_bytes_codec(&data);
        let plain = Value::Object(object([("__class__", Value::from("bytes")), ("latin-1", Value::from(bytes_to_latin1(&data)))]));
        for (codec, expect) in [(&zstd_codec, &data), (&plain, &data)] {
            let ascii = body(codec, "svc-1");
            assert!(ascii.is_ascii());
            let raw = {
                let s = codec.get("latin-1").unwrap().as_str().unwrap();
                let mut o =
                    String::from("{\"compute_service_id\": \"svc-1\", \"protocoldagresult\": {\"__class__\": \"bytes\", \"latin-1\": ");
                o.push_str(&serde_json::to_string(s).unwrap());
                o.push_str("}}");
                o
            };
            for text in [ascii, raw] {
                for chunk in [1, 2, 3, 5, 7, 13, 64, 4096, 1 << 20] {
                    let up = decode_in(text.as_bytes(), chunk).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
                    assert_eq!(&up.bytes, expect, "chunk {chunk}");
                    assert_eq!(up.compute_service_id, "svc-1");
                }
            }
        }
    }

    #[test]
    fn the_python_clients_upload_decodes_through_gzip_in_any_chunking() {
        let gz = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vectors/C14_set_task_result.request.gz")).unwrap();
        let blob = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vectors/pdr_ok.json.zst")).unwrap();
        for chunk in [1, 100, 16 * 1024] {
            // gzip inflated straight into the decoder, as the server does
            let mut gzd = flate2::write::GzDecoder::new(UploadDecoder::new(1 << 30));
            for c in gz.chunks(chunk) {
                std::io::Write::write_all(&mut gzd, c).unwrap();
            }
            let up = gzd.finish().unwrap().finish().unwrap();
            assert_eq!(up.bytes, blob, "codec layer removed, blob as the client compressed it");
            assert_eq!(up.compute_service_id, "vecservice-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
        }
    }

    #[test]
    fn the_fast_path_and_the_byte_loop_agree() {
        // every byte value, written the ways JSON allows (Python's \u00xx, upper-case hex,
        // short escapes, `\/`), long enough runs for the fast path and split anywhere
        let mut text = String::new();
        let mut expect = Vec::new();
        for round in 0..3 {
            for b in 0..=255u8 {
                expect.push(b);
                match (b, round) {
                    (b'"', _) => text.push_str("\\\""),
                    (b'\\', _) => text.push_str("\\\\"),
                    (b'/', 1) => text.push_str("\\/"),
                    (b'\n', 2) => text.push_str("\\n"),
                    (0x20..=0x7F, 0) => text.push(b as char),
                    (_, 1) => text.push_str(&format!("\\u{b:04X}")),
                    _ => text.push_str(&format!("\\u{b:04x}")),
                }
            }
        }
        let body =
            format!("{{\"protocoldagresult\": {{\"__class__\": \"bytes\", \"latin-1\": \"{text}\"}}, \"compute_service_id\": \"s\"}}");
        for chunk in [1, 5, 6, 7, 64, body.len()] {
            let up = decode_in(body.as_bytes(), chunk).unwrap();
            assert_eq!(up.bytes, expect, "chunk {chunk}");
        }
    }

    #[test]
    fn a_zstd_payload_is_decompressed_once() {
        let blob = zstd_compress(b"[[\"A-1\", {}]]");
        let up = decode_in(body(&encode_bytes_codec(&blob), "s-1").as_bytes(), 10).unwrap();
        assert_eq!(up.bytes, blob);
        // tiny payloads (shorter than a frame header) too
        let up = decode_in(body(&encode_bytes_codec(b"x"), "s-1").as_bytes(), 3).unwrap();
        assert_eq!(up.bytes, b"x");
        let up = decode_in(body(&Value::Object(object([("__class__", "bytes"), ("latin-1", "ab")])), "s-1").as_bytes(), 1).unwrap();
        assert_eq!(up.bytes, b"ab");
    }

    #[test]
    fn escaped_keys_and_unknown_members_are_understood() {
        let text = r#"{"extra": {"latin-1": "not this", "x": [1, NaN, {"a": "b\"}"}]}, "protocol\u0064agresult": {"__class__": "bytes", "latin\u002d1": "\u0041\u00ff\n"}, "compute_service_id": "svc-2"}"#;
        let up = decode_in(text.as_bytes(), 4).unwrap();
        assert_eq!(up.bytes, vec![0x41, 0xFF, b'\n']);
        assert_eq!(up.compute_service_id, "svc-2");
    }

    #[test]
    fn bad_bodies_are_refused_with_the_right_kind() {
        let limit_err = {
            let mut d = UploadDecoder::new(10);
            d.feed(b"{\"protocoldagresult\": ").unwrap_err()
        };
        assert_eq!(limit_err, UploadError::TooLarge(10));
        type Check = fn(&UploadError) -> bool;
        let cases: Vec<(&str, Check)> = vec![
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": "\u0100"}, "compute_service_id": "s"}"#, |e| {
                matches!(e, UploadError::Codec(PdrError::NotLatin1))
            }),
            ("{\"protocoldagresult\": {\"__class__\": \"bytes\", \"latin-1\": \"\u{0100}\"}, \"compute_service_id\": \"s\"}", |e| {
                matches!(e, UploadError::Codec(PdrError::NotLatin1))
            }),
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": "\ud800"}, "compute_service_id": "s"}"#, |e| {
                matches!(e, UploadError::Codec(PdrError::NotLatin1))
            }),
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": "\q"}, "compute_service_id": "s"}"#, |e| {
                matches!(e, UploadError::Json { .. })
            }),
            ("{\"protocoldagresult\": {\"__class__\": \"bytes\", \"latin-1\": \"a\tb\"}, \"compute_service_id\": \"s\"}", |e| {
                matches!(e, UploadError::Json { .. })
            }),
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": "ab"}, "compute_service_id": "s""#, |e| {
                matches!(e, UploadError::Json { .. })
            }),
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": "ab"#, |e| matches!(e, UploadError::Json { .. })),
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": "ab"} "compute_service_id": "s"}"#, |e| {
                matches!(e, UploadError::Json { .. })
            }),
            (r#"{"protocoldagresult": {"__class__": "str", "latin-1": "ab"}, "compute_service_id": "s"}"#, |e| {
                matches!(e, UploadError::Codec(PdrError::NotBytes))
            }),
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": 5}, "compute_service_id": "s"}"#, |e| {
                matches!(e, UploadError::Codec(PdrError::NotBytes))
            }),
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": "a", "latin-1": "b"}, "compute_service_id": "s"}"#, |e| {
                matches!(e, UploadError::Shape(_))
            }),
            (r#"{"protocoldagresult": "text", "compute_service_id": "s"}"#, |e| matches!(e, UploadError::Codec(PdrError::NotBytes))),
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": "ab"}}"#, |e| matches!(e, UploadError::Shape(_))),
            (r#"{"protocoldagresult": {"__class__": "bytes", "latin-1": "ab"}, "compute_service_id": 5}"#, |e| {
                matches!(e, UploadError::Shape(_))
            }),
            (r#"{"compute_service_id": "s"}"#, |e| matches!(e, UploadError::Shape(_))),
            (r#"[1, 2]"#, |e| matches!(e, UploadError::Shape(_))),
            ("", |e| matches!(e, UploadError::Json { .. })),
        ];
        for (text, ok) in cases {
            for chunk in [1, 3, 1000] {
                let e = decode_in(text.as_bytes(), chunk).unwrap_err();
                assert!(ok(&e), "{text} (chunk {chunk}): {e:?}");
            }
        }
        // a truncated or corrupt zstd frame in the payload
        let mut frame = zstd_compress(&vec![7u8; 100_000]);
        frame.truncate(frame.len() - 3);
        let codec = Value::Object(object([("__class__", "bytes"), ("latin-1", &*bytes_to_latin1(&frame))]));
        assert!(matches!(decode_in(body(&codec, "s").as_bytes(), 100).unwrap_err(), UploadError::Codec(PdrError::Blob(_))));
        let mut frame = zstd_compress(&(0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        frame.extend_from_slice(b"trailing");
        let codec = Value::Object(object([("__class__", "bytes"), ("latin-1", &*bytes_to_latin1(&frame))]));
        assert!(matches!(decode_in(body(&codec, "s").as_bytes(), 100).unwrap_err(), UploadError::Codec(PdrError::Blob(_))));
        // a decompressed payload over the limit
        let big = encode_bytes_codec(&vec![0u8; 1 << 20]);
        let text = body(&big, "s");
        let mut d = UploadDecoder::new(100_000);
        let e = text.as_bytes().chunks(1000).try_for_each(|c| d.feed(c)).unwrap_err();
        assert_eq!(e, UploadError::Codec(PdrError::TooLarge(100_000)));
    }
}
