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


class TopK:
    """A mergeable running top-k per group (e.g. per feature), over values with global ids.

    Candidates go one by one into each group's sorted list (`kernels.topk_insert`): once the
    lists fill, nearly every value is one compare against its group's k-th, so a chunk costs a
    pass over its values; sorting each chunk's candidates cost more than reading them.
    """

    def __init__(self, num_groups: int, k: int):
        self.num_groups = num_groups
        self.k = k
        self.values = np.full((num_groups, k), -np.inf, dtype=np.float32)
        self.ids = np.full((num_groups, k), -1, dtype=np.int64)

    def push(self, groups: np.ndarray, values: np.ndarray, ids: np.ndarray) -> None:
        if self.k == 0 or len(groups) == 0:
            return
        from .kernels import topk_insert  # numba loads only when a top list is filled

        topk_insert(self.values, self.ids, np.asarray(groups, dtype=np.int64),
                    np.ascontiguousarray(values, dtype=np.float32),
                    np.asarray(ids, dtype=np.int64))

    def merge(self, other: "TopK") -> None:
        """Add another list's candidates (of other ids: the same id twice would be kept twice)."""
        if self.k == 0:
            return
        from .kernels import topk_merge

        topk_merge(self.values, self.ids, other.values, other.ids)
