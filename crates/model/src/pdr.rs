//! ProtocolDAGResults as the server sees them: the
//! bytes codec, the result blob, the success test and the failures in upstream's order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{Read, Write};

use crate::chain::{as_reference, KeyedChain};
use crate::hash::TracebacksFields;
use crate::json::{self, object, Value};
use crate::keys::GufeKey;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PdrError {
    #[error("`protocoldagresult` is not a bytes object ({{\"__class__\": \"bytes\", \"latin-1\": ...}})")]
    NotBytes,
    #[error("the bytes codec string holds a character above U+00FF")]
    NotLatin1,
    #[error("the result is not a zstd-compressed ProtocolDAGResult: {0}")]
    Blob(String),
    #[error("the result is larger than {0} bytes when decompressed")]
    TooLarge(usize),
    #[error("the result is not valid JSON: {0}")]
    Json(String),
    #[error("the result is not a valid keyed chain: {0}")]
    Chain(String),
    #[error("the result is not a valid ProtocolDAGResult: {0}")]
    Structure(String),
}

/// Map a bytes-codec `latin-1` string back to bytes.
pub fn latin1_to_bytes(s: &str) -> Result<Vec<u8>, PdrError> {
    s.chars().map(|c| u8::try_from(u32::from(c)).map_err(|_| PdrError::NotLatin1)).collect()
}

/// [`latin1_to_bytes`] reusing the string's own buffer (each character takes at least as
/// many bytes in UTF-8 as it yields), so a large payload is not held twice.
pub fn latin1_string_into_bytes(s: String) -> Result<Vec<u8>, PdrError> {
    let mut b = s.into_bytes();
    let (mut r, mut w) = (0, 0);
    while r < b.len() {
        let x = b[r];
        let (byte, n) = match x {
            0x00..=0x7F => (x, 1),
            // two-byte sequences C2 xx and C3 xx are U+0080..U+00FF
            0xC2 | 0xC3 => (((x & 0x1F) << 6) | (b[r + 1] & 0x3F), 2),
            _ => return Err(PdrError::NotLatin1),
        };
        b[w] = byte;
        w += 1;
        r += n;
    }
    b.truncate(w);
    Ok(b)
}

/// Map bytes to a string whose code points equal the byte values.
pub fn bytes_to_latin1(b: &[u8]) -> String {
    b.iter().map(|&x| char::from(x)).collect()
}

/// How each byte is written inside a JSON string of latin-1 code points: up to six bytes,
/// then the count in the last. `"`, `\` and control characters are escaped, bytes ≥ 0x80
/// are two-byte UTF-8.
static LATIN1_JSON: [[u8; 8]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'"' => [b'\\', b'"', 0, 0, 0, 0, 0, 2],
            b'\\' => [b'\\', b'\\', 0, 0, 0, 0, 0, 2],
            0x00..=0x1F => [b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 0xF) as usize], 0, 6],
            0x20..=0x7F => [c, 0, 0, 0, 0, 0, 0, 1],
            _ => [0xC0 | (c >> 6), 0x80 | (c & 0x3F), 0, 0, 0, 0, 0, 2],
        };
        b += 1;
    }
    t
};

/// Append the inside of the JSON string literal of `bytes` mapped to code points of equal
/// value (latin-1): `"`, `\` and control characters escaped, bytes ≥ 0x80 as raw UTF-8
/// (as compact as JSON allows). Eight bytes are
/// written for every byte from a table and the end moved by its length: no branch per
/// byte, whose outcome would be random for compressed data. Room for the worst case (six
/// bytes a byte) is reserved a block at a time, so a caller's capacity for the usual case
/// (about two bytes a byte) is not replaced by one six times the input.
pub fn push_latin1_json(bytes: &[u8], out: &mut Vec<u8>) {
    for block in bytes.chunks(4096) {
        out.reserve(block.len() * 6 + 2);
        let start = out.len();
        let spare = out.spare_capacity_mut();
        let mut o = 0;
        for &b in block {
            let e = &LATIN1_JSON[b as usize];
            // (o + 8 <= 6 * (bytes before this one) + 8 <= 6 * block.len() + 2: reserved)
            for (slot, &x) in spare[o..o + 8].iter_mut().zip(e) {
                slot.write(x);
            }
            o += e[7] as usize;
        }
        // SAFETY: the first `o` spare bytes were written above
        unsafe { out.set_len(start + o) };
    }
}

