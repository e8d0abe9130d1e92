"""Input data: cells (.h5ad), DNA (FASTA / GenBank) and text, each a `DataSource` of records that
tokenize into `TokenizedExample`s. `open_data(path, **options)` picks the reader."""

from __future__ import annotations

import dataclasses
import gzip
import json
import numbers
import types
import typing
from pathlib import Path

from ..errors import BioLLMError
from .base import DataSource, TokenizedExample
from .cells import CellDataset, CellSentenceConfig
from .dna import (FASTA_SUFFIXES, GENBANK_SUFFIXES, DnaConfig, DnaDataset, read_features,
                  read_sequences, reverse_complement, window_spans, windows)
from .text import TextConfig, TextDataset, is_saved_dataset

__all__ = ["DataSource", "TokenizedExample", "CellDataset", "CellSentenceConfig", "DnaConfig",
           "DnaDataset", "TextConfig", "TextDataset", "open_data", "data_kind", "read_features",
           "read_sequences", "reverse_complement", "window_spans", "windows"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KINDS = {"cells": (CellDataset, CellSentenceConfig), "dna": (DnaDataset, DnaConfig),
          "text": (TextDataset, TextConfig)}
SUPPORTED = (".h5ad, FASTA (.fa .fasta .fna, optionally .gz), GenBank (.gb .gbk .genbank), "
             ".txt, .jsonl, or a folder saved with datasets' save_to_disk")


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_HDF5_MAGIC):
        return "cells"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(512)
        except (OSError, EOFError):
            return None
    text = head.lstrip()
    if text.startswith(b">") or text.startswith(b"LOCUS"):
        return "dna"
    if text.startswith(b"{"):
        return "text"
    return None


def data_kind(path: str | Path) -> str:
    """'cells' | 'dna' | 'text' for `path`, by suffix, else by content; BioLLMError if neither."""
    path = Path(path)
    if not path.exists():
        raise BioLLMError(f"{path} does not exist; check the path.")
    if path.is_dir():
        if is_saved_dataset(path):
            return "text"
        raise BioLLMError(f"{path} is a folder but not a saved dataset (no dataset_info.json); "
                          f"open a file: {SUPPORTED}.")
    if path.stat().st_size == 0:
        raise BioLLMError(f"{path} is empty; re-export or re-download it.")
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    last = suffixes[-1] if suffixes else ""
    if last == ".gz" and len(suffixes) == 2:
        last = suffixes[0]
    if last == ".h5ad":
        return "cells"
    if last in FASTA_SUFFIXES or last in GENBANK_SUFFIXES:
        return "dna"
    if last in (".txt", ".jsonl"):
        return "text"
    kind = _sniff(path)
    if kind is None:
        raise BioLLMError(f"{path}: unknown data format; supported: {SUPPORTED}.")
    return kind


def open_data(path: str | Path, **options) -> DataSource:
    """Open cells / DNA / text data; `options` are the fields of that kind's config dataclass
    (CellSentenceConfig, DnaConfig, TextConfig)."""
    kind = data_kind(path)
    reader, config = _KINDS[kind]
    names = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise BioLLMError(f"option {', '.join(unknown)} does not apply to {kind} data; "
                          f"its options are {', '.join(names)}.")
    hints = typing.get_type_hints(config)
    return reader(path, config(**{k: _checked(kind, k, v, hints[k]) for k, v in options.items()}))


def _checked(kind: str, name: str, value, tp):
    """`value` as option `name` (of type `tp`) takes it, else BioLLMError: the configs check
    their choices but not types, and a wrong one ('abc' for a window, 'yes' for a bool) would
    fail deep inside with a traceback or, worse, pass as truthy."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is bool:
        ok, want = isinstance(value, bool), "true or false"
    elif tp is int:
        ok, want = number and isinstance(value, numbers.Integral), "a whole number"
    elif tp is float:
        ok, want = number, "a number"
    elif tp is str and value is not None and not isinstance(value, str):
        return json.dumps(value)  # KEY=VALUE read 1 or true as JSON; the option is that text
    else:  # choices (Literal) are the config's to check
        return value
    if not ok:
        shown = value if isinstance(value, str) else json.dumps(value)
        raise BioLLMError(f"{kind} option {name}={shown} must be {want}.")
    return float(value) if tp is float else int(value)
