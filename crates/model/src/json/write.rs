//! Writers producing CPython `json.dumps` text.

use std::fmt::Write as _;

use super::{Object, Value};

/// Append `s` as a JSON string literal with `ensure_ascii=True` escaping: `\"`, `\\`,
/// `\b \f \n \r \t`, every other character outside U+0020..U+007E as `\uxxxx`
/// (lowercase hex, surrogate pairs above the BMP).
pub(crate) fn write_str(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, c) in s.char_indices() {
        let plain = (' '..='~').contains(&c) && c != '"' && c != '\\';
        if plain {
            continue;
        }
        out.push_str(&s[run_start..i]);
        run_start = i + c.len_utf8();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            _ => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
        }
    }
    out.push_str(std::str::from_utf8(&bytes[run_start..]).expect("char boundary"));
    out.push('"');
}

pub(crate) fn write_python(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(n.source_text()),
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python(item, out);
            }
            out.push(']');
        }
        Value::Object(o) => write_python_object(o, out),
    }
}

pub(crate) fn write_python_object(o: &Object, out: &mut String) {
    out.push('{');
    for (i, (k, item)) in o.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(k, out);
        out.push_str(": ");
        write_python(item, out);
    }
    out.push('}');
}

pub(crate) fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Number(n) => out.push_str(&n.python_text()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            // code-point order == UTF-8 byte order
            let mut entries: Vec<(&str, &Value)> = o.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(k, out);
                out.push_str(": ");
                write_canonical(item, out);
            }
            out.push('}');
        }
        other => write_python(other, out),
    }
}
