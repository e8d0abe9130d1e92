"""Streaming feature statistics: one pass, bounded memory, mergeable, equal to the dense result.

`FeatureStats.update(chunk)` takes one `EncodedChunk` at a time; `merge` combines accumulators of
disjoint token ranges (e.g. shards). Sums are kept in float64 and top lists break ties by token
index, so any chunking gives the same `FeatureStatsResult` as one big chunk.

A feature *fires* on a token when its activation is non-zero. The per-cell matrices and per-gene
sums use the tokens that carry a unit (`unit >= 0`: the cell's gene tokens, not its prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .chunks import EncodedChunk
from .topk import TopK, grouped_topk

# Fixed log-spaced activation bins, 4 per decade over [1e-3, 1e3), plus one bin below and one
# above: bin 0 is (0, 1e-3) (and negatives), bin b is [EDGES[b-1], EDGES[b]), the last >= 1e3.
HIST_EDGES = np.logspace(-3, 3, 25)
NUM_BINS = len(HIST_EDGES) + 1


@dataclass
class StatsConfig:
    top_tokens: int = field(default=20, metadata={"help": "top activating tokens kept per feature"})
    per_unit: bool = field(default=True, metadata={
        "help": "accumulate per-gene sums (cells); turn off for DNA, where units are bases"})


class _KeyedReduce:
    """Running (key -> max, sum, count) over int64 keys, compacted as it grows."""

    def __init__(self):
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.size = 0
        self.compacted = 0

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if len(keys):
            self.parts.append(_reduce(keys, values, values.astype(np.float64),
                                      np.ones(len(keys), np.int64)))
            self.size += len(self.parts[-1][0])
            if self.size > max(2 * self.compacted, 1 << 20):
                self.compact()

    def merge(self, other: "_KeyedReduce") -> None:
        self.parts.extend(other.parts)
        self.size += other.size
        self.compact()

    def compact(self) -> tuple[np.ndarray, ...]:
        if len(self.parts) != 1:
            cat = [np.concatenate(x) for x in zip(*self.parts)] if self.parts else \
                [np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0), np.zeros(0, np.int64)]
            self.parts = [_reduce(*cat)]
        self.size = self.compacted = len(self.parts[0][0])
        return self.parts[0]


def _reduce(keys, vmax, vsum, count):
    if len(keys) == 0:
        return keys, vmax, vsum, count
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return (keys[starts], np.maximum.reduceat(vmax[order], starts),
            np.add.reduceat(vsum[order], starts), np.add.reduceat(count[order], starts))


def _counts_add(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if len(idx) == 0:
        return counts
    add = np.bincount(idx)
    if len(add) > len(counts):
        counts = np.concatenate([counts, np.zeros(len(add) - len(counts), np.int64)])
    counts[: len(add)] += add
    return counts


@dataclass
class FeatureStatsResult:
    """Per-feature statistics, per-cell matrices and per-gene sums (plain arrays)."""

    num_tokens: int
    fire_count: np.ndarray      # [F] tokens on which the feature fires
    act_sum: np.ndarray         # [F] float64 sum of activations over all tokens
    act_max: np.ndarray         # [F] float32 max activation (0 when it never fires)
    hist: np.ndarray            # [F, NUM_BINS] firing activations per HIST_EDGES bin
    top_token_values: np.ndarray  # [F, K] best first, -inf where unfilled
    top_token_ids: np.ndarray     # [F, K] global token index, -1 where unfilled
    cell_max: sp.csr_matrix     # [cells, F] max over the cell's gene tokens
    cell_mean: sp.csr_matrix    # [cells, F] mean over the cell's gene tokens (zeros included)
    cell_tokens: np.ndarray     # [cells] gene tokens per cell
    unit_sum: sp.csr_matrix     # [units, F] float64 activation sum over the unit's tokens
    unit_fires: sp.csr_matrix   # [units, F] tokens of the unit on which the feature fires
    unit_tokens: np.ndarray     # [units] tokens per unit

    @property
    def num_features(self) -> int:
        return len(self.fire_count)

    @property
    def frequency(self) -> np.ndarray:
        return self.fire_count / max(self.num_tokens, 1)

    @property
    def mean(self) -> np.ndarray:
        """Mean activation over all tokens."""
        return self.act_sum / max(self.num_tokens, 1)

    @property
    def mean_firing(self) -> np.ndarray:
        """Mean activation over the tokens where the feature fires (NaN if it never fires)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.fire_count > 0, self.act_sum / self.fire_count, np.nan)

    def top_cells(self, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """`(values, cell indices)` [F, k] of the cells with the largest max activation."""
        coo = self.cell_max.tocoo()
        return grouped_topk(coo.col, coo.data, coo.row, k, self.num_features)


class FeatureStats:
    """The one-pass accumulator behind `FeatureStatsResult`."""

    def __init__(self, num_features: int, cfg: StatsConfig | None = None):
        self.cfg = cfg or StatsConfig()
        self.num_features = num_features
        self.num_tokens = 0
        self.fire_count = np.zeros(num_features, np.int64)
        self.act_sum = np.zeros(num_features, np.float64)
        self.act_max = np.zeros(num_features, np.float32)
        self.hist = np.zeros((num_features, NUM_BINS), np.int64)
        self.top = TopK(num_features, self.cfg.top_tokens)
        self.cells = _KeyedReduce()
        self.cell_tokens = np.zeros(0, np.int64)
        self.units = _KeyedReduce()
        self.unit_tokens = np.zeros(0, np.int64)

    def update(self, chunk: EncodedChunk) -> None:
        acts, src, F = chunk.acts, chunk.sources, self.num_features
        if acts.shape[1] != F:
            raise ValueError(f"chunk has {acts.shape[1]} features, expected {F}")
        self.num_tokens += acts.shape[0]
        rows = np.repeat(np.arange(acts.shape[0]), np.diff(acts.indptr))
        cols = acts.indices.astype(np.int64)
        vals = acts.data
        self.fire_count += np.bincount(cols, minlength=F)
        self.act_sum += np.bincount(cols, weights=vals, minlength=F)
        if len(vals):
            np.maximum.at(self.act_max, cols, vals)
            bins = np.searchsorted(HIST_EDGES, vals, side="right")
            self.hist += np.bincount(cols * NUM_BINS + bins,
                                     minlength=F * NUM_BINS).reshape(F, NUM_BINS)
            self.top.push(cols, vals, rows + chunk.start)

        on_unit = src.unit >= 0
        self.cell_tokens = _counts_add(self.cell_tokens, src.record[on_unit])
        nz_unit = on_unit[rows]
        r, c, v = rows[nz_unit], cols[nz_unit], vals[nz_unit]
        self.cells.add(src.record[r] * F + c, v)
        if self.cfg.per_unit:
            self.unit_tokens = _counts_add(self.unit_tokens, src.unit[on_unit])
            self.units.add(src.unit[r] * F + c, v)

    def merge(self, other: "FeatureStats") -> None:
        self.num_tokens += other.num_tokens
        self.fire_count += other.fire_count
        self.act_sum += other.act_sum
        np.maximum(self.act_max, other.act_max, out=self.act_max)
        self.hist += other.hist
        self.top.merge(other.top)
        self.cells.merge(other.cells)
        self.cell_tokens = _counts_add(self.cell_tokens, np.repeat(
            np.arange(len(other.cell_tokens)), other.cell_tokens))
        self.units.merge(other.units)
        self.unit_tokens = _counts_add(self.unit_tokens, np.repeat(
            np.arange(len(other.unit_tokens)), other.unit_tokens))

    def result(self, num_cells: int | None = None, num_units: int | None = None
               ) -> FeatureStatsResult:
        F = self.num_features
        n_cells = max(num_cells or 0, len(self.cell_tokens))
        cell_tokens = np.zeros(n_cells, np.int64)
        cell_tokens[: len(self.cell_tokens)] = self.cell_tokens
        keys, vmax, vsum, _ = self.cells.compact()
        shape = (n_cells, F)
        row, col = keys // F, keys % F
        cell_max = sp.csr_matrix((vmax.astype(np.float32), (row, col)), shape=shape)
        mean = (vsum / cell_tokens[row]).astype(np.float32)
        cell_mean = sp.csr_matrix((mean, (row, col)), shape=shape)

        n_units = max(num_units or 0, len(self.unit_tokens))
        unit_tokens = np.zeros(n_units, np.int64)
        unit_tokens[: len(self.unit_tokens)] = self.unit_tokens
        keys, _, usum, ucount = self.units.compact()
        row, col = keys // F, keys % F
        unit_sum = sp.csr_matrix((usum, (row, col)), shape=(n_units, F))
        unit_fires = sp.csr_matrix((ucount, (row, col)), shape=(n_units, F))
        return FeatureStatsResult(
            self.num_tokens, self.fire_count.copy(), self.act_sum.copy(), self.act_max.copy(),
            self.hist.copy(), self.top.values.copy(), self.top.ids.copy(), cell_max, cell_mean,
            cell_tokens, unit_sum, unit_fires, unit_tokens)


def feature_stats(chunks, num_features: int, cfg: StatsConfig | None = None,
                  num_cells: int | None = None, num_units: int | None = None,
                  tracker=None) -> FeatureStatsResult:
    """Run the accumulator over an iterable of `EncodedChunk`s."""
    acc = FeatureStats(num_features, cfg)
    for chunk in chunks:
        acc.update(chunk)
        if tracker is not None:
            tracker.update(tokens=len(chunk))
    return acc.result(num_cells, num_units)
