"""Run one alchemiscale Task's ProtocolDAG with gufe: the python executor of alchemiscale-rs.

The Rust compute service writes this script into a task directory and runs it in a child
process as ``python alchemiscale_rs_execute.py --input DIR --output FILE``. DIR holds
``request.json`` (task key, where to put shared and scratch space, keep flags, unit retry
count, the extended-result file name if any), ``transformation.json`` (the Transformation's
keyed chain as the compute API serves it) and, for a task that extends another,
``extends.json.zst`` (that task's ProtocolDAGResult blob).

It rebuilds the Transformation (and the extended result), creates the ProtocolDAG named
after the task, records the DAG's keyed chain in DIR/dag.json and its key in DIR/dag_key
(the service removes ``<shared_basedir>/<dag key>`` and ``<scratch_basedir>/<dag key>``
afterwards, also when it has to kill this process), marks each unit as it starts in
DIR/running_unit (so that if this process crashes, is killed or times out, the service
reports the failure against that unit of the protocol, readable wherever gufe and the
protocol are installed), executes the DAG with ``gufe.protocols.execute_DAG`` without raising
on unit failures, and writes the ProtocolDAGResult as zstd-compressed keyed-chain JSON to
FILE (the blob the compute API expects). Unit failures are part of that result; a non-zero
exit status means this script itself failed, and its traceback goes to standard error.

Needs gufe and zstandard (both dependencies of alchemiscale) in the interpreter's
environment.
"""

import argparse
import json
import os
import sys
from pathlib import Path


def load_extended(raw: bytes):
    """The extended ProtocolDAGResult from its blob (zstd keyed chain, or legacy JSON)."""
    import zstandard
    from gufe.tokenization import JSON_HANDLER, GufeTokenizable

    try:
        text = zstandard.ZstdDecompressor().decompress(raw)
    except zstandard.ZstdError:
        # results stored by old versions: UTF-8 JSON of the full dict
        return GufeTokenizable.from_dict(json.loads(raw.decode("utf-8"), cls=JSON_HANDLER.decoder))
    return GufeTokenizable.from_keyed_chain(json.loads(text.decode("utf-8"), cls=JSON_HANDLER.decoder))


def write_replacing(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a sibling file, so readers never see half of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def mark_running_units(marker: Path) -> None:
    """Record the key of each ProtocolUnit in ``marker`` as its execution starts."""
    from gufe.protocols.protocolunit import ProtocolUnit

    execute = ProtocolUnit.execute

    def marked(self, *args, **kwargs):
        write_replacing(marker, str(self.key))
        return execute(self, *args, **kwargs)

    ProtocolUnit.execute = marked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)

    import zstandard
    from gufe.protocols import execute_DAG
    from gufe.tokenization import JSON_HANDLER, GufeTokenizable

    request = json.loads((args.input / "request.json").read_text())
    with open(args.input / "transformation.json") as f:
        keyed_chain = json.load(f, cls=JSON_HANDLER.decoder)
    transformation = GufeTokenizable.from_keyed_chain(keyed_chain)

    extends = None
    if request.get("extends"):
        extends = load_extended((args.input / request["extends"]).read_bytes())

    dag = transformation.create(extends=extends, name=request["task"])
    write_replacing(args.input / "dag.json", json.dumps(dag.to_keyed_chain(), cls=JSON_HANDLER.encoder))
    (args.input / "dag_key").write_text(str(dag.key))
    mark_running_units(args.input / "running_unit")

    shared = Path(request["shared_basedir"]) / str(dag.key)
    scratch = Path(request["scratch_basedir"]) / str(dag.key)
    shared.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)

    result = execute_DAG(
        dag,
        shared_basedir=shared,
        scratch_basedir=scratch,
        keep_shared=bool(request["keep_shared"]),
        keep_scratch=bool(request["keep_scratch"]),
        raise_error=False,
        n_retries=int(request["n_retries"]),
    )

    text = json.dumps(result.to_keyed_chain(), cls=JSON_HANDLER.encoder)
    # a one-shot compressor records the content size, which the clients require
    blob = zstandard.ZstdCompressor().compress(text.encode("utf-8"))
    partial = args.output.with_name(args.output.name + ".partial")
    partial.write_bytes(blob)
    os.replace(partial, args.output)
    print(f"{dag.key}: {'ok' if result.ok() else 'failed'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
