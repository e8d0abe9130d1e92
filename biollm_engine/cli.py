"""The `biollm` command line.

Each subcommand lives in `biollm_engine/commands/<name>.py` with `add_parser(subparsers)` and
`run(args) -> int`. A `BioLLMError` ends the command with its one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands
from .errors import BioLLMError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biollm",
        description="Sparse dictionaries, features and circuits for biological language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except BioLLMError as e:
        print(f"biollm: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("biollm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
