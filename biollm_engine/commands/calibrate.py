"""`biollm calibrate`: set a BatchTopK dictionary's inference threshold from a cache."""

from __future__ import annotations

HELP = "set a BatchTopK dictionary's inference threshold from harvested activations"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help=HELP,
        description="BatchTopK keeps the k·N largest activations of each batch while training; "
                    "read without a threshold (Goodfire's Evo 2 SAE ships none) a token's "
                    "values depend on the batch around it. This sets the threshold to the mean "
                    "smallest kept activation over batches of --batch-tokens tokens of --cache "
                    "and writes the dictionary, in our format, to --out.")
    p.add_argument("--dict", required=True, help="dictionary folder or Goodfire .pt file")
    p.add_argument("--cache", required=True, help="activation cache of the dictionary's layer "
                                                  "(`biollm harvest`)")
    p.add_argument("--out", required=True, help="folder to write the calibrated dictionary to")
    p.add_argument("--hookpoint", default=None,
                   help="hookpoint of the cache to read (default: the dictionary's)")
    p.add_argument("--batch-tokens", type=int, default=4096,
                   help="tokens per batch, N of k·N (default 4096)")
    p.add_argument("--max-tokens", type=int, default=1 << 20,
                   help="tokens read at most (default 1,048,576)")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from ..cache import ActivationCache
    from ..dictionaries import load_dictionary
    from ..dictionaries.calibrate import calibrate_threshold
    from ..dictionaries.formats import check_fits
    from ..errors import BioLLMError

    if args.batch_tokens < 1 or args.max_tokens < 1:
        raise BioLLMError("--batch-tokens and --max-tokens must be at least 1.")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BioLLMError(f"--out {out} exists and is not an empty folder; give a new one.")
    if Path(args.dict).resolve() == out.resolve():
        raise BioLLMError("--out is the dictionary itself; write the calibrated one elsewhere.")
    d = load_dictionary(args.dict)
    cache = ActivationCache(args.cache)
    hookpoint = args.hookpoint or d.cfg.hookpoint
    cache.check_hookpoints([hookpoint])
    check_fits(d, cache.widths[hookpoint])
    n = min(cache.num_tokens, args.max_tokens)
    # contiguous batches in file order: the cells or windows a user reads together
    batches = (cache.read(hookpoint, a, min(n, a + args.batch_tokens))
               for a in range(0, n, args.batch_tokens))
    measured = calibrate_threshold(d, batches)
    d.cfg.training = {**d.cfg.training, "calibrated": {"cache": str(args.cache),
                                                       "hookpoint": hookpoint,
                                                       "batch_tokens": args.batch_tokens,
                                                       **measured}}
    d.save(out)
    print(f"threshold {measured['threshold']:.6g} (mean smallest kept activation over "
          f"{measured['batches']} batches, {measured['tokens']:,} tokens): {out}")
    return 0

