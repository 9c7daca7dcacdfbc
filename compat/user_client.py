"""Drive the real alchemiscale 0.8 `AlchemiscaleClient` against an alchemiscale-rs server.

Run by hand (not in CI: gufe 1.x and friends are not on PyPI), in an environment with
alchemiscale 0.8.0 and gufe 1.10 installed:

    alchemiscale --data-dir /tmp/compat serve --port 18080 --compute-port 18081 &
    python compat/user_client.py http://127.0.0.1:18080 user <key-from-credentials.txt>

Every step asserts what the upstream client returns; the script ends with "ALL OK".
"""
import importlib.resources
import sys

from rdkit import Chem
from gufe import AlchemicalNetwork, ChemicalSystem, SmallMoleculeComponent, SolventComponent, Transformation
from gufe.tests.test_protocol import DummyProtocol

from alchemiscale import AlchemiscaleClient, Scope, ScopedKey
from alchemiscale.models import Scope as _Scope  # noqa: F401  (import path used by users)

url, identifier, key = sys.argv[1:4]
client = AlchemiscaleClient(url, identifier, key, cache_directory="/tmp/alchemiscale-compat-cache", use_local_cache=False)


def step(name):
    print(f"-- {name}", flush=True)


step("info, check, scopes")
client.get_info()
client._api_check()
scopes = client.list_scopes()
print("   scopes:", scopes)

step("build a network with real gufe")
sdf = importlib.resources.files("gufe.tests.data") / "benzene_modifications.sdf"
mols = {m.GetProp("_Name"): m for m in Chem.SDMolSupplier(str(sdf), removeHs=False)}
solvent = SolventComponent()
systems = {n: ChemicalSystem({"ligand": SmallMoleculeComponent(mols[n]), "solvent": solvent}, name=f"{n}_solvent") for n in ["benzene", "toluene", "phenol"]}
protocol = DummyProtocol(settings=DummyProtocol.default_settings())
t1 = Transformation(systems["benzene"], systems["toluene"], protocol, mapping=None, name="benzene->toluene")
t2 = Transformation(systems["benzene"], systems["phenol"], protocol, mapping=None, name="benzene->phenol")
network = AlchemicalNetwork(edges=[t1, t2], name="compat_network")
import uuid
scope = Scope("compat", "campaign", f"p{uuid.uuid4().hex[:10]}")  # fresh scope: the script can be re-run

step("create_network (gzip body) and get_network")
an_sk = client.create_network(network, scope)
assert isinstance(an_sk, ScopedKey) and an_sk.gufe_key == network.key, an_sk
assert client.check_exists(an_sk)
net2 = client.get_network(an_sk)
assert net2 == network and net2.key == network.key
net3 = client.get_network(an_sk, compress=False)
assert net3 == network

step("queries and relationships")
assert an_sk in client.query_networks()
assert an_sk in client.query_networks(name="compat_network", scope=scope)
tfs = client.get_network_transformations(an_sk)
assert {t.gufe_key for t in tfs} == {t1.key, t2.key}, tfs
tf_sk = [t for t in tfs if t.gufe_key == t1.key][0]
assert client.get_transformation(tf_sk) == t1
css = client.get_network_chemicalsystems(an_sk)
assert len(css) == 3
assert client.get_chemicalsystem(css[0]) in systems.values()
assert client.get_transformation_networks(tf_sk) == [an_sk]
assert len(client.get_transformation_chemicalsystems(tf_sk)) == 2
assert an_sk in client.get_chemicalsystem_networks(css[0])
assert client.query_transformations(scope=scope)
assert client.query_chemicalsystems(scope=scope)

step("network state and weight")
assert client.get_network_state(an_sk) == "active"
client.set_network_state(an_sk, "inactive")
assert client.get_network_state(an_sk) == "inactive"
assert an_sk not in client.query_networks()  # the client filters on state=active by default
client.set_network_state(an_sk, "active")
assert client.get_network_weight(an_sk) == 0.5
client.set_network_weight(an_sk, 0.75)
assert client.get_network_weight(an_sk) == 0.75
assert client.get_networks_weight([an_sk]) == [0.75]

