"""Input data: cells (.h5ad), DNA (FASTA / GenBank) and text, each a `DataSource` of records that
tokenize into `TokenizedExample`s. `open_data(path, **options)` picks the reader."""

from __future__ import annotations

import dataclasses
import gzip
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
    return reader(path, config(**options))
