"""Failures our compute service reports itself, read with the stock alchemiscale 0.8 client.

When an executor is killed by a signal, runs past `task_timeout`, or cannot even plan the
protocol's DAG, the service (not the protocol) builds the failed ProtocolDAGResult. This
checks that the real `AlchemiscaleClient` reads those failures in an environment that has
only gufe, alchemiscale and the protocol's own package (`compat/misbehaving_protocol.py`),
that they name the unit that was running, and that each execution's output is kept.

Run by hand (not in CI: gufe 1.x is not on PyPI), in the environment described in
compat/strategist.py, from the repository root:

    alchemiscale --data-dir /tmp/compat-fail serve --port 18100 --compute-port 18101 &
    PYTHONPATH=compat python compat/task_failures.py http://127.0.0.1:18100 \\
        http://127.0.0.1:18101 user <user key> compute <compute key> target/debug/alchemiscale

It submits four transformations of `MisbehavingProtocol` (ok, crash, hang, refuse),
actions one task each, runs `alchemiscale compute synchronous` with this interpreter as
`executor_python` (PYTHONPATH passed through `executor_env`), and reads everything back
with the user client. Ends with "ALL OK".
"""
import importlib.resources
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from rdkit import Chem
from gufe import AlchemicalNetwork, ChemicalSystem, SmallMoleculeComponent, SolventComponent, Transformation
from gufe.protocols import ProtocolUnitFailure

from alchemiscale import AlchemiscaleClient, Scope
from misbehaving_protocol import with_behaviour

user_url, compute_url, user_id, user_key, compute_id, compute_key, binary = sys.argv[1:8]
client = AlchemiscaleClient(user_url, user_id, user_key, use_local_cache=False)


def step(name):
    print(f"-- {name}", flush=True)


step("submit four transformations of MisbehavingProtocol")
sdf = importlib.resources.files("gufe.tests.data") / "benzene_modifications.sdf"
mols = {m.GetProp("_Name"): m for m in Chem.SDMolSupplier(str(sdf), removeHs=False)}
solvent = SolventComponent()
systems = {
    n: ChemicalSystem({"ligand": SmallMoleculeComponent(mols[n]), "solvent": solvent}, name=n)
    for n in ["benzene", "toluene", "phenol", "anisole", "styrene"]
}
behaviours = {"ok": "toluene", "crash": "phenol", "hang": "anisole", "refuse": "styrene"}
tfs = {b: Transformation(systems["benzene"], systems[target], with_behaviour(b), name=b) for b, target in behaviours.items()}
network = AlchemicalNetwork(edges=list(tfs.values()), name="task_failures")
scope = Scope("compat", "failures", f"p{uuid.uuid4().hex[:10]}")
an_sk = client.create_network(network, scope)
tf_sks = {b: client.get_scoped_key(tf, scope) for b, tf in tfs.items()}
tasks = {b: client.create_tasks(sk, count=1)[0] for b, sk in tf_sks.items()}
client.action_tasks(list(tasks.values()), an_sk)

step("run alchemiscale compute synchronous with this interpreter as the executor")
work = Path(tempfile.mkdtemp(prefix="task-failures-"))
logs = work / "logs"
compat_dir = Path(__file__).resolve().parent
config = work / "compute.yaml"
config.write_text(
    f"""api_url: {compute_url}
identifier: {compute_id}
key: {compute_key}
name: failures
shared_basedir: {work / 'shared'}
scratch_basedir: {work / 'scratch'}
scopes: ['{scope}']
executor_python: {sys.executable}
executor_env: {{PYTHONPATH: '{compat_dir}'}}
task_timeout: 30
task_logs_dir: {logs}
max_tasks: 4
sleep_interval: 1
loglevel: INFO
"""
)
run = subprocess.run([binary, "compute", "synchronous", "-c", str(config)], capture_output=True, text=True, timeout=300)
print(run.stderr[-3000:])
assert run.returncode == 0, run.returncode

statuses = dict(zip(tasks, client.get_tasks_status(list(tasks.values()))))
print("   statuses:", statuses)
assert statuses == {"ok": "complete", "crash": "error", "hang": "error", "refuse": "error"}, statuses

step("the successful task's result gathers")
result = client.get_transformation_results(tf_sks["ok"])
assert result is not None and result.data["n"] == 1, result


def failure_of(b):
    failures = client.get_task_failures(tasks[b])
    assert len(failures) == 1, failures
    pdr = failures[0]
    assert not pdr.ok()
    assert pdr.name == str(tasks[b]), pdr.name
    assert str(pdr.transformation_key) == str(tfs[b].key)
    [puf] = pdr.protocol_unit_failures
    assert isinstance(puf, ProtocolUnitFailure)
    return pdr, puf


def kept_output(puf):
    line = next(l for l in puf.traceback.splitlines() if l.startswith("executor output kept on the compute host: "))
    stdout, stderr = line.split(": ", 1)[1].split(" and ")
    assert Path(stdout).parent == logs, stdout
    return Path(stdout).read_text(), Path(stderr).read_text()


for b, first in [("crash", "ChildProcessError: executor exited with signal 9"), ("hang", "TimeoutError: task exceeded task_timeout of 30 s")]:
    step(f"{b}: get_task_failures reads the service-built failure against RunUnit")
    pdr, puf = failure_of(b)
    unit = pdr.result_to_unit(puf)
    print(f"   {type(unit).__module__}.{type(unit).__qualname__} {unit.name!r}: {puf.exception}")
    assert type(unit).__qualname__ == "RunUnit" and type(unit).__module__ == "misbehaving_protocol"
    assert [type(u).__qualname__ for u in pdr.protocol_units] == ["PrepareUnit", "RunUnit"]
    assert puf.exception[0] == first.split(":")[0], puf.exception
    assert puf.traceback.startswith(first + "\n"), puf.traceback
    assert "warning from the engine on standard error" in puf.traceback
    out, err = kept_output(puf)
    assert "chatter of the engine on standard output" in out and "warning from the engine" in err

step("refuse: no DAG, the failure stands for its own unit and still reads")
pdr, puf = failure_of("refuse")
assert pdr.protocol_units == [puf] and puf.source_key == puf.key
assert "ValueError: the misbehaving protocol cannot plan this transformation" in puf.traceback, puf.traceback
print("   ", puf.traceback.splitlines()[0])
_, err = kept_output(puf)
assert "cannot plan" in err

step("get_transformation_failures for the crashed transformation")
tf_failures = client.get_transformation_failures(tf_sks["crash"])
assert len(tf_failures) == 1 and not tf_failures[0].ok()

print("ALL OK")
