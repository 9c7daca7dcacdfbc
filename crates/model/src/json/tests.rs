use super::*;

fn vector(name: &str) -> String {
    let path = format!("{}/../../testdata/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn python_float_repr_matches_cpython() {
    let cases: &[(f64, &str)] = &[
        (1e-5, "1e-05"),
        (1e16, "1e+16"),
        (1.5e-7, "1.5e-07"),
        (1e100, "1e+100"),
        (1.0, "1.0"),
        (0.0001, "0.0001"),
        (1e15, "1000000000000000.0"),
        (-0.0, "-0.0"),
        (0.0, "0.0"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e22, "1e+22"),
        (123456789012345678.0, "1.2345678901234568e+17"),
        (5e-324, "5e-324"),
        (f64::MAX, "1.7976931348623157e+308"),
        (123.456, "123.456"),
        (-2.5e-5, "-2.5e-05"),
        (0.15, "0.15"),
        (1234567890123456.7, "1234567890123456.8"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "Infinity"),
        (f64::NEG_INFINITY, "-Infinity"),
    ];
    for (f, want) in cases {
        assert_eq!(python_float_repr(*f), *want, "{f:?}");
    }
}

#[test]
fn special_numbers_round_trip_verbatim() {
    let text = r#"[NaN, Infinity, -Infinity, 123456789012345678901234567890, -98765432109876543210987654321, 1.10, 1E400, -0, 0.5e-3]"#;
    let v = parse(text).unwrap();
    assert_eq!(v.to_python_json(), text);
    // the hashing form normalises like CPython would after json.loads
    assert_eq!(
        v.to_canonical_json(),
        "[NaN, Infinity, -Infinity, 123456789012345678901234567890, -98765432109876543210987654321, 1.1, Infinity, 0, 0.0005]"
    );
    let big = v.as_array().unwrap()[3].as_number().unwrap();
    assert_eq!(big.as_i64(), None);
    assert!(v.as_array().unwrap()[0].as_number().unwrap().as_f64().is_nan());
}

#[test]
fn strings_escape_like_cpython() {
    let v = Value::String("é😀\u{7f}/\"\\\n\t\u{1}\u{8}\u{c}\r ~".to_string());
    assert_eq!(v.to_python_json(), r#""\u00e9\ud83d\ude00\u007f/\"\\\n\t\u0001\b\f\r ~""#);
    // and back
    assert_eq!(parse(&v.to_python_json()).unwrap(), v);
    assert_eq!(parse(r#""\u00E9\/""#).unwrap(), Value::String("é/".into()));
    // raw UTF-8 input is fine too
    assert_eq!(parse("\"é—😀\"").unwrap(), Value::String("é—😀".into()));
}

#[test]
fn objects_keep_order_and_sort_for_hashing() {
    let v = parse(r#"{"b": 1, "a": {"d": [1, 2], "c": null}, "é": true}"#).unwrap();
    assert_eq!(v.to_python_json(), r#"{"b": 1, "a": {"d": [1, 2], "c": null}, "\u00e9": true}"#);
    assert_eq!(v.to_canonical_json(), r#"{"a": {"c": null, "d": [1, 2]}, "b": 1, "\u00e9": true}"#);
}

#[test]
fn duplicate_keys_keep_first_position_last_value() {
    let v = parse(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
    assert_eq!(v.to_python_json(), r#"{"a": 3, "b": 2}"#);
    // many keys: the O(n) path
    let mut text = String::from("{");
    for i in 0..100 {
        text.push_str(&format!("\"k{}\": {i}, ", i % 50));
    }
    text.push_str("\"end\": 0}");
    let v = parse(&text).unwrap();
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 51);
    assert_eq!(o.get("k0").unwrap().as_number().unwrap().as_i64(), Some(50));
    assert_eq!(o.keys().next(), Some("k0"));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let bad = [
        "",
        " ",
        "[1,]",
        "{\"a\" 1}",
        "{\"a\": 1,}",
        "[1 2]",
        "\"abc",
        "\"a\u{1}b\"",
        "01",
        "1.",
        ".5",
        "-",
        "nul",
        "nan",
        "infinity",
        "+1",
        "[\"\\x\"]",
        "\"\\ud800\"",
        "\"\\udc00x\"",
        "\"\\ud800\\u0041\"",
        "{1: 2}",
        "[1] x",
        "\"\\u12\"",
        "tru",
        "-Inf",
    ];
    for b in bad {
        assert!(parse(b).is_err(), "{b:?} should fail");
    }
    let deep = "[".repeat(100_000);
    let e = parse(&deep).unwrap_err();
    assert!(e.message.contains("nested too deeply"), "{e}");
    let ok_deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(parse(&ok_deep).is_ok());
    let huge_int = "9".repeat(MAX_INT_DIGITS + 1);
    assert!(parse(&huge_int).is_err());
    assert!(parse(&"9".repeat(MAX_INT_DIGITS)).is_ok());
    assert!(parse_bytes(b"[\"\xff\"]").is_err());
    let e = parse("[1,\n  2,]").unwrap_err();
    assert_eq!((e.line, e.column), (2, 5));
}

#[test]
fn py_eq_follows_python() {
    let p = |s: &str| parse(s).unwrap();
    assert!(p("1").py_eq(&p("1.0")));
    assert!(p("1").py_eq(&p("true")));
    assert!(p("0").py_eq(&p("-0")));
    assert!(!p("NaN").py_eq(&p("NaN")));
    assert!(p(r#"{"a": 1, "b": [1, 2]}"#).py_eq(&p(r#"{"b": [1.0, 2], "a": true}"#)));
    assert!(!p("{}").py_eq(&p("null")));
    assert!(!p("\"1\"").py_eq(&p("1")));
}

#[test]
fn vector_chains_reserialise_byte_for_byte() {
    for name in ["network.keyed_chain.json", "pdr_ok.keyed_chain.json", "pdr_failure.keyed_chain.json"] {
        let text = vector(name);
        let v = parse(&text).unwrap();
        assert_eq!(v.to_python_json(), text, "{name}");
    }
}

#[test]
fn vector_hashed_texts_reproduce() {
    let keys = parse(&vector("network.keys.json")).unwrap();
    let entries = keys.as_array().unwrap();
    assert_eq!(entries.len(), 22);
    for e in entries {
        let key = e.get("key").unwrap().as_str().unwrap();
        let text = e.get("hashed_text").unwrap().as_str().unwrap();
        let canonical = parse(text).unwrap().to_canonical_json();
        assert_eq!(canonical, text, "{key}");
        let token = crate::hash::md5_hex(canonical.as_bytes());
        assert_eq!(format!("{}-{}", key.split('-').next().unwrap(), token), key);
    }
}

#[derive(Debug, serde::Deserialize, PartialEq)]
struct Body {
    count: i64,
    weight: Option<f64>,
    names: Vec<String>,
    #[serde(default)]
    flag: bool,
}

#[test]
fn typed_extraction() {
    let v = parse(r#"{"count": 3.0, "weight": NaN, "names": ["a", "b"], "unknown": [1, {"x": Infinity}]}"#).unwrap();
    let b: Body = from_value(&v).unwrap();
    assert_eq!(b.count, 3);
    assert!(b.weight.unwrap().is_nan());
    assert_eq!(b.names, ["a", "b"]);
    assert!(!b.flag);

    let v = parse(r#"{"count": 1.5, "names": []}"#).unwrap();
    let e = from_value::<Body>(&v).unwrap_err();
    assert_eq!(e.path, "count");
    let v = parse(r#"{"count": 99999999999999999999999, "names": []}"#).unwrap();
    assert!(from_value::<Body>(&v).unwrap_err().message.contains("out of range"));
    let v = parse(r#"{"count": 1, "names": [1]}"#).unwrap();
    assert_eq!(from_value::<Body>(&v).unwrap_err().path, "names[0]");
    let v = parse(r#"{"names": []}"#).unwrap();
    assert!(from_value::<Body>(&v).unwrap_err().message.contains("missing field `count`"));
}

#[test]
fn skim_parse_drops_long_string_values_only() {
    let text = format!(r#"{{"short": "abc", "long": "{}", "{}": 1, "esc": "a\u00e9b"}}"#, "x".repeat(100), "k".repeat(50));
    let v = parse_skim(text.as_bytes(), 10).unwrap();
    assert_eq!(v.get("short").unwrap().as_str(), Some("abc"));
    assert_eq!(v.get("long").unwrap().as_str(), Some(""));
    assert!(v.get(&"k".repeat(50)).is_some(), "keys are always kept");
    assert_eq!(v.get("esc").unwrap().as_str(), Some("a\u{e9}b"));
    assert!(parse_skim(b"{\"a\": \"unterminated", 10).is_err());
    assert!(parse_skim(&[b'"', 0xff, b'"'], 10).is_err());
    assert_eq!(parse_skim(text.as_bytes(), usize::MAX).unwrap(), parse(&text).unwrap());
}
