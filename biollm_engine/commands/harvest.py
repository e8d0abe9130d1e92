"""`biollm harvest`: run a model over cells, DNA or text and cache activations on disk."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import add_arguments, from_args
from ..errors import BioLLMError
from .models import add_model_arguments


def parse_data_options(items: list[str] | None) -> dict:
    """KEY=VALUE strings to reader options; values read as JSON where they parse (200, true, null)."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BioLLMError(f"--data-option {item!r} is not KEY=VALUE, e.g. top_k=100.")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


HELP = "cache a model's activations on cells, DNA or text"


def add_parser(subparsers) -> None:
    from ..harvest import HarvestConfig

    p = subparsers.add_parser("harvest", help=HELP)
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--data", required=True, help=".h5ad cells, FASTA / GenBank DNA, .txt / .jsonl text")
    p.add_argument("--out", required=True, help="cache folder to write (an unfinished one resumes)")
    p.add_argument("--hookpoint", dest="hookpoints", action="append", required=True,
                   help="hookpoint to capture, e.g. layers.3 (repeatable; `biollm models inspect` "
                        "lists them)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="reader option, e.g. top_k=100, layer=raw, window=1024 (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a cache of another harvest in --out")
    add_arguments(p, HarvestConfig, exclude=("hookpoints",))
    add_model_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..harvest import harvest
    from ..inputs import open_data
    from ..models import load_model, resolve_hookpoint
    from ..progress import TqdmProgress

    from ..harvest import HarvestConfig

    cfg = from_args(HarvestConfig, args)
    options = parse_data_options(args.data_option)
    data = open_data(args.data, **options)
    lm = load_model(args.model, device=args.device, dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code)
    for h in cfg.hookpoints:
        resolve_hookpoint(lm, h)
    print(data.describe())
    examples = data.examples(lm.tokenizer, genes_only=cfg.genes_only, max_length=cfg.max_length)
    meta = {"data": str(Path(args.data).resolve()), "data_kind": data.kind, "data_options": options,
            "units": data.units}
    unit = "tok" if cfg.max_tokens else "example"
    with TqdmProgress("harvest", unit=unit) as bar:
        cache = harvest(lm, examples, cfg, args.out, progress=bar, meta=meta,
                        total_examples=len(data), overwrite=args.overwrite)
    print(f"harvested {cache.num_tokens} tokens at {', '.join(cache.hookpoints)} into {cache.dir} "
          f"({len(cache.shards)} shards, {cache.dtype})")
    return 0
