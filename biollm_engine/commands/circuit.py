"""`biollm circuit`: why did the model call this cell what it did? An attribution graph."""

from __future__ import annotations

import argparse

from .. import config


HELP = "attribution graph: genes -> transcoder features -> predicted cell type"


def add_parser(subparsers) -> None:
    from ..circuits.pipeline import CircuitConfig

    p = subparsers.add_parser(
        "circuit", help=HELP,
        description="Replace the model's MLPs by the transcoders in --dicts, attribute the "
                    "prediction for one cell (--cell with --data) or --prompt to input genes, "
                    "features and error nodes, prune by influence and write circuit-tracer "
                    "JSON to --out (and CSV with --csv).")
    config.add_arguments(p, CircuitConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..circuits.pipeline import CircuitConfig, build_circuit
    from ..progress import TqdmProgress

    cfg = config.from_args(CircuitConfig, args)
    with TqdmProgress("circuit", unit="batch") as bar:
        graph, pruned = build_circuit(cfg, progress=bar)
    target = graph.logit_labels[0]
    print(f"target {target!r} (p={graph.logit_probabilities[0]:.3f}, logit "
          f"{graph.logit_values[0]:.3f}); {graph.n_features} feature nodes of "
          f"{graph.meta.get('n_active_features', graph.n_features)} active; kept "
          f"{int(pruned.node_mask.sum())} nodes, {int(pruned.edge_mask.sum())} edges "
          f"({pruned.kept_influence:.1%} of influence): {cfg.out}")
    return 0