/// A result upload body (C14) for `blob`: the bytes codec (zstd inside, as gufe writes it)
/// with its latin-1 string as raw UTF-8 rather than Python's `\u00XX` escapes, and not
/// gzip-compressed. About 2.1 bytes per blob byte, against 4 before gzip for the Python
/// client's spelling, and neither side spends CPU on gzip (seconds per 50 MB).
pub fn upload_body(blob: &[u8], compute_service_id: &str) -> Vec<u8> {
    let codec = zstd_compress(blob);
    let mut body = Vec::with_capacity(codec.len() * 21 / 10 + 256);
    body.extend_from_slice(br#"{"protocoldagresult": {"__class__": "bytes", "__module__": "builtins", ":is_custom:": true, "latin-1": ""#);
    push_latin1_json(&codec, &mut body);
    body.extend_from_slice(br#""}, "compute_service_id": "#);
    body.extend_from_slice(Value::from(compute_service_id).to_python_json().as_bytes());
    body.push(b'}');
    body
}

/// A result upload body (C14) for `blob` exactly as the Python compute client writes it
/// (before its gzip): the bytes codec with Python's `\u00XX` escapes.
pub fn python_upload_body(blob: &[u8], compute_service_id: &str) -> String {
    let codec = encode_bytes_codec(blob).to_python_json();
    format!("{{\"protocoldagresult\": {codec}, \"compute_service_id\": {}}}", Value::from(compute_service_id).to_python_json())
}

/// Decompress a zstd frame, refusing output larger than `limit`. A frame that records its
/// content size (as the clients' one-shot compressors write) is decompressed into exactly
/// that much memory.
pub fn zstd_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, PdrError> {
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(data) {
        if size > limit as u64 {
            return Err(PdrError::TooLarge(limit));
        }
        if let Ok(out) = zstd::bulk::decompress(data, size as usize) {
            if out.len() as u64 == size {
                return Ok(out);
            }
        }
    }
    let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| PdrError::Blob(e.to_string()))?;
    let mut out = Vec::new();
    decoder.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| PdrError::Blob(e.to_string()))?;
    if out.len() > limit {
        return Err(PdrError::TooLarge(limit));
    }
    Ok(out)
}

/// Decoded bytes handed on at a time by [`FrameDecoder`].
const FRAME_CHUNK: usize = 1 << 20;

/// One zstd frame decoded as its bytes arrive, into any writer: at most `limit` decoded
/// bytes, nothing after the end of the frame, and (at [`FrameDecoder::finish`]) a frame
/// that has ended. Memory is one chunk of output, whatever the frame's size.
pub struct FrameDecoder<W> {
    dec: Box<zstd::stream::raw::Decoder<'static>>,
    buf: Vec<u8>,
    out: W,
    total: usize,
    limit: usize,
    ended: bool,
}

impl<W: Write> FrameDecoder<W> {
    pub fn new(out: W, limit: usize) -> Result<FrameDecoder<W>, PdrError> {
        let dec = zstd::stream::raw::Decoder::new().map_err(|e| PdrError::Blob(e.to_string()))?;
        Ok(FrameDecoder { dec: Box::new(dec), buf: Vec::with_capacity(FRAME_CHUNK), out, total: 0, limit, ended: false })
    }

