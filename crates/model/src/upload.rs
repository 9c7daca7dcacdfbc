//! Decoding a result upload (compute route C14) as its bytes arrive.
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
//! The decoded payload goes to any [`std::io::Write`] as it is produced, in chunks (a
//! `Vec<u8>` by default), so a caller can store and analyse a large result while its
//! upload is still arriving.
//!
//! The lexer only tracks enough structure to find the payload (nesting, keys, strings); it
//! does not validate. Validation is the skeleton parse plus the payload decoder's own
//! checks (escapes, control characters, code points above U+00FF).

use std::io::Write;

use crate::json::{self, Value};
use crate::pdr::{is_zstd, FrameDecoder, PdrError};

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

/// A decoded upload: who sent it and where the ProtocolDAGResult bytes went (the codec's
/// content, already zstd-decompressed once when it was a zstd frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload<W = Vec<u8>> {
    pub compute_service_id: String,
    pub payload: W,
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

/// Where the payload stands, holding the output.
enum Sink<W> {
    /// Before the payload string.
    Waiting(W),
    /// The first bytes, until it is known whether they start a zstd frame.
    Head(Vec<u8>, W),
    /// Not a zstd frame: bytes go out as they are (`written` so far).
    Raw(W, usize),
    Zstd(Box<FrameDecoder<W>>),
    /// Only while changing state, or after an error.
    Broken,
}

/// Push the body in with [`UploadDecoder::feed`] (any chunking), then [`UploadDecoder::finish`].
pub struct UploadDecoder<W: Write = Vec<u8>> {
    limit: usize,
    fed: usize,
    skeleton: Vec<u8>,
    levels: Vec<Level>,
    lex: Lex,
    key_raw: Vec<u8>,
    key_overflow: bool,
    /// Decoded payload bytes not yet handed to the sink.
    scratch: Vec<u8>,
    /// The fast path's second output buffer.
    spare: Vec<u8>,
    sink: Sink<W>,
    error: Option<UploadError>,
}

impl UploadDecoder {
    /// `limit` bounds the body and the decoded payload (each).
    pub fn new(limit: usize) -> UploadDecoder {
        UploadDecoder::with_output(limit, Vec::new())
    }
}

impl<W: Write> UploadDecoder<W> {
    /// Decode into `out` (which sees the payload in order, in chunks).
    pub fn with_output(limit: usize, out: W) -> UploadDecoder<W> {
        UploadDecoder {
            limit,
            fed: 0,
            skeleton: Vec::new(),
            levels: Vec::new(),
            lex: Lex::Outside,
            key_raw: Vec::new(),
            key_overflow: false,
            scratch: Vec::new(),
            spare: Vec::new(),
            sink: Sink::Waiting(out),
            error: None,
        }
    }

