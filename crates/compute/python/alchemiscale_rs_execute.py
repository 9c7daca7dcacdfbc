"""Run one alchemiscale Task's ProtocolDAG with gufe: the python executor of alchemiscale-rs.

The Rust compute service writes this script into a task directory and runs it in a child
process as ``python alchemiscale_rs_execute.py --input DIR --output FILE``. DIR holds
``request.json`` (task key, where to put shared and scratch space, keep flags, unit retry
count, the extended-result file name if any), ``transformation.json`` (the Transformation's
keyed chain as the compute API serves it) and, for a task that extends another,
``extends.json.zst`` (that task's ProtocolDAGResult blob).

It rebuilds the Transformation (and the extended result), creates the ProtocolDAG named
after the task, records the DAG key in DIR/dag_key (the service removes
``<shared_basedir>/<dag key>`` and ``<scratch_basedir>/<dag key>`` afterwards, also when it
has to kill this process), executes it with ``gufe.protocols.execute_DAG`` without raising
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
    (args.input / "dag_key").write_text(str(dag.key))

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
