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

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .chunks import EncodedChunk
from .kernels import cell_flush, cell_pass, feature_pass, group_count, group_scatter, merge_parts
from .topk import TopK, grouped_topk

# Fixed log-spaced activation bins, one per octave over [2^-10, 2^10) (about 1e-3 to 1e3), plus
# one below and one above: bin 0 is (0, 2^-10) (and negatives), bin b is
# [HIST_EDGES[b-1], HIST_EDGES[b]), the last >= 2^10. Powers of two make the bin of a float32
# its exponent, read from its bits (kernels.feature_pass): exact, and no search.
HIST_EDGES = 2.0 ** np.arange(-10, 11)
NUM_BINS = len(HIST_EDGES) + 1

THREAD_NNZ = 1 << 16  # work on fewer non-zeros stays on one thread (a thread costs ~0.1 ms)
# chunks whose per-cell and per-gene work may still run on the second thread when `update`
# returns: a thread that waited for the other at every chunk lost the time either spent
# descheduled on a busy machine, and the caller's next read or encode now overlaps it
GENE_LAG = 1


@dataclass
class StatsConfig:
    top_tokens: int = field(default=20, metadata={"help": "top activating tokens kept per feature"})
    per_unit: bool = field(default=True, metadata={
        "help": "accumulate per-gene sums (cells); turn off for DNA, where units are bases"})
    gene_batch: int = field(default=1 << 22, metadata={
        "help": "gene-token non-zeros buffered per per-gene reduction (8 bytes each)"})


