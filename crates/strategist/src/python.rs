//! Strategies run in Python: any strategy class without a native implementation.
//!
//! The strategist hands the strategy (its keyed chain as the client stored it), the
//! network and every transformation's successful results to the driver script
//! [`DRIVER`] in the configured interpreter, in a fresh directory, and reads the raw
//! weights back (the script's docstring is the contract). The child runs in its own
//! process group under a time limit (the compute service's supervisor): a crash, a hang
//! or an unreadable answer becomes a [`StrategyError`] in the strategy's state, never a
//! problem of the strategist's.
//!
//! Results are fetched from the object store, verified, and kept in a size-limited cache
//! directory keyed by result (`use_local_cache`), as upstream's strategist does, so a
//! result is downloaded once however many cycles read it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use alchemiscale_compute::executor::{describe_exit, supervise, tail, Ended};
use alchemiscale_compute::task_logs::OutputFiles;
use alchemiscale_compute::StopHandle;
use alchemiscale_model::json::Value;
use alchemiscale_model::pdr::zstd_decompress;
use alchemiscale_objects::Objects;
use alchemiscale_store::strategist::{DueStrategy, ResultRef};
use alchemiscale_store::Store;
use tokio::process::Command;

use crate::cache::ResultCache;
use crate::StrategyError;

/// The driver script (`python/alchemiscale_rs_strategy.py`).
pub const DRIVER: &str = include_str!("../python/alchemiscale_rs_strategy.py");
const DRIVER_FILE: &str = "alchemiscale_rs_strategy.py";
/// Largest decompressed result handed to Python.
const MAX_RESULT_BYTES: usize = 4 << 30;

/// How to run Python strategies.
#[derive(Debug, Clone)]
pub struct PythonConfig {
    /// The interpreter (with gufe and the strategies' packages).
    pub interpreter: PathBuf,
    /// Time limit of one `propose`.
    pub timeout: Duration,
    /// Extra environment variables for the interpreter.
    pub env: BTreeMap<String, String>,
}

/// Why no weights came back.
#[derive(Debug)]
pub enum ProposeError {
    /// The strategy failed: recorded in its state.
    Strategy(StrategyError),
    /// The stores could not be read, or the strategist was stopped: nothing is recorded
    /// and the strategy is tried again later.
    Transient(String),
}

impl From<StrategyError> for ProposeError {
    fn from(e: StrategyError) -> Self {
        ProposeError::Strategy(e)
    }
}

fn transient(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ProposeError + '_ {
    move |e| ProposeError::Transient(format!("{what}: {e}"))
}

