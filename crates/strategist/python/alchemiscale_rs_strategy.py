"""Ask one Strategy for weights: the Python side of alchemiscale-rs's strategist.

The Rust strategist runs this script, for strategies it does not implement natively, as
``python alchemiscale_rs_strategy.py --input DIR --output FILE`` in the interpreter
configured as ``python`` in the strategist settings. DIR holds:

* ``request.json``: ``{"strategy": <file>, "network": <file>, "results": <file>}``;
* the Strategy's and the AlchemicalNetwork's keyed chains (JSON, as the user API serves
  them);
* the results manifest: ``{"<transformation gufe key>": ["<file>", ...], ...}`` naming, for
  each transformation with successful results, its ProtocolDAGResults as keyed-chain JSON.

It rebuilds the objects with gufe, gathers each transformation's results with the
transformation's own ``gather`` (its protocol's logic), calls ``strategy.propose(network,
results)`` (transformations without results map to ``None``, as upstream's strategist
passes them) and writes FILE: ``{"weights": {"<transformation gufe key>": <number or
null>, ...}}`` -- the raw weights; the strategist normalises them.

If anything raises, it writes ``DIR/error.json`` (``{"type": <exception class qualname>,
"message": str(exception), "traceback": <formatted traceback>}``) and exits with status 1:
the strategist records these in the strategy's state. Any other ending (a crash, a hang
past the time limit, no or unreadable output) is recorded by the strategist itself.

Needs gufe and the strategy's own package (e.g. stratocaster) in the interpreter's
environment, plus whatever the protocols' ``gather`` needs (e.g. openfe).
"""

import argparse
import json
import sys
import traceback
from pathlib import Path


def propose(directory: Path) -> dict:
    from gufe.tokenization import JSON_HANDLER, GufeTokenizable

    def load(name):
        with open(directory / name) as f:
            return GufeTokenizable.from_keyed_chain(json.load(f, cls=JSON_HANDLER.decoder))

    request = json.loads((directory / "request.json").read_text())
    strategy = load(request["strategy"])
    network = load(request["network"])
    manifest = json.loads((directory / request["results"]).read_text())

    transformations = {str(t.key): t for t in network.edges}
    results = {t.key: None for t in network.edges}
    for key, files in manifest.items():
        transformation = transformations[key]
        results[transformation.key] = transformation.gather([load(f) for f in files])

    proposal = strategy.propose(network, results)
    return {str(key): (None if weight is None else float(weight)) for key, weight in proposal.weights.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        weights = propose(args.input)
    except BaseException as e:  # noqa: BLE001 -- every failure is reported, none is fatal
        report = {"type": type(e).__qualname__, "message": str(e), "traceback": traceback.format_exc()}
        (args.input / "error.json").write_text(json.dumps(report))
        return 1
    partial = args.output.with_name(args.output.name + ".partial")
    partial.write_text(json.dumps({"weights": weights}))
    partial.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
