//! Failures of the python executor that the service has to report itself — the executor
//! killed by a signal, a unit past `task_timeout`, a protocol that cannot even plan its
//! DAG — name only gufe's classes and the protocol's own, so the stock Python client can
//! read them; and each execution's output is kept in `task_logs_dir`.
//!
//! CI has no gufe, so the test writes a stand-in: a tiny `gufe` (keyed chains rebuilt
//! generically, a Transformation whose `create` asks its protocol, ProtocolUnit,
//! ProtocolDAG, an `execute_DAG` that runs the units in order) and a `standin.protocol`
//! module whose two-unit DAG (PrepareUnit, then RunUnit) behaves as its settings say:
//! RunUnit talks on standard output and error, runs `standin-charges` (a program only the
//! executor's virtual environment holds, as AmberTools' are in an openfe environment),
//! then kills itself or hangs; `refuse` fails in `create`. The driver script is the one
//! the service ships, run by a real interpreter in a real venv.

mod common;

use std::path::{Path, PathBuf};

use alchemiscale_model::chain::KeyedChain;
use alchemiscale_model::json::{self, Value};
use alchemiscale_model::pdr::{zstd_decompress, ResultBlob};
use alchemiscale_server::testing::Backend;
use common::*;

const GUFE_TOKENIZATION: &str = include_str!("../../../testdata/standin/gufe_tokenization.py");

const GUFE_TRANSFORMATION: &str = r#"
from gufe.tokenization import Generic

class Transformation(Generic):
    def create(self, *, extends=None, name=None):
        return self.protocol.create(stateA=self.stateA, stateB=self.stateB, mapping=self.mapping,
                                    extends=extends, name=name, transformation_key=self.key)
"#;

const GUFE_PROTOCOLS: &str = r#"
def execute_DAG(dag, *, shared_basedir, scratch_basedir, keep_shared, keep_scratch, raise_error, n_retries):
    for unit in dag.protocol_units:
        unit.execute(context=None, raise_error=raise_error)
    raise RuntimeError("the stand-in gufe builds no results")
"#;

const GUFE_PROTOCOLUNIT: &str = r#"
import uuid

class ProtocolUnit:
    def __init__(self, *, name=None, **inputs):
        self.name, self.inputs = name, inputs
        self.key = f"{type(self).__qualname__}-{uuid.uuid4().hex}"

    def execute(self, *, context, raise_error=False, **inputs):
        return self._execute(context, **inputs)

    def to_dict(self):
        inputs = {k: {":gufe-key:": v.key} if isinstance(v, ProtocolUnit) else v for k, v in self.inputs.items()}
        return {"inputs": inputs, "name": self.name, "_key": self.key, "__qualname__": type(self).__qualname__,
                "__module__": type(self).__module__, ":version:": 1}
"#;

const GUFE_PROTOCOLDAG: &str = r#"
import hashlib, json

class ProtocolDAG:
    def __init__(self, *, protocol_units, transformation_key, extends_key=None, name=None):
        self.protocol_units, self.transformation_key, self.extends_key, self.name = protocol_units, transformation_key, extends_key, name

    def _dict(self):
        return {"name": self.name, "protocol_units": [{":gufe-key:": u.key} for u in self.protocol_units],
                "transformation_key": self.transformation_key, "extends_key": self.extends_key,
                "__qualname__": "ProtocolDAG", "__module__": "gufe.protocols.protocoldag", ":version:": 1}

    @property
    def key(self):
        return "ProtocolDAG-" + hashlib.md5(json.dumps(self._dict(), sort_keys=True).encode()).hexdigest()

    def to_keyed_chain(self):
        return [[u.key, u.to_dict()] for u in self.protocol_units] + [[self.key, self._dict()]]
"#;

const ZSTANDARD: &str = r#"
# stand-in: the stand-in protocol never produces a result, so nothing is compressed
class ZstdError(Exception):
    pass

class ZstdCompressor:
    def compress(self, data):
        raise NotImplementedError("stand-in zstandard")
"#;

const STANDIN_PROTOCOL: &str = r#"
import os, signal, subprocess, sys, time
from gufe.tokenization import Generic
from gufe.protocols.protocolunit import ProtocolUnit
from gufe.protocols.protocoldag import ProtocolDAG

