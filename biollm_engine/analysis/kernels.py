"""Compiled loops of the streaming statistics (numba, cached on disk after the first compile).

Each is a single pass over a chunk's non-zeros with cache-resident buffers: numpy's vectorised
equivalents need several passes, sorts of combined int64 keys, or scatters into large tables,
and ran at a fifth of the speed of reading the activation cache. All release the GIL, so the
per-cell and per-gene work runs on a second thread beside the per-feature pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit


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
    then smaller id); unfilled slots hold id -1. A value below its group's K-th is one compare."""
    for j in range(len(groups)):
        _insert(top_v, top_i, groups[j], values[j], ids[j])


@njit(cache=True, nogil=True, inline="always")
def _add_to_buffers(cnt, vmax, vsum, touched, t, c, mx, sm, k):  # pragma: no cover - compiled
    """Add to column c of dense per-column buffers a max `mx`, a sum `sm` and a count `k` (one
    value v: v, v, 1); -> touched columns. Branch-free: a branch on "first time this column" is
    mispredicted so often it costs 3x the whole update."""
    touched[t] = c
    t += cnt[c] == 0
    cnt[c] += k
    vmax[c] = max(vmax[c], mx)
    vsum[c] += sm
    return t


@njit(cache=True, nogil=True, inline="always")
def _drain(cnt, vmax, vsum, touched, t, out_cols, out_max, out_sum, out_cnt, m, scale, ordered
           ):  # pragma: no cover - compiled
    """Write the buffers' touched columns from `m` on (in column order if `ordered`, else in
    the order first touched; sum times `scale`; counts only if `out_cnt` is not empty) and
    clear them for the next group; -> new m."""
    F = cnt.shape[0]
    if not ordered:
        pass
    elif t * 64 > F:  # a branch-free scan of all columns is cheaper than a sort
        q = 0
        for c in range(F):
            touched[q] = c
            q += cnt[c] != 0
    else:
        touched[:t] = np.sort(touched[:t])
    for q in range(t):
        c = touched[q]
        out_cols[m + q] = c
        out_max[m + q] = vmax[c]
        out_sum[m + q] = vsum[c] * scale
        if len(out_cnt):
            out_cnt[m + q] = cnt[c]
        cnt[c] = 0
        vmax[c] = -np.inf
        vsum[c] = 0.0
    return m + t


@njit(cache=True, nogil=True, inline="always")
def _emit_cell(cell, cnt, touched, cmax, csum, out_row, out_len, out_cols, out_max, out_mean,
               n, m):  # pragma: no cover - compiled
    """Write the held cell (record, gene tokens, its columns with max and mean); -> (n, m)."""
    out_row[n, 0] = cell[0]
    out_row[n, 1] = cell[2]
    out_len[n] = cell[1]
    m = _drain(cnt, cmax, csum, touched, cell[1], out_cols, out_max, out_mean, out_row[:0, 0], m,
               1.0 / cell[2], True)
    cell[0], cell[1], cell[2] = -1, 0, 0
    return n + 1, m


@njit(cache=True, nogil=True)
def feature_pass(hist, act_sum, act_max, top_v, top_i, indptr, cols, vals, bits, start
                 ):  # pragma: no cover - compiled
    """Per-feature statistics of a CSR chunk in one pass: histogram counts `hist[bin, feature]`
    (bin from the float32 exponent: searchsorted(stats.HIST_EDGES, v, 'right'); bins as rows
    keep the few hot ones in cache), float64 sums, max, top lists (ids = row + start)."""
    nb = hist.shape[0]
    K = top_v.shape[1]
    F = act_sum.shape[0]
    # the K-th best of each feature in a small array: most values stop at one compare there
    thr = np.full(F, np.inf if K == 0 else -np.inf, np.float32)
    if K:
        for f in range(F):
            if top_i[f, K - 1] >= 0:
                thr[f] = top_v[f, K - 1]
    for r in range(len(indptr) - 1):
        for j in range(indptr[r], indptr[r + 1]):
            f, v = cols[j], vals[j]
            b = ((bits[j] >> 23) - 127) + 11
            hist[min(max(b, 0), nb - 1), f] += 1
            act_sum[f] += v
            act_max[f] = max(act_max[f], v)
            if v >= thr[f]:
                _insert(top_v, top_i, f, v, r + start)
                if top_i[f, K - 1] >= 0:
                    thr[f] = top_v[f, K - 1]


