"""`biollm eval`: measure a dictionary on a model and a data set."""

from __future__ import annotations

import argparse
import json

from .. import config
from ..training.evaluate import EvalConfig

_ROWS = (("fvu", "FVU"), ("l0", "L0"), ("dead_frac", "dead fraction"),
         ("ce_clean", "CE clean"), ("ce_spliced", "CE spliced"), ("ce_zero", "CE zero-ablated"),
         ("ce_delta", "CE delta"), ("loss_recovered", "loss recovered"),
         ("agreement", "cell-type agreement"))


HELP = "measure a dictionary: FVU, L0, dead latents, spliced CE, cell-type agreement"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help=HELP,
        description="Run the model on records of --data with the dictionary's reconstruction "
                    "spliced in and report reconstruction and downstream metrics.")
    config.add_arguments(p, EvalConfig)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.evaluate import evaluate

    result = evaluate(config.from_args(EvalConfig, args))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['kind']} on {result['hookpoint']}, {result['prompts']} records")
    for key, label in _ROWS:
        if result.get(key) is not None:
            print(f"  {label:<20} {result[key]:.4g}")
    for model in ("base", "finetuned"):  # crosscoders across two models
        for key, label in _ROWS:
            if result.get(f"{key}_{model}") is not None:
                print(f"  {label + ' ' + model:<30} {result[f'{key}_{model}']:.4g}")
    norms = result.get("decoder_norms")
    if norms:
        low, high = norms["thresholds"]
        print(f"  latents by relative decoder norm {norms['relative_norm']}:")
        for key in [k for k in norms if k.endswith("_only")][:1] + ["shared"] + \
                [k for k in norms if k.endswith("_only")][1:]:
            print(f"    {key:<18} {norms[key]:.1%}")
        print(f"    (only: r < {low} or r > {high}; shared: {low} <= r <= {high})")
    return 0