/// Ask the strategy of `due` for raw weights, by transformation gufe key.
pub async fn propose(
    config: &PythonConfig,
    store: &Store,
    objects: Option<&Objects>,
    cache: Option<&ResultCache>,
    due: &DueStrategy,
    stop: &StopHandle,
) -> Result<Vec<(String, Option<f64>)>, ProposeError> {
    let dir =
        tempfile::Builder::new().prefix("alchemiscale-strategy-").tempdir().map_err(|e| transient("cannot create a work directory")(&e))?;
    let d = dir.path();
    let strategy = store.get_network_strategy(&due.network).await.map_err(|e| transient("cannot read the strategy")(&e))?;
    let strategy = strategy.ok_or_else(|| ProposeError::Transient("the strategy was removed".into()))?;
    let network = store.get_chain(&due.network).await.map_err(|e| transient("cannot read the network")(&e))?;
    let write = |name: &str, text: &[u8]| std::fs::write(d.join(name), text).map_err(|e| transient("cannot write the work directory")(&e));
    write("strategy.json", strategy.as_bytes())?;
    write("network.json", network.as_bytes())?;
    let refs = store.strategy_result_refs(due.network_id).await.map_err(|e| transient("cannot list the results")(&e))?;
    let manifest = stage_results(d, &refs, objects, cache).await?;
    write("results.json", serde_json::to_string(&manifest).expect("manifest serialises").as_bytes())?;
    write("request.json", br#"{"strategy": "strategy.json", "network": "network.json", "results": "results.json"}"#)?;
    write(DRIVER_FILE, DRIVER.as_bytes())?;

    let output = d.join("weights.json");
    let mut cmd = Command::new(&config.interpreter);
    cmd.arg(d.join(DRIVER_FILE)).arg("--input").arg(d).arg("--output").arg(&output).envs(&config.env);
    let files = OutputFiles::in_dir(d);
    let ended =
        supervise(cmd, &files, Some(config.timeout), stop, Duration::from_secs(3600), || async { Some(true) }).await.map_err(|e| {
            ProposeError::Strategy(StrategyError::new(
                "StrategyProcessError",
                format!("cannot start the Python interpreter {}: {e}", config.interpreter.display()),
            ))
        })?;
    let stderr = || tail(&files.stderr, 8192);
    match ended {
        Ended::Exited(status) if status.success() => read_weights(&output),
        Ended::Exited(status) => Err(match std::fs::read_to_string(d.join("error.json")).ok().and_then(|t| python_error(&t)) {
            Some(e) => e.into(),
            None => ProposeError::Strategy(StrategyError {
                class: "StrategyProcessError".into(),
                message: format!("the strategy's Python process ended with {}", describe_exit(&status)),
                traceback: Some(stderr()),
            }),
        }),
        Ended::TimedOut(t) => Err(ProposeError::Strategy(StrategyError {
            class: "TimeoutError".into(),
            message: format!("the strategy's Python process did not answer within {} s and was killed", t.as_secs_f64()),
            traceback: Some(stderr()),
        })),
        Ended::Stopped | Ended::Unwanted => Err(ProposeError::Transient("the strategist is stopping".into())),
    }
}

/// Fetch (or take from the cache) every result, decompress it into `dir`, and return the
/// manifest: transformation gufe key → result files.
async fn stage_results(
    dir: &Path,
    refs: &[ResultRef],
    objects: Option<&Objects>,
    cache: Option<&ResultCache>,
) -> Result<BTreeMap<String, Vec<String>>, ProposeError> {
    let mut manifest: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if refs.is_empty() {
        return Ok(manifest);
    }
    let objects = objects.ok_or_else(|| ProposeError::Transient("no object store is configured to read results from".into()))?;
    std::fs::create_dir_all(dir.join("results")).map_err(|e| transient("cannot write the work directory")(&e))?;
    for (i, r) in refs.iter().enumerate() {
        let blob = match cache.and_then(|c| c.get(&r.obj_key)) {
            Some(b) => b,
            None => {
                let location =
                    r.location.as_deref().ok_or_else(|| ProposeError::Transient(format!("result {} has no location", r.obj_key)))?;
                let b = objects
                    .get_verified(location, r.content_sha256.as_deref(), r.size)
                    .await
                    .map_err(|e| transient(&format!("cannot read result {}", r.obj_key))(&e))?
                    .to_vec();
                if let Some(c) = cache {
                    c.put(&r.obj_key, &b);
                }
                b
            }
        };
        let text =
            zstd_decompress(&blob, MAX_RESULT_BYTES).map_err(|e| transient(&format!("cannot decompress result {}", r.obj_key))(&e))?;
        let name = format!("results/{i}.json");
        std::fs::write(dir.join(&name), text).map_err(|e| transient("cannot write the work directory")(&e))?;
        manifest.entry(r.transformation.clone()).or_default().push(name);
    }
    Ok(manifest)
}

/// The driver's `error.json`.
fn python_error(text: &str) -> Option<StrategyError> {
    let v: HashMap<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Some(StrategyError { class: s("type")?, message: s("message").unwrap_or_default(), traceback: s("traceback") })
}

fn bad_answer(why: impl std::fmt::Display) -> ProposeError {
    ProposeError::Strategy(StrategyError::new("ValueError", format!("the strategy's Python process gave no valid answer: {why}")))
}

/// The driver's answer: `{"weights": {key: number or null}}` (CPython's JSON, so `NaN`
/// and `Infinity` may appear; the normalisation refuses them).
fn read_weights(path: &Path) -> Result<Vec<(String, Option<f64>)>, ProposeError> {
    let text = std::fs::read(path).map_err(|e| bad_answer(format!("cannot read {}: {e}", path.display())))?;
    let v = alchemiscale_model::json::parse_bytes(&text).map_err(bad_answer)?;
    let weights = v.get("weights").and_then(Value::as_object).ok_or_else(|| bad_answer("no `weights` mapping"))?;
    weights
        .iter()
        .map(|(k, w)| match w {
            Value::Null => Ok((k.to_string(), None)),
            Value::Number(n) => Ok((k.to_string(), Some(n.as_f64()))),
            other => Err(bad_answer(format!("the weight of {k} is {}, not a number or null", other.to_python_json()))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.json");
        std::fs::write(&p, r#"{"weights": {"T-1": 0.5, "T-2": null, "T-3": NaN, "T-4": 2}}"#).unwrap();
        let w = read_weights(&p).unwrap();
        assert_eq!(w[0], ("T-1".into(), Some(0.5)));
        assert_eq!(w[1], ("T-2".into(), None));
        assert!(w[2].1.unwrap().is_nan());
        assert_eq!(w[3], ("T-4".into(), Some(2.0)));
        for bad in ["garbage", r#"{"weights": [1]}"#, r#"{"weights": {"T-1": "high"}}"#, "{}"] {
            std::fs::write(&p, bad).unwrap();
            let Err(ProposeError::Strategy(e)) = read_weights(&p) else { panic!("{bad} accepted") };
            assert_eq!(e.class, "ValueError");
        }
        assert!(matches!(read_weights(&dir.path().join("missing")), Err(ProposeError::Strategy(_))));
    }

    #[test]
    fn driver_errors_are_read() {
        let e = python_error(r#"{"type": "KeyError", "message": "'T-9'", "traceback": "Traceback ...\nKeyError: 'T-9'"}"#).unwrap();
        assert_eq!((e.class.as_str(), e.message.as_str()), ("KeyError", "'T-9'"));
        assert!(e.traceback.unwrap().ends_with("KeyError: 'T-9'"));
        assert!(python_error("not json").is_none());
    }
}
