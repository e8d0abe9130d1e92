"""Compiled loops of the streaming statistics (numba, cached on disk after the first compile).

Each is a single pass over a chunk's non-zeros with cache-resident buffers: numpy's vectorised
equivalents need several passes, sorts of combined int64 keys, or scatters into large tables,
and ran at a fifth of the speed of reading the activation cache. Per-group reductions (a cell's
or a gene's columns) add into dense per-column buffers and mark the columns they touch in a
bitmap, which gives them back in column order for the cost of the touched columns plus one
word per 64 columns (a list of touched columns made each update wait on the previous one, and
then needed a sort or a scan of every column). All release the GIL.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

_ONE = np.uint64(1)


@njit(cache=True, nogil=True, inline="always")
def _insert(top_v, top_i, g, v, i):  # pragma: no cover - compiled
    K = top_v.shape[1]
    lv, li = top_v[g, K - 1], top_i[g, K - 1]
    if li >= 0 and not (v > lv or (v == lv and i < li)):
        return
    p = K - 1
    while p > 0:
        pv, pi = top_v[g, p - 1], top_i[g, p - 1]
        if pi >= 0 and (pv > v or (pv == v and pi < i)):
            break
        top_v[g, p] = pv
        top_i[g, p] = pi
        p -= 1
    top_v[g, p] = v
    top_i[g, p] = i


@njit(cache=True, nogil=True)
def topk_insert(top_v, top_i, groups, values, ids):  # pragma: no cover - compiled
    """Insert (group, value, id) into per-group lists [G, K] sorted best first (larger value,
    then smaller id); unfilled slots hold value -inf and id -1. A value below its group's K-th
    is one compare."""
    for j in range(len(groups)):
        _insert(top_v, top_i, groups[j], values[j], ids[j])


@njit(cache=True, nogil=True)
def topk_merge(top_v, top_i, other_v, other_i):  # pragma: no cover - compiled
    """Merge per-group lists [G, K] sorted best first (as `topk_insert` keeps them) into
    `top_v`, `top_i`: per group, one merge of the two lists."""
    G, K = top_v.shape
    mv = np.empty(K, top_v.dtype)
    mi = np.empty(K, top_i.dtype)
    for g in range(G):
        if other_i[g, 0] < 0:
            continue
        a = b = 0
        for p in range(K):
            # take from other when ours is used up or other's is better (larger, then smaller id)
            ov, oi = other_v[g, b], other_i[g, b]
            sv, si = top_v[g, a], top_i[g, a]
            if oi >= 0 and (si < 0 or ov > sv or (ov == sv and oi < si)):
                mv[p], mi[p] = ov, oi
                b += 1
            else:
                mv[p], mi[p] = sv, si
                a += 1
        top_v[g, :] = mv
        top_i[g, :] = mi


@njit(cache=True, nogil=True, inline="always")
def _mark(bits, c):  # pragma: no cover - compiled
    bits[c >> 6] |= _ONE << np.uint64(c & 63)


@njit(cache=True, nogil=True, inline="always")
def _drain(bits, a, b, a_empty, scale, out_cols, out_a, out_b, m):  # pragma: no cover
    """Write the columns marked in `bits` from `m` on, in order, with `a[c]` and `b[c] * scale`,
    and reset them (a to `a_empty`, b to 0, bits cleared); -> new m."""
    for w in range(len(bits)):
        x = bits[w]
        if x:
            bits[w] = 0
            while x:
                c = (w << 6) + np.int64(trailing_zeros(x))
                x &= x - _ONE
                out_cols[m] = c
                out_a[m] = a[c]
                out_b[m] = b[c] * scale
                a[c] = a_empty
                b[c] = 0
                m += 1
    return m


@njit(cache=True, nogil=True)
def feature_pass(sums, slot, act_max, top_v, top_i, floor, indptr, cols, vals, bits, start,
                 r0, j0):  # pragma: no cover - compiled
    """Per-feature statistics of CSR rows in one pass (ids = row + start), from row r0's entry
    j0 on. Each value goes by its float32 sign and exponent (`e = bits >> 23`, 0-511) to the row
    `slot[e]` of `sums`: its integer significand (negated below zero) into `sums[slot, f, 0]`,
    and 1 into `sums[slot, f, 1]` (the count beside the sum: one cache line for both). Values
    use few exponents, so rows are given out as they come (`slot[512]`: the next free one);
    when none is free -> (row, entry) to go on from once `sums` has more; (-1, -1) when done.
    Integer sums are exact, so they come out the same in any order: token slices on any number
    of threads, chunks of any size. Also the max and the top lists (larger value, then smaller
    id first), both order-free too. A value below `floor[f]` (K values at least as large are
    known elsewhere: other threads' lists) is in no top list."""
    K = top_v.shape[1]
    # the K-th best of each feature (-inf while unfilled) in a small array: most values stop at
    # one compare there
    thr = np.full(act_max.shape[0], np.inf, np.float32)
    if K:
        thr[:] = np.maximum(top_v[:, K - 1], floor)
    for r in range(r0, len(indptr) - 1):
        i = r + start
        for j in range(max(indptr[r], j0), indptr[r + 1]):
            f, v, b = cols[j], vals[j], bits[j]
            e = (b >> 23) & 0x1FF
            s = slot[e]
            if s < 0:
                s = slot[512]
                if s == sums.shape[0]:
                    return r, j
                slot[e] = s
                slot[512] = s + 1
            m = np.int64(b & 0x7FFFFF)
            if e & 0xFF:
                m |= 0x800000
            if e & 0x100:
                m = -m
            sums[s, f, 0] += m
            sums[s, f, 1] += 1
            if v > act_max[f]:
                act_max[f] = v
            if v >= thr[f]:
                _insert(top_v, top_i, f, v, i)
                thr[f] = top_v[f, K - 1]
    return -1, -1


@njit(cache=True, nogil=True, inline="always")
def _emit_cell(cell, bits, cmax, csum, out_row, out_len, out_cols, out_max, out_mean, n, m
               ):  # pragma: no cover - compiled
    """Write the held cell (record, gene tokens, its columns with max and mean); -> (n, m)."""
    out_row[n, 0] = cell[0]
    out_row[n, 1] = cell[1]
    end = _drain(bits, cmax, csum, -np.inf, 1.0 / cell[1], out_cols, out_max, out_mean, m)
    out_len[n] = end - m
    cell[0], cell[1] = -1, 0
    return n + 1, end


@njit(cache=True, nogil=True)
def cell_pass(indptr, cols, vals, record, unit, cell, bits, cmax, csum, out_row, out_len,
              out_cols, out_max, out_mean):  # pragma: no cover - compiled
    """Per-cell max and mean of a CSR chunk over its rows with unit >= 0.

    Each column's max and sum go to dense buffers (`cmax` -inf, `csum` zero where untouched,
    touched columns marked in `bits`); `cell` = (record, gene tokens) of the cell held there,
    which goes on in the next chunk. A cell is written out when a gene row of another record
    arrives: `out_row[n] = (record, gene tokens)`, and its `out_len[n]` columns in order with
    max and mean. Returns (cells written, entries written).
    """
    n, m = 0, 0
    for r in range(len(indptr) - 1):
        if unit[r] >= 0:
            if record[r] != cell[0]:
                if cell[0] >= 0:
                    n, m = _emit_cell(cell, bits, cmax, csum, out_row, out_len, out_cols,
                                      out_max, out_mean, n, m)
                cell[0] = record[r]
            cell[1] += 1
            for j in range(indptr[r], indptr[r + 1]):
                c, v = cols[j], vals[j]
                _mark(bits, c)
                cmax[c] = max(cmax[c], v)
                csum[c] += v
    return n, m


@njit(cache=True, nogil=True)
def cell_flush(cell, bits, cmax, csum, out_row, out_len, out_cols, out_max, out_mean
               ):  # pragma: no cover - compiled
    """Write out the held cell, if any (see `cell_pass`)."""
    if cell[0] < 0:
        return 0, 0
    return _emit_cell(cell, bits, cmax, csum, out_row, out_len, out_cols, out_max, out_mean,
                      0, 0)


@njit(cache=True, nogil=True)
def group_count(group, indptr, start):  # pragma: no cover - compiled
    """Add the non-zeros of CSR rows to their group's count, `start[group + 1]` (rows with a
    negative group are left out): the first step of a counting sort by group."""
    for r in range(len(group)):
        if group[r] >= 0:
            start[group[r] + 1] += indptr[r + 1] - indptr[r]


@njit(cache=True, nogil=True)
def group_scatter(group, indptr, cols, vals, fill, bcols, bvals):  # pragma: no cover
    """Copy the non-zeros of CSR rows to their group's next free places `fill[group]` in
    `bcols`, `bvals`, reading the rows in order (the second step of the counting sort; threads
    given disjoint places may each do a slice of the rows)."""
    for r in range(len(group)):
        g = group[r]
        if g >= 0:
            p = fill[g]
            for j in range(indptr[r], indptr[r + 1]):
                bcols[p] = cols[j]
                bvals[p] = vals[j]
                p += 1
            fill[g] = p


@njit(cache=True, nogil=True)
def merge_parts(parts, cols, vsum, count, num_cols):  # pragma: no cover - compiled
    """Per row, per column: float64 sum and count of CSR parts [G, num_cols] held end to end in
    (cols, sum, count): row g of part p is [parts[p, g], parts[p, g + 1]). An empty `count`
    stands for raw values (count 1 each). -> one CSR part (indptr, cols, sum, count), each
    row's columns in order."""
    P, G = parts.shape[0], parts.shape[1] - 1
    n = 0
    for p in range(P):
        n += parts[p, G] - parts[p, 0]
    bsum = np.zeros(num_cols, np.float64)
    bcnt = np.zeros(num_cols, np.int64)
    bits = np.zeros((num_cols + 63) // 64, np.uint64)
    indptr = np.zeros(G + 1, np.int64)
    n = min(n, G * num_cols)
    out_cols = np.empty(n, np.int32)
    out_sum = np.empty(n, np.float64)
    out_cnt = np.empty(n, np.int64)
    raw = len(count) == 0
    m = 0
    for g in range(G):
        for p in range(P):
            for j in range(parts[p, g], parts[p, g + 1]):
                c = cols[j]
                _mark(bits, c)
                bcnt[c] += 1 if raw else count[j]
                bsum[c] += vsum[j]
        m = _drain(bits, bcnt, bsum, 0, 1.0, out_cols, out_cnt, out_sum, m)
        indptr[g + 1] = m
    # views, not copies: the room past m was never written, so it holds no memory
    return indptr, out_cols[:m], out_sum[:m], out_cnt[:m]
