//! Results: ingesting an uploaded ProtocolDAGResult (compute route C14, model.md §5.2)
//! and serving stored blobs (user route U55, compute route C13).
//!
//! Ingestion writes the object first, then records the reference, the task's new status,
//! tracebacks and restart decisions in one state-store transaction. A failure between the
//! two leaves an unreferenced object (harmless) and the upload retryable; never a
//! reference to a missing object.

use alchemiscale_model::pdr::read_result;
use alchemiscale_model::upload::Upload;
use alchemiscale_model::ScopedKey;
use alchemiscale_objects::result_path;
use alchemiscale_store::results::{PdrrRecord, RecordedResult};
use axum::body::Bytes;
use futures_util::stream::{self, Stream};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Store an uploaded result for `task`; returns the new ProtocolDAGResultRef's key.
pub async fn ingest(state: &AppState, task: &ScopedKey, upload: Upload) -> ApiResult<ScopedKey> {
    let Upload { compute_service_id: creator, bytes } = upload;
    let limit = state.settings().max_body_bytes;
    // decompression and analysis are CPU work on possibly large payloads: off the executor
    let analysed = tokio::task::spawn_blocking(move || read_result(bytes, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;

    let transformation = state.store().get_task_transformation(task).await?;
    if let Some(tk) = &analysed.summary.transformation_key {
        if tk != transformation.gufe_key().as_str() {
            return Err(ApiError::unprocessable(format!(
                "the result is for transformation {tk}, but task {task} performs {}",
                transformation.gufe_key()
            )));
        }
    }
    state.store().check_result_submitter(task, &creator).await?;

    let summary = analysed.summary;
    let path =
        result_path(task.org(), task.campaign(), task.project(), transformation.gufe_key().as_str(), summary.ok, summary.key.as_str());
    let size = analysed.blob.len() as i64;
    let digest = state.objects()?.put(&path, Bytes::from(analysed.blob)).await?;
    let recorded = RecordedResult {
        obj_key: summary.key.to_string(),
        ok: summary.ok,
        location: path,
        content_sha256: digest,
        size,
        creator: Some(creator),
        tracebacks: summary.tracebacks(),
    };
    Ok(state.store().record_result(task, &recorded).await?)
}

/// The stored blob behind a result reference, integrity-checked.
pub async fn blob(state: &AppState, pdrr: &PdrrRecord) -> ApiResult<Bytes> {
    let location =
        pdrr.location.as_deref().ok_or_else(|| ApiError::Internal(format!("result {} has no object location", pdrr.scoped_key)))?;
    Ok(state.objects()?.get_verified(location, pdrr.content_sha256.as_deref(), pdrr.size).await?)
}

/// Append the JSON string literal of `bytes` mapped to code points of equal value
/// (latin-1): `"`, `\` and control characters escaped, bytes ≥ 0x80 as UTF-8.
pub fn push_latin1_json(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x00..=0x1F => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            0x20..=0x7F => out.push(b),
            _ => out.extend_from_slice(&[0xC0 | (b >> 6), 0x80 | (b & 0x3F)]),
        }
    }
}

/// Marks a response the compression layer must leave alone: result blobs are already
/// zstd-compressed, and gzipping them again costs far more CPU than it saves bytes
/// (the server may, but need not, gzip when the client offers it; api.md §1.6).
#[derive(Debug, Clone, Copy)]
pub struct NoCompression;

/// `["<latin-1 string of the blob>"]` as a stream of chunks, so a large result is
/// encoded piece by piece instead of as one more full copy.
pub fn latin1_json_array(blob: Bytes) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    const CHUNK: usize = 256 * 1024;
    let n = blob.len().div_ceil(CHUNK);
    let head = stream::once(async { Ok(Bytes::from_static(b"[\"")) });
    let body = stream::iter((0..n).map(move |i| {
        let part = &blob[i * CHUNK..((i + 1) * CHUNK).min(blob.len())];
        let mut out = Vec::with_capacity(part.len() * 2);
        push_latin1_json(part, &mut out);
        Ok(Bytes::from(out))
    }));
    let tail = stream::once(async { Ok(Bytes::from_static(b"\"]")) });
    futures_util::StreamExt::chain(futures_util::StreamExt::chain(head, body), tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_strings_decode_back() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let mut out = vec![b'"'];
        push_latin1_json(&bytes, &mut out);
        out.push(b'"');
        let s: String = serde_json::from_slice(&out).unwrap();
        let back: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
        assert_eq!(back, bytes);
        assert!(s.chars().all(|c| (c as u32) < 256));
    }
}
