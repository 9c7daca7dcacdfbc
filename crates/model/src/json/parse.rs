//! Parser for Python's JSON dialect (see the module documentation of `json`).

use std::fmt;

use super::{Number, Object, Value};

/// Deepest nesting of arrays/objects accepted (gufe payloads nest a few dozen levels).
pub const MAX_DEPTH: usize = 512;
/// CPython refuses to convert integers longer than this (`sys.int_info.default_max_str_digits`).
pub const MAX_INT_DIGITS: usize = 4300;

/// Where and why parsing failed. Positions are 1-based, columns count characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    pub line: usize,
    pub column: usize,
    /// Byte offset into the input.
    pub offset: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: line {} column {} (char {})", self.message, self.line, self.column, self.offset)
    }
}
impl std::error::Error for ParseError {}

/// Parse UTF-8 bytes (invalid UTF-8 is an error).
pub fn parse_bytes(input: &[u8]) -> Result<Value, ParseError> {
    match std::str::from_utf8(input) {
        Ok(s) => parse(s),
        Err(e) => {
            let offset = e.valid_up_to();
            let mut p = Parser { text: "", src: input, pos: offset, depth: 0, max_string: usize::MAX };
            p.pos = offset;
            Err(p.error("Invalid UTF-8 in input"))
        }
    }
}

/// Parse one JSON document (surrounding whitespace allowed, nothing else).
pub fn parse(input: &str) -> Result<Value, ParseError> {
    parse_with(input, usize::MAX)
}

/// Parse, but keep string *values* longer than `max_string` bytes only as empty strings
/// (object keys are always kept). The whole input is still validated; nothing long is
/// copied. For reading the structure of large documents whose bulk the caller does not
/// need (e.g. analysing a ProtocolDAGResult while its blob is stored as it came).
pub fn parse_skim(input: &[u8], max_string: usize) -> Result<Value, ParseError> {
    let input = std::str::from_utf8(input).map_err(|e| {
        let p = Parser { text: "", src: input, pos: e.valid_up_to(), depth: 0, max_string };
        p.error("Invalid UTF-8 in input")
    })?;
    parse_with(input, max_string)
}

fn parse_with(input: &str, max_string: usize) -> Result<Value, ParseError> {
    let mut p = Parser { text: input, src: input.as_bytes(), pos: 0, depth: 0, max_string };
    p.skip_ws();
    let v = p.value()?;
    p.skip_ws();
    if p.pos != p.src.len() {
        return Err(p.error("Extra data"));
    }
    Ok(v)
}