step("tasks: create, extend, action, statuses, priorities")
tasks = client.create_tasks(tf_sk, count=3)
assert len(tasks) == 3
child = client.create_tasks(tf_sk, count=1, extends=tasks[0])[0]
graph = client.get_transformation_tasks(tf_sk, return_as="graph")
assert graph.has_edge(child, tasks[0]) and graph.number_of_nodes() == 4, graph
more = client.create_transformations_tasks([tf_sk, tf_sk])
assert len(more) == 2
actioned = client.action_tasks(tasks, an_sk)
assert actioned == tasks, actioned
assert set(client.get_network_actioned_tasks(an_sk)) == set(tasks)
weights = client.get_network_actioned_tasks(an_sk, task_weights=True)
assert all(w == 0.5 for w in weights.values())
assert set(client.get_task_actioned_networks(tasks[0])) == {an_sk}
assert client.get_tasks_status(tasks) == ["waiting"] * 3
assert client.get_tasks_priority(tasks) == [10] * 3
client.set_tasks_priority(tasks[:1], 1)
assert client.get_tasks_priority(tasks[:1]) == [1]
assert client.get_task_transformation(tasks[0]) == tf_sk
assert set(client.get_network_tasks(an_sk)) >= set(tasks)
assert an_sk in client.get_task_networks(tasks[0])
cancelled = client.cancel_tasks(tasks[2:], an_sk)
assert cancelled == tasks[2:]
client.set_tasks_status([tasks[2]], "invalid")
assert client.get_tasks_status([tasks[2]]) == ["invalid"]
status = client.get_network_status(an_sk)
assert status.get("waiting", 0) >= 4 and status.get("invalid") == 1, status
assert client.get_scope_status(scope)["invalid"] == 1
assert client.get_transformation_status(tf_sk)["waiting"] >= 4
assert client.get_networks_status([an_sk]) == [status]

step("restart patterns")
client.add_task_restart_patterns(an_sk, ["RuntimeError: .+"], 3)
assert client.get_task_restart_patterns(an_sk) == {"RuntimeError: .+": 3}
client.set_task_restart_patterns_allowed_restarts(an_sk, ["RuntimeError: .+"], 5)
assert client.get_task_restart_patterns(an_sk) == {"RuntimeError: .+": 5}
client.remove_task_restart_patterns(an_sk, ["RuntimeError: .+"])
assert client.get_task_restart_patterns(an_sk) == {}
client.clear_task_restart_patterns(an_sk)

step("results (none yet)")
assert client.get_transformation_results(tf_sk) is None
assert client.get_task_results(tasks[0]) == []

step("strategies")
assert client.get_network_strategy(an_sk) is None
assert client.get_network_strategy_state(an_sk) is None
try:
    from stratocaster.strategies import ConnectivityStrategy
    strategy = ConnectivityStrategy(ConnectivityStrategy.default_settings())
    st_sk = client.set_network_strategy(an_sk, strategy)
    assert client.get_network_strategy(an_sk) == strategy
    state = client.get_network_strategy_state(an_sk)
    assert state.mode == "partial" and state.status == "awake", state
    assert client.get_network_strategy_status(an_sk) == "awake"
    client.set_network_strategy_awake(an_sk)
    client.set_network_strategy(an_sk, None)
    assert client.get_network_strategy(an_sk) is None
except ImportError as e:
    print("   (stratocaster strategy classes not importable, skipped:", e, ")")

step("errors the client reports")
from alchemiscale.interface.client import AlchemiscaleClientError
try:
    client.get_network(ScopedKey.from_str(str(an_sk).replace(an_sk.gufe_key.split("-")[1], "0" * 32)))
    raise AssertionError("expected an error")
except AlchemiscaleClientError as e:
    assert "Status Code 400 : Bad Request : 'No such object in database'" in str(e), str(e)
try:
    client.create_network(network, Scope("forbidden", "x", "y")) if "*-*-*" not in [str(s) for s in scopes] else None
except AlchemiscaleClientError as e:
    assert "401" in str(e)

print("ALL OK")
