#![allow(dead_code)]
use std::io::Read;

use alchemiscale_client::{Client, Payload, RawResponse};
use alchemiscale_model::ScopedKey;
use reqwest::Method;

pub fn vector_path(name: &str) -> String {
    format!("{}/../../testdata/vectors/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn vector_text(name: &str) -> String {
    std::fs::read_to_string(vector_path(name)).unwrap()
}

/// The exact gzip body the Python client sends to POST /networks.
pub fn u7_gzip() -> Vec<u8> {
    std::fs::read(vector_path("U7_create_network.request.gz")).unwrap()
}

pub fn u7_text() -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(&u7_gzip()[..]).read_to_string(&mut s).unwrap();
    s
}

pub const SCOPE: &str = "vecorg-veccampaign-vecproject";
pub const NETWORK: &str = "AlchemicalNetwork-c5a12a2d9a941dbfe56b76c3387ccf6d-vecorg-veccampaign-vecproject";
pub const TF0: &str = "Transformation-3c2debf79f5ad85b0bcb6b86e7c390f5-vecorg-veccampaign-vecproject";

pub fn sk(s: &str) -> ScopedKey {
    s.parse().unwrap()
}

/// Submit the vector network the way the Python client does (raw gzip bytes).
pub async fn submit_vector(c: &Client) -> RawResponse {
    c.send(Method::POST, "/networks", Payload::Raw { bytes: u7_gzip(), content_encoding: Some("gzip".into()) }).await.unwrap()
}

pub async fn get(c: &Client, path: &str) -> RawResponse {
    c.send(Method::GET, path, Payload::None).await.unwrap()
}

pub async fn post(c: &Client, path: &str, body: serde_json::Value) -> RawResponse {
    c.send(Method::POST, path, Payload::Json(body.to_string())).await.unwrap()
}

pub async fn post_text(c: &Client, path: &str, body: &str) -> RawResponse {
    c.send(Method::POST, path, Payload::Json(body.to_string())).await.unwrap()
}

pub fn detail(r: &RawResponse) -> String {
    let v = r.json();
    match &v["detail"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[track_caller]
pub fn expect(r: &RawResponse, status: u16) {
    assert_eq!(r.status, status, "unexpected answer: {} {}", r.status, r.text());
}
