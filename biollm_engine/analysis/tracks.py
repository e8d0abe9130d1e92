"""Per-base activation tracks of chosen features along DNA records, and a bedGraph writer.

For DNA a token's `unit` is the position of its first base in the record. A token covers
`span` bases (1 for byte-level models; the token's length for k-mer / BPE tokenizers). A base's
value is the max over the tokens covering it, so overlapping windows of one record merge.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import BioLLMError
from ..fileio import atomic_path
from .chunks import EncodedChunk


def base_tracks(chunks: Iterable[EncodedChunk], features: Sequence[int],
                record_lengths: dict[int, int] | Sequence[int],
                span: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Return {record: float32 [len(features), record length]} (zeros where nothing fired).

    `span` maps a token id to the number of bases it covers (default 1 for every token).
    """
    feats = np.asarray(features, dtype=np.int64)
    lengths = dict(enumerate(record_lengths)) if not isinstance(record_lengths, dict) \
        else record_lengths
    tracks = {r: np.zeros((len(feats), int(n)), np.float32) for r, n in lengths.items()}
    for chunk in chunks:
        if len(feats) and feats.max() >= chunk.acts.shape[1]:
            raise BioLLMError(f"feature {int(feats.max())} is out of range; the dictionary has "
                              f"{chunk.acts.shape[1]} features.")
        sub = chunk.acts[:, feats].tocoo()
        src = chunk.sources
        rec = src.record[sub.row]
        start = src.unit[sub.row]
        width = np.ones(len(rec), np.int64) if span is None else \
            np.asarray(span)[src.token_id[sub.row]].astype(np.int64)
        ok = start >= 0
        for r in np.unique(rec[ok]):
            if int(r) not in tracks:
                raise BioLLMError(f"record {int(r)} has no length; pass every record's length.")
            t = tracks[int(r)]
            sel = ok & (rec == r)
            f, s, w, v = sub.col[sel], start[sel], width[sel], sub.data[sel]
            # expand each token to the bases it covers
            rep = np.repeat(np.arange(len(s)), w)
            base = s[rep] + (np.arange(len(rep)) - np.repeat(np.cumsum(w) - w, w))
            inside = base < t.shape[1]
            np.maximum.at(t, (f[rep][inside], base[inside]), v[rep][inside])
    return tracks


def write_bedgraph(track: np.ndarray, chrom: str, path: str | os.PathLike,
                   name: str | None = None, skip_zeros: bool = True) -> Path:
    """Write one feature's per-base track as bedGraph (0-based, half-open runs of equal value)."""
    track = np.asarray(track, dtype=np.float64).ravel()
    if not chrom or any(c.isspace() for c in chrom):
        raise BioLLMError(f"chromosome name {chrom!r} must be non-empty without spaces.")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        header = f"track type=bedGraph name={name}" if name else "track type=bedGraph"
        fh.write(header + "\n")
        if len(track):
            change = np.flatnonzero(np.diff(track) != 0) + 1
            starts = np.r_[0, change]
            ends = np.r_[change, len(track)]
            for s, e in zip(starts, ends):
                v = track[s]
                if skip_zeros and v == 0:
                    continue
                fh.write(f"{chrom}\t{s}\t{e}\t{v:.6g}\n")
    return path