class PrepareUnit(ProtocolUnit):
    def _execute(self, ctx, **inputs):
        print("preparing", self.inputs["system"], flush=True)
        return {}

class RunUnit(ProtocolUnit):
    def _execute(self, ctx, **inputs):
        print("chatter of the engine on standard output", flush=True)
        print("warning from the engine on standard error", file=sys.stderr, flush=True)
        subprocess.run(["standin-charges"], check=True)
        if self.inputs["behaviour"] == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(3600)

class StandinProtocol(Generic):
    def create(self, *, stateA, stateB, mapping, extends, name, transformation_key):
        behaviour = self.settings["behaviour"]
        if behaviour == "refuse":
            raise ValueError("the stand-in protocol cannot plan this transformation")
        prepare = PrepareUnit(name=f"prepare {stateA.name}", system=stateA.name)
        run = RunUnit(name=f"run {stateB.name}", prepared=prepare, behaviour=behaviour)
        return ProtocolDAG(protocol_units=[prepare, run], transformation_key=transformation_key, name=name)
"#;

const PROTOCOL: (&str, &str) = ("StandinProtocol", "standin.protocol");

/// The stand-in modules (for PYTHONPATH) and a venv whose `bin` holds `standin-charges`.
fn standin_environment(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let modules = dir.join("modules");
    for (file, text) in [
        ("gufe/__init__.py", ""),
        ("gufe/tokenization.py", GUFE_TOKENIZATION),
        ("gufe/transformations/__init__.py", ""),
        ("gufe/transformations/transformation.py", GUFE_TRANSFORMATION),
        ("gufe/protocols/__init__.py", GUFE_PROTOCOLS),
        ("gufe/protocols/protocolunit.py", GUFE_PROTOCOLUNIT),
        ("gufe/protocols/protocoldag.py", GUFE_PROTOCOLDAG),
        ("zstandard.py", ZSTANDARD),
        ("standin/__init__.py", ""),
        ("standin/protocol.py", STANDIN_PROTOCOL),
    ] {
        let path = modules.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let venv = dir.join("venv");
    let made = std::process::Command::new("python3").args(["-m", "venv", "--without-pip"]).arg(&venv).status().unwrap();
    assert!(made.success(), "python3 -m venv failed");
    let tool = venv.join("bin/standin-charges");
    std::fs::write(&tool, "#!/bin/sh\necho \"charges assigned by $0\" >&2\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    (modules, venv)
}

/// (key, module) of every object of a result's chain, and the root's `name`.
fn chain_classes(r: &ResultBlob) -> (Vec<(String, String)>, Option<String>) {
    let text = zstd_decompress(&r.blob, 1 << 30).unwrap();
    let chain = KeyedChain::from_value(json::parse_bytes(&text).unwrap()).unwrap();
    let classes = chain.entries().iter().map(|e| (e.key.to_string(), e.module().to_string())).collect();
    (classes, chain.root().name().map(str::to_string))
}

async fn python_failures(backend: Backend) {
    let Some(env) = env(backend).await else { return };
    let (modules, venv) = standin_environment(env.dir.path());
    let behaviour = |b: &str| [("behaviour", Value::from(b))];
    let mut cases = Vec::new();
    for b in ["crash", "hang", "refuse"] {
        let (net, tfs) = env.submit_protocol(b, 1, PROTOCOL, &behaviour(b)).await;
        let task = env.tasks(&net, &tfs).await.remove(0);
        cases.push((b, tfs[0].clone(), task));
    }
    let logs = env.dir.path().join("logs");
    let extra = format!(
        "executor_python: {}\nexecutor_env: {{PYTHONPATH: '{}'}}\ntask_timeout: 3\ntask_logs_dir: {}\nmax_tasks: 3\n",
        venv.join("bin/python").display(),
        modules.display(),
        logs.display()
    );
    let summary = env.start("pyfail", &extra).join().await;
    assert_eq!((summary.executed, summary.failed), (3, 3), "{summary:?}");

    for (b, tf, task) in &cases {
        let failures = env.task_results(task, true).await;
        assert_eq!(failures.len(), 1, "{b}");
        let r = env.download(tf, &failures[0], true).await;
        assert!(!r.summary.ok);
        assert_eq!(r.summary.transformation_key.as_deref(), Some(tf.gufe_key().as_str()), "{b}");
        let f = &r.summary.failures[0];
        let (classes, name) = chain_classes(&r);
        assert_eq!(name.as_deref(), Some(task.to_string().as_str()), "{b}: the result is named after the task");
        for (key, module) in &classes {
            assert!(module.starts_with("gufe.") || module == PROTOCOL.1, "{b}: {key} is of module {module}, outside gufe and the protocol");
        }
        let tb = &f.traceback;
        match *b {
            "refuse" => {
                assert_eq!(f.source_key, f.key, "no DAG: the failure stands for its own unit");
                assert!(classes.iter().all(|(_, m)| m.starts_with("gufe.protocols.")), "{classes:?}");
                assert!(tb.starts_with("ChildProcessError: executor exited with status 1\n"), "{tb}");
                assert!(tb.contains("ValueError: the stand-in protocol cannot plan this transformation"), "{tb}");
            }
            _ => {
                assert!(f.source_key.starts_with("RunUnit-"), "{b}: the unit that was running gets the failure: {}", f.source_key);
                let units: Vec<&str> = classes.iter().map(|(k, _)| k.split('-').next().unwrap()).collect();
                assert_eq!(units, ["PrepareUnit", "RunUnit", "ProtocolUnitFailure", "ProtocolDAGResult"], "{b}");
                let first = if *b == "crash" {
                    "ChildProcessError: executor exited with signal 9\n"
                } else {
                    "TimeoutError: task exceeded task_timeout of 3 s\n"
                };
                assert!(tb.starts_with(first), "{tb}");
                assert!(tb.contains("warning from the engine on standard error"), "{tb}");
                let tool = venv.join("bin/standin-charges");
                assert!(tb.contains(&format!("charges assigned by {}", tool.display())), "found on the venv's PATH: {tb}");
            }
        }
        // the output is kept, named in the failure, and holds what the protocol said
        let line = tb.lines().find(|l| l.starts_with("executor output kept on the compute host: ")).unwrap_or_else(|| panic!("{tb}"));
        let (stdout, stderr) = line.trim_start_matches("executor output kept on the compute host: ").split_once(" and ").unwrap();
        assert!(Path::new(stdout).starts_with(&logs) && stdout.contains(&task.to_string()), "{stdout}");
        let (out, err) = (std::fs::read_to_string(stdout).unwrap(), std::fs::read_to_string(stderr).unwrap());
        if *b != "refuse" {
            assert!(out.contains("chatter of the engine on standard output"), "{out}");
            assert!(err.contains("warning from the engine on standard error"), "{err}");
        } else {
            assert!(err.contains("cannot plan this transformation"), "{err}");
        }
    }
    let kept = std::fs::read_dir(&logs).unwrap().count();
    assert_eq!(kept, 6, "two files per execution");
}
alchemiscale_server::backend_test!(python_failures_name_the_protocols_units, super::python_failures);

/// With `task_logs_max_mb: 0` nothing is kept: the output lives in the task directory and
/// goes with it, and failures still quote its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_not_kept_when_asked() {
    let env = env(Backend::Sqlite).await.unwrap();
    let (modules, venv) = standin_environment(env.dir.path());
    let (net, tfs) = env.submit_protocol("crash", 1, PROTOCOL, &[("behaviour", Value::from("crash"))]).await;
    let task = env.tasks(&net, &tfs).await.remove(0);
    let extra = format!(
        "executor_python: {}\nexecutor_env: {{PYTHONPATH: '{}'}}\ntask_logs_max_mb: 0\nmax_tasks: 1\n",
        venv.join("bin/python").display(),
        modules.display()
    );
    let summary = env.start("nolog", &extra).join().await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    let r = env.download(&tfs[0], &env.task_results(&task, true).await[0], true).await;
    let tb = &r.summary.failures[0].traceback;
    assert!(tb.contains("warning from the engine on standard error") && !tb.contains("kept on the compute host"), "{tb}");
    let scratch = env.dir.path().join("nolog/scratch");
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "nothing left in {}: {left:?}", scratch.display());
}