def _reduce(keys, vmax, vsum):
    """Sort (key, max, sum) entries by key and combine equal keys."""
    if not np.all(keys[1:] >= keys[:-1]):
        order = np.argsort(keys, kind="stable")
        keys, vmax, vsum = keys[order], vmax[order], vsum[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    if len(starts) == len(keys):
        return keys, vmax, vsum
    return keys[starts], np.maximum.reduceat(vmax, starts), np.add.reduceat(vsum, starts)


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


def _grown(a: np.ndarray, used: int, need: int, ahead: int = 8) -> np.ndarray:
    """`a`, or a copy of its first `used` rows with room for at least `need` rows: `ahead`
    times that when `a` is empty (untouched room costs address space, not memory), twice its
    length after, so that rows are copied O(1) times."""
    if len(a) >= need:
        return a
    out = np.empty((max(need * (ahead if len(a) == 0 else 1), 2 * len(a)),) + a.shape[1:],
                   a.dtype)
    out[:used] = a[:used]
    return out


def _appended(a: np.ndarray, used: int, more: np.ndarray) -> np.ndarray:
    a = _grown(a, used, used + len(more))
    a[used:used + len(more)] = more
    return a


class _Cells:
    """Per-cell max and mean over gene tokens, as CSR rows appended in place: `kernels.
    cell_pass` writes each cell when the next begins; the cell a chunk cuts stays in the dense
    buffers. Rows are (record, gene tokens) with a length; entries are column, max, mean."""

    def __init__(self, num_features: int):
        F = self.F = num_features
        self.cell = np.array([-1, 0], np.int64)  # held record, its gene tokens
        self.bits = np.zeros((F + 63) // 64, np.uint64)  # dense buffers of the held cell
        self.cmax = np.full(F, -np.inf, np.float32)
        self.csum = np.zeros(F, np.float64)
        self.rows = (np.empty((0, 2), np.int64), np.empty(0, np.int64))
        self.entries = (np.empty(0, np.int32), np.empty(0, np.float32), np.empty(0, np.float32))
        self.n = self.m = 0  # rows, entries written

    def buffers(self, rows: int, nnz: int) -> tuple[np.ndarray, ...]:
        """The kernel's state and where it writes, room for a chunk of `rows` rows and `nnz`
        non-zeros (the held cell's columns come on top)."""
        self.rows = tuple(_grown(a, self.n, self.n + rows + 1) for a in self.rows)
        self.entries = tuple(_grown(a, self.m, self.m + nnz + self.F) for a in self.entries)
        return ((self.cell, self.bits, self.cmax, self.csum)
                + tuple(a[self.n:] for a in self.rows) + tuple(a[self.m:] for a in self.entries))

    def keep(self, n: int, m: int) -> None:
        self.n += n
        self.m += m

    def flush(self) -> None:
        self.keep(*cell_flush(*self.buffers(0, 0)))

    def merge(self, other: "_Cells") -> None:
        self.flush()
        other.flush()
        self.rows = tuple(_appended(a, self.n, b[:other.n]) for a, b in zip(self.rows, other.rows))
        self.entries = tuple(_appended(a, self.m, b[:other.m])
                             for a, b in zip(self.entries, other.entries))
        self.keep(other.n, other.m)

    def result(self, num_cells: int | None) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
        """(max, mean, gene tokens per cell)."""
        self.flush()
        F = self.F
        (row, lens), (cols, vmax, vmean) = ((a[:self.n] for a in self.rows),
                                            (a[:self.m] for a in self.entries))
        rec, ntok = row[:, 0], row[:, 1]
        n_cells = max(num_cells or 0, int(rec.max()) + 1 if len(rec) else 0)
        tokens = np.bincount(rec, ntok, minlength=n_cells).astype(np.int64)
        if np.all(rec[1:] > rec[:-1]):  # each cell written once, in record order: CSR as is
            indptr = np.zeros(n_cells + 1, np.int64)
            indptr[rec + 1] = lens
            indptr = np.cumsum(indptr).astype(cols.dtype if len(cols) < 2**31 else np.int64)
            return (sp.csr_matrix((vmax, cols, indptr), shape=(n_cells, F)),
                    sp.csr_matrix((vmean, cols.copy(), indptr.copy()), shape=(n_cells, F)),
                    tokens)
        # a cell written in several pieces (tokens out of record order, merged accumulators)
        keys, vmax, vsum = _reduce(np.repeat(rec, lens) * F + cols, vmax,
                                   vmean * np.repeat(ntok, lens).astype(np.float64))
        mean = (vsum / tokens[keys // F]).astype(np.float32)
        cell_max = _csr(keys, vmax, n_cells, F)
        return (cell_max, sp.csr_matrix((mean, cell_max.indices.copy(), cell_max.indptr.copy()),
                                        shape=cell_max.shape), tokens)


class _Worker(threading.Thread):
    """Runs `fn(*args)` on a second thread; `result()` joins and returns it (or raises)."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.out, self.error = fn, args, None, None
        self.start()

    def run(self) -> None:
        try:
            self.out = self.fn(*self.args)
        except BaseException as e:  # re-raised in the caller's thread
            self.error = e

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.out


def _reduce_rows(parts: np.ndarray, cols, vsum, count, F: int) -> tuple[np.ndarray, ...]:
    """`kernels.merge_parts`; when large, its rows split in two halves of about equal
    non-zeros, one of them on a second thread."""
    G = parts.shape[1] - 1
    if G < 2 or (parts[:, -1] - parts[:, 0]).sum() < THREAD_NNZ:
        return merge_parts(parts, cols, vsum, count, F)
    sizes = np.cumsum((parts[:, 1:] - parts[:, :-1]).sum(axis=0))
    h = min(int(np.searchsorted(sizes, sizes[-1] / 2)) + 1, G - 1)  # rows [0, h) and [h, G)
    worker = _Worker(merge_parts, np.ascontiguousarray(parts[:, h:]), cols, vsum, count, F)
    try:
        a = merge_parts(np.ascontiguousarray(parts[:, :h + 1]), cols, vsum, count, F)
    finally:
        b = worker.result()
    return ((np.concatenate([a[0], b[0][1:] + a[0][-1]]),)
            + tuple(np.concatenate(x) for x in zip(a[1:], b[1:])))


def _merge_units(parts: list[tuple[np.ndarray, ...]], F: int) -> tuple[np.ndarray, ...]:
    """One CSR part (indptr, cols, sum, count) from several (of any number of rows)."""
    G = max(len(p[0]) for p in parts) - 1
    offsets = np.cumsum([0] + [len(p[1]) for p in parts])
    indptrs = np.stack([np.pad(p[0], (0, G + 1 - len(p[0])), mode="edge") + o
                        for p, o in zip(parts, offsets)])
    return _reduce_rows(indptrs, *(np.concatenate(x) for x in list(zip(*parts))[1:]), F)


class _UnitSums:
    """Running per-unit (gene) activation sums and fire counts, as CSR parts [units, F].

    A gene's tokens are scattered over the data set: each chunk's rows are counting-sorted by
    unit into a batch buffer as they come, and a full batch is reduced to one part; parts are
    combined when they outgrow the combined one, so each entry is combined O(1) times.
    """

    def __init__(self, num_features: int, batch: int):
        self.F = num_features
        self.batch = max(int(batch), 1)
        self.cols, self.vals = np.zeros(0, np.int32), np.zeros(0, np.float32)  # batch buffer
        self.starts: list[np.ndarray] = []  # per chunk: where each unit's entries begin
        self.buffered = 0
        self.parts: list[tuple[np.ndarray, ...]] = []  # the first: the combined one

    def add(self, unit: np.ndarray, indptr: np.ndarray, cols: np.ndarray, vals: np.ndarray
            ) -> None:
        """CSR rows with their unit (-1: left out)."""
        if self.buffered and self.buffered + len(cols) > self.batch:
            self._reduce()
        start = np.zeros(int(unit.max()) + 2, np.int64)
        group_count(unit, indptr, start)
        np.cumsum(start, out=start)
        start += self.buffered
        ahead = min(max(self.batch // max(int(start[-1]), 1), 1), 8)  # room for the batch
        self.cols = _grown(self.cols, self.buffered, start[-1], ahead)
        self.vals = _grown(self.vals, self.buffered, start[-1], ahead)
        group_scatter(unit, indptr, cols, vals, start[:-1].copy(), self.cols, self.vals)
        self.starts.append(start)
        self.buffered = int(start[-1])

    def _reduce(self) -> None:
        """The buffered batch to a part."""
        if not self.starts:
            return
        G = max(len(s) for s in self.starts)
        starts = np.stack([np.pad(s, (0, G - len(s)), mode="edge") for s in self.starts])
        self.starts, self.buffered = [], 0
        self.parts.append(_reduce_rows(starts, self.cols, self.vals, np.zeros(0, np.int64),
                                       self.F))
        if sum(len(p[1]) for p in self.parts[1:]) >= len(self.parts[0][1]):
            self.parts = [_merge_units(self.parts, self.F)]

    def result(self, n_units: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(sum, fire count) [n_units, F]."""
        self._reduce()
        if not self.parts:
            empty = sp.csr_matrix((n_units, self.F))
            return empty, empty.astype(np.int64)
        if len(self.parts) > 1:
            self.parts = [_merge_units(self.parts, self.F)]
        indptr, cols, vsum, count = self.parts[0]
        indptr = np.pad(indptr, (0, n_units + 1 - len(indptr)), mode="edge")
        shape = (n_units, self.F)
        return (sp.csr_matrix((vsum, cols, indptr), shape=shape),
                sp.csr_matrix((count, cols.copy(), indptr.copy()), shape=shape))

    def merge(self, other: "_UnitSums") -> None:
        self._reduce()
        other._reduce()
        if self.parts or other.parts:
            self.parts = [_merge_units(self.parts + other.parts, self.F)]


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
        self.hist = np.zeros((NUM_BINS, num_features), np.int64)  # [bin, feature] (kernels)
        self.top = TopK(num_features, self.cfg.top_tokens)
        self.cells = _Cells(num_features)
        self.units = _UnitSums(num_features, self.cfg.gene_batch)
        self.unit_tokens = np.zeros(0, np.int64)
        self._pending: deque = deque()  # per-cell and per-gene work of chunks, in token order
        self._pool: ThreadPoolExecutor | None = None

    def update(self, chunk: EncodedChunk) -> None:
        """Add the next chunk. Its per-cell and per-gene part may run on a second thread after
        this returns, reading the chunk's arrays: leave them unchanged until the next `update`
        returns (or `merge` or `result`)."""
        acts, src, F = chunk.acts, chunk.sources, self.num_features
        if acts.shape[1] != F:
            raise ValueError(f"chunk has {acts.shape[1]} features, expected {F}")
        self.num_tokens += acts.shape[0]
        # the kernels read scipy's arrays as they are: fresh copies cost page faults
        indptr, cols, vals = acts.indptr.astype(np.int64), acts.indices, acts.data
        # per-cell and per-gene work touches other state than the per-feature pass, so a large
        # chunk's goes to a second thread (the kernels release the GIL), one chunk after another
        if len(cols) >= THREAD_NNZ:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="feature-stats")
            self._pending.append(self._pool.submit(self._gene_rows, indptr, cols, vals, src))
        else:
            self._finish()
            self._gene_rows(indptr, cols, vals, src)
        feature_pass(self.hist, self.act_sum, self.act_max, self.top.values, self.top.ids,
                     indptr, cols, vals, vals.view(np.int32), chunk.start)
        self._wait(GENE_LAG)

    def _wait(self, keep: int = 0) -> None:
        """Let the second thread finish all but the last `keep` chunks (its errors raise here)."""
        while len(self._pending) > keep:
            self._pending.popleft().result()

    def _finish(self) -> None:
        self._wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _gene_rows(self, indptr, cols, vals, src) -> None:
        self.cells.keep(*cell_pass(indptr, cols, vals, src.record, src.unit,
                                   *self.cells.buffers(len(src), len(cols))))
        if self.cfg.per_unit:
            on_unit = src.unit[src.unit >= 0]
            self.unit_tokens = _counts_add(self.unit_tokens, on_unit)
            if len(on_unit) and len(cols):
                self.units.add(src.unit, indptr, cols, vals)

    def merge(self, other: "FeatureStats") -> None:
        self._finish()
        other._finish()
        self.num_tokens += other.num_tokens
        self.act_sum += other.act_sum
        np.maximum(self.act_max, other.act_max, out=self.act_max)
        self.hist += other.hist
        self.top.merge(other.top)
        self.cells.merge(other.cells)
        self.units.merge(other.units)
        self.unit_tokens = _counts_add(self.unit_tokens, np.repeat(
            np.arange(len(other.unit_tokens)), other.unit_tokens))

    def result(self, num_cells: int | None = None, num_units: int | None = None
               ) -> FeatureStatsResult:
        self._finish()
        cell_max, cell_mean, cell_tokens = self.cells.result(num_cells)
        n_units = max(num_units or 0, len(self.unit_tokens))
        unit_tokens = np.zeros(n_units, np.int64)
        unit_tokens[: len(self.unit_tokens)] = self.unit_tokens
        unit_sum, unit_fires = self.units.result(n_units)
        return FeatureStatsResult(
            self.num_tokens, self.hist.sum(axis=0), self.act_sum.copy(), self.act_max.copy(),
            np.ascontiguousarray(self.hist.T), self.top.values.copy(), self.top.ids.copy(),
            cell_max, cell_mean, cell_tokens, unit_sum, unit_fires, unit_tokens)


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
