"""Check the strategist's native `ConnectivityStrategy` and `RadialGrowthStrategy` against
the real stratocaster 0.2 + alchemiscale 0.8 logic, through the real Python client.

Run by hand (not in CI: gufe 1.x, stratocaster, openff-units and openff-utilities are not
on PyPI). The environment, in a throwaway venv outside the repository, Python 3.12
(openff-utilities 0.1.17 wants >= 3.12). gufe, stratocaster, openff-units and
openff-utilities are installed from git clones (OpenFreeEnergy/gufe, OpenFreeEnergy/
stratocaster, openforcefield/openff-units, openforcefield/openff-utilities) checked out at
the tags below; clones rather than archives, so versioningit / setuptools-scm see the tags:

    python3.12 -m venv /tmp/compat-venv && . /tmp/compat-venv/bin/activate
    pip install "pydantic>=2,<2.12" pint numpy networkx rdkit openmm msgpack zstandard pooch \
        typing-extensions annotated-types setuptools setuptools-scm versioningit pytest \
        requests httpx fastapi uvicorn gunicorn click pyyaml diskcache rich python-jose \
        passlib bcrypt async-lru nest_asyncio pydantic-settings neo4j py2neo boto3
    git -C /tmp/src/openff-utilities checkout v0.1.17
    git -C /tmp/src/openff-units checkout 0.3.1
    git -C /tmp/src/stratocaster checkout v0.2.0
    git -C /tmp/src/gufe checkout v1.12.0
    pip install --no-deps --no-build-isolation /tmp/src/openff-utilities /tmp/src/openff-units /tmp/src/stratocaster
    SETUPTOOLS_SCM_PRETEND_VERSION=1.12.0 pip install --no-deps --no-build-isolation /tmp/src/gufe
    pip install --no-deps alchemiscale==0.8.0   # its wheel declares no dependencies

Then, against a server whose own strategist is off (so only the explicit command runs):

    alchemiscale --data-dir /tmp/compat-strat serve --port 18090 --compute-port 18091 --no-strategist &
    python compat/strategist.py http://127.0.0.1:18090 user <user key from credentials.txt> \\
        target/debug/alchemiscale /tmp/compat-strat

What it does. It builds real gufe networks (benzene modifications, gufe's DummyProtocol):
"star_chain" (7 systems, 8 transformations: a star of degree 4, a chain, a triangle
and a reversed pair), "islands" (three components: a path of 4, a star of 2 and a
lone NonTransformation loop), and "single" (one transformation: normalised weight 1).
Each case submits its network to a fresh scope, attaches a stratocaster strategy with
`set_network_strategy(mode="full", ...)` and then ONE `alchemiscale strategist --once`
runs every case (config: `sleep_interval: 1`, scopes limited to this run). Expected task
counts come from the real `strategy.propose(network, {tf.key: None ...}).resolve()` and
alchemiscale 0.8's own `StrategistService._weights_to_task_counts` (called unbound). As
stratocaster's answer depends on the order of the edges (gufe keeps them in a frozenset,
ordered by hash-seeded hashes), the expected counts are also computed for many random
edge orders: a case whose answers differ between orders is accepted when ours is one of
them (and said so). The counts compared are the actioned tasks per transformation.

Covered: Connectivity (max_runs, cutoff only, cutoff + max_runs, decay rates),
RadialGrowth (defaults, candidacy_max_distance=2, decay_distance_rate), linear and
exponential task scaling, several components, a loop, a reversed pair, weight 1 and
weight 0 / None; the strategy's round trip through the server (keyed chain as sent); the
strategy state after each cycle (awake, iterations, mode, scaling, no exception); a second
cycle changing nothing; re-setting strategies (state back to iteration 0) with a lower
max_tasks_per_transformation in full mode (excess tasks cancelled) and in partial mode
(none cancelled), and with a higher one in partial mode (tasks added). Two probes of
stratocaster's order-dependent corners (two transformations between the same pair of
systems; RadialGrowth's "lowest complete eccentricity") are reported, not asserted: the
native implementation documents its deliberate choice there (crates/strategist/src/native.rs).

Not covered: rounds with results (decay by result count, max_runs reached, dormancy), which
need a compute service; compat/compute_service.py drives that side.
Ends with "ALL OK".
"""
import importlib.resources
import json
import random
import subprocess
import sys
import tempfile
import time
import types
import uuid

