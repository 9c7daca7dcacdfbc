//! Tests of the upload decoder: every chunking and split of a body gives the same bytes,
//! the fast paths agree with the plain byte loop on any input, and bad bodies are refused.

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
            let mut o = String::from("{\"compute_service_id\": \"svc-1\", \"protocoldagresult\": {\"__class__\": \"bytes\", \"latin-1\": ");
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
    let body = format!("{{\"protocoldagresult\": {{\"__class__\": \"bytes\", \"latin-1\": \"{text}\"}}, \"compute_service_id\": \"s\"}}");
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
            let body =
                format!("{{\"protocoldagresult\": {{\"__class__\": \"bytes\", \"latin-1\": \"{bad}\"}}, \"compute_service_id\": \"s\"}}");
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
