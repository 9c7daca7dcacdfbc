//! gufe JSON: Python's JSON dialect, losslessly.
//!
//! gufe payloads are produced by CPython's `json.dumps` with gufe's encoder. That dialect
//! differs from RFC 8259 in ways `serde_json` cannot carry:
//!
//! * bare `NaN`, `Infinity` and `-Infinity` number tokens;
//! * integers of any size (Python ints), which must come back digit for digit;
//! * gufe keys are MD5 hashes of Python's exact text (`sort_keys=True`, `", "`/`": "`
//!   separators, `repr(float)` formatting, ASCII escapes with lowercase hex), so we need a
//!   writer that reproduces it byte for byte.
//!
//! [`Value`] keeps numbers as their source text ([`Number`]), objects in insertion order,
//! and never routes a value through `f64`/`i64` unless a caller asks for one. Parsing
//! follows Python's `json.loads` (strict mode: no raw control characters in strings;
//! duplicate object keys keep the first position and the last value) with two deliberate
//! limits: nesting deeper than [`MAX_DEPTH`] and lone UTF-16 surrogates are rejected with
//! a clear error instead of overflowing the stack or producing invalid UTF-8.

mod de;
mod float;
mod parse;
mod skim;
mod write;

pub use de::{from_value, DeError};
pub use float::python_float_repr;
pub use parse::{parse, parse_bytes, parse_skim, ParseError, MAX_DEPTH, MAX_INT_DIGITS};
pub use skim::{SkimError, SkimWriter};

use std::collections::HashMap;

/// A JSON number as it appeared in the source, or one of Python's non-finite tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum Number {
    /// An integer literal (no fraction, no exponent), any size; the exact source text.
    Int(Box<str>),
    /// A number with a fraction and/or exponent; the exact source text.
    Float(Box<str>),
    NaN,
    Infinity,
    NegInfinity,
}

impl Number {
    /// The number from an `f64`, written as Python's `json.dumps` would.
    pub fn from_f64(f: f64) -> Number {
        if f.is_nan() {
            Number::NaN
        } else if f == f64::INFINITY {
            Number::Infinity
        } else if f == f64::NEG_INFINITY {
            Number::NegInfinity
        } else {
            Number::Float(python_float_repr(f).into())
        }
    }

    pub fn from_i64(i: i64) -> Number {
        Number::Int(i.to_string().into())
    }

    pub fn is_integer(&self) -> bool {
        matches!(self, Number::Int(_))
    }

    /// The value as `i64` if it is an integer literal that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Number::Int(t) => t.parse().ok(),
            _ => None,
        }
    }

    /// The value as `f64` (integers are converted, possibly with rounding).
    pub fn as_f64(&self) -> f64 {
        match self {
            Number::Int(t) | Number::Float(t) => t.parse().unwrap_or(f64::NAN),
            Number::NaN => f64::NAN,
            Number::Infinity => f64::INFINITY,
            Number::NegInfinity => f64::NEG_INFINITY,
        }
    }

    /// The text as stored and re-emitted (source text, or `NaN`/`Infinity`/`-Infinity`).
    pub fn source_text(&self) -> &str {
        match self {
            Number::Int(t) | Number::Float(t) => t,
            Number::NaN => "NaN",
            Number::Infinity => "Infinity",
            Number::NegInfinity => "-Infinity",
        }
    }

    /// The text CPython's `json.dumps(json.loads(source))` would produce: integers
    /// unchanged except `-0` → `0`, floats as `repr(float)`, non-finite as tokens.
    pub fn python_text(&self) -> String {
        match self {
            Number::Int(t) => {
                if t.trim_start_matches('-').bytes().all(|b| b == b'0') {
                    "0".to_string()
                } else {
                    t.to_string()
                }
            }
            Number::Float(t) => {
                let f: f64 = t.parse().unwrap_or(f64::NAN);
                Number::from_f64(f).source_text().to_string()
            }
            other => other.source_text().to_string(),
        }
    }
}

/// A JSON object preserving insertion order (Python dicts do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object {
    entries: Vec<(String, Value)>,
}

impl Object {
    pub fn new() -> Object {
        Object { entries: Vec::new() }
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
    /// Insert or replace (a replaced entry keeps its position, like a Python dict).
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
    }
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// CPython `json.dumps` text of this object (see [`Value::to_python_json`]).
    pub fn to_python_json(&self) -> String {
        let mut out = String::new();
        write::write_python_object(self, &mut out);
        out
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Build from entries that may repeat keys, in O(n): later values win, first
    /// positions are kept (as `json.loads` does).
    pub(crate) fn from_entries_dedup(entries: Vec<(String, Value)>) -> Object {
        if entries.len() <= 16 {
            let mut o = Object { entries: Vec::with_capacity(entries.len()) };
            for (k, v) in entries {
                o.insert(k, v);
            }
            return o;
        }
        let mut index: HashMap<String, usize> = HashMap::with_capacity(entries.len());
        let mut out: Vec<(String, Value)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match index.get(&k) {
                Some(&i) => out[i].1 = v,
                None => {
                    index.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
        Object { entries: out }
    }
}

impl FromIterator<(String, Value)> for Object {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Object::from_entries_dedup(iter.into_iter().collect())
    }
}

/// A JSON value in Python's dialect; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    /// Member of an object (None for other values).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object().and_then(|o| o.get(key))
    }

    /// Python's `json.dumps(value)` with default settings: insertion order, `", "` and
    /// `": "` separators, ASCII-only output; numbers keep their source text.
    pub fn to_python_json(&self) -> String {
        let mut out = String::new();
        write::write_python(self, &mut out);
        out
    }

    /// Append [`Value::to_python_json`] to `out`.
    pub fn write_python_json(&self, out: &mut String) {
        write::write_python(self, out);
    }

    /// Python's `json.dumps(json.loads(text), sort_keys=True)`: the text gufe hashes
    /// — keys sorted at every depth, numbers as Python writes them.
    pub fn to_canonical_json(&self) -> String {
        let mut out = String::new();
        write::write_canonical(self, &mut out);
        out
    }

    /// Python `==` between decoded values: `1 == 1.0 == True`, dicts compare unordered,
    /// NaN never equals anything.
    pub fn py_eq(&self, other: &Value) -> bool {
        fn num(v: &Value) -> Option<f64> {
            match v {
                Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
                Value::Number(n) => Some(n.as_f64()),
                _ => None,
            }
        }
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Number(Number::Int(a)), Value::Number(Number::Int(b))) => {
                Number::Int(a.clone()).python_text() == Number::Int(b.clone()).python_text()
            }
            (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.py_eq(y)),
            (Value::Object(a), Value::Object(b)) => a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.py_eq(w))),
            (a, b) => match (num(a), num(b)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            },
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Number(Number::from_i64(i))
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Number(Number::from_f64(f))
    }
}
impl From<Object> for Value {
    fn from(o: Object) -> Value {
        Value::Object(o)
    }
}
impl From<Vec<Value>> for Value {
    fn from(a: Vec<Value>) -> Value {
        Value::Array(a)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Value {
        o.map(Into::into).unwrap_or(Value::Null)
    }
}

/// Build an [`Object`] from `(key, value)` pairs.
pub fn object<K: Into<String>, V: Into<Value>>(pairs: impl IntoIterator<Item = (K, V)>) -> Object {
    let mut o = Object::new();
    for (k, v) in pairs {
        o.insert(k, v.into());
    }
    o
}

#[cfg(test)]
mod tests;
