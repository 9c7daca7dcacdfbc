//! Strategies run in Python, through the driver script, on SQLite and PostgreSQL.
//!
//! CI has no gufe, so each test writes a stand-in: a tiny `gufe` package (keyed chains
//! rebuilt generically, a Transformation whose `gather` counts its results) and a
//! `standin` strategy module whose settings choose what it does — answer, crash, hang,
//! die, write garbage, name a stranger, answer NaN, or take its time. The driver script
//! itself is the one the strategist ships.

use std::time::Duration;

use alchemiscale_model::pdr::zstd_compress;
use alchemiscale_model::status::{StrategyMode, StrategyTaskScaling};
use alchemiscale_model::synthetic::{network_chain_json, result_chain_json};
use alchemiscale_model::{NetworkState, Scope, ScopedKey};
use alchemiscale_objects::Objects;
use alchemiscale_store::results::RecordedResult;
use alchemiscale_store::strategy::StrategyState;
use alchemiscale_store::tasks::TaskRequest;
use alchemiscale_store::{store_test, Store};
use alchemiscale_strategist::{Settings, Strategist};

const FAKE_GUFE: &str = include_str!("../../../testdata/standin/gufe_tokenization.py");

const FAKE_TRANSFORMATION: &str = r#"
from gufe.tokenization import Generic

class Gathered:
    def __init__(self, n):
        self.n_protocol_dag_results = n

class Transformation(Generic):
    def gather(self, pdrs):
        assert all(p.protocol_unit_results for p in pdrs), "results were not rebuilt"
        return Gathered(len(pdrs))
"#;

const STANDIN: &str = r#"
import os, sys, time
from gufe.tokenization import Generic

class Proposal:
    def __init__(self, weights):
        self.weights = weights

class Standin(Generic):
    def propose(self, network, results):
        s = self.settings
        b = s["behaviour"]
        if b == "crash":
            raise RuntimeError("the strategy broke")
        if b == "hang":
            time.sleep(3600)
        if b == "die":
            os._exit(3)
        if b == "garbage":
            with open(sys.argv[sys.argv.index("--output") + 1], "w") as f:
                f.write("this is not JSON")
            os._exit(0)
        if b == "stranger":
            return Proposal({"Transformation-00000000000000000000000000000000": 1.0})
        if b == "nan":
            return Proposal({t.key: float("nan") for t in network.edges})
        if b == "zeros":
            return Proposal({t.key: 0.0 for t in network.edges})
        if b == "slow":
            time.sleep(s["seconds"])
        print("chatter on standard output " * 100)
        done = lambda t: results[t.key] is not None and results[t.key].n_protocol_dag_results >= s["max_runs"]
        return Proposal({t.key: (None if done(t) else 1.0) for t in network.edges})
"#;

/// The stand-in modules, in a directory for PYTHONPATH.
fn python_path() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let gufe = dir.path().join("gufe");
    std::fs::create_dir_all(gufe.join("transformations")).unwrap();
    std::fs::write(gufe.join("__init__.py"), "").unwrap();
    std::fs::write(gufe.join("tokenization.py"), FAKE_GUFE).unwrap();
    std::fs::write(gufe.join("transformations/__init__.py"), "").unwrap();
    std::fs::write(gufe.join("transformations/transformation.py"), FAKE_TRANSFORMATION).unwrap();
    std::fs::write(dir.path().join("standin.py"), STANDIN).unwrap();
    dir
}

fn scope() -> Scope {
    "py-campaign-project".parse().unwrap()
}

fn standin(behaviour: &str, extra: &str) -> String {
    let token =
        format!("{behaviour}{extra}").bytes().fold(0xcbf2_9ce4_8422_2325u128, |h, b| (h ^ b as u128).wrapping_mul(0x0100_0000_01b3));
    format!(
        r#"[["Standin-{token:032x}", {{"settings": {{"behaviour": "{behaviour}", "max_runs": 2{extra}}}, "__qualname__": "Standin", "__module__": "standin", ":version:": 1}}]]"#
    )
}