    /// The output (`None` after an error broke the decoder).
    pub fn output_mut(&mut self) -> Option<&mut W> {
        match &mut self.sink {
            Sink::Waiting(w) | Sink::Head(_, w) | Sink::Raw(w, _) => Some(w),
            Sink::Zstd(f) => Some(f.get_mut()),
            Sink::Broken => None,
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
                                self.skeleton.push(b'"');
                                // the sink leaves `Waiting` once: a second payload is refused
                                self.sink = match std::mem::replace(&mut self.sink, Sink::Broken) {
                                    Sink::Waiting(w) => Sink::Head(Vec::new(), w),
                                    _ => return Err(UploadError::Shape("`latin-1` is given more than once".into())),
                                };
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
                i += fast_latin1(&data[i..], &mut out, &mut self.spare);
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
        match &mut self.sink {
            Sink::Head(h, _) => {
                let take = (ZSTD_HEADER_MAX - h.len()).min(data.len());
                h.extend_from_slice(&data[..take]);
                if h.len() < ZSTD_HEADER_MAX {
                    return Ok(());
                }
                self.start_sink()?;
                self.sink_write(&data[take..])
            }
            Sink::Raw(w, written) => {
                *written += data.len();
                if *written > limit {
                    return Err(PdrError::TooLarge(limit).into());
                }
                w.write_all(data).map_err(|e| PdrError::Blob(e.to_string()).into())
            }
            Sink::Zstd(f) => Ok(f.feed(data)?),
            Sink::Waiting(_) | Sink::Broken => unreachable!("payload bytes outside the payload"),
        }
    }

    /// Decide from the first bytes whether the payload is a zstd frame, and pass them on.
    fn start_sink(&mut self) -> Result<(), UploadError> {
        let Sink::Head(head, out) = std::mem::replace(&mut self.sink, Sink::Broken) else { unreachable!("start_sink after the head") };
        if is_zstd(&head) {
            let size = zstd::zstd_safe::get_frame_content_size(&head).ok().flatten();
            if size.is_some_and(|s| s > self.limit as u64) {
                return Err(PdrError::TooLarge(self.limit).into());
            }
            self.sink = Sink::Zstd(Box::new(FrameDecoder::new(out, self.limit)?));
        } else {
            self.sink = Sink::Raw(out, 0);
        }
        self.sink_write(&head)
    }

    /// The body is complete: parse the skeleton and return the upload.
    pub fn finish(mut self) -> Result<Upload<W>, UploadError> {
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
        // (no payload string at all leaves the sink `Waiting`: refused below)
        if !is_bytes || codec.get("latin-1").and_then(Value::as_str) != Some("") {
            return Err(PdrError::NotBytes.into());
        }
        let payload = match std::mem::replace(&mut self.sink, Sink::Broken) {
            Sink::Head(h, mut out) => {
                // shorter than a zstd frame header: taken as it is unless it is a whole frame
                let bytes = if is_zstd(&h) { crate::pdr::zstd_decompress(&h, self.limit).unwrap_or(h) } else { h };
                out.write_all(&bytes).map_err(|e| PdrError::Blob(e.to_string()))?;
                out
            }
            Sink::Raw(out, _) => out,
            Sink::Zstd(f) => f.finish()?,
            Sink::Waiting(_) | Sink::Broken => return Err(PdrError::NotBytes.into()),
        };
        Ok(Upload { compute_service_id, payload })
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

/// What a payload byte starts: 0 anything the fast path leaves to the byte loop (the
/// closing quote, control characters, invalid bytes), 1 a printable ASCII character, 2 the
/// lead byte of a two-byte UTF-8 sequence of a latin-1 character, 3 an escape.
static KIND: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0x20;
    while b < 0x80 {
        t[b] = 1;
        b += 1;
    }
    t[b'"' as usize] = 0;
    t[b'\\' as usize] = 3;
    t[0xC2] = 2;
    t[0xC3] = 2;
    t
};

/// The byte a two-character escape stands for; 0xF0 for `u` and anything invalid.
static SHORT_ESCAPE: [u8; 256] = {
    let mut t = [0xF0u8; 256];
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'/' as usize] = b'/';
    t[b'b' as usize] = 0x08;
    t[b'f' as usize] = 0x0C;
    t[b'n' as usize] = b'\n';
    t[b'r' as usize] = b'\r';
    t[b't' as usize] = b'\t';
    t
};

/// Every first two bytes of a token: the byte it stands for (low 8 bits) and its length
/// (bits 8–10; 0 when the fast path does not take it), or bit 11 for `\u` (whose value
/// and validity are in the next four bytes).
static PAIR: [u16; 65536] = {
    let mut t = [0u16; 65536];
    let mut i = 0;
    while i < 65536 {
        let (b0, b1) = ((i & 0xFF) as u8, (i >> 8) as u8);
        t[i] = match KIND[b0 as usize] {
            1 => b0 as u16 | 1 << 8,
            2 if b1 & 0xC0 == 0x80 => ((b0 << 6) | (b1 & 0x3F)) as u16 | 2 << 8,
            3 if b1 == b'u' => 1 << 11,
            3 if SHORT_ESCAPE[b1 as usize] != 0xF0 => SHORT_ESCAPE[b1 as usize] as u16 | 2 << 8,
            _ => 0,
        };
        i += 1;
    }
    t
};

/// `XX` of `\u00XX`, for every two bytes: the byte, or 0x100 when they are not hex digits.
static HEX_PAIR: [u16; 65536] = {
    let mut t = [0x100u16; 65536];
    let mut i = 0;
    while i < 65536 {
        let (hi, lo) = (HEX[i & 0xFF], HEX[i >> 8]);
        if hi < 16 && lo < 16 {
            t[i] = ((hi << 4) | lo) as u16;
        }
        i += 1;
    }
    t
};

/// The token at the start of `w` (eight payload bytes, little-endian): the byte it
/// stands for and its length, or length 0 when the fast path does not take it. Two table
/// lookups and no data-dependent branches: the payload is compressed data, so the kind of
/// each token is random and a branch per token would be mispredicted about half the time.
#[inline(always)]
fn token(w: u64) -> (u8, usize) {
    let e = PAIR[(w & 0xFFFF) as usize];
    let hex = HEX_PAIR[((w >> 32) & 0xFFFF) as usize];
    let unicode_ok = ((w >> 16) as u16 == 0x3030) as usize & (hex < 0x100) as usize;
    // select with masks rather than `if`, which the compiler may turn into a branch
    let unicode = ((e >> 11) & 1) as usize;
    let mask = 0u8.wrapping_sub(unicode as u8);
    let value = (hex as u8 & mask) | (e as u8 & !mask);
    let len = unicode * 6 * unicode_ok + (1 - unicode) * ((e >> 8) & 7) as usize;
    (value, len)
}

#[inline(always)]
fn word(data: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(data[i..i + 8].try_into().expect("eight bytes"))
}

/// Decode tokens from `data[i..end]` (with `end + 8 <= data.len()` so every token can be
/// read as a whole word) into `out`; stop at `end` or before a token the fast path does
/// not take. Returns where it stopped.
#[inline(always)]
fn run(data: &[u8], mut i: usize, end: usize, out: &mut Vec<u8>) -> usize {
    while i < end {
        let (value, len) = token(word(data, i));
        if len == 0 {
            break;
        }
        out.push(value);
        i += len;
    }
    i
}

/// True if a token starts at `p`: not inside a two-byte UTF-8 sequence, and no backslash
/// in the five bytes before (an escape is at most six bytes, so one covering `p` would
/// start there).
fn token_boundary(data: &[u8], p: usize) -> bool {
    p >= 5 && data[p] & 0xC0 != 0x80 && !data[p - 5..p].contains(&b'\\')
}

/// Decode the common tokens of a latin-1 payload (printable ASCII, `\u00XX` as Python
/// writes it, two-byte UTF-8, short escapes) from the start of `data` into `out`; stop
/// before anything else (the closing quote, invalid bytes) or near the end, where a token
/// might be incomplete, and return the bytes consumed. The byte loop in `payload` takes
/// it from there.
///
/// Each token's length depends on the previous one's, which makes a single cursor a
/// chain of dependent loads. A long input is therefore split at a token boundary and both
/// halves are decoded in one interleaved loop: the two chains are independent, so the
/// processor overlaps them. (`spare` is a buffer for the second half's output, kept by
/// the caller so it is not allocated again for every chunk.)
fn fast_latin1(data: &[u8], out: &mut Vec<u8>, spare: &mut Vec<u8>) -> usize {
    if data.len() < 8 {
        return 0;
    }
    let end = data.len() - 7;
    out.reserve(data.len());
    #[cfg(target_arch = "x86_64")]
    if let Some((decode, dense_too)) = simd::best() {
        if dense_too || sparse_escapes(data) {
            // SAFETY: `best` checked that the processor has the features it needs
            return unsafe { decode(data, end, out) };
        }
    }
    let split = if end < 4096 { None } else { (end / 2..end.min(end / 2 + 4096)).find(|&p| token_boundary(data, p)) };
    let Some(split) = split else {
        return run(data, 0, end, out);
    };
    let second = &mut *spare;
    second.clear();
    second.reserve(end - split);
    let (mut a, mut b) = (0, split);
    while a < split && b < end {
        let (va, la) = token(word(data, a));
        let (vb, lb) = token(word(data, b));
        if la == 0 || lb == 0 {
            break;
        }
        out.push(va);
        second.push(vb);
        a += la;
        b += lb;
    }
    let a = run(data, a, split, out);
    if a != split {
        // the first half stopped early (the string ends there, or something the byte
        // loop must judge): the second half's work does not count
        return a;
    }
    let b = run(data, b, end, second);
    out.extend_from_slice(second);
    b
}

/// True when backslashes are rare at the start of `data` (a payload written as raw UTF-8,
/// where only control characters are escaped): worth decoding sixteen bytes at a time.
/// Python's `ensure_ascii` output escapes most bytes; without wider blocks it is left to
/// the token loop.
#[cfg(target_arch = "x86_64")]
fn sparse_escapes(data: &[u8]) -> bool {
    let sample = &data[..data.len().min(1024)];
    sample.len() >= 256 && sample.iter().filter(|&&b| b == b'\\').count() * 10 < sample.len()
}

#[cfg(target_arch = "x86_64")]
mod simd;

impl<W: Write> std::io::Write for UploadDecoder<W> {
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
                    assert_eq!(&up.payload, expect, "chunk {chunk}");
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
            assert_eq!(up.payload, blob, "codec layer removed, blob as the client compressed it");
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
            assert_eq!(up.payload, expect, "chunk {chunk}");
        }
    }

    #[test]
    fn long_payloads_decode_the_same_split_anywhere() {
        // long enough for the two-cursor path, in every spelling JSON allows, with the
        // string's end and invalid bytes placed in either half
        let data = crate::synthetic::random_bytes(300_000, 0x9E37_79B9_7F4A_7C15);
        let spell = |style: usize| {
            let mut text = String::new();
            for (i, &b) in data.iter().enumerate() {
                match (b, (style + i) % 3) {
                    (b'"', _) => text.push_str("\\\""),
                    (b'\\', _) => text.push_str("\\\\"),
                    (b'\n', 0) => text.push_str("\\n"),
                    (b'/', 1) => text.push_str("\\/"),
                    (0x20..=0x7F, _) => text.push(b as char),
                    (0x80..=0xFF, 2) if style == 1 => text.push(char::from(b)),
                    _ => text.push_str(&format!("\\u{b:04x}")),
                }
            }
            text
        };
        for style in [0, 1] {
            let text = spell(style);
            let body =
                format!("{{\"protocoldagresult\": {{\"__class__\": \"bytes\", \"latin-1\": \"{text}\"}}, \"compute_service_id\": \"s\"}}");
            for chunk in [1000, 65_536, 100_003, body.len()] {
                let up = decode_in(body.as_bytes(), chunk).unwrap_or_else(|e| panic!("style {style} chunk {chunk}: {e}"));
                assert!(up.payload == data, "style {style} chunk {chunk}");
            }
            // an invalid escape early or late (in either half) is still refused
            for at in [text.len() / 5, text.len() * 4 / 5] {
                let at = (at..).find(|&i| text.is_char_boundary(i) && !text[..i].ends_with('\\')).unwrap();
                let bad = format!("{}\\q{}", &text[..at], &text[at..]);
                let body = format!(
                    "{{\"protocoldagresult\": {{\"__class__\": \"bytes\", \"latin-1\": \"{bad}\"}}, \"compute_service_id\": \"s\"}}"
                );
                let e = decode_in(body.as_bytes(), body.len()).unwrap_err();
                assert!(matches!(e, UploadError::Json { .. }), "{e:?}");
            }
        }
    }

    #[test]
    fn raw_utf8_payloads_decode_block_wise_and_refuse_bad_bytes_anywhere() {
        // raw UTF-8 with only control characters escaped (JSON with ensure_ascii off): the
        // block decoder's input; long runs, escapes at every offset of a block
        let mut rng = Rng(crate::synthetic::xorshift(0x2545_F491_4F6C_DD1D));
        let data: Vec<u8> = (0..200_000).map(|_| (rng.next() >> 24) as u8).collect();
        let mut text = Vec::new();
        crate::pdr::bytes_to_latin1(&data).chars().for_each(|c| match c {
            '"' => text.extend_from_slice(b"\\\""),
            '\\' => text.extend_from_slice(b"\\\\"),
            '\n' => text.extend_from_slice(b"\\n"),
            c if (c as u32) < 0x20 => text.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => text.extend_from_slice(c.to_string().as_bytes()),
        });
        let body = wrap(&text);
        for chunk in [997, 65_536, body.len()] {
            assert!(decode_in(&body, chunk).unwrap().payload == data, "chunk {chunk}");
        }
        // a bad byte anywhere in a run is refused as the byte loop refuses it
        type Check = fn(&UploadError) -> bool;
        let bad: [(&[u8], Check); 5] = [
            (&[0x80], |e| matches!(e, UploadError::Codec(PdrError::NotLatin1))),
            (&[0xC4, 0x80], |e| matches!(e, UploadError::Codec(PdrError::NotLatin1))),
            (&[0xC3, b'A'], |e| matches!(e, UploadError::Json { .. })),
            (&[0x01], |e| matches!(e, UploadError::Json { .. })),
            (&[0xC3, 0x80, 0x80], |e| matches!(e, UploadError::Codec(PdrError::NotLatin1))),
        ];
        for (k, (insert, ok)) in bad.iter().enumerate() {
            for _ in 0..20 {
                let mut at = rng.below(text.len());
                // between two tokens: not after a lead byte or inside an escape
                while text[at] & 0xC0 == 0x80 || text[at.saturating_sub(6)..at].contains(&b'\\') {
                    at += 1;
                }
                let mut t = text.clone();
                t.splice(at..at, insert.iter().copied());
                let e = decode_in(&wrap(&t), 65_536).unwrap_err();
                assert!(ok(&e), "case {k} at {at}: {e:?}");
            }
        }
    }

    /// Random numbers for the tests.
    struct Rng<I>(I);

    impl<I: Iterator<Item = u64>> Rng<I> {
        fn next(&mut self) -> u64 {
            self.0.next().expect("endless")
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random payload bytes and a JSON string body for them with every escape JSON allows
    /// (short ones, `\/`, upper- and lower-case `\u00XX`, `\u0041` for ASCII, runs of
    /// `\\`): sparse, as raw UTF-8 with escapes rare enough for the 16-byte block decoder,
    /// or dense, as Python's `ensure_ascii` writes (every byte ≥ 0x80 escaped).
    fn spelled(rng: &mut Rng<impl Iterator<Item = u64>>, n: usize, dense: bool) -> (Vec<u8>, Vec<u8>) {
        let (mut text, mut data) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let r = rng.next();
            let b = if r.is_multiple_of(3) || dense { (r >> 24) as u8 } else { 0x20 + ((r >> 24) % 0xE0) as u8 };
            data.push(b);
            let short: &[u8] = match (b, r % 29) {
                (b'"', _) => b"\\\"",
                (b'\\', _) => b"\\\\",
                (0x08, _) => b"\\b",
                (0x0C, _) => b"\\f",
                (b'\n', _) => b"\\n",
                (b'\r', _) => b"\\r",
                (b'\t', _) => b"\\t",
                (b'/', 0..=14) => b"\\/",
                (0x80..=0xFF, 2) => {
                    text.extend_from_slice(format!("\\u{b:04X}").as_bytes());
                    continue;
                }
                (0x80..=0xFF, _) if dense => {
                    text.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                    continue;
                }
                (0x00..=0x1F, _) | (0x20..=0x7F, 1) => {
                    text.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                    continue;
                }
                _ => {
                    text.extend_from_slice(char::from(b).to_string().as_bytes());
                    continue;
                }
            };
            text.extend_from_slice(short);
        }
        (text, data)
    }

    /// `text` with one to three damages that matter to a decoder, inserted or written over.
    fn damaged(rng: &mut Rng<impl Iterator<Item = u64>>, text: &[u8], round: usize) -> Vec<u8> {
        const DAMAGE: &[&[u8]] =
            &[b"\\", b"\"", b"u", b"0", b"F", b"g", &[0x01], &[0x80], &[0xC3], &[0xC4], &[0xFF], b"\\\\\\", b"\\u00", b"\\u0100"];
        let mut t = text.to_vec();
        for _ in 0..1 + round % 3 {
            let at = rng.below(t.len());
            let d = DAMAGE[rng.below(DAMAGE.len())];
            let upto = if rng.next().is_multiple_of(2) { at } else { (at + d.len()).min(t.len()) };
            t.splice(at..upto, d.iter().copied());
        }
        t
    }

    fn wrap(text: &[u8]) -> Vec<u8> {
        let mut b = br#"{"protocoldagresult": {"__class__": "bytes", "latin-1": ""#.to_vec();
        b.extend_from_slice(text);
        b.extend_from_slice(br#""}, "compute_service_id": "s"}"#);
        b
    }

    #[test]
    fn the_block_decoder_and_the_byte_loop_agree_on_any_damage() {
        // the fast path this machine picks (whole body at once) must give what the byte
        // loop (chunks shorter than the fast path's window) gives: the same payload, or the
        // same error at the same offset
        let mut rng = Rng(crate::synthetic::xorshift(0x1234_5678_9ABC_DEF1));
        let outcome = |body: &[u8], chunk: usize| match decode_in(body, chunk) {
            Ok(up) => Ok(up.payload),
            Err(e) => Err(format!("{e:?}")),
        };
        let (mut refused, mut accepted) = (0, 0);
        for dense in [false, true] {
            let (text, data) = spelled(&mut rng, 40_000, dense);
            assert_eq!(sparse_escapes(&text), !dense);
            let body = wrap(&text);
            assert_eq!(outcome(&body, body.len()), Ok(data.clone()));
            assert_eq!(outcome(&body, 7), Ok(data));
            for round in 0..300 {
                let body = wrap(&damaged(&mut rng, &text, round));
                let (fast, bytewise) = (outcome(&body, body.len()), outcome(&body, 7));
                assert_eq!(fast, bytewise, "dense {dense} round {round}");
                if fast.is_err() {
                    refused += 1;
                } else {
                    accepted += 1;
                }
            }
        }
        // both kinds of outcome were compared
        assert!(refused > 100 && accepted > 20, "{refused} refused, {accepted} accepted");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_block_decoder_this_processor_has_agrees_with_the_token_loop() {
        // each of them, not only the one picked, on sparse and dense text, whole and
        // damaged, from any starting offset: the same bytes out and the same stopping place
        let decoders = simd::available();
        assert!(!decoders.is_empty(), "an x86-64 processor without SSSE3");
        let mut rng = Rng(crate::synthetic::xorshift(0x0DDB_1A5E_5BAD_5EED));
        let mut texts = Vec::new();
        for dense in [false, true] {
            let (text, _) = spelled(&mut rng, 5_000, dense);
            for round in 0..150 {
                texts.push(damaged(&mut rng, &text, round));
            }
            texts.push(text);
        }
        let mut stops = std::collections::BTreeSet::new();
        for (k, text) in texts.iter().enumerate() {
            for start in [0, 1, 2, 3, 5, 17, 63, 64, 65] {
                let data = &text[start..];
                let end = data.len() - 7;
                let mut expect = Vec::new();
                let stopped = run(data, 0, end, &mut expect);
                stops.insert(stopped * 10 / end);
                for (name, decode) in &decoders {
                    let mut got = b"kept".to_vec();
                    // SAFETY: `available` lists only what this processor can run
                    let n = unsafe { decode(data, end, &mut got) };
                    assert_eq!(&got[..4], b"kept", "{name}: output appended");
                    assert!(n == stopped && got[4..] == expect[..], "{name}, text {k} from {start}: stopped at {n}, not {stopped}");
                }
            }
        }
        // stops early, midway and late were all compared
        assert!(stops.len() >= 8, "{stops:?}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn escape_starts_skip_escaped_backslashes() {
        // bit i is byte i; `\\\\` pairs, `\\\"` starts at the first, runs at odd positions
        assert_eq!(simd::escape_starts(0b0111), 0b0101);
        assert_eq!(simd::escape_starts(0b0110), 0b0010);
        assert_eq!(simd::escape_starts(0b1101), 0b0101);
        assert_eq!(simd::escape_starts(0b1111_0000_1110), 0b0101_0000_1010);
        assert_eq!(simd::escape_starts(0), 0);
        // against the obvious loop, for every 12-bit mask
        for bs in 0u64..1 << 12 {
            let mut expect = 0;
            let mut i = 0;
            while i < 12 {
                if bs >> i & 1 == 1 {
                    expect |= 1 << i;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            assert_eq!(simd::escape_starts(bs), expect, "{bs:#b}");
        }
    }

    #[test]
    fn a_zstd_payload_is_decompressed_once() {
        let blob = zstd_compress(b"[[\"A-1\", {}]]");
        let up = decode_in(body(&encode_bytes_codec(&blob), "s-1").as_bytes(), 10).unwrap();
        assert_eq!(up.payload, blob);
        // tiny payloads (shorter than a frame header) too
        let up = decode_in(body(&encode_bytes_codec(b"x"), "s-1").as_bytes(), 3).unwrap();
        assert_eq!(up.payload, b"x");
        let up = decode_in(body(&Value::Object(object([("__class__", "bytes"), ("latin-1", "ab")])), "s-1").as_bytes(), 1).unwrap();
        assert_eq!(up.payload, b"ab");
    }

    #[test]
    fn escaped_keys_and_unknown_members_are_understood() {
        let text = r#"{"extra": {"latin-1": "not this", "x": [1, NaN, {"a": "b\"}"}]}, "protocol\u0064agresult": {"__class__": "bytes", "latin\u002d1": "\u0041\u00ff\n"}, "compute_service_id": "svc-2"}"#;
        let up = decode_in(text.as_bytes(), 4).unwrap();
        assert_eq!(up.payload, vec![0x41, 0xFF, b'\n']);
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
