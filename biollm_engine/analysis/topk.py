"""Top-k per group, vectorised: the one heap behind top tokens, top cells and top genes.

Candidates are (group, value, id) triples; each group keeps its `k` largest values, ties broken by
the smaller id, so the result is the same whatever order or chunking the candidates arrive in.
That is what makes the streaming accumulators equal to the in-memory computation.
"""

from __future__ import annotations

import numpy as np


def grouped_topk(groups: np.ndarray, values: np.ndarray, ids: np.ndarray, k: int,
                 num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Return `(vals [num_groups, k] float32, ids [num_groups, k] int64)`, best first.

    Unfilled slots hold `-inf` and id `-1`.
    """
    top_v = np.full((num_groups, k), -np.inf, dtype=np.float32)
    top_i = np.full((num_groups, k), -1, dtype=np.int64)
    if len(groups) == 0 or k == 0:
        return top_v, top_i
    groups = np.asarray(groups, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    order = np.lexsort((ids, -values, groups))
    g = groups[order]
    first = np.searchsorted(g, g, side="left")  # start of each element's group in sorted order
    rank = np.arange(len(g)) - first
    keep = rank < k
    sel = order[keep]
    top_v[g[keep], rank[keep]] = values[sel]
    top_i[g[keep], rank[keep]] = ids[sel]
    return top_v, top_i


def desc_keys(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """int64 keys ordering entries by group, then value descending (float32 bits made monotone)."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.int64)
    ordered = np.where(u & 0x80000000, u ^ 0xFFFFFFFF, u | 0x80000000)
    return (np.asarray(groups, dtype=np.int64) << 32) | (0xFFFFFFFF - ordered)


# Fine value bins for pruning candidates: a float32's bits >> 19 are its exponent and top 4
# mantissa bits, monotone in the value: 16 bins per octave over [2^-10, 2^12), clipped at both ends.
FINE_BINS = 22 * 16
_FINE_BASE = 116 << 4
_FINE_LIMIT = 1 << 23  # groups x FINE_BINS counts kept (int64) up to this many


def fine_bins(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32)
    return np.clip((bits >> 19) - _FINE_BASE, 0, FINE_BINS - 1)


class TopK:
    """A mergeable running top-k per group (e.g. per feature), over values with global ids.

    It also counts every pushed value per group in fine value bins: any value in a bin below the
    one where a group's count from the top reaches k has k larger values already seen, so it is
    dropped before sorting. That matters while the lists fill; once the held k-th values prune
    nine in ten of the pushed values by themselves, counting stops.
    """

    def __init__(self, num_groups: int, k: int):
        self.num_groups = num_groups
        self.k = k
        self.values = np.full((num_groups, k), -np.inf, dtype=np.float32)
        self.ids = np.full((num_groups, k), -1, dtype=np.int64)
        self.max_id = -1
        self.counts = np.zeros((num_groups, FINE_BINS), np.int64) \
            if 0 < k and num_groups * FINE_BINS <= _FINE_LIMIT else None

    def _count(self, groups: np.ndarray, values: np.ndarray) -> np.ndarray | None:
        """Count the values; return the mask of those that can still be in their group's top k."""
        if self.counts is None:
            return None
        fb = fine_bins(values)
        self.counts += np.bincount(groups * FINE_BINS + fb, minlength=self.counts.size
                                   ).reshape(self.counts.shape)
        return self._above_cut(groups, fb)

    def _above_cut(self, groups: np.ndarray, fb: np.ndarray) -> np.ndarray:
        from_top = np.cumsum(self.counts[:, ::-1], axis=1)
        enough = from_top[:, -1] >= self.k
        cut = np.where(enough, FINE_BINS - 1 - np.argmax(from_top >= self.k, axis=1), 0)
        return fb >= cut[groups]

    def _merge_in_order(self, groups, values, ids) -> None:
        """Merge candidates whose ids all exceed every held id (a stream in token order): the
        held lists are already sorted, so only the candidates are sorted, then both are placed
        by binary search; ties go to the held entry, which has the smaller id."""
        K = self.k
        ckey = desc_keys(groups, values)
        order = np.argsort(ckey, kind="stable")  # stable: equal values stay in id order
        ckey, cg, cv, cid = ckey[order], groups[order], values[order], ids[order]
        touched = np.unique(cg)
        lg = np.searchsorted(touched, cg)
        hv, hi = self.values[touched], self.ids[touched]
        hkey = desc_keys(np.repeat(touched, K), hv.ravel())
        p_c = (np.searchsorted(hkey, ckey, side="right") - lg * K
               + np.arange(len(cg)) - np.searchsorted(cg, cg, side="left"))
        hg = np.repeat(touched, K)
        p_h = (np.tile(np.arange(K), len(touched)) + np.searchsorted(ckey, hkey, side="left")
               - np.searchsorted(cg, hg, side="left"))
        new_v = np.full((len(touched), K), -np.inf, dtype=np.float32)
        new_i = np.full((len(touched), K), -1, dtype=np.int64)
        rows_h = np.repeat(np.arange(len(touched)), K)
        m = p_h < K
        new_v[rows_h[m], p_h[m]] = hv.ravel()[m]
        new_i[rows_h[m], p_h[m]] = hi.ravel()[m]
        m = p_c < K
        new_v[lg[m], p_c[m]] = cv[m]
        new_i[lg[m], p_c[m]] = cid[m]
        self.values[touched] = new_v
        self.ids[touched] = new_i

    def push(self, groups: np.ndarray, values: np.ndarray, ids: np.ndarray) -> None:
        if self.k == 0 or len(groups) == 0:
            return
        groups = np.asarray(groups, dtype=np.int64)
        values = np.asarray(values, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        self._push(groups, values, ids, self._count(groups, values))

    def _push(self, groups, values, ids, possible) -> None:
        # Only candidates that can still enter a group's list are sorted, with the held entries
        # of just the groups they touch: after warm-up that is a small fraction of each chunk.
        cand = values >= self.values[groups, -1]
        if possible is not None:
            if cand.mean() < 0.1:  # the held thresholds prune well now: stop counting
                self.counts = None
            cand &= possible
        groups, values, ids = groups[cand], values[cand], ids[cand]
        if len(groups) == 0:
            return
        if ids.min() > self.max_id and np.all(ids[1:] >= ids[:-1]):
            self._merge_in_order(groups, values, ids)
        else:
            touched = np.unique(groups)
            held = self.ids[touched] >= 0
            v, i = grouped_topk(
                np.concatenate([np.nonzero(held)[0], np.searchsorted(touched, groups)]),
                np.concatenate([self.values[touched][held], values]),
                np.concatenate([self.ids[touched][held], ids]),
                self.k, len(touched))
            self.values[touched] = v
            self.ids[touched] = i
        self.max_id = max(self.max_id, int(ids.max()))

    def merge(self, other: "TopK") -> None:
        held = other.ids >= 0
        groups, values, ids = np.nonzero(held)[0], other.values[held], other.ids[held]
        if self.counts is not None and other.counts is not None:
            self.counts += other.counts
            possible = self._above_cut(groups, fine_bins(values))
        else:
            self.counts = None  # the other side's values were not counted: no pruning from now
            possible = None
        if self.k and len(groups):
            self._push(groups, values, ids, possible)
