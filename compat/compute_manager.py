"""Run upstream's real `ComputeManager` base class (alchemiscale 0.8), subclassed with a
trivial `create_compute_services`, against an alchemiscale-rs compute API.

Run by hand (not in CI: gufe 1.x is not on PyPI), in the environment described in
compat/strategist.py:

    alchemiscale --data-dir /tmp/compat-mgr serve --port 18100 --compute-port 18101 --no-strategist &
    python compat/compute_manager.py http://127.0.0.1:18100 http://127.0.0.1:18101 \\
        user <user key> compute <compute key> /tmp/compat-mgr/state.db

It submits a network with three actioned tasks (gufe's DummyProtocol) in a fresh scope,
then runs managers through upstream's own loop (`ComputeManager.start(max_cycles=...)`):

* the sizing rule and the instruction: `create_compute_services` is asked for
  min(num_tasks, max_submit_per_cycle, capacity) // claim_limit services each cycle, and
  the status reported (read from the store) is OK with saturation created / max;
* a compute service registered with the manager's id is listed in the OK instruction and
  counted as capacity;
* a manager with the same name is refused ("already registered"), stealing replaces it;
* an exception in `create_compute_services` leaves an ERROR registration with the
  exception's repr as detail that survives deregistration and blocks the name even for
  steal, until `clear_error`;
* a manager whose registration is gone gets SHUTDOWN and its loop ends;
* `protocols` in the service settings filter the task count (DummyProtocol vs another).

Ends with "ALL OK".
"""
import importlib.resources
import sqlite3
import sys
import tempfile
import uuid

from rdkit import Chem
from gufe import AlchemicalNetwork, ChemicalSystem, SmallMoleculeComponent, SolventComponent, Transformation
from gufe.tests.test_protocol import DummyProtocol

from alchemiscale import AlchemiscaleClient, Scope
from alchemiscale.compute.client import AlchemiscaleComputeClient, AlchemiscaleComputeManagerClientError
from alchemiscale.compute.manager import ComputeManager
from alchemiscale.compute.settings import ComputeManagerSettings, ComputeServiceSettings
from alchemiscale.storage.models import ComputeManagerInstruction, ComputeServiceID

user_url, compute_url, user_id, user_key, compute_id, compute_key, state_db = sys.argv[1:8]
client = AlchemiscaleClient(user_url, user_id, user_key, use_local_cache=False)

sdf = importlib.resources.files("gufe.tests.data") / "benzene_modifications.sdf"
mols = {m.GetProp("_Name"): m for m in Chem.SDMolSupplier(str(sdf), removeHs=False)}
solvent = SolventComponent()
systems = {n: ChemicalSystem({"ligand": SmallMoleculeComponent(mols[n]), "solvent": solvent}, name=n) for n in ["benzene", "toluene"]}
tf = Transformation(systems["benzene"], systems["toluene"], DummyProtocol(settings=DummyProtocol.default_settings()), name="t")
scope = Scope("compat", "manager", f"p{uuid.uuid4().hex[:10]}")
an_sk = client.create_network(AlchemicalNetwork(edges=[tf], name="manager_compat"), scope)
tf_sk = client.get_network_transformations(an_sk)[0]
tasks = client.create_tasks(tf_sk, count=3)
client.action_tasks(tasks, an_sk)
print("-- submitted", an_sk, "with 3 actioned tasks", flush=True)


def manager_row(name):
    with sqlite3.connect(state_db) as db:
        return db.execute("SELECT uuid, status, detail, saturation FROM compute_manager WHERE name = ?", (name,)).fetchone()


class Recording(ComputeManager):
    """Creates nothing; remembers what it was asked for."""

    asked: list

    def create_compute_services(self, data, target):
        self.asked.append((data["num_tasks"], len(data["compute_service_ids"]), target))
        return target


class Failing(ComputeManager):
    def create_compute_services(self, data, target):
        raise RuntimeError("no cluster today")


def make(cls, name, tmp, max_services=4, per_cycle=2, claim_limit=1, protocols=None):
    service = ComputeServiceSettings(
        api_url=compute_url,
        identifier=compute_id,
        key=compute_key,
        name=f"{name}svc",
        shared_basedir=f"{tmp}/shared",
        scratch_basedir=f"{tmp}/scratch",
        scopes=[str(scope)],
        claim_limit=claim_limit,
        protocols=protocols,
    )
    settings = ComputeManagerSettings(
        name=name, logfile=None, max_compute_services=max_services, max_submit_per_cycle=per_cycle, sleep_interval=0
    )
    m = cls(settings, service)
    if cls is Recording:
        m.asked = []
    return m


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print("ok:", what, flush=True)


