"""Compiled loops of the streaming statistics (numba, cached on disk after the first compile).

Each is a single pass over a chunk's non-zeros with cache-resident buffers: numpy's vectorised
equivalents need several passes, sorts of combined int64 keys, or scatters into large tables,
and ran at a fifth of the speed of reading the activation cache.
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


@njit(cache=True, nogil=True)
def feature_pass(hist, act_sum, top_v, top_i, indptr, cols, vals, bits, start):  # pragma: no cover
    """Per-feature statistics of a CSR chunk in one pass: histogram counts (bin from the
    float32 exponent: searchsorted(stats.HIST_EDGES, v, 'right')), float64 sums, and the top
    lists (ids = row + start)."""
    nb = hist.shape[1]
    K = top_v.shape[1]
    for r in range(len(indptr) - 1):
        for j in range(indptr[r], indptr[r + 1]):
            f, v = cols[j], vals[j]
            b = ((bits[j] >> 23) - 127) + 11
            hist[f, min(max(b, 0), nb - 1)] += 1
            act_sum[f] += v
            if K:
                _insert(top_v, top_i, f, v, r + start)


@njit(cache=True, nogil=True)
def group_reduce(group, indptr, cols, vals, num_cols):  # pragma: no cover - compiled
    """(key = group * num_cols + col, max, float64 sum, count) over the non-zeros of CSR rows
    grouped by `group` (one per row; rows with a negative group are left out), sorted by key.

    Rows are bucketed by group (a counting sort over rows, so each row's non-zeros are read
    contiguously), each group is reduced in dense per-column buffers and emitted in column order.
    """
    n_rows = len(group)
    lo, hi = 0, -1
    for r in range(n_rows):
        g = group[r]
        if g >= 0:
            if hi < lo:
                lo, hi = g, g
            lo, hi = min(lo, g), max(hi, g)
    ng = hi - lo + 1
    start = np.zeros(ng + 1, np.int64)
    nnz = 0
    for r in range(n_rows):
        if group[r] >= 0:
            start[group[r] - lo + 1] += 1
            nnz += indptr[r + 1] - indptr[r]
    for g in range(ng):
        start[g + 1] += start[g]
    fill = start[:-1].copy()
    order = np.empty(start[ng], np.int64)
    for r in range(n_rows):
        if group[r] >= 0:
            g = group[r] - lo
            order[fill[g]] = r
            fill[g] += 1
    bmax = np.empty(num_cols, np.float32)
    bsum = np.empty(num_cols, np.float64)
    bcnt = np.zeros(num_cols, np.int64)
    touched = np.empty(num_cols, np.int64)
    keys = np.empty(nnz, np.int64)
    vmax = np.empty(nnz, np.float32)
    vsum = np.empty(nnz, np.float64)
    count = np.empty(nnz, np.int64)
    m = 0
    for g in range(ng):
        t = 0
        for p in range(start[g], start[g + 1]):
            r = order[p]
            for j in range(indptr[r], indptr[r + 1]):
                c, v = cols[j], vals[j]
                if bcnt[c] == 0:
                    touched[t] = c
                    t += 1
                    bmax[c] = v
                    bsum[c] = v
                else:
                    if v > bmax[c]:
                        bmax[c] = v
                    bsum[c] += v
                bcnt[c] += 1
        # emit in column order: sort the touched columns, or scan all when most are touched
        if t * 16 > num_cols:
            q = 0
            for c in range(num_cols):
                if bcnt[c]:
                    touched[q] = c
                    q += 1
            out = touched[:t]
        else:
            out = np.sort(touched[:t])
        base = (g + lo) * num_cols
        for q in range(t):
            c = out[q]
            keys[m] = base + c
            vmax[m] = bmax[c]
            vsum[m] = bsum[c]
            count[m] = bcnt[c]
            bcnt[c] = 0
            m += 1
    return keys[:m], vmax[:m], vsum[:m], count[:m]
