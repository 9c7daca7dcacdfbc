//! Results: ingesting an uploaded ProtocolDAGResult (compute route C14)
//! and serving stored blobs (user route U55, compute route C13).
//!
//! Ingestion writes the object first, then records the reference, the task's new status,
//! tracebacks and restart decisions in one state-store transaction. A failure between the
//! two leaves an unreferenced object (harmless) and the upload retryable; never a
//! reference to a missing object.

use std::io::Write;

use alchemiscale_model::pdr::{is_zstd, push_latin1_json, read_result, BlobAnalyser, PdrError, PdrSummary};
use alchemiscale_model::upload::Upload;
use alchemiscale_model::ScopedKey;
use alchemiscale_objects::{result_path, ObjectError, Objects, StagedObject};
use alchemiscale_store::results::{PdrrRecord, RecordedResult};
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Payload bytes held in memory before an upload counts as large: stored and analysed
/// while it is still arriving instead of after.
const STREAM_FROM: usize = 4 << 20;
/// Chunks (of up to 1 MiB) queued for the analysis and for the object writer each.
const CHANNEL_DEPTH: usize = 16;

/// Where an upload's decoded payload (the ProtocolDAGResult blob) goes while the body
/// streams in (the output of [`alchemiscale_model::upload::UploadDecoder`]).
///
/// A small payload is kept and handled whole when the body has ended. Once a zstd payload
/// passes [`STREAM_FROM`] bytes, it becomes a pipeline: each chunk goes to an analysis
/// thread (decompressing through the skimmer, [`BlobAnalyser`]) and to an object writer
/// task (hashing and writing to a staging object), while this side keeps receiving and
/// decoding. The three stages overlap, so a large upload costs about its slowest stage
/// instead of their sum, and the server holds a few chunks of it instead of the whole.
pub struct Tee {
    objects: Objects,
    limit: usize,
    state: TeeState,
}

enum TeeState {
    Buffer(Vec<u8>),
    Stream(Box<Streams>),
}

struct Streams {
    /// Decoded chunks not yet handed on (the decoder is synchronous; handing on awaits).
    pending: Vec<Bytes>,
    analysis_tx: mpsc::Sender<Bytes>,
    analysis: JoinHandle<Result<PdrSummary, PdrError>>,
    /// Chunks for the writer; an empty chunk means the payload is complete.
    object_tx: mpsc::Sender<Bytes>,
    writer: JoinHandle<Result<StagedObject, ObjectError>>,
}

impl Tee {
    pub fn new(objects: Objects, limit: usize) -> Tee {
        Tee { objects, limit, state: TeeState::Buffer(Vec::new()) }
    }

    /// Hand decoded chunks on to the analysis and the writer, starting them when the
    /// payload turns out to be large. Called between body frames.
    pub async fn pass_on(&mut self) -> ApiResult<()> {
        if let TeeState::Buffer(buf) = &mut self.state {
            if buf.len() < STREAM_FROM || !is_zstd(buf) {
                return Ok(());
            }
            let first = Bytes::from(std::mem::take(buf));
            self.state = TeeState::Stream(Box::new(Streams::start(&self.objects, self.limit, first)));
        }
        let TeeState::Stream(s) = &mut self.state else { return Ok(()) };
        s.hand_on().await
    }

    /// The body has ended: the payload analysed, and its object (in memory, or complete
    /// at a staging place).
    pub async fn finish(mut self) -> ApiResult<(PdrSummary, Stored)> {
        self.pass_on().await?;
        match self.state {
            TeeState::Buffer(bytes) => {
                // decompression and analysis are CPU work: off the executor
                let limit = self.limit;
                let analysed = tokio::task::spawn_blocking(move || read_result(bytes, limit))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .map_err(|e| ApiError::unprocessable(e.to_string()))?;
                Ok((analysed.summary, Stored::Blob(analysed.blob)))
            }
            TeeState::Stream(s) => s.finish().await,
        }
    }
}