    /// Decode the next compressed bytes (any chunking), writing what they give.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), PdrError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut input = InBuffer::around(data);
        loop {
            if self.ended {
                if input.pos() < data.len() {
                    return Err(PdrError::Blob("data after the end of the zstd frame".into()));
                }
                return Ok(());
            }
            self.buf.clear();
            let hint = self.dec.run(&mut input, &mut OutBuffer::around(&mut self.buf)).map_err(|e| PdrError::Blob(e.to_string()))?;
            let produced = self.buf.len();
            if produced > 0 {
                self.total += produced;
                if self.total > self.limit {
                    return Err(PdrError::TooLarge(self.limit));
                }
                self.out.write_all(&self.buf).map_err(|e| write_error(e, self.limit))?;
            }
            if hint == 0 {
                self.ended = true;
            } else if input.pos() == data.len() && produced < self.buf.capacity() {
                // all input taken and the decoder is not holding back output
                return Ok(());
            }
        }
    }

    /// The frame is complete: the writer back.
    pub fn finish(mut self) -> Result<W, PdrError> {
        self.feed(&[])?;
        if !self.ended {
            return Err(PdrError::Blob("the zstd frame is truncated".into()));
        }
        Ok(self.out)
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// A writer's refusal as a result error (the skimmer's own reasons kept).
fn write_error(e: std::io::Error, limit: usize) -> PdrError {
    match e.get_ref().and_then(|x| x.downcast_ref::<json::SkimError>()) {
        Some(skim) => skim_error(skim, limit),
        None => PdrError::Blob(e.to_string()),
    }
}

fn skim_error(e: &json::SkimError, limit: usize) -> PdrError {
    match e {
        json::SkimError::TooLarge(_) => PdrError::TooLarge(limit),
        other => PdrError::Json(other.to_string()),
    }
}

/// Analysis of a result blob (a zstd frame of keyed-chain JSON) as its bytes arrive: the
/// frame is decompressed through [`json::SkimWriter`], so neither the blob nor its text
/// is ever held whole. [`read_result`] uses it for whole blobs; the server feeds it the
/// upload while the blob is being stored.
pub struct BlobAnalyser {
    frame: FrameDecoder<json::SkimWriter>,
}

impl BlobAnalyser {
    pub fn new(limit: usize) -> Result<BlobAnalyser, PdrError> {
        Ok(BlobAnalyser { frame: FrameDecoder::new(json::SkimWriter::new(SKIM_STRING_LIMIT, limit), limit)? })
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<(), PdrError> {
        self.frame.feed(data)
    }

    pub fn finish(self) -> Result<PdrSummary, PdrError> {
        let limit = self.frame.limit;
        let text = self.frame.finish()?.finish().map_err(|e| skim_error(&e, limit))?;
        summarise(&text)
    }
}

/// Parse skimmed keyed-chain text and analyse the ProtocolDAGResult in it.
fn summarise(text: &[u8]) -> Result<PdrSummary, PdrError> {
    let value = json::parse_skim(text, SKIM_STRING_LIMIT).map_err(|e| PdrError::Json(e.to_string()))?;
    let chain = KeyedChain::from_value(value).map_err(|e| PdrError::Chain(e.to_string()))?;
    analyse(&chain)
}

/// Compress with a one-shot compressor (level 3), which records the content size in the
/// frame header as the Python clients require.
pub fn zstd_compress(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).expect("zstd compression of an in-memory buffer")
}

/// True if `data` starts with the zstd frame magic number.
pub fn is_zstd(data: &[u8]) -> bool {
    data.starts_with(&[0x28, 0xB5, 0x2F, 0xFD])
}

/// Decode gufe's bytes codec object to the original bytes: latin-1 string → bytes, then one
/// zstd decompression (gufe ≥ 1.2 compresses in the codec; older gufe did not, so bytes
/// that are not a zstd frame are taken as they are).
pub fn decode_bytes_codec(v: &Value, limit: usize) -> Result<Vec<u8>, PdrError> {
    let o = v.as_object().ok_or(PdrError::NotBytes)?;
    if o.get("__class__").and_then(Value::as_str) != Some("bytes") {
        return Err(PdrError::NotBytes);
    }
    let s = o.get("latin-1").and_then(Value::as_str).ok_or(PdrError::NotBytes)?;
    let raw = latin1_to_bytes(s)?;
    if is_zstd(&raw) {
        if let Ok(inner) = zstd_decompress(&raw, limit) {
            return Ok(inner);
        }
    }
    Ok(raw)
}

/// gufe's bytes codec object for `data` (zstd-compressed inside, as gufe ≥ 1.2 writes it).
pub fn encode_bytes_codec(data: &[u8]) -> Value {
    Value::Object(object([
        ("__class__", Value::from("bytes")),
        ("__module__", Value::from("builtins")),
        (":is_custom:", Value::from(true)),
        ("latin-1", Value::from(bytes_to_latin1(&zstd_compress(data)))),
    ]))
}

/// String values longer than this are not kept when analysing a result (tracebacks are far
/// shorter).
pub const SKIM_STRING_LIMIT: usize = 8 << 20;

/// A result blob and what the server needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultBlob {
    /// What the object store keeps: a zstd frame of the keyed-chain JSON.
    pub blob: Vec<u8>,
    pub summary: PdrSummary,
}

