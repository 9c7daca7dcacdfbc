//! Skimming JSON text as it streams by: [`SkimWriter`] copies a document, replacing very
//! long strings with `""`, so a large document whose bulk lives in a few long strings (a
//! ProtocolDAGResult's outputs) can be analysed without ever holding its text.
//!
//! The copy is then read with [`super::parse_skim`] at the same limit, which gives what
//! the whole text would have given: the parser empties strings whose *decoded* length
//! passes the limit, and the writer drops a string once a lower bound of its decoded
//! length passes it (every escape is at most six bytes and decodes to at least one, every
//! other byte to exactly one), so it drops only strings the parser would have emptied;
//! strings it keeps are left to the parser. Inside a dropped string the writer checks
//! what the parser would have — control characters, escapes, UTF-8 — so a malformed
//! document is still refused. One case is refused outright: a dropped string used as an
//! object key (`parse_skim` keeps keys), which takes a key longer than the limit.

use std::io;

/// Why a skimmed document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkimError {
    #[error("JSON text exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error("{message} (at byte {offset})")]
    Invalid { offset: usize, message: &'static str },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Outside,
    /// Inside a string; `start` is the position in `out` just after its opening quote.
    /// `raw` bytes of content so far, `escapes` of them starting an escape.
    String {
        start: usize,
        dropping: bool,
        raw: usize,
        escapes: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    /// Hex digits of a `\uXXXX` escape still expected.
    Hex(u8),
}

/// An [`io::Write`] sink: write the document in any chunking, then [`SkimWriter::finish`].
pub struct SkimWriter {
    out: Vec<u8>,
    max_string: usize,
    limit: usize,
    seen: usize,
    state: State,
    esc: Esc,
    /// The tail of a dropped string's last chunk that may be an incomplete UTF-8 sequence.
    utf8_carry: Vec<u8>,
    /// A string was just dropped: it must not turn out to be an object key.
    check_key: bool,
    error: Option<SkimError>,
}

impl SkimWriter {
    /// Skim for [`super::parse_skim`] at `max_string`; refuse documents longer than
    /// `limit` bytes.
    pub fn new(max_string: usize, limit: usize) -> SkimWriter {
        SkimWriter {
            out: Vec::new(),
            max_string,
            limit,
            seen: 0,
            state: State::Outside,
            esc: Esc::None,
            utf8_carry: Vec::new(),
            check_key: false,
            error: None,
        }
    }

    /// The skimmed text (to be read with [`super::parse_skim`]).
    pub fn finish(self) -> Result<Vec<u8>, SkimError> {
        match self.error {
            Some(e) => Err(e),
            // an unterminated string is left for the parser to report
            None => Ok(self.out),
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), SkimError> {
        let base = self.seen;
        self.seen += data.len();
        if self.seen > self.limit {
            return Err(SkimError::TooLarge(self.limit));
        }
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Outside => {
                    let rest = &data[i..];
                    if self.check_key {
                        match rest.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
                            None => {
                                self.out.extend_from_slice(rest);
                                return Ok(());
                            }
                            Some(j) if rest[j] == b':' => {
                                return Err(SkimError::Invalid { offset: base + i + j, message: "object key longer than the skim limit" })
                            }
                            Some(_) => self.check_key = false,
                        }
                    }
                    match memchr::memchr(b'"', rest) {
                        None => {
                            self.out.extend_from_slice(rest);
                            i = data.len();
                        }
                        Some(j) => {
                            self.out.extend_from_slice(&rest[..=j]);
                            i += j + 1;
                            self.state = State::String { start: self.out.len(), dropping: false, raw: 0, escapes: 0 };
                            self.esc = Esc::None;
                        }
                    }
                }
                State::String { start, mut dropping, mut raw, mut escapes } => {
                    let rest = &data[i..];
                    // the part of `rest` inside the string, whether the string ends here,
                    // and how many escapes started in that part
                    let (inside, ends, started) = self.scan(rest, base + i)?;
                    raw += inside;
                    escapes += started;
                    if !dropping && decoded_at_least(raw, escapes) > self.max_string {
                        dropping = true;
                        // what was copied so far goes, but still has to be valid
                        check_dropped(&mut self.utf8_carry, &self.out[start..], true, base + i)?;
                        self.out.truncate(start);
                        check_dropped(&mut self.utf8_carry, &rest[..inside], ends.is_none(), base + i)?;
                    } else if dropping {
                        check_dropped(&mut self.utf8_carry, &rest[..inside], ends.is_none(), base + i)?;
                    } else {
                        self.out.extend_from_slice(&rest[..inside]);
                    }
                    match ends {
                        None => {
                            self.state = State::String { start, dropping, raw, escapes };
                            i = data.len();
                        }
                        Some(_) => {
                            if dropping && !self.utf8_carry.is_empty() {
                                return Err(SkimError::Invalid { offset: base + i + inside, message: "invalid UTF-8 in string" });
                            }
                            self.out.push(b'"');
                            i += inside + 1;
                            self.check_key = dropping;
                            self.state = State::Outside;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Scan string content at the start of `data` (continuing the escape state): returns
    /// how many bytes belong to the string and `Some(())` if its closing quote follows.
    fn scan(&mut self, data: &[u8], offset: usize) -> Result<(usize, Option<()>, usize), SkimError> {
        let bad = |at: usize, message: &'static str| SkimError::Invalid { offset: offset + at, message };
        let mut i = 0;
        let mut escapes = 0;
        while i < data.len() {
            match self.esc {
                Esc::None => match memchr::memchr2(b'"', b'\\', &data[i..]) {
                    None => return Ok((data.len(), None, escapes)),
                    Some(j) => {
                        i += j;
                        if data[i] == b'"' {
                            return Ok((i, Some(()), escapes));
                        }
                        self.esc = Esc::Backslash;
                        escapes += 1;
                        i += 1;
                    }
                },
                Esc::Backslash => {
                    self.esc = match data[i] {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Esc::None,
                        b'u' => Esc::Hex(4),
                        _ => return Err(bad(i, "invalid \\escape")),
                    };
                    i += 1;
                }
                Esc::Hex(n) => {
                    if !data[i].is_ascii_hexdigit() {
                        return Err(bad(i, "invalid \\uXXXX escape"));
                    }
                    self.esc = if n == 1 { Esc::None } else { Esc::Hex(n - 1) };
                    i += 1;
                }
            }
        }
        Ok((data.len(), None, escapes))
    }
}

/// Checks on the content of a dropped string that the parser would have made:
/// no control characters, valid UTF-8 (a sequence may continue in the next chunk when
/// `more` is true). Escapes are checked by `SkimWriter::scan`.
fn check_dropped(utf8_carry: &mut Vec<u8>, content: &[u8], more: bool, offset: usize) -> Result<(), SkimError> {
    // blocks without an early exit, which the compiler vectorises; the exact position
    // only when there is one
    if content.chunks(64).any(|block| block.iter().fold(false, |found, &b| found | (b < 0x20))) {
        let j = content.iter().position(|&b| b < 0x20).expect("a control character was found");
        return Err(SkimError::Invalid { offset: offset + j, message: "invalid control character in string" });
    }
    let joined;
    let text: &[u8] = if utf8_carry.is_empty() {
        content
    } else {
        joined = [std::mem::take(utf8_carry).as_slice(), content].concat();
        &joined
    };
    match std::str::from_utf8(text) {
        Ok(_) => Ok(()),
        // an incomplete sequence at the very end may finish in the next chunk
        Err(e) if more && e.error_len().is_none() => {
            *utf8_carry = text[e.valid_up_to()..].to_vec();
            Ok(())
        }
        Err(_) => Err(SkimError::Invalid { offset, message: "invalid UTF-8 in string" }),
    }
}

/// A lower bound of a string's decoded length (UTF-8 bytes) from its escaped length and
/// the escapes in it: every escape is at most six bytes and decodes to at least one, every
/// other byte to one.
fn decoded_at_least(raw: usize, escapes: usize) -> usize {
    escapes.max(raw.saturating_sub(5 * escapes))
}

impl io::Write for SkimWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.error {
            return Err(io::Error::other(e.clone()));
        }
        if let Err(e) = self.feed(data) {
            self.error = Some(e.clone());
            return Err(io::Error::other(e));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::json::parse_skim;

    fn skim(text: &[u8], max: usize, chunk: usize) -> Result<Vec<u8>, SkimError> {
        let mut w = SkimWriter::new(max, usize::MAX);
        for c in text.chunks(chunk.max(1)) {
            if w.write_all(c).is_err() {
                break;
            }
        }
        w.finish()
    }

    /// In any chunking, skimming then parsing gives what parsing the whole text gives.
    #[test]
    fn same_tree_as_parse_skim_in_any_chunking() {
        let long = "x".repeat(40);
        let escaped = "\\u00e9\\n\\\"".repeat(10);
        let text = format!(
            "{{\"a\": \"{long}\", \"b\": [1, 2.5, NaN, \"short\", \"{escaped}\"], \"caf\\u00e9\": {{\"k\": \"é{long}\"}}, \"n\": null}}"
        );
        // (limits under the longest key's length are refused: see below)
        for max in [7, 9, 16, 17, 29, 30, 31, 39, 40, 41, 1000] {
            let expected = parse_skim(text.as_bytes(), max).unwrap().to_python_json();
            for chunk in [1, 2, 3, 7, 64, text.len()] {
                let skimmed = skim(text.as_bytes(), max, chunk).unwrap();
                assert!(skimmed.len() <= text.len());
                let got = parse_skim(&skimmed, max).unwrap().to_python_json();
                assert_eq!(got, expected, "max {max}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_long_string_is_never_held() {
        // a plain string is dropped once it passes the limit, not at six times it
        let text = format!("{{\"bulk\": \"{}\", \"k\": 1}}", "y".repeat(1 << 20));
        let out = skim(text.as_bytes(), 1000, 64 << 10).unwrap();
        assert_eq!(out, b"{\"bulk\": \"\", \"k\": 1}");
        assert!(out.capacity() < 128 << 10, "held {} bytes", out.capacity());
    }

    #[test]
    fn malformed_dropped_strings_are_refused() {
        let cases: [&[u8]; 5] = [
            b"{\"a\": \"0123456789\x01\"}",
            b"{\"a\": \"0123456789\\q\"}",
            b"{\"a\": \"0123456789\\u12g4\"}",
            b"{\"a\": \"0123456789\xff\"}",
            b"{\"a\": \"0123456789\xc3\"}",
        ];
        // (limit 1: every string here is dropped, and checked)
        for case in cases {
            for chunk in [1, 3, case.len()] {
                let r = skim(case, 1, chunk);
                assert!(matches!(r, Err(SkimError::Invalid { .. })), "{:?} chunk {chunk}: {r:?}", String::from_utf8_lossy(case));
            }
        }
        // a valid two-byte character split across chunks is fine
        assert!(skim("{\"a\": \"0123456789é\"}".as_bytes(), 1, 1).is_ok());
        // a control character deep in a long string is found at its offset, in any chunking
        let mut text = b"{\"a\": \"".to_vec();
        text.extend(std::iter::repeat_n(b'x', 300));
        let at = text.len() - 123;
        text[at] = 0x1F;
        text.extend_from_slice(b"\"}");
        for chunk in [1, 7, 64, 100, text.len()] {
            let r = skim(&text, 10, chunk);
            assert!(matches!(r, Err(SkimError::Invalid { offset, .. }) if offset == at), "chunk {chunk}: {r:?}");
        }
    }

    #[test]
    fn a_long_key_and_the_limit_are_refused() {
        assert!(matches!(skim(b"{\"0123456789\" : 1}", 1, 3), Err(SkimError::Invalid { .. })));
        let mut w = SkimWriter::new(1, 10);
        assert!(w.write_all(b"[\"0123456789\"]").is_err());
        assert_eq!(w.finish(), Err(SkimError::TooLarge(10)));
    }
}