@njit(cache=True, nogil=True)
def cell_pass(indptr, cols, vals, record, unit, cell, cnt, touched, cmax, csum, out_row, out_len,
              out_cols, out_max, out_mean):  # pragma: no cover - compiled
    """Per-cell max and mean of a CSR chunk over its rows with unit >= 0.

    Each column's max and sum go to dense buffers (`cnt` zero, `cmax` -inf, `csum` zero where
    untouched); `cell` = (record, touched columns, gene tokens) of the cell held there, which
    goes on in the next chunk. A cell is written out when a gene row of another record arrives:
    `out_row[n] = (record, gene tokens)`, and its `out_len[n]` columns in order with max and
    mean. Returns (cells written, entries written).
    """
    n, m = 0, 0
    for r in range(len(indptr) - 1):
        if unit[r] >= 0:
            if record[r] != cell[0]:
                if cell[0] >= 0:
                    n, m = _emit_cell(cell, cnt, touched, cmax, csum, out_row, out_len,
                                      out_cols, out_max, out_mean, n, m)
                cell[0] = record[r]
            cell[2] += 1
            t = cell[1]
            for j in range(indptr[r], indptr[r + 1]):
                t = _add_to_buffers(cnt, cmax, csum, touched, t, cols[j], vals[j], vals[j], 1)
            cell[1] = t
    return n, m


@njit(cache=True, nogil=True)
def cell_flush(cell, cnt, touched, cmax, csum, out_row, out_len, out_cols, out_max, out_mean
               ):  # pragma: no cover - compiled
    """Write out the held cell, if any (see `cell_pass`)."""
    if cell[0] < 0:
        return 0, 0
    return _emit_cell(cell, cnt, touched, cmax, csum, out_row, out_len, out_cols, out_max,
                      out_mean, 0, 0)


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
    `bcols`, `bvals`, reading the rows in order (the second step of the counting sort)."""
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
def merge_parts(parts, cols, vmax, vsum, count, num_cols, ordered):  # pragma: no cover
    """Per row, per column: max, float64 sum and count of CSR parts [G, num_cols] held end to
    end in (cols, max, sum, count): row g of part p is [parts[p, g], parts[p, g + 1]). An empty
    `count` stands for raw values (max = sum = the value, count 1). Each row is reduced in
    dense per-column buffers. -> one CSR part (indptr, cols, max, sum, count), columns in order
    if `ordered` (only the final result needs them sorted), else as first met."""
    return _reduce_parts(parts, cols, vmax, vsum, count, num_cols, ordered)


@njit(cache=True, nogil=True, inline="always")
def _reduce_parts(parts, cols, vmax, vsum, count, F, ordered):  # pragma: no cover - compiled
    P, G = parts.shape[0], parts.shape[1] - 1
    bmax = np.full(F, -np.inf, np.float32)
    bsum = np.zeros(F, np.float64)
    bcnt = np.zeros(F, np.int64)
    touched = np.empty(F + 1, np.int64)
    n = 0
    for p in range(P):
        n += parts[p, G] - parts[p, 0]
    indptr = np.zeros(G + 1, np.int64)
    out_cols = np.empty(n, np.int32)
    out_max = np.empty(n, np.float32)
    out_sum = np.empty(n, np.float64)
    out_cnt = np.empty(n, np.int64)
    raw = len(count) == 0
    m = 0
    for g in range(G):
        t = 0
        for p in range(P):
            for j in range(parts[p, g], parts[p, g + 1]):
                t = _add_to_buffers(bcnt, bmax, bsum, touched, t, cols[j], vmax[j], vsum[j],
                                    1 if raw else count[j])
        m = _drain(bcnt, bmax, bsum, touched, t, out_cols, out_max, out_sum, out_cnt, m, 1.0,
                   ordered)
        indptr[g + 1] = m
    return indptr, out_cols[:m].copy(), out_max[:m].copy(), out_sum[:m].copy(), out_cnt[:m].copy()