import networkx as nx
import requests
from rdkit import Chem
from gufe import AlchemicalNetwork, ChemicalSystem, NonTransformation, SmallMoleculeComponent, SolventComponent, Transformation
from gufe.tests.test_protocol import DummyProtocol
from stratocaster.base import StrategyResult
from stratocaster.strategies import ConnectivityStrategy, RadialGrowthStrategy
from stratocaster.strategies.connectivity import ConnectivityStrategySettings
from stratocaster.strategies.radialgrowth import RadialGrowthStrategySettings

from alchemiscale import AlchemiscaleClient, Scope
from alchemiscale.storage.models import StrategyTaskScalingEnum
from alchemiscale.strategist.service import StrategistService

url, identifier, key, binary, data_dir = sys.argv[1:6]
client = AlchemiscaleClient(url, identifier, key, use_local_cache=False)
PERMUTATIONS = 300


def step(name):
    print(f"-- {name}", flush=True)


# ---------------------------------------------------------------- networks
sdf = importlib.resources.files("gufe.tests.data") / "benzene_modifications.sdf"
mols = {m.GetProp("_Name"): SmallMoleculeComponent(m) for m in Chem.SDMolSupplier(str(sdf), removeHs=False)}
solvent = SolventComponent()
protocol = DummyProtocol(settings=DummyProtocol.default_settings())
solvated = {n: ChemicalSystem({"ligand": m, "solvent": solvent}, name=f"{n}_solvent") for n, m in mols.items()}
vacuum = {n: ChemicalSystem({"ligand": m}, name=f"{n}_vacuum") for n, m in mols.items()}


def tf(a, b, systems=solvated, name=None):
    return Transformation(systems[a], systems[b], protocol, mapping=None, name=name or f"{a}->{b}")


# star around benzene (degree 4), a chain toluene-styrene-benzaldehyde with a reversed
# pair styrene<->benzaldehyde, and a triangle benzene-phenol-anisole
star_chain = AlchemicalNetwork(
    edges=[
        tf("benzene", "toluene"),
        tf("benzene", "phenol"),
        tf("benzene", "anisole"),
        tf("benzene", "benzonitrile"),
        tf("phenol", "anisole"),
        tf("toluene", "styrene"),
        tf("styrene", "benzaldehyde"),
        tf("benzaldehyde", "styrene"),
    ],
    name="strat_star_chain",
)
# three components: a path of 4 (two centres), a star of 2, a lone NonTransformation
islands = AlchemicalNetwork(
    edges=[
        tf("phenol", "anisole"),
        tf("benzonitrile", "anisole"),
        tf("benzonitrile", "styrene"),
        tf("benzene", "toluene", vacuum),
        tf("benzene", "benzaldehyde", vacuum),
        NonTransformation(vacuum["phenol"], protocol, name="phenol_vacuum_self"),
    ],
    name="strat_islands",
)
single = AlchemicalNetwork(edges=[tf("benzene", "toluene")], name="strat_single")
# probe: two transformations between the same ordered pair (stratocaster weighs one of them)
parallel = AlchemicalNetwork(
    edges=[tf("benzene", "toluene"), tf("benzene", "toluene", name="benzene->toluene (again)"), tf("benzene", "phenol")],
    name="strat_parallel",
)
# probe: RadialGrowth's lowest complete eccentricity depends on the edge order here
# (path a-b-c-d-e plus x joined to b and c: edges x-b (3, 3) and b-c (2, 3) both lie
# below the maximum 4)
radial_probe = AlchemicalNetwork(
    edges=[
        tf("benzene", "toluene"),
        tf("toluene", "phenol"),
        tf("phenol", "anisole"),
        tf("anisole", "styrene"),
        tf("benzaldehyde", "toluene"),
        tf("benzaldehyde", "phenol"),
    ],
    name="strat_radial_probe",
)


