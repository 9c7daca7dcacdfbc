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
mod tests;
