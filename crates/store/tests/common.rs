#![allow(dead_code)]
use std::io::Read;

use alchemiscale_model::chain::KeyedChain;
use alchemiscale_model::json::{parse, Value};

pub fn vector_path(name: &str) -> String {
    format!("{}/../../testdata/vectors/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn vector_text(name: &str) -> String {
    std::fs::read_to_string(vector_path(name)).unwrap()
}

pub fn chain_of(text: &str) -> KeyedChain {
    KeyedChain::from_value(parse(text).unwrap()).unwrap()
}

/// The body the Python client sends to POST /networks, inflated and parsed.
pub fn u7_body() -> Value {
    let gz = std::fs::read(vector_path("U7_create_network.request.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
    parse(&text).unwrap()
}