/// Turn the decoded codec bytes into a stored blob and analyse it. Accepts a zstd frame of
/// keyed-chain JSON (what the 0.8 clients send) or plain keyed-chain JSON (normalised to a
/// blob).
pub fn read_result(bytes: Vec<u8>, limit: usize) -> Result<ResultBlob, PdrError> {
    // the analysis needs keys, references, source keys and tracebacks, never the bulk of
    // the outputs: long string values are skipped, not copied
    if is_zstd(&bytes) {
        if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(&bytes) {
            if size > limit as u64 {
                return Err(PdrError::TooLarge(limit));
            }
        }
        let mut analyser = BlobAnalyser::new(limit)?;
        analyser.feed(&bytes)?;
        Ok(ResultBlob { summary: analyser.finish()?, blob: bytes })
    } else {
        let summary = summarise(&bytes)?;
        Ok(ResultBlob { blob: zstd_compress(&bytes), summary })
    }
}

/// One failed unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFailure {
    /// The ProtocolUnitFailure's key.
    pub key: String,
    /// The ProtocolUnit it failed.
    pub source_key: String,
    pub traceback: String,
}

/// What the server reads from a ProtocolDAGResult.
#[derive(Debug, Clone, PartialEq)]
pub struct PdrSummary {
    pub key: GufeKey,
    pub ok: bool,
    pub transformation_key: Option<String>,
    pub extends_key: Option<String>,
    /// Failures in upstream's "DAG order" (dependencies first).
    pub failures: Vec<UnitFailure>,
}

impl PdrSummary {
    /// The Tracebacks record for this result, if it has failures.
    pub fn tracebacks(&self) -> Option<TracebacksFields> {
        if self.failures.is_empty() {
            return None;
        }
        Some(TracebacksFields {
            tracebacks: self.failures.iter().map(|f| f.traceback.clone()).collect(),
            source_keys: self.failures.iter().map(|f| f.source_key.clone()).collect(),
            failure_keys: self.failures.iter().map(|f| f.key.clone()).collect(),
        })
    }
}

fn refs_of(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| as_reference(x).and_then(Value::as_str).map(str::to_string)).collect()).unwrap_or_default()
}

