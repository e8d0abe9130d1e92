"""`biollm demo build` / `biollm demo run`: the embedded PBMC demo workspace."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import config


HELP = "build the embedded demo workspaces, or run the whole pipeline on the cell demo"
PARTS = ("all", "cells", "dna")
DEFAULT_ACTION = "run"  # `biollm demo --out DIR` runs the pipeline on the demo


def add_parser(subparsers) -> None:
    from ..demo.build import DemoBuildConfig
    from ..demo.run import DemoRunConfig

    p = subparsers.add_parser(
        "demo", help=HELP,
        description="The embedded demos: a small cell-sentence model trained on scanpy's "
                    "pbmc68k_reduced, with its transcoders and SAE, and a small byte-level DNA "
                    "model trained on Pseudomonas fluorescens SBW25 (in its dna/ folder), with "
                    "an SAE. Needs no network.")
    sub = p.add_subparsers(dest="demo_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="rebuild the demo workspaces from the data they ship with",
                       description="Train the demo models and their dictionaries, "
                                   "deterministically, and write the workspaces atomically: the "
                                   "cell demo in --out, the DNA demo in --out/dna.")
    config.add_arguments(b, DemoBuildConfig)
    b.add_argument("--part", choices=PARTS, default="all",
                   help="which demo to build: the cell demo, the DNA demo or both (default)")
    b.set_defaults(run=run_build)
    r = sub.add_parser("run", help="features, write-back, circuits and figures on the demo",
                       description="Run the pipeline on the demo workspace and write a feature "
                                   "table, an .h5ad with feature activations, one circuit per "
                                   "cell type and figures (PNG and SVG) into --out.")
    config.add_arguments(r, DemoRunConfig)
    r.set_defaults(run=run_demo)


def run_build(args: argparse.Namespace) -> int:
    from ..demo.build import DemoBuildConfig, build
    from ..fileio import read_json

    cfg = config.from_args(DemoBuildConfig, args)
    if args.part in ("all", "cells"):
        with _Bars() as bars:
            out = build(cfg, progress=bars)
        report = read_json(out / "demo.json", "demo report")
        m = report["model"]
        print(f"cell demo workspace: {out}")
        print(f"held-out accuracy {m['heldout_accuracy']:.3f} on {m['n_heldout']} cells "
              f"(majority class {m['majority_class']!r}: {m['majority_rate']:.3f}); "
              f"built in {report['timings_s']['total_s']:.0f} s")
    if args.part in ("all", "dna"):
        from ..demo.dna import build_dna_demo

        out = Path(cfg.out) / "dna"
        with _Bars() as bars:
            report = build_dna_demo(out, progress=bars, quick=cfg.quick)
        m = report["model"]
        print(f"DNA demo workspace: {out}")
        print(f"held-out loss {m['heldout_loss_nats']:.4f} nats/base (uniform "
              f"{m['baselines_nats']['uniform (ln 4)']:.4f}, order-5 Markov "
              f"{m['baselines_nats']['order-5 Markov']:.4f}); SAE FVU "
              f"{report['sae'].get('fvu', float('nan')):.3f}; built in "
              f"{report['timings_s']['total']:.0f} s")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from ..demo.run import DemoRunConfig, run

    from ..fileio import read_json

    cfg = config.from_args(DemoRunConfig, args)
    with _Bars() as bars:
        written = run(cfg, progress=bars)
    for path in written:
        print(path)
    analysis = read_json(Path(cfg.out) / "summary.json", "demo summary")["feature_analysis"]
    if analysis["from_cache"]:
        print("feature analysis: read from the workspace's cache (same inputs and code)")
    elif cfg.save_cache:
        print("feature analysis: computed, and stored in the workspace's cache")
    else:
        print("feature analysis: computed (--no-cache, or the workspace's cache was made from "
              "other inputs or code; --save-cache stores this one)")
    return 0


class _Bars:
    """A progress callback with one bar per task (the demo runs several jobs in turn)."""

    def __init__(self):
        self.task, self.bar = None, None

    def __call__(self, p) -> None:
        from ..progress import TqdmProgress

        if p.task != self.task:
            self.close()
            self.task, self.bar = p.task, TqdmProgress(p.task)
        self.bar(p)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.task, self.bar = None, None

    def __enter__(self) -> "_Bars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
