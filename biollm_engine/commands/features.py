"""`biollm features`: what each feature of a dictionary means in cells, genes and bases."""

from __future__ import annotations

import argparse

from .. import config


HELP = "feature table: frequency, top genes, cell types, logit lens"


def add_parser(subparsers) -> None:
    from ..analysis.pipeline import FeaturesConfig

    p = subparsers.add_parser(
        "features", help=HELP,
        description="Encode a data set with a dictionary (live from the model, or from an "
                    "activation cache with --cache), write one row per feature to --out "
                    "(.csv/.tsv/.parquet; labels of an earlier export are kept), and optionally "
                    "a new .h5ad with the cells x features matrix for scanpy (--write-h5ad). "
                    "Reader options as for harvest: --data-option KEY=VALUE (DNA: e.g. "
                    "tokenizer=model, window=256, stride=128).")
    config.add_arguments(p, FeaturesConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.pipeline import FeaturesConfig, run_features
    from ..progress import TqdmProgress

    cfg = config.from_args(FeaturesConfig, args)
    # from the cache the bar counts tokens; live, the examples it reads (cells or windows)
    unit = "tok" if cfg.cache else "cell" if str(cfg.data).endswith(".h5ad") else "example"
    with TqdmProgress("features", unit=unit) as bar:
        result = run_features(cfg, progress=bar)
    t = result.table.df
    print(f"{len(t)} features, {int((t['frequency'] > 0).sum())} active over "
          f"{result.stats.num_tokens} tokens: {cfg.out}")
    if cfg.write_h5ad:
        print(f"cells x features in obsm, table in uns: {cfg.write_h5ad}")
    return 0