fn opt_str(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// Dependencies of a unit result: references found in its `inputs` values, in dicts one
/// level down and in lists one level down (gufe's `_list_dependencies`), that are unit
/// results of this DAG.
fn dependencies(inputs: Option<&Value>, results: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut take = |v: &Value| {
        if let Some(k) = as_reference(v).and_then(Value::as_str) {
            if results.contains(k) {
                out.push(k.to_string());
            }
        }
    };
    if let Some(o) = inputs.and_then(Value::as_object) {
        for (_, v) in o.iter() {
            match v {
                Value::Object(inner) if as_reference(v).is_none() => inner.iter().for_each(|(_, x)| take(x)),
                Value::Array(items) => items.iter().for_each(&mut take),
                other => take(other),
            }
        }
    }
    out
}

/// Analyse a ProtocolDAGResult chain: success (every unit has at least one successful
/// result) and the failures in the order upstream gives them — the reverse of networkx's
/// lexicographic topological sort (by key) of the result graph whose edges point from a
/// result to the results it depends on.
pub fn analyse(chain: &KeyedChain) -> Result<PdrSummary, PdrError> {
    let root = chain.root();
    if root.qualname() != "ProtocolDAGResult" {
        return Err(PdrError::Structure(format!("root object is a {}, not a ProtocolDAGResult", root.qualname())));
    }
    let units = refs_of(root.dict.get("protocol_units").unwrap_or(&Value::Null));
    let results = refs_of(root.dict.get("protocol_unit_results").unwrap_or(&Value::Null));
    let result_set: HashSet<String> = results.iter().cloned().collect();
    let unit_set: HashSet<&str> = units.iter().map(String::as_str).collect();

    let mut succeeded: HashSet<String> = HashSet::new();
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut failures: HashMap<String, UnitFailure> = HashMap::new();
    for r in &results {
        let key = GufeKey::new(r).map_err(|e| PdrError::Structure(e.to_string()))?;
        let entry = chain.get(&key).ok_or_else(|| PdrError::Structure(format!("unit result {r} is not in the chain")))?;
        let source =
            opt_str(entry.dict.get("source_key")).ok_or_else(|| PdrError::Structure(format!("unit result {r} has no source_key")))?;
        if !unit_set.contains(source.as_str()) {
            return Err(PdrError::Structure(format!("unit result {r} names unknown unit {source}")));
        }
        deps.insert(r.clone(), dependencies(entry.dict.get("inputs"), &result_set));
        if entry.qualname() == "ProtocolUnitFailure" {
            let traceback = opt_str(entry.dict.get("traceback")).unwrap_or_default();
            failures.insert(r.clone(), UnitFailure { key: r.clone(), source_key: source, traceback });
        } else {
            succeeded.insert(source);
        }
    }
    let ok = units.iter().all(|u| succeeded.contains(u));

    // networkx.lexicographical_topological_sort over edges result -> dependency
    let mut indegree: HashMap<&str, usize> = results.iter().map(|r| (r.as_str(), 0)).collect();
    for ds in deps.values() {
        for d in ds {
            *indegree.entry(d.as_str()).or_default() += 1;
        }
    }
    let mut heap: BinaryHeap<Reverse<&str>> = indegree.iter().filter(|(_, n)| **n == 0).map(|(k, _)| Reverse(*k)).collect();
    let mut order: Vec<&str> = Vec::with_capacity(results.len());
    while let Some(Reverse(k)) = heap.pop() {
        order.push(k);
        for d in deps.get(k).map(Vec::as_slice).unwrap_or_default() {
            let n = indegree.get_mut(d.as_str()).expect("counted");
            *n -= 1;
            if *n == 0 {
                heap.push(Reverse(d.as_str()));
            }
        }
    }
    if order.len() != indegree.len() {
        return Err(PdrError::Structure("unit results depend on each other in a cycle".into()));
    }
    let ordered_failures = order.iter().rev().filter_map(|k| failures.remove(*k)).collect();
    Ok(PdrSummary {
        key: root.key.clone(),
        ok,
        transformation_key: opt_str(root.dict.get("transformation_key")),
        extends_key: opt_str(root.dict.get("extends_key")),
        failures: ordered_failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_strings_decode_back() {
        // every byte value, then random bytes split anywhere: JSON whose string is the
        // bytes as code points, as compact as JSON allows
        let random = crate::synthetic::random_bytes(100_000, 0x9E37_79B9_7F4A_7C15);
        for bytes in [(0..=255u8).collect::<Vec<u8>>(), random] {
            let mut out = b"[\"".to_vec();
            for part in bytes.chunks(999) {
                push_latin1_json(part, &mut out);
            }
            out.extend_from_slice(b"\"]");
            let s: Vec<String> = serde_json::from_slice(&out).unwrap();
            assert_eq!(s[0], bytes_to_latin1(&bytes));
            let escapes = bytes.iter().filter(|&&b| b < 0x20).count();
            let quoted = bytes.iter().filter(|&&b| b == b'"' || b == b'\\').count();
            let high = bytes.iter().filter(|&&b| b >= 0x80).count();
            assert_eq!(out.len(), 4 + bytes.len() + 5 * escapes + quoted + high, "nothing longer than needed");
            // the same in one call (many blocks of room reserved on the way)
            let mut whole = b"[\"".to_vec();
            push_latin1_json(&bytes, &mut whole);
            whole.extend_from_slice(b"\"]");
            assert!(whole == out);
        }
    }

    #[test]
    fn compact_upload_bodies_decode_to_their_blob() {
        let blob = zstd_compress(b"[[\"ProtocolDAGResult-1\", {}]]");
        let body = upload_body(&blob, "svc-\"1\"");
        let mut d = crate::upload::UploadDecoder::new(1 << 20);
        d.feed(&body).unwrap();
        let up = d.finish().unwrap();
        assert_eq!(up.payload, blob);
        assert_eq!(up.compute_service_id, "svc-\"1\"");
        // and it is JSON that says the same as the Python client's body
        let ours: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let python = python_upload_body(&blob, "svc-\"1\"");
        assert!(python.contains(r#""compute_service_id": "svc-\"1\"""#), "{python}");
        assert_eq!(ours, serde_json::from_str::<serde_json::Value>(&python).unwrap());
    }

    fn vector(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../../testdata/vectors/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn vector_results_analyse() {
        let ok = read_result(vector("pdr_ok.json.zst"), 1 << 30).unwrap();
        assert!(ok.summary.ok);
        assert_eq!(ok.summary.key.as_str(), "ProtocolDAGResult-431053ff2cb0be37617ba500fad97e3d");
        assert_eq!(ok.summary.transformation_key.as_deref(), Some("Transformation-3c2debf79f5ad85b0bcb6b86e7c390f5"));
        assert!(ok.summary.failures.is_empty() && ok.summary.tracebacks().is_none());
        assert_eq!(ok.blob, vector("pdr_ok.json.zst"), "the blob is stored unchanged");

        let failed = read_result(vector("pdr_failure.json.zst"), 1 << 30).unwrap();
        assert!(!failed.summary.ok);
        assert_eq!(failed.summary.key.as_str(), "ProtocolDAGResult-bf059af51fa6b9a88a2bbc375a450d89");
        let tb = failed.summary.tracebacks().unwrap();
        assert!(!tb.tracebacks.is_empty());
        assert!(tb.tracebacks.iter().all(|t| t.contains("Traceback")), "{:?}", tb.tracebacks);
        assert_eq!(tb.source_keys.len(), tb.failure_keys.len());

        // plain JSON is normalised to a blob with the same analysis
        let text = std::fs::read(format!("{}/../../testdata/vectors/pdr_ok.keyed_chain.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let plain = read_result(text.clone(), 1 << 30).unwrap();
        assert_eq!(plain.summary, ok.summary);
        assert_eq!(zstd::bulk::decompress(&plain.blob, text.len()).unwrap(), text, "content size is in the frame header");
    }

    #[test]
    fn frames_decode_in_any_chunking_and_refuse_what_they_should() {
        // several output chunks, so the decoder must flush what it holds after the input
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let frame = zstd_compress(&data);
        for chunk in [1usize, 7, 4096, 1 << 20, frame.len()] {
            let mut d = FrameDecoder::new(Vec::new(), 1 << 30).unwrap();
            for c in frame.chunks(chunk) {
                d.feed(c).unwrap();
            }
            assert!(d.finish().unwrap() == data, "chunk {chunk}");
        }
        let mut d = FrameDecoder::new(Vec::new(), 1 << 30).unwrap();
        d.feed(&frame[..frame.len() - 1]).unwrap();
        assert!(matches!(d.finish(), Err(PdrError::Blob(m)) if m.contains("truncated")));
        let mut d = FrameDecoder::new(Vec::new(), 1 << 30).unwrap();
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(matches!(d.feed(&trailing), Err(PdrError::Blob(m)) if m.contains("after the end")));
        let mut d = FrameDecoder::new(Vec::new(), data.len() - 1).unwrap();
        assert_eq!(d.feed(&frame).unwrap_err(), PdrError::TooLarge(data.len() - 1));
        assert!(FrameDecoder::new(Vec::new(), 1 << 30).unwrap().feed(b"not zstd at all").is_err());
    }

    #[test]
    fn streamed_analysis_agrees_with_whole_blobs() {
        for name in ["pdr_ok.json.zst", "pdr_failure.json.zst"] {
            let blob = vector(name);
            let whole = read_result(blob.clone(), 1 << 30).unwrap();
            let mut a = BlobAnalyser::new(1 << 30).unwrap();
            for c in blob.chunks(3) {
                a.feed(c).unwrap();
            }
            assert_eq!(a.finish().unwrap(), whole.summary, "{name}");
        }
        // the text limit holds for streamed blobs too
        let blob = vector("pdr_ok.json.zst");
        let mut a = BlobAnalyser::new(100).unwrap();
        assert_eq!(a.feed(&blob).unwrap_err(), PdrError::TooLarge(100));
    }

    #[test]
    fn client_upload_vector_decodes() {
        let gz = vector("C14_set_task_result.request.gz");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
        let body = json::parse(&text).unwrap();
        let bytes = decode_bytes_codec(body.get("protocoldagresult").unwrap(), 1 << 30).unwrap();
        assert_eq!(bytes, vector("pdr_ok.json.zst"), "codec layer removed, blob as the client compressed it");
        assert_eq!(body.get("compute_service_id").unwrap().as_str(), Some("vecservice-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"));
    }

    #[test]
    fn in_place_latin1() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(latin1_string_into_bytes(bytes_to_latin1(&all)).unwrap(), all);
        assert_eq!(latin1_string_into_bytes("\u{100}".into()).unwrap_err(), PdrError::NotLatin1);
        assert_eq!(latin1_string_into_bytes("a€".into()).unwrap_err(), PdrError::NotLatin1);
    }

    #[test]
    fn codec_round_trip_and_errors() {
        let data = b"\x00\x01hello\xff".to_vec();
        let v = encode_bytes_codec(&data);
        assert_eq!(decode_bytes_codec(&v, 1 << 20).unwrap(), data);
        // older gufe: raw bytes, not compressed
        let raw = Value::Object(object([("__class__", Value::from("bytes")), ("latin-1", Value::from(bytes_to_latin1(&data)))]));
        assert_eq!(decode_bytes_codec(&raw, 1 << 20).unwrap(), data);
        assert_eq!(decode_bytes_codec(&Value::from("x"), 10).unwrap_err(), PdrError::NotBytes);
        let wide = Value::Object(object([("__class__", Value::from("bytes")), ("latin-1", Value::from("\u{100}"))]));
        assert_eq!(decode_bytes_codec(&wide, 10).unwrap_err(), PdrError::NotLatin1);
        // bad zstd, wrong frames, bombs
        assert!(read_result(vec![0x28, 0xB5, 0x2F, 0xFD, 1, 2, 3], 1 << 20).is_err());
        let bomb = zstd_compress(&vec![b' '; 1 << 20]);
        assert_eq!(read_result(bomb, 1000).unwrap_err(), PdrError::TooLarge(1000));
        assert!(matches!(read_result(b"[1, 2]".to_vec(), 100).unwrap_err(), PdrError::Chain(_)));
        let not_pdr = br#"[["A-1", {"__qualname__": "A", "__module__": "m"}]]"#.to_vec();
        assert!(matches!(read_result(not_pdr, 1000).unwrap_err(), PdrError::Structure(_)));
    }

    #[test]
    fn failure_order_follows_networkx() {
        // results: a (ok) <- b (fail, depends on a) <- c (fail, depends on b); d (fail, independent)
        let m = r#""__module__": "gufe.protocols.protocolunit""#;
        let unit = |k: &str| format!(r#"["{k}", {{"__qualname__": "U", "__module__": "m"}}]"#);
        let res = |k: &str, q: &str, src: &str, inputs: &str| {
            format!(r#"["{k}", {{"__qualname__": "{q}", {m}, "source_key": "{src}", "inputs": {inputs}, "traceback": "tb-{k}"}}]"#)
        };
        let text = format!(
            r#"[{}, {}, {}, {}, {}, {}, {}, {},
               ["ProtocolDAGResult-1", {{"__qualname__": "ProtocolDAGResult", "__module__": "m", "protocol_units": [{{":gufe-key:": "U-a"}}, {{":gufe-key:": "U-b"}}, {{":gufe-key:": "U-c"}}, {{":gufe-key:": "U-d"}}],
                 "protocol_unit_results": [{{":gufe-key:": "ProtocolUnitFailure-d"}}, {{":gufe-key:": "ProtocolUnitFailure-c"}}, {{":gufe-key:": "ProtocolUnitResult-a"}}, {{":gufe-key:": "ProtocolUnitFailure-b"}}],
                 "transformation_key": "Transformation-x", "extends_key": null}}]]"#,
            unit("U-a"),
            unit("U-b"),
            unit("U-c"),
            unit("U-d"),
            res("ProtocolUnitResult-a", "ProtocolUnitResult", "U-a", "{}"),
            res("ProtocolUnitFailure-b", "ProtocolUnitFailure", "U-b", r#"{"x": {":gufe-key:": "ProtocolUnitResult-a"}}"#),
            res("ProtocolUnitFailure-c", "ProtocolUnitFailure", "U-c", r#"{"l": [{":gufe-key:": "ProtocolUnitFailure-b"}], "s": 3}"#),
            res("ProtocolUnitFailure-d", "ProtocolUnitFailure", "U-d", "{}"),
        );
        let s = analyse(&KeyedChain::from_value(json::parse(&text).unwrap()).unwrap()).unwrap();
        assert!(!s.ok);
        // lexicographic topological order (dependents first, smallest key among the
        // available): c, b, d, a → reversed: a, d, b, c → failures d, b, c
        let keys: Vec<&str> = s.failures.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["ProtocolUnitFailure-d", "ProtocolUnitFailure-b", "ProtocolUnitFailure-c"]);
        assert_eq!(s.failures[0].traceback, "tb-ProtocolUnitFailure-d");
    }
}
