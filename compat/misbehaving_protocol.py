"""A gufe protocol that misbehaves on purpose, for compat/task_failures.py.

`MisbehavingProtocol` plans two units per DAG, `PrepareUnit` and then `RunUnit`. What
`RunUnit` does is chosen by the `behaviour` setting: `ok` finishes, `crash` kills its own
process with SIGKILL (as the kernel's OOM killer or a segfaulting engine would), `hang`
sleeps for an hour (for `task_timeout`); `refuse` makes `create` raise, so no DAG exists.
Both units talk on standard output and error first, like a simulation engine.

This module is "the protocol's own package": the submitting environment and the
executor's environment must both import it (e.g. PYTHONPATH=compat).
"""
import os
import signal
import sys
import time

from gufe import settings
from gufe.protocols import Protocol, ProtocolUnit, ProtocolResult
from openff.units import unit


class MisbehavingSettings(settings.Settings):
    behaviour: str


class PrepareUnit(ProtocolUnit):
    @staticmethod
    def _execute(ctx, *, system, **inputs):
        print(f"preparing {system}", flush=True)
        return {"prepared": system}


class RunUnit(ProtocolUnit):
    @staticmethod
    def _execute(ctx, *, prepared, behaviour, **inputs):
        print("chatter of the engine on standard output", flush=True)
        print("warning from the engine on standard error", file=sys.stderr, flush=True)
        if behaviour == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if behaviour == "hang":
            time.sleep(3600)
        return {"estimate": 1.0}


class MisbehavingResult(ProtocolResult):
    def get_estimate(self):
        return 1.0 * unit.kilocalorie_per_mole

    def get_uncertainty(self):
        return 0.0 * unit.kilocalorie_per_mole


class MisbehavingProtocol(Protocol):
    result_cls = MisbehavingResult
    _settings_cls = MisbehavingSettings

    @classmethod
    def _default_settings(cls):
        return MisbehavingSettings(
            thermo_settings=settings.ThermoSettings(temperature=298 * unit.kelvin),
            forcefield_settings=settings.OpenMMSystemGeneratorFFSettings(),
            behaviour="ok",
        )

    @classmethod
    def _defaults(cls):
        return {}

    def _create(self, stateA, stateB, mapping=None, extends=None):
        if self.settings.behaviour == "refuse":
            raise ValueError("the misbehaving protocol cannot plan this transformation")
        prepare = PrepareUnit(name=f"prepare {stateA.name}", system=stateA.name)
        run = RunUnit(name=f"run {stateB.name}", prepared=prepare, behaviour=self.settings.behaviour)
        return [prepare, run]

    def _gather(self, protocol_dag_results):
        return {"n": len(list(protocol_dag_results))}


def with_behaviour(behaviour):
    s = MisbehavingProtocol.default_settings()
    s.behaviour = behaviour
    return MisbehavingProtocol(settings=s)
