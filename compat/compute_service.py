"""Run upstream's real `SynchronousComputeService` (alchemiscale 0.8) against an
alchemiscale-rs server, end to end with real gufe objects.

Run by hand (not in CI: gufe 1.x is not on PyPI), with alchemiscale 0.8.0 and gufe 1.10:

    alchemiscale --data-dir /tmp/compat serve --port 18080 --compute-port 18081 &
    python compat/compute_service.py http://127.0.0.1:18080 http://127.0.0.1:18081 \\
        user <user key> compute <compute key>

It submits a network of gufe DummyProtocol transformations with the user client, creates
and actions tasks (one extending another, and one for a protocol that always fails, with a
restart pattern), lets the Python compute service drain them, then reads the results back
with the user client and checks them. Ends with "ALL OK".
"""
import importlib.resources
import sys
import tempfile
import uuid

from rdkit import Chem
from gufe import AlchemicalNetwork, ChemicalSystem, SmallMoleculeComponent, SolventComponent, Transformation
from gufe.tests.test_protocol import BrokenProtocol, DummyProtocol

from alchemiscale import AlchemiscaleClient, Scope
from alchemiscale.compute.service import SynchronousComputeService
from alchemiscale.compute.settings import ComputeServiceSettings

user_url, compute_url, user_id, user_key, compute_id, compute_key = sys.argv[1:7]
client = AlchemiscaleClient(user_url, user_id, user_key, use_local_cache=False)

sdf = importlib.resources.files("gufe.tests.data") / "benzene_modifications.sdf"
mols = {m.GetProp("_Name"): m for m in Chem.SDMolSupplier(str(sdf), removeHs=False)}
solvent = SolventComponent()
systems = {n: ChemicalSystem({"ligand": SmallMoleculeComponent(mols[n]), "solvent": solvent}, name=n) for n in ["benzene", "toluene", "phenol"]}
good = Transformation(systems["benzene"], systems["toluene"], DummyProtocol(settings=DummyProtocol.default_settings()), name="good")
bad = Transformation(systems["benzene"], systems["phenol"], BrokenProtocol(settings=BrokenProtocol.default_settings()), name="bad")
network = AlchemicalNetwork(edges=[good, bad], name="compute_compat")
scope = Scope("compat", "compute", f"p{uuid.uuid4().hex[:10]}")

an_sk = client.create_network(network, scope)
tfs = {client.get_transformation(t).name: t for t in client.get_network_transformations(an_sk)}
first = client.create_tasks(tfs["good"], count=2)
child = client.create_tasks(tfs["good"], count=1, extends=first[0])
broken = client.create_tasks(tfs["bad"], count=1)
client.add_task_restart_patterns(an_sk, ["ValueError: .+failed my mission"], 1)
client.action_tasks(first + child + broken, an_sk)
print("-- submitted", an_sk, flush=True)

with tempfile.TemporaryDirectory() as tmp:
    settings = ComputeServiceSettings(
        api_url=compute_url,
        identifier=compute_id,
        key=compute_key,
        name="pycompat",
        shared_basedir=f"{tmp}/shared",
        scratch_basedir=f"{tmp}/scratch",
        scopes=[str(scope)],
        sleep_interval=1,
        deep_sleep_interval=1,
        heartbeat_interval=2,
        max_tasks=6,
        max_time=60,
        loglevel="INFO",
    )
    service = SynchronousComputeService(settings)
    service.start()
print("-- the Python compute service stopped", flush=True)

statuses = dict(zip(first + child + broken, client.get_tasks_status(first + child + broken)))
print("   statuses:", {str(k)[:12]: v for k, v in statuses.items()})
assert [statuses[t] for t in first + child] == ["complete"] * 3, statuses
assert statuses[broken[0]] == "error", statuses

results = client.get_transformation_results(tfs["good"])
assert results is not None, "no ProtocolResult for the good transformation"
print("   good transformation estimate:", results.get_estimate())
pdrs = client.get_task_results(child[0])
assert len(pdrs) == 1 and pdrs[0].ok()
failures = client.get_task_failures(broken[0])
assert len(failures) == 2, f"restart pattern allows one retry: {len(failures)} failures"
assert all(not f.ok() for f in failures)
assert client.get_task_restart_patterns(an_sk) == {"ValueError: .+failed my mission": 1}
assert broken[0] not in client.get_network_actioned_tasks(an_sk), "retries exhausted: cancelled from the hub"
print("ALL OK")
