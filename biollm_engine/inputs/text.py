"""Plain text inputs: `.txt` (lines or paragraphs), `.jsonl` (a text field), a saved HF dataset.

Text files are indexed once (byte ranges of each example, validated) and read back by seeking,
so a large corpus is never held in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import BioLLMError
from .base import TokenizedExample, tokenize_with_offsets

TOKENIZE_BATCH = 64


@dataclass
class TextConfig:
    text_field: str = field(default="text", metadata={
        "help": "the field holding the text (.jsonl, saved datasets)"})
    paragraphs: bool = field(default=False, metadata={
        "help": ".txt: one example per paragraph (blank-line separated) instead of per line"})
    split: str | None = field(default=None, metadata={
        "help": "split of a saved DatasetDict (unset: train, or the only split)"})


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in
                                 ("dataset_info.json", "dataset_dict.json", "state.json"))


class TextDataset:
    """Examples of text, one per line / paragraph / JSON object / dataset row (a DataSource)."""

    kind = "text"

    def __init__(self, path: str | Path, cfg: TextConfig | None = None):
        self.cfg = cfg = cfg or TextConfig()
        self.path = Path(path)
        self._dataset = None
        if is_saved_dataset(self.path):
            self.format = "dataset"
            self._open_dataset()
        elif not self.path.is_file():
            raise BioLLMError(f"{self.path} does not exist; check the path.")
        else:
            self.format = "jsonl" if self.path.suffix.lower() == ".jsonl" else "txt"
            self._ranges = self._index()
            if not len(self._ranges):
                raise BioLLMError(f"{self.path} holds no text (no non-empty lines).")

    def _index(self) -> np.ndarray:
        """Byte ranges [start, end) of each example, validating as it goes."""
        ranges, para_start, pos = [], None, 0
        jsonl = self.format == "jsonl"
        with open(self.path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                raise BioLLMError(f"{self.path} is gzip-compressed; decompress it (gunzip) so its "
                                  "texts can be read by position.")
            f.seek(0)
            for lineno, raw in enumerate(f, 1):
                start, pos = pos, pos + len(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise BioLLMError(f"{self.path} line {lineno} is not UTF-8 text; re-save the "
                                      "file as UTF-8.") from None
                if not line.strip():
                    if para_start is not None:
                        ranges.append((para_start, start))
                        para_start = None
                    continue
                if jsonl:
                    self._parse(line, lineno)
                if self.cfg.paragraphs and not jsonl:
                    para_start = start if para_start is None else para_start
                else:
                    ranges.append((start, pos))
        if para_start is not None:
            ranges.append((para_start, pos))
        return np.asarray(ranges, dtype=np.int64).reshape(-1, 2)

    def _parse(self, line: str, lineno: int) -> str:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BioLLMError(f"{self.path} line {lineno} is not valid JSON ({e.msg}); each line "
                              "must be one JSON object.") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(self.cfg.text_field), str):
            raise BioLLMError(f"{self.path} line {lineno} has no string field "
                              f"{self.cfg.text_field!r}; set text_field to the key holding "
                              "the text.")
        return obj[self.cfg.text_field]

    def _open_dataset(self):
        try:
            import datasets
        except ImportError:
            raise BioLLMError(f"{self.path} is a saved Hugging Face dataset; reading it needs the "
                              "'datasets' package (pip install datasets).") from None
        try:
            ds = datasets.load_from_disk(str(self.path))
        except Exception as e:  # datasets raises FileNotFoundError / ValueError for bad folders
            raise BioLLMError(f"{self.path} cannot be read as a saved dataset ({e}).") from None
        if isinstance(ds, datasets.DatasetDict):
            splits = list(ds.keys())
            split = self.cfg.split or ("train" if "train" in splits else splits[0] if
                                       len(splits) == 1 else None)
            if split not in splits:
                raise BioLLMError(f"choose a split of {self.path}: {', '.join(splits)} "
                                  "(option split).")
            ds, self._split = ds[split], split
        else:
            self._split = None
        if self.cfg.text_field not in ds.column_names:
            raise BioLLMError(f"{self.path} has no column {self.cfg.text_field!r}; columns are "
                              f"{ds.column_names}; set text_field to the text column.")
        if len(ds) == 0:
            raise BioLLMError(f"{self.path} holds no rows.")
        self._dataset = ds

    def __len__(self) -> int:
        return len(self._dataset) if self._dataset is not None else len(self._ranges)

    @property
    def units(self) -> None:
        return None

    def describe(self) -> str:
        if self.format == "dataset":
            split = f" split {self._split}" if self._split else ""
            return (f"{len(self)} rows from the saved dataset {self.path.name}{split}, "
                    f"column {self.cfg.text_field}")
        if self.format == "jsonl":
            return (f"{len(self)} texts from {self.path.name} (JSON lines, field "
                    f"{self.cfg.text_field})")
        what = "paragraphs" if self.cfg.paragraphs else "lines"
        return f"{len(self)} {what} from {self.path.name}"

    def texts(self, indices: Sequence[int] | None = None) -> Iterator[tuple[int, str]]:
        """(index, text) in the order of `indices` (all by default)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise BioLLMError(f"text index out of range: there are {len(self)} texts.")
        if self._dataset is not None:
            for i in idx.tolist():
                yield i, str(self._dataset[i][self.cfg.text_field])
            return
        with open(self.path, "rb") as f:
            for i in idx.tolist():
                start, end = self._ranges[i]
                f.seek(int(start))
                text = f.read(int(end - start)).decode("utf-8")
                if self.format == "jsonl":
                    text = self._parse(text, -1)
                else:
                    text = text.replace("\r\n", "\n")
                    text = text.strip() if self.cfg.paragraphs else text.rstrip("\n")
                yield i, text

    def examples(self, tokenizer, indices: Sequence[int] | None = None, genes_only: bool = False,
                 max_length: int | None = None) -> Iterator[TokenizedExample]:
        """Tokenized texts; text has no units (unit -1)."""
        if genes_only:
            raise BioLLMError("genes_only keeps the gene-name tokens of cell sentences; text has "
                              "none, so leave it off.")
        if tokenizer is None:
            raise BioLLMError("text needs the model's tokenizer; load the model first.")
        batch: list[tuple[int, str]] = []
        for item in self.texts(indices):
            batch.append(item)
            if len(batch) == TOKENIZE_BATCH:
                yield from self._tokenize(tokenizer, batch, max_length)
                batch = []
        if batch:
            yield from self._tokenize(tokenizer, batch, max_length)

    @staticmethod
    def _tokenize(tokenizer, batch, max_length):
        encoded = tokenize_with_offsets(tokenizer, [t for _, t in batch], max_length)
        for (i, text), (ids, _, special) in zip(batch, encoded):
            yield TokenizedExample(i, ids, ~special, np.full(len(ids), -1, dtype=np.int32), text)
