//! The contract between the service and an executor child process, and the child side of
//! the native executor (`alchemiscale compute execute --input DIR --output FILE`).
//!
//! The service writes into a fresh directory:
//!
//! * `request.json` — a [`TaskRequest`]: task key, transformation key, protocol class,
//!   where to put shared and scratch space, `keep_*`, `n_retries`, and the name of the
//!   extended-result file if the task extends another;
//! * `transformation.json` — the transformation's keyed chain as served by C13
//!   (Python-dialect JSON);
//! * `extends.json.zst` — the extended task's result blob, when there is one.
//!
//! The child runs the protocol, writes `dag_key` (the ProtocolDAG's key, as soon as it is
//! known: the service removes `<shared_basedir>/<dag key>` and `<scratch_basedir>/<dag
//! key>` afterwards unless told to keep them, even when it had to kill the child) and
//! finally the result blob (zstd of the ProtocolDAGResult keyed-chain JSON) to the output
//! path, atomically (written beside it, then renamed). A protocol whose units fail still
//! exits 0 with a failed result; a non-zero exit means the executor itself failed, and its
//! standard error explains why.
//!
//! So that a failure the service has to report itself (the child crashed, was killed or
//! timed out) names the protocol's own units, an executor may also write `dag.json` (the
//! ProtocolDAG's keyed chain, before `dag_key`) and, as each unit starts, `running_unit`
//! (that unit's key); see [`crate::result::ExecutedDag`]. The python executor does both.

use std::path::{Path, PathBuf};

use alchemiscale_model::chain::KeyedChain;
use alchemiscale_model::json;
use serde::{Deserialize, Serialize};

use crate::synthetic;

/// File names inside the task directory.
pub const REQUEST_FILE: &str = "request.json";
pub const TRANSFORMATION_FILE: &str = "transformation.json";
pub const EXTENDS_FILE: &str = "extends.json.zst";
pub const DAG_KEY_FILE: &str = "dag_key";
pub const DAG_FILE: &str = "dag.json";
pub const RUNNING_UNIT_FILE: &str = "running_unit";
pub const RESULT_FILE: &str = "result.json.zst";

/// Protocol classes the native executor implements.
pub const NATIVE_PROTOCOLS: &[&str] = &[alchemiscale_model::synthetic::SYNTHETIC_PROTOCOL];

/// Is `protocol` (a class `__qualname__`) implemented natively?
pub fn is_native(protocol: &str) -> bool {
    NATIVE_PROTOCOLS.contains(&protocol)
}

/// What the service asks an executor to do (`request.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The task's ScopedKey; names the ProtocolDAG.
    pub task: String,
    /// The transformation's gufe key.
    pub transformation_key: String,
    /// The protocol's class name.
    pub protocol: String,
    /// Parent of the DAG's shared directory.
    pub shared_basedir: PathBuf,
    /// Parent of the DAG's scratch directory.
    pub scratch_basedir: PathBuf,
    pub keep_shared: bool,
    pub keep_scratch: bool,
    /// Retries of a failing unit.
    pub n_retries: i64,
    /// File (in the task directory) holding the extended task's result blob.
    pub extends: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{file} is invalid: {message}")]
    Input { file: &'static str, message: String },
    #[error("{0} is not a native protocol (native protocols: {list})", list = NATIVE_PROTOCOLS.join(", "))]
    NotNative(String),
    #[error("ValueError: invalid {protocol} settings: {message}")]
    Settings { protocol: String, message: String },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExecuteError + '_ {
    move |source| ExecuteError::Io { path: path.to_path_buf(), source }
}

/// Inputs of one execution, read from the task directory.
#[derive(Debug)]
pub struct TaskInput {
    pub dir: PathBuf,
    pub request: TaskRequest,
    pub chain: KeyedChain,
    pub extends: Option<Vec<u8>>,
}

impl TaskInput {
    /// Read and validate the task directory.
    pub fn read(dir: &Path) -> Result<TaskInput, ExecuteError> {
        let path = dir.join(REQUEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let request: TaskRequest =
            serde_json::from_str(&text).map_err(|e| ExecuteError::Input { file: REQUEST_FILE, message: e.to_string() })?;
        let path = dir.join(TRANSFORMATION_FILE);
        let text = std::fs::read(&path).map_err(io_err(&path))?;
        let value = json::parse_bytes(&text).map_err(|e| ExecuteError::Input { file: TRANSFORMATION_FILE, message: e.to_string() })?;
        let chain = KeyedChain::from_value(value).map_err(|e| ExecuteError::Input { file: TRANSFORMATION_FILE, message: e.to_string() })?;
        let extends = match &request.extends {
            None => None,
            Some(name) => {
                if name.contains('/') || name == ".." {
                    return Err(ExecuteError::Input {
                        file: REQUEST_FILE,
                        message: format!("`extends` must be a file name, not {name:?}"),
                    });
                }
                let path = dir.join(name);
                Some(std::fs::read(&path).map_err(io_err(&path))?)
            }
        };
        Ok(TaskInput { dir: dir.to_path_buf(), request, chain, extends })
    }

    /// Record the DAG key for the service (see the module documentation).
    pub fn record_dag_key(&self, key: &str) -> Result<(), ExecuteError> {
        let path = self.dir.join(DAG_KEY_FILE);
        std::fs::write(&path, key).map_err(io_err(&path))
    }
}

/// Write `bytes` to `path` atomically: a sibling temporary file renamed into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExecuteError> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The native executor: run the task described in `input` and write the result blob to
/// `output`. This is what `alchemiscale compute execute` does; it runs in a child process
/// of the service, which may kill it at any time.
pub fn execute(input: &Path, output: &Path) -> Result<(), ExecuteError> {
    let task = TaskInput::read(input)?;
    let blob = match task.request.protocol.as_str() {
        alchemiscale_model::synthetic::SYNTHETIC_PROTOCOL => synthetic::run(&task)?,
        other => return Err(ExecuteError::NotNative(other.to_string())),
    };
    write_atomically(output, &blob)
}
