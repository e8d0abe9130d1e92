"""`biollm tracks`: per-base feature tracks along DNA records (bedGraph), enrichment, logos."""

from __future__ import annotations

import argparse

from .. import config

HELP = "per-base feature tracks along DNA (bedGraph), enrichment in annotations"


def add_parser(subparsers) -> None:
    from ..analysis.dna_tracks import TracksConfig

    p = subparsers.add_parser(
        "tracks", help=HELP,
        description="Run a DNA model over windows of a FASTA / GenBank file, encode one "
                    "hookpoint with a dictionary and write, per chosen feature, a bedGraph "
                    "(one value per base, the max over overlapping windows and strands) and a "
                    "sequence logo of its strongest peaks; features.csv (firing frequency), "
                    "top_windows.csv (with sequences) and, with --annotations, enrichment.csv "
                    "(AUROC and mean inside vs outside each annotation type).")
    config.add_arguments(p, TracksConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.dna_tracks import TracksConfig, run_tracks
    from ..progress import TqdmProgress

    cfg = config.from_args(TracksConfig, args)
    with TqdmProgress("tracks", unit="window") as bar:
        result = run_tracks(cfg, progress=bar)
    print(f"{len(result.features)} feature tracks written to {result.out}")
    if result.enrichment is not None:
        best = result.enrichment.sort_values("auroc", ascending=False).head(3)
        for r in best.itertuples():
            print(f"  feature {r.feature} in {r.annotation}: AUROC {r.auroc:.3f}")
    return 0