fn chain(text: &str) -> alchemiscale_model::chain::KeyedChain {
    alchemiscale_model::chain::KeyedChain::from_value(alchemiscale_model::json::parse(text).unwrap()).unwrap()
}

/// A network of 3 transformations with a stand-in strategy; the first transformation
/// gets `results` successful results (stored in the object store). Returns the network
/// and its transformations, the first one first.
async fn network(store: &Store, objects: &Objects, tag: &str, strategy: &str, results: u64) -> (ScopedKey, Vec<ScopedKey>) {
    let net = store.create_network(&chain(&network_chain_json(3, 3, tag)), &scope(), NetworkState::Active).await.unwrap().network;
    let mut tfs = store.network_transformations(&net).await.unwrap();
    tfs.sort();
    for n in 0..results {
        let task = store.create_tasks(&[TaskRequest { transformation: tfs[0].clone(), extends: None }], None).await.unwrap().remove(0);
        let text = result_chain_json(tfs[0].gufe_key().as_str(), true, 100, n + 1);
        let obj_key = alchemiscale_model::json::parse(&text).unwrap().as_array().unwrap().last().unwrap().as_array().unwrap()[0]
            .as_str()
            .unwrap()
            .to_string();
        let location = format!("protocoldagresult/py/campaign/project/{}/results/{obj_key}/obj.json.zst", tfs[0].gufe_key());
        let blob = zstd_compress(text.as_bytes());
        let sha = objects.put(&location, blob.clone().into()).await.unwrap();
        let r =
            RecordedResult { obj_key, ok: true, location, content_sha256: sha, size: blob.len() as i64, creator: None, tracebacks: None };
        store.record_result(&task, &r).await.unwrap();
    }
    let state =
        StrategyState { mode: StrategyMode::Full, task_scaling: StrategyTaskScaling::Linear, sleep_interval: 1, ..Default::default() };
    store.set_network_strategy(&net, Some(&chain(strategy)), state).await.unwrap();
    (net, tfs)
}

fn strategist(store: &Store, objects: &Objects, path: &std::path::Path, cache: &std::path::Path, timeout: f64, sleep: u64) -> Strategist {
    let yaml = format!(
        "sleep_interval: {sleep}\nmax_workers: 4\npython: python3\npython_timeout: {timeout}\npython_env: {{PYTHONPATH: '{}'}}\ncache_directory: '{}'\n",
        path.display(),
        cache.display()
    );
    let (settings, _) = Settings::from_yaml(&yaml).unwrap();
    Strategist::from_settings(store.clone(), Some(objects.clone()), &settings).unwrap()
}

async fn actioned_per_tf(store: &Store, net: &ScopedKey, tfs: &[ScopedKey]) -> Vec<usize> {
    let mut out = vec![0; tfs.len()];
    for (task, _) in store.network_actioned_tasks(net).await.unwrap() {
        let tf = store.get_task_transformation(&task).await.unwrap();
        out[tfs.iter().position(|t| t == &tf).unwrap()] += 1;
    }
    out
}