struct Parser<'a> {
    /// The input (valid UTF-8); `src` is the same bytes.
    text: &'a str,
    src: &'a [u8],
    pos: usize,
    depth: usize,
    /// String values longer than this are kept as empty strings (see [`parse_skim`]).
    max_string: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, message: &str) -> ParseError {
        let upto = &self.src[..self.pos.min(self.src.len())];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = upto.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
        let column = String::from_utf8_lossy(&upto[line_start..]).chars().count() + 1;
        ParseError { message: message.to_string(), line, column, offset: self.pos }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat_literal(&mut self, lit: &[u8]) -> bool {
        if self.src[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => Ok(Value::String(self.string_limited(self.max_string)?)),
            Some(b'n') if self.eat_literal(b"null") => Ok(Value::Null),
            Some(b't') if self.eat_literal(b"true") => Ok(Value::Bool(true)),
            Some(b'f') if self.eat_literal(b"false") => Ok(Value::Bool(false)),
            Some(b'N') if self.eat_literal(b"NaN") => Ok(Value::Number(Number::NaN)),
            Some(b'I') if self.eat_literal(b"Infinity") => Ok(Value::Number(Number::Infinity)),
            Some(b'-') if self.src[self.pos..].starts_with(b"-Infinity") => {
                self.pos += 9;
                Ok(Value::Number(Number::NegInfinity))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("Expecting value")),
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("JSON nested too deeply"));
        }
        Ok(())
    }

    fn array(&mut self) -> Result<Value, ParseError> {
        self.enter()?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.error("Expecting ',' delimiter")),
            }
        }
        self.depth -= 1;
        Ok(Value::Array(items))
    }

    fn object(&mut self) -> Result<Value, ParseError> {
        self.enter()?;
        self.pos += 1; // '{'
        let mut entries: Vec<(String, Value)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Object(Object::new()));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("Expecting property name enclosed in double quotes"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.error("Expecting ':' delimiter"));
            }
            self.pos += 1;
            self.skip_ws();
            let v = self.value()?;
            entries.push((key, v));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.error("Expecting ',' delimiter")),
            }
        }
        self.depth -= 1;
        Ok(Value::Object(Object::from_entries_dedup(entries)))
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self.src.get(self.pos..self.pos + 4).ok_or_else(|| self.error("Invalid \\uXXXX escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let x = (d as char).to_digit(16).ok_or_else(|| self.error("Invalid \\uXXXX escape"))?;
            v = v * 16 + x;
        }
        self.pos += 4;
        Ok(v)
    }

    /// A string literal. With `limit`, a string longer than it comes back empty and is
    /// not accumulated past the limit (it is still fully validated).
    fn string_limited(&mut self, limit: usize) -> Result<String, ParseError> {
        let start_quote = self.pos;
        self.pos += 1; // '"'
        let mut out = Acc { out: String::new(), limit, over: false };
        loop {
            // fast path: copy a run of ordinary characters
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            if self.pos > run_start {
                // runs start and stop at ASCII bytes, so these are char boundaries of `text`
                out.push_str(&self.text[run_start..self.pos]);
            }
            match self.peek() {
                None => {
                    self.pos = start_quote;
                    return Err(self.error("Unterminated string starting at"));
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out.out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.peek().ok_or_else(|| self.error("Unterminated string"))?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.src[self.pos..].starts_with(b"\\u") {
                                    return Err(self.error("Lone UTF-16 surrogate in \\u escape is not supported"));
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.error("Lone UTF-16 surrogate in \\u escape is not supported"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.error("Lone UTF-16 surrogate in \\u escape is not supported"));
                            } else {
                                hi
                            };
                            out.push(char::from_u32(cp).ok_or_else(|| self.error("Invalid \\uXXXX escape"))?);
                        }
                        _ => {
                            self.pos -= 2;
                            return Err(self.error("Invalid \\escape"));
                        }
                    }
                }
                Some(_) => return Err(self.error("Invalid control character in string")),
            }
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.string_limited(usize::MAX)
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            _ => {
                self.pos = start;
                return Err(self.error("Expecting value"));
            }
        }
        let int_digits = self.pos - int_start;
        let mut is_float = false;
        if self.peek() == Some(b'.') && matches!(self.src.get(self.pos + 1), Some(b'0'..=b'9')) {
            is_float = true;
            self.pos += 1;
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            let save = self.pos;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if matches!(self.peek(), Some(b'0'..=b'9')) {
                is_float = true;
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            } else {
                // like Python: the number ends before the 'e'; the caller then sees junk
                self.pos = save;
            }
        }
        let text = std::str::from_utf8(&self.src[start..self.pos]).expect("ascii");
        if is_float {
            Ok(Value::Number(Number::Float(text.into())))
        } else {
            if int_digits > super::MAX_INT_DIGITS {
                self.pos = start;
                return Err(self.error("Integer literal exceeds the limit of 4300 digits"));
            }
            Ok(Value::Number(Number::Int(text.into())))
        }
    }
}

/// A string being accumulated up to a limit; past it, nothing more is kept and the result
/// is empty.
struct Acc {
    out: String,
    limit: usize,
    over: bool,
}

impl Acc {
    fn push_str(&mut self, s: &str) {
        if self.over {
            return;
        }
        if self.out.len() + s.len() > self.limit {
            self.over = true;
            self.out = String::new();
            return;
        }
        self.out.push_str(s);
    }

    fn push(&mut self, c: char) {
        let mut buf = [0u8; 4];
        self.push_str(c.encode_utf8(&mut buf));
    }
}
