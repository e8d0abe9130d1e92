"""`biollm models inspect MODEL`: what a model is and which hookpoints it has."""

from __future__ import annotations

import argparse

from ..models.loading import DEVICES, DTYPES


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags every command that loads a model shares."""
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)} (default auto)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="model weights dtype")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run model code shipped with the model (only for models you trust)")


HELP = "inspect models"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help=HELP)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    q = sub.add_parser("inspect", help="list a model's hookpoints with their widths")
    q.add_argument("model", help="model folder or hub id")
    add_model_arguments(q)
    q.set_defaults(run=run)


def run(args) -> int:
    from ..models import list_hookpoints, load_model

    lm = load_model(args.model, device=args.device, dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code)
    kind = "causal LM" if lm.is_causal else "encoder"
    print(f"{lm.name}: {lm.arch.name} {kind}, {lm.num_layers} layers, d_model {lm.d_model}, "
          f"{lm.dtype} on {lm.device}")
    hps = list_hookpoints(lm)
    w_name = max(len("hookpoint"), *(len(h.name) for h in hps))
    w_path = max(len("module"), *(len(h.module_path) for h in hps))
    print(f"{'hookpoint':<{w_name}}  {'module':<{w_path}}  {'io':<6}  width")
    for h in hps:
        print(f"{h.name:<{w_name}}  {h.module_path:<{w_path}}  {h.io:<6}  {h.width}")
    return 0