name = f"mgr{uuid.uuid4().hex[:8]}"
with tempfile.TemporaryDirectory() as tmp:
    # the loop and the sizing rule: 3 tasks, 2 per cycle, 4 at most
    m = make(Recording, name, tmp)
    m.start(max_cycles=2)
    check(m.asked == [(3, 0, 2), (3, 0, 2)], f"sizing asks for 2 services per cycle with 3 tasks: {m.asked}")
    check(manager_row(name) is None, "deregistered when the loop ends")

    # claim_limit divides (3 // 2 = 1); with capacity 1 left, 1
    m = make(Recording, name, tmp, per_cycle=8, claim_limit=2)
    m.start(max_cycles=1)
    check(m.asked == [(3, 0, 1)], f"claim_limit divides the target: {m.asked}")

    # status and saturation as the store holds them, a managed service counted
    m = make(Recording, name, tmp, max_services=4, per_cycle=8)
    m._register()
    svc_client = AlchemiscaleComputeClient(compute_url, compute_id, compute_key)
    svc = ComputeServiceID.new_from_name("attached")
    svc_client.register(svc, m.compute_manager_id)
    check(m.cycle() is True, "a cycle with an OK instruction continues")
    check(m.asked == [(3, 1, 3)], f"the attached service is listed and counts as capacity: {m.asked}")
    row = manager_row(name)
    check(row[1] == "OK" and abs(row[3] - 1.0) < 1e-9, f"status OK, saturation (1 + 3) / 4 = 1.0: {row}")
    # upstream counts registered services only: the 3 "created" never registered, so it
    # asks again (our manager also counts what its backend started)
    check(m.cycle() is True and m.asked[1:] == [(3, 1, 3)], f"upstream's loop counts registered services only: {m.asked}")

    # a second manager of that name: refused, unless it steals
    other = make(Recording, name, tmp)
    try:
        other._register()
        raise SystemExit("FAILED: a second manager with the same name was registered")
    except AlchemiscaleComputeManagerClientError as e:
        check("already registered" in str(e), f"same name refused: {e}")
    other._register(steal=True)
    check(manager_row(name)[0] == other.compute_manager_id.uuid, "steal replaces the registration")
    instruction, data = m.client.get_instruction([scope], None, m.compute_manager_id)
    check(instruction == ComputeManagerInstruction.SHUTDOWN, f"the replaced manager is told to shut down: {data}")
    check(m.cycle() is False, "its loop ends on SHUTDOWN")
    svc_client.deregister(svc)
    other._deregister()

    # protocols filter the count
    m = make(Recording, name, tmp, protocols=["SomeOtherProtocol"])
    m.start(max_cycles=1)
    check(m.asked == [], f"no task runs SomeOtherProtocol: nothing created ({m.asked})")
    m = make(Recording, name, tmp, protocols=["DummyProtocol"])
    m.start(max_cycles=1)
    check(m.asked == [(3, 0, 2)], f"DummyProtocol tasks counted: {m.asked}")

    # an exception: ERROR with the repr, kept after deregistration, blocks steal, cleared
    f = make(Failing, name, tmp)
    try:
        f.start(max_cycles=1)
        raise SystemExit("FAILED: the failing manager did not raise")
    except RuntimeError:
        pass
    row = manager_row(name)
    check(row is not None and row[1] == "ERROR" and row[2] == "RuntimeError('no cluster today')", f"ERROR with repr kept: {row}")
    blocked = make(Recording, name, tmp)
    try:
        blocked._register(steal=True)
        raise SystemExit("FAILED: an ERROR registration was stolen")
    except AlchemiscaleComputeManagerClientError as e:
        check("already registered with status ERROR" in str(e), f"ERROR registration not stolen: {e}")
    blocked.clear_error()
    check(manager_row(name) is None, "clear_error removes the ERROR registration")
    blocked.start(max_cycles=1)
    check(blocked.asked == [(3, 0, 2)], "the name is usable again")

print("ALL OK")
