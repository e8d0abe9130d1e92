"""The data the analysis streams: sparse feature activations per token, with their sources.

A token's source says where it came from: `record` (cell / sequence index), `position` in the
model's input, `token_id`, and `unit` (the gene index into the data set's gene list for cells, the
base position in the record for DNA, -1 for prompt tokens). Tokens of one record are contiguous
and in input order, as the harvest writes them; contexts rely on that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import BioLLMError

SOURCE_FIELDS = ("record", "position", "token_id", "unit")


@dataclass
class TokenSources:
    """Per-token source arrays, all the same length (int64)."""

    record: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    unit: np.ndarray

    def __post_init__(self):
        for name in SOURCE_FIELDS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        n = {len(getattr(self, name)) for name in SOURCE_FIELDS}
        if len(n) != 1:
            raise BioLLMError("token sources have arrays of different lengths; re-run the harvest.")

    def __len__(self) -> int:
        return len(self.record)

    def __getitem__(self, idx) -> "TokenSources":
        return TokenSources(*(getattr(self, name)[idx] for name in SOURCE_FIELDS))

    @classmethod
    def from_any(cls, obj) -> "TokenSources":
        """Accept a `TokenSources`, a DataFrame or a mapping with the four source columns."""
        if isinstance(obj, cls):
            return obj
        missing = [name for name in SOURCE_FIELDS if name not in obj]
        if missing:
            raise BioLLMError(f"token sources lack {', '.join(missing)}; re-run the harvest.")
        if isinstance(obj, pd.DataFrame):
            return cls(*(obj[name].to_numpy() for name in SOURCE_FIELDS))
        return cls(*(np.asarray(obj[name]) for name in SOURCE_FIELDS))

    @classmethod
    def concat(cls, parts: list["TokenSources"]) -> "TokenSources":
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in SOURCE_FIELDS))


@dataclass
class EncodedChunk:
    """Feature activations of consecutive tokens `start .. start + n` (CSR tokens x features)."""

    acts: sp.csr_matrix
    sources: TokenSources
    start: int = 0

    def __post_init__(self):
        self.acts = sp.csr_matrix(self.acts, dtype=np.float32)
        self.acts.eliminate_zeros()
        if self.acts.shape[0] != len(self.sources):
            raise BioLLMError(f"{self.acts.shape[0]} activation rows for {len(self.sources)} "
                              "token sources; the cache and its sources disagree.")

    def __len__(self) -> int:
        return self.acts.shape[0]


def chunked(acts, sources, chunk_tokens: int):
    """Split in-memory activations (dense or sparse, tokens x features) into `EncodedChunk`s."""
    acts = sp.csr_matrix(acts, dtype=np.float32)
    sources = TokenSources.from_any(sources)
    for start in range(0, acts.shape[0], max(1, chunk_tokens)):
        stop = min(acts.shape[0], start + chunk_tokens)
        yield EncodedChunk(acts[start:stop], sources[start:stop], start)