/// Python answers are used like native ones; results are gathered (and cached); every way
/// a Python strategy can fail lands in its own state only.
async fn python_strategies(store: Store) {
    let objects = alchemiscale_objects::testing::local();
    let objects = &objects.objects;
    let path = python_path();
    let cache = tempfile::tempdir().unwrap();

    // answers: the first transformation has max_runs results -> null; the others 1.0 each
    // -> 0.5 normalised -> linear M = 3: floor(2.5) = 2 tasks
    let (good, good_tfs) = network(&store, objects, "good", &standin("weights", ""), 2).await;
    let mut failing = Vec::new();
    for b in ["crash", "hang", "die", "garbage", "stranger", "nan", "zeros"] {
        failing.push((b, network(&store, objects, b, &standin(b, ""), 0).await));
    }
    // (a 10 s cycle: the re-query while the hanging one runs finds nothing new)
    let s = strategist(&store, objects, path.path(), cache.path(), 3.0, 10).cycle().await;
    assert_eq!((s.due, s.committed, s.errored), (8, 8, 7), "{s:?}");
    assert_eq!(actioned_per_tf(&store, &good, &good_tfs).await, vec![0, 2, 2]);
    let state = store.get_strategy_state(&good).await.unwrap().unwrap();
    assert_eq!((state.status.as_str(), state.last_iteration_result_count), ("awake", 2));
    let cached =
        std::fs::read_dir(cache.path()).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".zst")).count();
    assert_eq!(cached, 2, "both results were downloaded into the cache");

    for (behaviour, (net, tfs)) in &failing {
        let state = store.get_strategy_state(net).await.unwrap().unwrap();
        let (class, message) = state.exception.clone().unwrap();
        let traceback = state.traceback.clone().unwrap_or_default();
        assert_eq!(state.status.as_str(), "error", "{behaviour}");
        match *behaviour {
            "crash" => {
                assert_eq!((class.as_str(), message.as_str()), ("RuntimeError", "the strategy broke"));
                assert!(traceback.contains("in propose") && traceback.ends_with("RuntimeError: the strategy broke\n"), "{traceback}");
            }
            "hang" => assert!(class == "TimeoutError" && message.contains("within 3 s"), "{class}: {message}"),
            "die" => assert!(class == "StrategyProcessError" && message.contains("status 3"), "{class}: {message}"),
            "garbage" => assert!(class == "ValueError" && message.contains("no valid answer"), "{class}: {message}"),
            "stranger" => assert!(class == "KeyError" && message.contains("not a transformation of network"), "{class}: {message}"),
            "nan" => assert!(class == "ValueError" && message.contains("not a finite number"), "{class}: {message}"),
            "zeros" => assert!(class == "ZeroDivisionError" && message.contains("sum to zero"), "{class}: {message}"),
            _ => unreachable!(),
        }
        assert_eq!(actioned_per_tf(&store, net, tfs).await, vec![0, 0, 0], "{behaviour}: nothing else changes");
        assert_eq!(store.transformation_tasks(&tfs[1], None, None).await.unwrap().len(), 0);
    }
    // the next cycle serves the good network again (after its interval), not the errored ones
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = strategist(&store, objects, path.path(), cache.path(), 3.0, 1).cycle().await;
    assert_eq!((s.due, s.committed, s.tasks_created), (1, 1, 0), "{s:?}");
}

/// A strategy replaced while its Python `propose` runs: the user's edit wins and the
/// execution changes nothing.
async fn edit_while_running(store: Store) {
    let objects = alchemiscale_objects::testing::local();
    let objects = &objects.objects;
    let path = python_path();
    let cache = tempfile::tempdir().unwrap();
    let (net, tfs) = network(&store, objects, "slow", &standin("slow", r#", "seconds": 2"#), 0).await;
    let s = strategist(&store, objects, path.path(), cache.path(), 30.0, 10);
    let cycle = tokio::spawn(async move { s.cycle().await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let edited = StrategyState { max_tasks_per_transformation: 1, sleep_interval: 1, ..Default::default() };
    store.replace_strategy_state(&net, edited.clone()).await.unwrap();
    let summary = cycle.await.unwrap();
    assert_eq!((summary.due, summary.committed, summary.discarded), (1, 0, 1), "{summary:?}");
    assert_eq!(store.get_strategy_state(&net).await.unwrap(), Some(edited));
    assert_eq!(actioned_per_tf(&store, &net, &tfs).await, vec![0, 0, 0]);
    // the lease was released: the next cycle runs it (with the edited state: M = 1)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = strategist(&store, objects, path.path(), cache.path(), 30.0, 1).cycle().await;
    assert_eq!((s.committed, s.tasks_created), (1, 3), "{s:?}");
}

store_test!(python_strategies_answer_and_fail_alone, |store| python_strategies(store));
store_test!(python_strategy_edited_while_running, |store| edit_while_running(store));
