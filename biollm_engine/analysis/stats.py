"""Streaming feature statistics: one pass, bounded memory, mergeable, equal to the dense result.

`FeatureStats.update(chunk)` takes one `EncodedChunk` at a time; `merge` combines accumulators of
disjoint token ranges (e.g. shards). Per-feature sums are exact integer sums per float32
exponent, per-cell and per-gene sums float64 in token order, and top lists break ties by token
index, so any chunking gives the same `FeatureStatsResult` as one big chunk (per-gene sums: in
one gene batch), and any number of threads (`StatsConfig.threads`) the same as one, bit for bit.

A feature *fires* on a token when its activation is non-zero; activations are non-negative, as
every supported dictionary's are (ReLU, TopK, JumpReLU), so a cell's max over its tokens is the
max over those where the feature fires. The per-cell matrices and per-gene sums use the tokens
that carry a unit (`unit >= 0`: the cell's gene tokens, not its prompt).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .chunks import EncodedChunk, TokenSources
from .kernels import cell_flush, cell_pass, feature_pass, group_count, group_scatter, merge_parts
from .topk import TopK, grouped_topk

# Fixed log-spaced activation bins, one per octave over [2^-10, 2^10) (about 1e-3 to 1e3), plus
# one below and one above: bin 0 is (0, 2^-10) (and negatives), bin b is
# [HIST_EDGES[b-1], HIST_EDGES[b]), the last >= 2^10. Powers of two make the bin of a float32
# its exponent, read from its bits (kernels.feature_pass): exact, and no search.
HIST_EDGES = 2.0 ** np.arange(-10, 11)
NUM_BINS = len(HIST_EDGES) + 1

THREAD_NNZ = 1 << 16  # work on fewer non-zeros stays on one thread (a thread costs ~0.1 ms)
# chunks whose work may still run on other threads when `update` returns: a thread that waited
# for the others at every chunk lost the time they spent descheduled on a busy machine, and
# the caller's next read or encode now overlaps it
LAG = 1


@dataclass
class StatsConfig:
    top_tokens: int = field(default=20, metadata={"help": "top activating tokens kept per feature"})
    per_unit: bool = field(default=True, metadata={
        "help": "accumulate per-gene sums (cells); turn off for DNA, where units are bases"})
    gene_batch: int = field(default=1 << 22, metadata={
        "help": "gene-token non-zeros buffered per per-gene reduction (8 bytes each)"})
    threads: int = field(default=0, metadata={
        "help": "threads: 0 = one per core, at most 8; 1 = all on the caller's thread"})


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
        if self.cell[0] >= 0:  # (growing the buffers for nothing would copy them)
            self.keep(*cell_flush(*self.buffers(0, 0)))

    def extend(self, pieces: list[tuple["_Cells", int, int, int, int]], lanes=()) -> None:
        """Append written rows of other `_Cells`, in order: (cells, rows n0:n1, entries
        m0:m1) each; the copies shared out over `lanes`, if any."""
        sizes = np.array([(p[2] - p[1], p[4] - p[3]) for p in pieces], np.int64).reshape(-1, 2)
        n, m = (int(x) for x in sizes.sum(axis=0))
        self.rows = tuple(_grown(a, self.n, self.n + n, 1) for a in self.rows)
        self.entries = tuple(_grown(a, self.m, self.m + m, 1) for a in self.entries)
        jobs = []
        for (c, n0, n1, m0, m1), (at_n, at_m) in zip(pieces, np.cumsum(sizes, axis=0) - sizes):
            jobs += [(a, self.n + at_n, b[n0:n1]) for a, b in zip(self.rows, c.rows)]
            jobs += [(a, self.m + at_m, b[m0:m1]) for a, b in zip(self.entries, c.entries)]
        _copy(jobs, lanes)
        self.keep(n, m)

    def merge(self, other: "_Cells") -> None:
        self.flush()
        other.flush()
        self.extend([(other, 0, other.n, 0, other.m)])

    def result(self, num_cells: int | None, lanes=()
               ) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
        """(max, mean, gene tokens per cell); copies shared out over `lanes`, if any."""
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
                    sp.csr_matrix((vmean, _copied(cols, lanes), indptr.copy()),
                                  shape=(n_cells, F)),
                    tokens)
        # a cell written in several pieces (tokens out of record order, merged accumulators)
        keys, vmax, vsum = _reduce(np.repeat(rec, lens) * F + cols, vmax,
                                   vmean * np.repeat(ntok, lens).astype(np.float64))
        mean = (vsum / tokens[keys // F]).astype(np.float32)
        cell_max = _csr(keys, vmax, n_cells, F)
        return (cell_max, sp.csr_matrix((mean, cell_max.indices.copy(), cell_max.indptr.copy()),
                                        shape=cell_max.shape), tokens)


def _reduce_rows(parts: np.ndarray, cols, vsum, count, F: int, lanes=()
                 ) -> tuple[np.ndarray, ...]:
    """`kernels.merge_parts`; when large, its rows split into pieces of about equal non-zeros,
    one per lane of `lanes` (the first on this thread)."""
    G = parts.shape[1] - 1
    P = len(lanes)
    if P < 2 or G < 2 or (parts[:, -1] - parts[:, 0]).sum() < THREAD_NNZ:
        return merge_parts(parts, cols, vsum, count, F)
    sizes = np.cumsum((parts[:, 1:] - parts[:, :-1]).sum(axis=0))
    cuts = np.clip(np.searchsorted(sizes, sizes[-1] * np.arange(1, P) / P) + 1, 1, G - 1)
    edges = [0, *np.unique(cuts).tolist(), G]
    pieces = [np.ascontiguousarray(parts[:, a:b + 1]) for a, b in zip(edges[:-1], edges[1:])]
    work = [lane.submit(merge_parts, p, cols, vsum, count, F)
            for lane, p in zip(lanes[1:], pieces[1:])]
    out = [merge_parts(pieces[0], cols, vsum, count, F)] + [f.result() for f in work]
    indptrs = [out[0][0]]
    for o in out[1:]:
        indptrs.append(o[0][1:] + indptrs[-1][-1])
    return (np.concatenate(indptrs),) + tuple(np.concatenate(x) for x in zip(*(o[1:] for o in out)))


def _merge_units(parts: list[tuple[np.ndarray, ...]], F: int, lanes=()
                 ) -> tuple[np.ndarray, ...]:
    """One CSR part (indptr, cols, sum, count) from several (of any number of rows)."""
    G = max(len(p[0]) for p in parts) - 1
    offsets = np.cumsum([0] + [len(p[1]) for p in parts])
    indptrs = np.stack([np.pad(p[0], (0, G + 1 - len(p[0])), mode="edge") + o
                        for p, o in zip(parts, offsets)])
    return _reduce_rows(indptrs, *(np.concatenate(x) for x in list(zip(*parts))[1:]), F, lanes)


class _UnitSums:
    """Running per-unit (gene) activation sums and fire counts, as CSR parts [units, F].

    A gene's tokens are scattered over the data set: each chunk's rows are counting-sorted by
    unit into a batch buffer as they come, and a full batch is reduced to one part; parts are
    combined when they outgrow the combined one, so each entry is combined O(1) times.
    Reductions run on `lanes` (pieces of units).
    """

    def __init__(self, num_features: int, batch: int, lanes=()):
        self.F = num_features
        self.batch = max(int(batch), 1)
        self.lanes = lanes
        self.cols, self.vals = np.zeros(0, np.int32), np.zeros(0, np.float32)  # batch buffer
        self.starts: list[np.ndarray] = []  # per chunk: where each unit's entries begin
        self.buffered = 0
        self.parts: list[tuple[np.ndarray, ...]] = []  # the first: the combined one

    def cut(self, nnz: int) -> bool:
        """Whether a chunk of `nnz` non-zeros starts a new batch."""
        return self.buffered > 0 and self.buffered + nnz > self.batch

    def place(self, unit, indptr, slices: list[tuple[int, int]], before_growing=None
              ) -> list[np.ndarray]:
        """Count a chunk's rows by unit and make room: -> for each row slice (in token order),
        where its rows of each unit go in the batch buffer (`kernels.group_scatter`'s `fill`),
        as one pass over the rows would put them. Calls `before_growing` first if the buffer
        must grow. [] when the rows hold no entries."""
        counts = np.zeros((len(slices), int(unit.max()) + 2), np.int64)
        for (r0, r1), c in zip(slices, counts):
            group_count(unit[r0:r1], indptr[r0:r1 + 1], c)
        start = np.cumsum(counts.sum(axis=0)) + self.buffered
        if start[-1] == self.buffered:
            return []
        if len(self.cols) < start[-1] and before_growing is not None:
            before_growing()
        ahead = min(max(self.batch // max(int(start[-1]) - self.buffered, 1), 1), 8)
        self.cols = _grown(self.cols, self.buffered, start[-1], ahead)  # room for the batch
        self.vals = _grown(self.vals, self.buffered, start[-1], ahead)
        self.starts.append(start)
        self.buffered = int(start[-1])
        return list(start[:-1] + (np.cumsum(counts, axis=0) - counts)[:, 1:])

    def _reduce(self) -> None:
        """The buffered batch to a part."""
        if not self.starts:
            return
        G = max(len(s) for s in self.starts)
        starts = np.stack([np.pad(s, (0, G - len(s)), mode="edge") for s in self.starts])
        self.starts, self.buffered = [], 0
        self.parts.append(_reduce_rows(starts, self.cols, self.vals, np.zeros(0, np.int64),
                                       self.F, self.lanes))
        if sum(len(p[1]) for p in self.parts[1:]) >= len(self.parts[0][1]):
            self.parts = [_merge_units(self.parts, self.F, self.lanes)]

    def result(self, n_units: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(sum, fire count) [n_units, F]."""
        self._reduce()
        if not self.parts:
            empty = sp.csr_matrix((n_units, self.F))
            return empty, empty.astype(np.int64)
        if len(self.parts) > 1:
            self.parts = [_merge_units(self.parts, self.F, self.lanes)]
        indptr, cols, vsum, count = self.parts[0]
        indptr = np.pad(indptr, (0, n_units + 1 - len(indptr)), mode="edge")
        shape = (n_units, self.F)
        return (sp.csr_matrix((vsum, cols, indptr), shape=shape),
                sp.csr_matrix((count, _copied(cols, self.lanes), indptr.copy()),
                              shape=shape))

    def merge(self, other: "_UnitSums") -> None:
        self._reduce()
        other._reduce()
        if self.parts or other.parts:
            self.parts = [_merge_units(self.parts + other.parts, self.F, self.lanes)]


def _copied(a: np.ndarray, lanes=()) -> np.ndarray:
    out = np.empty_like(a)
    _copy([(out, 0, a)], lanes)
    return out


def _copy(jobs: list[tuple[np.ndarray, int, np.ndarray]], lanes=()) -> None:
    """`dst[at:at + len(src)] = src` for each (dst, at, src), shared out over `lanes` (numpy
    copies without the GIL)."""
    def run(which) -> None:
        for dst, at, src in which:
            dst[at:at + len(src)] = src

    block = 1 << 20  # elements: large copies in pieces, for every lane to have some
    jobs = [(d, a + i, x[i:i + block]) for d, a, x in jobs for i in range(0, len(x), block)]
    jobs.sort(key=lambda j: -len(j[2]) * j[2].itemsize)
    T = len(lanes)
    if T < 2:
        run(jobs)
        return
    for f in [lane.submit(run, jobs[k::T]) for k, lane in enumerate(lanes)]:
        f.result()


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


class _Features:
    """One thread's per-feature statistics: fire counts and exact activation sums by float32
    sign and exponent (`kernels.feature_pass`), max and top lists; all of them combine exactly,
    so threads, chunks and shards give the same result bit for bit whichever way they split."""

    def __init__(self, num_features: int, top_tokens: int):
        # [row, feature, (significand sum, count)], a row per exponent met, given out as they
        # come (`slot`: sign and exponent -> row, -1 while none; slot[512]: rows given out)
        self.sums = np.zeros((8, num_features, 2), np.int64)
        self.slot = np.full(513, -1, np.int64)
        self.slot[512] = 0
        self.act_max = np.zeros(num_features, np.float32)
        self.top = TopK(num_features, top_tokens)

    def _grow(self) -> None:
        more = np.zeros((len(self.sums),) + self.sums.shape[1:], np.int64)
        self.sums = np.concatenate([self.sums, more])

    def add(self, indptr, cols, vals, start: int, floor: np.ndarray) -> None:
        r, j = 0, 0
        while True:
            r, j = feature_pass(self.sums, self.slot, self.act_max, self.top.values,
                                self.top.ids, floor, indptr, cols, vals, vals.view(np.int32),
                                start, r, j)
            if r < 0:
                return
            self._grow()

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(sign-and-exponent codes met, their rows of `sums`), by code."""
        codes = np.flatnonzero(self.slot[:512] >= 0)
        return codes, self.slot[codes]

    def merge(self, other: "_Features") -> None:
        for code, row in zip(*other.rows()):
            if self.slot[code] < 0:
                if self.slot[512] == len(self.sums):
                    self._grow()
                self.slot[code] = self.slot[512]
                self.slot[512] += 1
            self.sums[self.slot[code]] += other.sums[row]
        np.maximum(self.act_max, other.act_max, out=self.act_max)
        self.top.merge(other.top)

    def act_sum(self) -> np.ndarray:
        """float64 sums: each exponent's exact integer sum scaled by its power of two, added
        smallest exponent first."""
        codes, rows = self.rows()
        out = np.zeros(self.sums.shape[1], np.float64)
        for k in np.argsort(codes & 0xFF, kind="stable"):
            # significand * 2^(exponent - 150); exponent 0 (subnormals) scales as 1
            out += np.ldexp(self.sums[rows[k], :, 0].astype(np.float64),
                            max(int(codes[k] & 0xFF), 1) - 150)
        return out

    def hist(self) -> np.ndarray:
        """[NUM_BINS, F] fire counts per HIST_EDGES bin: positive values by exponent (bin b
        holds [2^(b-11), 2^(b-10)), clamped at both ends), negative ones in bin 0."""
        codes, rows = self.rows()
        bins = np.where(codes & 0x100, 0, np.clip((codes & 0xFF) - 116, 0, NUM_BINS - 1))
        out = np.zeros((NUM_BINS, self.sums.shape[1]), np.int64)
        np.add.at(out, bins, self.sums[rows, :, 1])
        return out


class _Lane:
    """One thread's share of every chunk: a token slice that begins where a cell does (the
    cell a chunk cuts goes on in the lane that holds it), through the per-feature pass (into
    its own `_Features`), the per-cell work (into its own `_Cells`) and the per-gene counting
    sort (into places of the shared batch buffer that no other slice has). Its steps run one
    after another on its own thread, in the order they were given."""

    def __init__(self, num_features: int, top_tokens: int):
        self.features = _Features(num_features, top_tokens)
        self.cells = _Cells(num_features)
        self.pool: ThreadPoolExecutor | None = None

    def submit(self, fn, *args) -> Future:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="feature-stats")
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def step(self, indptr, cols, vals, start: int, src: TokenSources, rows: tuple[int, int, bool],
             units: tuple | None, floor: np.ndarray):
        """One chunk's share. `rows`: this lane's token slice (first row, end row, whether its
        last cell ends there); `units`: (fill, buffer columns, buffer values) for the slice's
        gene rows, or None; `floor`: per feature, a value that K others reach (`_floor`).
        -> the cells written, as (cells, rows n0:n1, entries m0:m1)."""
        r0, r1, ends = rows
        part = indptr[r0:r1 + 1]
        self.features.add(part, cols, vals, start + r0, floor)
        if units is not None:
            group_scatter(src.unit[r0:r1], part, cols, vals, *units)
        c = self.cells
        n, m = c.n, c.m
        c.keep(*cell_pass(part, cols, vals, src.record[r0:r1], src.unit[r0:r1],
                          *c.buffers(r1 - r0, int(indptr[r1] - indptr[r0]))))
        if ends:
            c.flush()
        return c, n, c.n, m, c.m


def stats_threads(threads: int = 0) -> int:
    """The threads `StatsConfig.threads` asks for (0: one per core this process may use, at
    most 8)."""
    if threads > 0:
        return threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, 8)


def _done(value) -> Future:
    f = Future()
    f.set_result(value)
    return f


class FeatureStats:
    """The one-pass accumulator behind `FeatureStatsResult`.

    Each chunk is cut into token slices of about equal non-zeros that begin where a cell does,
    one per lane (`_Lane`, `StatsConfig.threads` of them): the first on the caller's thread,
    the others on their own, up to `LAG` chunks behind. Per-feature numbers combine exactly
    (`_Features`); per-cell sums run within one cell, which one lane holds; per-gene rows go
    where one pass over the tokens would put them and are reduced by gene ranges. Every number
    is then the same as on one thread, bit for bit.
    """

    def __init__(self, num_features: int, cfg: StatsConfig | None = None):
        self.cfg = cfg or StatsConfig()
        F = self.num_features = num_features
        self.num_tokens = 0
        self.features = _Features(F, self.cfg.top_tokens)  # lanes' and merged shards'
        self.cells = _Cells(F)
        T = stats_threads(self.cfg.threads)
        self._lanes = [_Lane(F, self.cfg.top_tokens) for _ in range(T)]
        self.units = _UnitSums(F, self.cfg.gene_batch, self._lanes)
        self.unit_tokens = np.zeros(0, np.int64)
        self._pending: deque = deque()  # per chunk, the work still running, in token order
        self._hold = 0  # the lane holding the cell the last chunk cut
        self._pieces: list[Future] = []  # per cell slice, in token order: the cells written

    @property
    def threads(self) -> int:
        return len(self._lanes)

    def update(self, chunk: EncodedChunk) -> None:
        """Add the next chunk. Its work may go on on other threads after this returns,
        reading the chunk's arrays: leave them unchanged until the next `update` returns (or
        `merge` or `result`)."""
        acts, src, F = chunk.acts, chunk.sources, self.num_features
        if acts.shape[1] != F:
            raise ValueError(f"chunk has {acts.shape[1]} features, expected {F}")
        self.num_tokens += acts.shape[0]
        # the kernels read scipy's arrays as they are: fresh copies cost page faults
        indptr, cols, vals = acts.indptr.astype(np.int64), acts.indices, acts.data
        lanes, T = self._lanes, len(self._lanes)
        gene_rows = np.flatnonzero(src.unit >= 0)
        slices = self._slices(np.diff(indptr), gene_rows, src.record)
        fills = []
        if self.cfg.per_unit and len(gene_rows):
            self.unit_tokens = _counts_add(self.unit_tokens, src.unit[gene_rows])
            if len(cols):
                units = self.units
                if units.cut(len(cols)):
                    self._wait()
                    units._reduce()
                # (the lanes may still write the chunk before into the buffer it would grow)
                fills = units.place(src.unit, indptr, slices, self._wait)
        first = self._hold
        self._hold = (first + len(slices) - 1) % T
        floor = self._floor()
        args = [(lanes[(first + s) % T], (indptr, cols, vals, chunk.start, src,
                                          (r0, r1, s < len(slices) - 1),
                                          (fills[s], self.units.cols, self.units.vals)
                                          if fills else None, floor))
                for s, (r0, r1) in enumerate(slices)]
        # lane 0 runs on this thread, as it waits anyway, once the others are under way
        work = [None if lane is lanes[0] else lane.submit(lane.step, *a) for lane, a in args]
        for s, (lane, a) in enumerate(args):
            if lane is lanes[0]:
                work[s] = _done(lane.step(*a))
        self._pieces += work
        self._pending.append(work)
        self._wait(LAG)

    def _floor(self) -> np.ndarray:
        """Per feature, the best K-th value of any lane's top list: a value below it is in no
        top list of the whole (K values at least as large are kept), so no lane keeps it. Read
        while lanes work: their K-th values only grow, so an older one is a lower floor."""
        K = self.cfg.top_tokens
        floor = np.full(self.num_features, -np.inf, np.float32)
        if K and len(self._lanes) > 1:
            for lane in self._lanes:
                np.maximum(floor, lane.features.top.values[:, K - 1], out=floor)
        return floor

    def _slices(self, lens, gene_rows, record) -> list[tuple[int, int]]:
        """Token slices of a chunk, one per lane at most, of about equal gene-token non-zeros
        (at least THREAD_NNZ each), each but the first beginning at a cell's first gene row."""
        n = len(lens)
        w = lens[gene_rows]
        total = int(w.sum())
        S = min(len(self._lanes), total // max(THREAD_NNZ, 1))
        if S <= 1:
            return [(0, n)]
        rec = record[gene_rows]
        new = np.flatnonzero(rec[1:] != rec[:-1]) + 1  # where in gene_rows a cell begins
        if not len(new):
            return [(0, n)]
        before = np.cumsum(w)[new - 1]  # gene-token non-zeros before each
        pick = np.unique(np.minimum(np.searchsorted(before, total * np.arange(1, S) / S),
                                    len(new) - 1))
        edges = [0, *gene_rows[new[pick]].tolist(), n]
        return list(zip(edges[:-1], edges[1:]))

    def _wait(self, keep: int = 0) -> None:
        """Let the other threads finish all but the last `keep` chunks (errors raise here)."""
        while len(self._pending) > keep:
            for f in self._pending.popleft():
                f.result()

    def _finish(self) -> None:
        """Wait for every thread, bring the lanes' cells into `cells`, in token order, and
        their features into `features`; start them afresh."""
        self._wait()
        lanes = self._lanes
        held = lanes[self._hold].cells
        n, m = held.n, held.m
        held.flush()
        if len(lanes) == 1 and self.cells.n == 0:  # one lane wrote every cell in order
            self.cells = held
        else:
            self.cells.extend([f.result() for f in self._pieces]
                              + [(held, n, held.n, m, held.m)], lanes)
        for lane in lanes:
            self.features.merge(lane.features)
            lane.features = _Features(self.num_features, self.cfg.top_tokens)
            lane.cells = _Cells(self.num_features)
        self._pieces, self._hold = [], 0

    def _close(self) -> None:
        for lane in self._lanes:
            lane.close()

    def merge(self, other: "FeatureStats") -> None:
        self._finish()
        other._finish()
        self.num_tokens += other.num_tokens
        self.features.merge(other.features)
        self.cells.merge(other.cells)
        self.units.merge(other.units)
        self.unit_tokens = _counts_add(self.unit_tokens, np.repeat(
            np.arange(len(other.unit_tokens)), other.unit_tokens))
        self._close()
        other._close()

    def result(self, num_cells: int | None = None, num_units: int | None = None
               ) -> FeatureStatsResult:
        self._finish()
        cell_max, cell_mean, cell_tokens = self.cells.result(num_cells, self._lanes)
        n_units = max(num_units or 0, len(self.unit_tokens))
        unit_tokens = np.zeros(n_units, np.int64)
        unit_tokens[: len(self.unit_tokens)] = self.unit_tokens
        unit_sum, unit_fires = self.units.result(n_units)
        self._close()
        f = self.features
        hist = f.hist()
        return FeatureStatsResult(
            self.num_tokens, hist.sum(axis=0), f.act_sum(), f.act_max.copy(),
            np.ascontiguousarray(hist.T), f.top.values.copy(), f.top.ids.copy(),
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
