"""`biollm train`: train sparse dictionaries on a model's activations."""

from __future__ import annotations

import argparse
import os
import signal

from .. import config
from ..errors import BioLLMError
from ..progress import Cancelled, CancelToken, TqdmProgress
from ..training.config import KINDS, TrainConfig


HELP = "train SAEs, transcoders or crosscoders on a model's activations"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help=HELP,
        description="Train sparse dictionaries from an activation cache (--cache) or live from "
                    "the model (--data). Under torchrun, runs data-parallel or splits "
                    "hookpoints over ranks (--distribute).")
    config.add_arguments(p, TrainConfig, exclude=("kind",))
    kinds = list(KINDS) + [k.replace("_", "-") for k in KINDS if "_" in k]
    p.add_argument("--kind", choices=kinds, default="sae",
                   help=config.field_help(_field("kind")))
    p.set_defaults(run=run)


def _field(name: str):
    import dataclasses

    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name)


def _config(args: argparse.Namespace) -> TrainConfig:
    """The flags; or, for `--out DIR --resume` alone, the options the checkpoint was run with."""
    if not (args.resume and not args.hookpoint and args.data is None and args.cache is None):
        return config.from_args(TrainConfig, args)
    from ..training import checkpoint

    last = checkpoint.latest(args.out)
    if last is None:
        raise BioLLMError(f"--resume: {args.out} holds no checkpoint to resume from; start "
                          "without --resume.")
    return config.from_dict(TrainConfig, {**checkpoint.read_state(last)["config"], "resume": True})


def run(args: argparse.Namespace) -> int:
    from ..training import train

    cfg = _config(args)
    cancel = CancelToken()
    # Ctrl-C saves a checkpoint before stopping, so `--resume` can continue
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        with TqdmProgress("train") as bar:
            paths = train(cfg, progress=bar if main_rank else None, cancel=cancel)
    except Cancelled:
        print(f"biollm: training cancelled; checkpoint saved in {cfg.out}/checkpoints; "
              "continue with --resume.")
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
