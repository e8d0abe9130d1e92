"""`biollm evaluate`: cell-type annotation accuracy of a model on labelled cells (CellVerse)."""

from __future__ import annotations

import argparse
import csv
import json

from .. import config


HELP = "cell-type annotation accuracy on labelled cells, with and without dictionaries spliced in"


def add_parser(subparsers) -> None:
    from ..evaluation.config import EvaluateConfig

    p = subparsers.add_parser(
        "evaluate", help=HELP,
        description="Ask the model the cell type of each labelled cell (the C2S prompt, or "
                    "CellVerse multiple choice) and report accuracy, macro-F1, per-type accuracy, "
                    "the confusion matrix and baselines.")
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--data", required=True, help=".h5ad file of cells")
    p.add_argument("--obs-key", required=True, help="obs column holding the cell types")
    p.add_argument("--dicts", action="append", default=[], metavar="DIR",
                   help="dictionary folder to splice in (repeatable; each at its own hookpoint)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="cell sentence option, e.g. top_k=100 (as in biollm harvest)")
    config.add_arguments(p, EvaluateConfig)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", help="model dtype")
    p.add_argument("--predictions", metavar="OUT.csv", help="write per-cell predictions here")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..dictionaries import load_dictionary
    from ..evaluation import evaluate
    from ..inputs import open_data
    from ..models import load_model
    from ..progress import TqdmProgress
    from .harvest import parse_data_options

    from ..evaluation.config import EvaluateConfig

    cfg = config.from_args(EvaluateConfig, args)
    dictionaries = [load_dictionary(d) for d in args.dicts]
    dataset = open_data(args.data, **parse_data_options(args.data_option))
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    dictionaries = [d.to(lm.device) for d in dictionaries]
    with TqdmProgress("evaluate", unit="cell") as bar:
        result = evaluate(lm, dataset, args.obs_key, cfg, dictionaries,
                          progress=None if args.json else bar)
    if args.predictions:
        write_predictions(result, args.predictions)
    summary = result.to_dict()
    print(json.dumps(summary) if args.json else table(summary))
    return 0


def write_predictions(result, path: str) -> None:
    from ..fileio import atomic_path

    rows = result.rows()
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def table(s: dict) -> str:
    """The metrics as aligned text: summary lines, per-type rows, the confusion matrix."""
    lines = [f"{s['n_cells']} cells"]
    rows = [("accuracy", s["accuracy"]), ("macro-F1", s["macro_f1"]),
            ("majority baseline", s["baseline_majority"]),
            ("chance baseline", s["baseline_chance"])]
    if "spliced_accuracy" in s:
        rows += [("spliced accuracy", s["spliced_accuracy"]),
                 ("spliced macro-F1", s["spliced_macro_f1"]),
                 ("changed fraction", s["changed_fraction"])]
    lines += [f"  {k:<18} {v:.3f}" for k, v in rows]
    if s["unmatched"]:
        lines.append(f"  {'unmatched answers':<18} {s['unmatched']}")
    w = max(len(t) for t in s["confusion"]["labels"]) + 2
    lines += ["", f"{'cell type':<{w}} {'n':>5} {'correct':>7} {'accuracy':>8}"]
    lines += [f"{t:<{w}} {v['n']:>5} {v['correct']:>7} {v['accuracy']:>8.3f}"
              for t, v in s["per_type"].items()]
    cols = s["confusion"]["predicted"]
    short = [c[:8] for c in cols]
    lines += ["", "confusion (rows: label, columns: prediction)",
              " " * w + " ".join(f"{c:>8}" for c in short)]
    lines += [f"{t:<{w}}" + " ".join(f"{v:>8}" for v in row)
              for t, row in zip(s["confusion"]["labels"], s["confusion"]["matrix"])]
    return "\n".join(lines)
