"""The `biollm` command line.

Each subcommand lives in `biollm_engine/commands/<name>.py` with `HELP` (its one-line summary),
`add_parser(subparsers)` and `run(args) -> int`. A `BioLLMError` ends the command with its one line
on stderr and exit code 2.

Only the command being run builds its full parser: the others are listed by their `HELP`, so that
`biollm --help` or `biollm train ...` never imports the engine modules the other commands need
(torch alone takes seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands
from .errors import BioLLMError


def command_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(commands.__path__))


class _Parser(argparse.ArgumentParser):
    """argparse whose errors (a missing or mistyped option) are one line, as every other bad
    input's: its default prints the whole usage, some commands' dozens of lines, above it.
    Subcommands' parsers are of the same class (argparse makes them of their parent's)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the "
                     "options)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s options in full (all commands' when None)."""
    parser = _Parser(
        prog="biollm",
        description="Sparse dictionaries, features and circuits for biological language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_names():
        module = importlib.import_module(f"{commands.__name__}.{name}")
        if command in (None, name) or not hasattr(module, "HELP"):
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def _command_in(argv: list[str]) -> str:
    """The subcommand named in argv ('' for none, e.g. `biollm --help`)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _with_default_action(argv: list[str], command: str) -> list[str]:
    """`biollm demo --out DIR` means `biollm demo run --out DIR`: a command with actions may name
    the one its options go to when none is given (`DEFAULT_ACTION`)."""
    if command not in command_names():
        return argv
    action = getattr(importlib.import_module(f"{commands.__name__}.{command}"),
                     "DEFAULT_ACTION", None)
    i = argv.index(command) + 1
    if action and i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-h", "--help"):
        return [*argv[:i], action, *argv[i:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_in(argv)
    argv = _with_default_action(argv, command)
    parser = build_parser(command)
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
