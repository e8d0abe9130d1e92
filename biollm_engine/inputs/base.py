"""What every input reader hands to the model side: tokenized examples and the data-source protocol.

A data source (cells, DNA windows, text) is a list of records; `examples(tokenizer)` turns them
into `TokenizedExample`s whose tokens each carry the unit they read (a gene, a base position) so
that harvested activations can be traced back to biology.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class TokenizedExample:
    """One tokenized record, with per-token bookkeeping for harvesting."""

    record: int
    """Index of the record (cell, DNA window, text line) in its data source."""
    input_ids: np.ndarray
    """Token ids, np.int64 [T]."""
    keep: np.ndarray
    """Tokens worth harvesting, np.bool_ [T] (special tokens are never kept)."""
    unit: np.ndarray
    """np.int32 [T]: gene index into the source's `units` (cells), 0-based forward-strand base
    position of the token's first base in its sequence record (DNA), -1 for none."""
    text: str | None = None
    """The text the tokens were made from (prompt, window sequence, line)."""
    rank: np.ndarray | None = None
    """np.int32 [T]: for cell sentences, the 0-based rank of the token's gene in the sentence."""

    def __len__(self) -> int:
        return len(self.input_ids)


@runtime_checkable
class DataSource(Protocol):
    """A data set the engine can read: a number of records that tokenize into examples."""

    kind: str
    """"cells" | "dna" | "text"."""

    def __len__(self) -> int: ...

    @property
    def units(self) -> list[str] | None:
        """Names of what `TokenizedExample.unit` indexes (gene symbols); None when the unit is a
        base position or there is none."""

    def describe(self) -> str:
        """One line: what was read and how."""

    def examples(self, tokenizer=None, indices: Sequence[int] | None = None,
                 genes_only: bool = False, max_length: int | None = None
                 ) -> Iterator[TokenizedExample]: ...


def tokenize_with_offsets(tokenizer, texts: list[str], max_length: int | None = None
                          ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Tokenize `texts`; per text return (ids int64 [T], char offsets int64 [T, 2], special [T]).

    Fast tokenizers report offsets themselves. Slow ones (e.g. the k-mer tokenizers of DNA models)
    are walked token by token along the text; a token that cannot be found where the previous one
    ended (an unknown token) gets an empty span and so maps to no unit.
    """
    kwargs = dict(add_special_tokens=True, return_special_tokens_mask=True,
                  truncation=max_length is not None, max_length=max_length)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, return_offsets_mapping=True, **kwargs)
        return [(np.asarray(ids, dtype=np.int64),
                 np.asarray(off, dtype=np.int64).reshape(-1, 2),
                 np.asarray(special, dtype=bool))
                for ids, off, special in zip(enc["input_ids"], enc["offset_mapping"],
                                             enc["special_tokens_mask"])]
    out = []
    for text in texts:
        enc = tokenizer(text, **kwargs)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        special = np.asarray(enc["special_tokens_mask"], dtype=bool)
        offsets = np.zeros((len(ids), 2), dtype=np.int64)
        cursor = 0
        for j, tok in enumerate(tokenizer.convert_ids_to_tokens(ids.tolist())):
            if special[j]:
                offsets[j] = cursor
                continue
            # WordPiece continuations read '##ab'; uncased vocabularies lower-case the text
            piece = tokenizer.convert_tokens_to_string([tok]).strip().removeprefix("##")
            start = cursor
            while start < len(text) and text[start].isspace():
                start += 1
            if piece and text[start:start + len(piece)].lower() == piece.lower():
                offsets[j] = (start, start + len(piece))
                cursor = start + len(piece)
            else:
                offsets[j] = cursor
        out.append((ids, offsets, special))
    return out


def spans_to_units(offsets: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each token's [a, b) character span, the index of the first unit span [s, e) it
    overlaps (units sorted, disjoint), else -1."""
    a, b = offsets[:, 0], offsets[:, 1]
    g = np.searchsorted(ends, a, side="right")
    ok = (g < len(starts)) & (b > a)
    g_safe = np.minimum(g, max(len(starts) - 1, 0))
    ok &= len(starts) > 0
    if len(starts):
        ok &= starts[g_safe] < b
    return np.where(ok, g, -1).astype(np.int32)