def connectivity(**kw):
    return ConnectivityStrategy(ConnectivityStrategySettings(**kw))


def radial(**kw):
    return RadialGrowthStrategy(RadialGrowthStrategySettings(**kw))


# (label, network, strategy, max_tasks_per_transformation, task_scaling, probe)
CASES = [
    ("conn_max_runs_lin5", star_chain, connectivity(max_runs=3, decay_rate=0.5), 5, "linear", False),
    ("conn_max_runs_exp10", star_chain, connectivity(max_runs=3), 10, "exponential", False),
    ("conn_cutoff_lin10", star_chain, connectivity(cutoff=2.1, max_runs=None, decay_rate=0.25), 10, "linear", False),
    ("conn_cutoff_runs_exp5", star_chain, connectivity(cutoff=2.5, max_runs=2), 5, "exponential", False),
    ("radial_default_lin5", star_chain, radial(), 5, "linear", False),
    ("radial_dist2_exp10", star_chain, radial(candidacy_max_distance=2), 10, "exponential", False),
    ("islands_conn_lin10", islands, connectivity(max_runs=3), 10, "linear", False),
    ("islands_conn_exp5", islands, connectivity(max_runs=3, decay_rate=0.9), 5, "exponential", False),
    ("islands_radial_exp5", islands, radial(), 5, "exponential", False),
    ("islands_radial_lin10", islands, radial(candidacy_max_distance=2, decay_distance_rate=0.25), 10, "linear", False),
    ("conn_max_runs_exp200", star_chain, connectivity(max_runs=3), 200, "exponential", False),
    ("radial_default_exp10", star_chain, radial(), 10, "exponential", False),
    ("islands_conn_exp100", islands, connectivity(max_runs=3), 100, "exponential", False),
    ("islands_radial_exp100", islands, radial(), 100, "exponential", False),
    ("single_conn_lin4", single, connectivity(max_runs=3), 4, "linear", False),
    ("single_radial_exp3", single, radial(), 3, "exponential", False),
    ("probe_parallel_conn", parallel, connectivity(max_runs=3), 10, "linear", True),
    ("probe_radial_order", radial_probe, radial(candidacy_max_distance=2), 10, "linear", True),
]


# ---------------------------------------------------------------- expected counts
def to_counts(weights, m, scaling):
    return StrategistService._weights_to_task_counts(None, dict(weights), m, StrategyTaskScalingEnum(scaling))


def expected_real(network, strategy, m, scaling):
    """What alchemiscale 0.8's strategist computes, in this process (its edge order)."""
    weights = strategy.propose(network, {t.key: None for t in network.edges}).resolve()
    return weights, to_counts(weights, m, scaling)


def expected_permuted(network, strategy, m, scaling, rng):
    """The same with the edges (and components) in a random order: stratocaster's
    `propose` over `connected_subgraphs`, each a MultiDiGraph as gufe builds it."""
    edges = list(network.edges)
    rng.shuffle(edges)
    whole = nx.MultiDiGraph()
    for t in edges:
        whole.add_edge(t.stateA, t.stateB, object=t)
    components = [c for c in nx.weakly_connected_components(whole)]
    rng.shuffle(components)
    acc = StrategyResult({})
    for nodes in components:
        sub_edges = [t for t in edges if t.stateA in nodes]
        rng.shuffle(sub_edges)
        g = nx.MultiDiGraph()
        for t in sub_edges:
            g.add_edge(t.stateA, t.stateB, object=t)
        acc |= strategy._propose(types.SimpleNamespace(graph=nx.freeze(g)), {})
    return to_counts(acc.resolve(), m, scaling)