impl Write for Tee {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match &mut self.state {
            TeeState::Buffer(buf) => buf.extend_from_slice(data),
            TeeState::Stream(s) => s.pending.push(Bytes::copy_from_slice(data)),
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Streams {
    fn start(objects: &Objects, limit: usize, first: Bytes) -> Streams {
        let (analysis_tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let analysis = tokio::task::spawn_blocking(move || {
            let mut analyser = BlobAnalyser::new(limit)?;
            while let Some(chunk) = rx.blocking_recv() {
                analyser.feed(&chunk)?;
            }
            analyser.finish()
        });
        let (object_tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let objects = objects.clone();
        let writer = tokio::spawn(async move {
            let mut w = objects.writer().await?;
            while let Some(chunk) = rx.recv().await {
                if chunk.is_empty() {
                    return w.finish().await;
                }
                w.write(chunk).await?;
            }
            // the upload was abandoned: dropping the writer removes what it wrote
            Err(ObjectError::Unavailable("the upload ended early".into()))
        });
        Streams { pending: vec![first], analysis_tx, analysis, object_tx, writer }
    }

    async fn hand_on(&mut self) -> ApiResult<()> {
        for chunk in std::mem::take(&mut self.pending) {
            if self.analysis_tx.send(chunk.clone()).await.is_err() {
                return Err(analysis_failure((&mut self.analysis).await));
            }
            if self.object_tx.send(chunk).await.is_err() {
                return Err(writer_failure((&mut self.writer).await));
            }
        }
        Ok(())
    }

    async fn finish(self) -> ApiResult<(PdrSummary, Stored)> {
        let Streams { analysis_tx, analysis, object_tx, writer, .. } = self;
        drop(analysis_tx);
        // an invalid result is refused before its object is completed (dropping the
        // writer's channel abandons the staging object)
        let summary = match analysis.await {
            Ok(Ok(summary)) => summary,
            other => return Err(analysis_failure(other)),
        };
        if object_tx.send(Bytes::new()).await.is_err() {
            return Err(writer_failure(writer.await));
        }
        match writer.await {
            Ok(Ok(staged)) => Ok((summary, Stored::Staged(staged))),
            other => Err(writer_failure(other)),
        }
    }
}

/// Why a pipeline stage ended without its result: its own error (as `own` maps it), or
/// the stage ending early or panicking.
fn stage_failure<T, E>(r: Result<Result<T, E>, tokio::task::JoinError>, stage: &str, own: impl FnOnce(E) -> ApiError) -> ApiError {
    match r {
        Ok(Err(e)) => own(e),
        Ok(Ok(_)) => ApiError::Internal(format!("the {stage} ended before its input")),
        Err(e) => ApiError::Internal(e.to_string()),
    }
}

fn analysis_failure(r: Result<Result<PdrSummary, PdrError>, tokio::task::JoinError>) -> ApiError {
    stage_failure(r, "result analysis", |e| ApiError::unprocessable(e.to_string()))
}

fn writer_failure(r: Result<Result<StagedObject, ObjectError>, tokio::task::JoinError>) -> ApiError {
    stage_failure(r, "object writer", ApiError::from)
}

/// The object behind a new result: in memory, or complete at a staging place.
pub enum Stored {
    Blob(Vec<u8>),
    Staged(StagedObject),
}

/// Store an uploaded result for `task`; returns the new ProtocolDAGResultRef's key.
pub async fn ingest(state: &AppState, task: &ScopedKey, upload: Upload<Tee>) -> ApiResult<ScopedKey> {
    let Upload { compute_service_id: creator, payload } = upload;
    let (summary, stored) = payload.finish().await?;

    let transformation = state.store().get_task_transformation(task).await?;
    if let Some(tk) = &summary.transformation_key {
        if tk != transformation.gufe_key().as_str() {
            return Err(ApiError::unprocessable(format!(
                "the result is for transformation {tk}, but task {task} performs {}",
                transformation.gufe_key()
            )));
        }
    }
    state.store().check_result_submitter(task, &creator).await?;

    let path =
        result_path(task.org(), task.campaign(), task.project(), transformation.gufe_key().as_str(), summary.ok, summary.key.as_str());
    let (digest, size) = match stored {
        Stored::Blob(blob) => {
            let size = blob.len() as i64;
            (state.objects()?.put(&path, Bytes::from(blob)).await?, size)
        }
        Stored::Staged(staged) => {
            let size = staged.size() as i64;
            (staged.commit(&path).await?, size)
        }
    };
    let recorded = RecordedResult {
        obj_key: summary.key.to_string(),
        ok: summary.ok,
        location: path,
        content_sha256: digest,
        size,
        creator: Some(creator),
        tracebacks: summary.tracebacks(),
    };
    let ok = recorded.ok;
    let pdrr = state.store().record_result(task, &recorded).await?;
    state.metrics().pushed(ok);
    Ok(pdrr)
}

/// The stored blob behind a result reference, integrity-checked.
pub async fn blob(state: &AppState, pdrr: &PdrrRecord) -> ApiResult<Bytes> {
    let location =
        pdrr.location.as_deref().ok_or_else(|| ApiError::Internal(format!("result {} has no object location", pdrr.scoped_key)))?;
    Ok(state.objects()?.get_verified(location, pdrr.content_sha256.as_deref(), pdrr.size).await?)
}

/// Marks a response the compression layer must leave alone: result blobs are already
/// zstd-compressed, and gzipping them again costs far more CPU than it saves bytes
/// (the server may, but need not, gzip when the client offers it).
#[derive(Debug, Clone, Copy)]
pub struct NoCompression;

/// A JSON response: `head`, `blob` as the inside of a latin-1 string, `tail`. The string
/// is encoded piece by piece as the response streams out instead of as one more full copy
/// of a large result, and left uncompressed ([`NoCompression`]).
pub fn latin1_json_response(head: Bytes, blob: Bytes, tail: &'static [u8]) -> axum::response::Response {
    const CHUNK: usize = 256 * 1024;
    let n = blob.len().div_ceil(CHUNK);
    let body = stream::iter((0..n).map(move |i| {
        let part = &blob[i * CHUNK..((i + 1) * CHUNK).min(blob.len())];
        let mut out = Vec::with_capacity(part.len() * 2);
        push_latin1_json(part, &mut out);
        Ok::<_, std::io::Error>(Bytes::from(out))
    }));
    let chunks = stream::once(async move { Ok(head) }).chain(body).chain(stream::once(async move { Ok(Bytes::from_static(tail)) }));
    let mut response = ([(CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(chunks)).into_response();
    response.extensions_mut().insert(NoCompression);
    response
}
