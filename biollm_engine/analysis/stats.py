"""Streaming feature statistics: one pass, bounded memory, mergeable, equal to the dense result.

`FeatureStats.update(chunk)` takes one `EncodedChunk` at a time; `merge` combines accumulators of
disjoint token ranges (e.g. shards). Sums are kept in float64 and top lists break ties by token
index, so any chunking gives the same `FeatureStatsResult` as one big chunk.

A feature *fires* on a token when its activation is non-zero; activations are non-negative, as
every supported dictionary's are (ReLU, TopK, JumpReLU), so a cell's max over its tokens is the
max over those where the feature fires. The per-cell matrices and per-gene sums use the tokens
that carry a unit (`unit >= 0`: the cell's gene tokens, not its prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .chunks import EncodedChunk
from .kernels import feature_pass, group_reduce
from .topk import TopK, grouped_topk

# Fixed log-spaced activation bins, one per octave over [2^-10, 2^10) (about 1e-3 to 1e3), plus
# one below and one above: bin 0 is (0, 2^-10) (and negatives), bin b is
# [HIST_EDGES[b-1], HIST_EDGES[b]), the last >= 2^10. Powers of two make the bin of a float32
# its exponent, read from its bits (kernels.feature_pass): exact, and no search.
HIST_EDGES = 2.0 ** np.arange(-10, 11)
NUM_BINS = len(HIST_EDGES) + 1


@dataclass
class StatsConfig:
    top_tokens: int = field(default=20, metadata={"help": "top activating tokens kept per feature"})
    per_unit: bool = field(default=True, metadata={
        "help": "accumulate per-gene sums (cells); turn off for DNA, where units are bases"})


class _KeyedReduce:
    """Running (key -> max, sum, count) over int64 keys, compacted as it grows.

    Parts are reduced per chunk; compaction concatenates them and reduces again, skipping the
    sort when the keys already arrive in order (cells streamed in record order do).
    """

    def __init__(self):
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.size = 0
        self.compacted = 0

    def add_part(self, part: tuple[np.ndarray, ...]) -> None:
        if len(part[0]):
            self.parts.append(part)
            self.size += len(part[0])
            if self.size > max(2 * self.compacted, 1 << 22):
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
    if not np.all(keys[1:] >= keys[:-1]):
        order = np.argsort(keys, kind="stable")
        keys, vmax, vsum, count = keys[order], vmax[order], vsum[order], count[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    if len(starts) == len(keys):
        return keys, vmax, vsum, count
    return (keys[starts], np.maximum.reduceat(vmax, starts), np.add.reduceat(vsum, starts),
            np.add.reduceat(count, starts))


class _UnitSums:
    """Running per-unit (gene) activation sums and fire counts, as sorted keys.

    A gene's tokens are scattered over the data set, so raw entries are buffered and reduced
    in large batches: one reduction over many tokens leaves fewer overlapping parts to merge.
    """

    BATCH = 1 << 22  # buffered entries per reduction

    def __init__(self, num_features: int):
        self.F = num_features
        self.raw: list[tuple[np.ndarray, ...]] = []
        self.buffered = 0
        self.acc = _KeyedReduce()

    def add(self, unit: np.ndarray, indptr: np.ndarray, cols: np.ndarray, vals: np.ndarray
            ) -> None:
        """CSR rows with their unit (-1: left out)."""
        self.raw.append((unit, indptr, cols, vals))
        self.buffered += len(cols)
        if self.buffered >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.raw:
            unit, indptrs, cols, vals = zip(*self.raw)
            offsets = np.cumsum([0] + [len(c) for c in cols])
            indptr = np.concatenate([ip[:-1] + o for ip, o in zip(indptrs, offsets)]
                                    + [offsets[-1:]])
            self.raw, self.buffered = [], 0
            self.acc.add_part(group_reduce(np.concatenate(unit), indptr, np.concatenate(cols),
                                           np.concatenate(vals), self.F))

    def merge(self, other: "_UnitSums") -> None:
        other._flush()
        self._flush()
        self.acc.merge(other.acc)

    def compact(self) -> tuple[np.ndarray, ...]:
        self._flush()
        return self.acc.compact()


def _csr(keys: np.ndarray, data: np.ndarray, n_rows: int, F: int) -> sp.csr_matrix:
    """CSR [n_rows, F] from sorted keys row * F + col."""
    row = keys // F
    indptr = np.searchsorted(row, np.arange(n_rows + 1))
    return sp.csr_matrix((data, (keys - row * F).astype(np.int32), indptr), shape=(n_rows, F))


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
        self.act_sum = np.zeros(num_features, np.float64)
        self.act_max = np.zeros(num_features, np.float32)
        self.hist = np.zeros((num_features, NUM_BINS), np.int64)  # its row sums: fire counts
        self.top = TopK(num_features, self.cfg.top_tokens)
        self.cells = _KeyedReduce()
        self._tail: tuple[np.ndarray, ...] | None = None  # entries of a cell the chunk cut
        self.cell_tokens = np.zeros(0, np.int64)
        self.units = _UnitSums(num_features)
        self.unit_tokens = np.zeros(0, np.int64)

    def update(self, chunk: EncodedChunk) -> None:
        acts, src, F = chunk.acts, chunk.sources, self.num_features
        if acts.shape[1] != F:
            raise ValueError(f"chunk has {acts.shape[1]} features, expected {F}")
        self.num_tokens += acts.shape[0]
        if acts.nnz == 0:
            self._count_tokens(src)
            return
        # the kernels read scipy's arrays as they are: fresh copies cost page faults
        indptr, cols, vals = acts.indptr.astype(np.int64), acts.indices, acts.data
        feature_pass(self.hist, self.act_sum, self.top.values, self.top.ids, indptr, cols, vals,
                     vals.view(np.int32), chunk.start)
        if self.top.k == 0:  # otherwise the max is the head of the top list
            # a fresh canonical float32: arrays that came through torch carry a float32 dtype
            # instance that sends numpy's ufunc.at down its generic path, 100x slower
            np.maximum.at(self.act_max, cols, vals.astype(np.float32))

        on_unit = self._count_tokens(src)
        if on_unit.any():
            self._add_cells(np.where(on_unit, src.record, -1), indptr, cols, vals)
            if self.cfg.per_unit:
                self.units.add(src.unit, indptr, cols, vals)

    def _add_cells(self, rec: np.ndarray, indptr: np.ndarray, cols: np.ndarray,
                   vals: np.ndarray) -> None:
        # The chunk's last cell may go on in the next chunk: its part is held back and joined
        # with the next chunk's first cell, so that parts are disjoint and in order and the
        # final compaction needs no sort.
        F = self.num_features
        part = group_reduce(rec, indptr, cols, vals, F)
        kept = rec[rec >= 0]
        if not np.all(kept[1:] >= kept[:-1]):  # not in record order: sorted at compaction
            self._flush_cells()
            self.cells.add_part(part)
            return
        if len(part[0]) == 0:
            return
        if self._tail is not None:
            tail, self._tail = self._tail, None
            first = part[0][0] // F
            if tail[0][0] // F == first:
                n = int(np.searchsorted(part[0], (first + 1) * F))
                tail = _reduce(*(np.concatenate([a, b[:n]]) for a, b in zip(tail, part)))
                part = tuple(b[n:] for b in part)
                if len(part[0]) == 0:  # the whole chunk continues the held cell
                    self._tail = tail
                    return
            self.cells.add_part(tail)
        cut = int(np.searchsorted(part[0], part[0][-1] // F * F))
        self._tail = tuple(a[cut:] for a in part)
        if cut:
            self.cells.add_part(tuple(a[:cut] for a in part))

    def _flush_cells(self) -> None:
        if self._tail is not None:
            tail, self._tail = self._tail, None
            self.cells.add_part(tail)

    def _count_tokens(self, src) -> np.ndarray:
        on_unit = src.unit >= 0
        self.cell_tokens = _counts_add(self.cell_tokens, src.record[on_unit])
        if self.cfg.per_unit:
            self.unit_tokens = _counts_add(self.unit_tokens, src.unit[on_unit])
        return on_unit

    def merge(self, other: "FeatureStats") -> None:
        self.num_tokens += other.num_tokens
        self.act_sum += other.act_sum
        np.maximum(self.act_max, other.act_max, out=self.act_max)
        self.hist += other.hist
        self.top.merge(other.top)
        self._flush_cells()
        other._flush_cells()
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
        self._flush_cells()
        keys, vmax, vsum, _ = self.cells.compact()  # sorted: row-major CSR order
        cell_max = _csr(keys, vmax.astype(np.float32), n_cells, F)
        mean = (vsum / cell_tokens[keys // F]).astype(np.float32)
        cell_mean = sp.csr_matrix((mean, cell_max.indices.copy(), cell_max.indptr.copy()),
                                  shape=cell_max.shape)

        n_units = max(num_units or 0, len(self.unit_tokens))
        unit_tokens = np.zeros(n_units, np.int64)
        unit_tokens[: len(self.unit_tokens)] = self.unit_tokens
        keys, _, usum, ucount = self.units.compact()
        unit_sum, unit_fires = _csr(keys, usum, n_units, F), _csr(keys, ucount, n_units, F)
        act_max = self.act_max.copy()
        if self.top.k:
            np.maximum(act_max, self.top.values[:, 0], out=act_max)
        return FeatureStatsResult(
            self.num_tokens, self.hist.sum(axis=1), self.act_sum.copy(), act_max,
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