def all_expected(network, strategy, m, scaling, seed):
    rng = random.Random(seed)
    seen = {}
    for _ in range(PERMUTATIONS):
        c = expected_permuted(network, strategy, m, scaling, rng)
        seen.setdefault(tuple(sorted(c.items())), c)
    return list(seen.values())


# ---------------------------------------------------------------- server side
def actioned_counts(an_sk):
    actioned = set(client.get_network_actioned_tasks(an_sk))
    out = {}
    for tf_sk in client.get_network_transformations(an_sk):
        out[tf_sk.gufe_key] = len(actioned & set(client.get_transformation_tasks(tf_sk)))
    return out, len(actioned)


def run_strategist(scope_prefix):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(f"sleep_interval: 1\nscopes: ['{scope_prefix}-*']\nloglevel: INFO\nuse_local_cache: false\n")
        config = f.name
    p = subprocess.run([binary, "--data-dir", data_dir, "strategist", "--once", "-c", config], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p.stderr + p.stdout


def names(network):
    return {t.key: t.name for t in network.edges}


def table(network, weights, got, want):
    n = names(network)
    for k in sorted(n, key=lambda k: n[k]):
        w = weights.get(k, "absent")
        ws = f"{w:.6f}" if isinstance(w, float) else str(w)
        mark = "" if got.get(k) == want.get(k, 0) else "   <-- differs"
        print(f"     {n[k]:<34} weight {ws:>10}  expected {want.get(k, 0):>2}  got {got.get(k):>2}{mark}")


def check_state(an_sk, iterations, m, scaling, mode="full"):
    st = client.get_network_strategy_state(an_sk)
    assert st is not None
    assert st.status == "awake", st
    assert st.iterations == iterations, st
    assert st.mode == mode and st.task_scaling == scaling and st.max_tasks_per_transformation == m, st
    assert st.exception is None and st.traceback is None, st
    assert st.last_iteration is not None, st
    assert st.last_iteration_result_count == 0, st
    assert client.get_network_strategy_status(an_sk) == "awake"
    return st


# ---------------------------------------------------------------- run
run = uuid.uuid4().hex[:8]
org, campaign = "compat", f"strat{run}"
prefix = f"{org}-{campaign}"

step(f"submit {len(CASES)} networks and strategies (scopes {prefix}-*)")
submitted = []
for i, (label, network, strategy, m, scaling, probe) in enumerate(CASES):
    scope = Scope(org, campaign, f"case{i}")
    an_sk = client.create_network(network, scope)
    strat_sk = client.set_network_strategy(an_sk, strategy, max_tasks_per_transformation=m, task_scaling=scaling, mode="full", sleep_interval=1)
    assert strat_sk is not None and strat_sk.gufe_key == strategy.key, (strat_sk, strategy.key)
    assert client.get_network_strategy(an_sk) == strategy
    st = client.get_network_strategy_state(an_sk)
    assert st.iterations == 0 and st.status == "awake" and st.last_iteration is None, st
    assert client.get_network_actioned_tasks(an_sk) == []
    submitted.append((label, network, strategy, m, scaling, probe, an_sk))

step("the strategy as the server returns it (GET /networks/{sk}/strategy)")
for label, _, strategy, *_rest, an_sk in submitted:
    if label == "conn_cutoff_lin10":
        chain = client._get_resource(f"/networks/{an_sk}/strategy")
        raw = requests.get(f"{url}/networks/{an_sk}/strategy", headers=client._headers).text
        print("   raw:", raw)
        from gufe.tokenization import KeyedChain
        sent = KeyedChain.gufe_to_keyed_chain_rep(strategy)
        assert [list(pair) for pair in sent] == chain, (chain, sent)
        settings = [d["settings"] for _, d in json.loads(raw) if "settings" in d][0]
        print("   sent == returned; settings:", json.dumps(settings))
        assert settings["max_runs"] is None and settings["cutoff"] == 2.1 and settings[":is_custom:"] is True

step("alchemiscale strategist --once")
log = run_strategist(prefix)
print("   " + "\n   ".join(line for line in log.splitlines() if "cycle done" in line or "WARN" in line or "ERROR" in line))

failures, notes = [], []
first = {}
for i, (label, network, strategy, m, scaling, probe, an_sk) in enumerate(submitted):
    weights, want = expected_real(network, strategy, m, scaling)
    options = all_expected(network, strategy, m, scaling, seed=i)
    got, total = actioned_counts(an_sk)
    first[label] = got
    step(f"{label}: {type(strategy).__name__} {strategy.settings.model_dump()} M={m} {scaling}")
    table(network, weights, got, want)
    full_want = {k: want.get(k, 0) for k in got}
    options_full = [{k: o.get(k, 0) for k in got} for o in options]
    assert full_want in options_full, "the edge-order emulation misses stratocaster's own answer"
    if probe:
        verdict = "same as this process's stratocaster" if got == full_want else "differs from this process's stratocaster"
        among = any(got == o for o in options_full)
        notes.append(f"{label}: {verdict}; {len(options_full)} distinct stratocaster answer(s) over {PERMUTATIONS} edge orders; ours {'is' if among else 'is NOT'} one of them")
        print(f"   probe: {notes[-1]}")
        if len(options_full) > 1:
            for o in options_full:
                print("     stratocaster order variant:", {names(network)[k]: v for k, v in sorted(o.items(), key=lambda kv: names(network)[kv[0]])})
    elif len(options_full) == 1:
        if got != full_want:
            failures.append(label)
    else:
        print(f"   note: stratocaster's counts depend on the edge order here ({len(options_full)} variants)")
        if not any(got == o for o in options_full):
            failures.append(label)
        else:
            notes.append(f"{label}: order-dependent in stratocaster, ours matches one order")
    assert sum(got.values()) == total
    check_state(an_sk, 1, m, scaling)
assert not failures, f"task counts differ from stratocaster + alchemiscale 0.8: {failures}"

step("a second cycle changes nothing (no results: same targets), iterations 2")
time.sleep(1.2)
run_strategist(prefix)
for label, network, strategy, m, scaling, probe, an_sk in submitted:
    got, _ = actioned_counts(an_sk)
    assert got == first[label], (label, got, first[label])
    check_state(an_sk, 2, m, scaling)

step("re-set strategies: full mode cancels the excess, partial mode only adds")
# label -> (mode, new max_tasks_per_transformation)
resets = {
    "radial_default_lin5": ("full", 2),
    "islands_conn_lin10": ("full", 2),
    "islands_radial_lin10": ("partial", 2),
    "conn_cutoff_lin10": ("partial", 20),
    "conn_max_runs_exp200": ("full", 30),
}
for label, network, strategy, m, scaling, probe, an_sk in submitted:
    if label in resets:
        mode, new_m = resets[label]
        client.set_network_strategy(an_sk, strategy, max_tasks_per_transformation=new_m, task_scaling=scaling, mode=mode, sleep_interval=1)
        st = client.get_network_strategy_state(an_sk)
        assert st.iterations == 0 and st.max_tasks_per_transformation == new_m and st.mode == mode, st
time.sleep(1.2)
run_strategist(prefix)
for label, network, strategy, m, scaling, probe, an_sk in submitted:
    got, _ = actioned_counts(an_sk)
    if label not in resets:
        assert got == first[label], (label, got, first[label])
        check_state(an_sk, 3, m, scaling)
        continue
    mode, new_m = resets[label]
    options = [{k: o.get(k, 0) for k in got} for o in all_expected(network, strategy, new_m, scaling, seed=99)]
    if mode == "partial":
        options = [{k: max(o[k], first[label][k]) for k in got} for o in options]
    print(f"   {label} ({mode}, M {m} -> {new_m}): " + ", ".join(f"{names(network)[k]} {first[label][k]}->{got[k]}" for k in sorted(got, key=lambda k: names(network)[k])))
    assert any(got == o for o in options), (label, got, options)
    check_state(an_sk, 1, new_m, scaling, mode=mode)

for n in notes:
    print("   note:", n)
print("ALL OK")
