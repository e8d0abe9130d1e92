"""Association of features with a categorical `obs` column (e.g. cell type).

Computed on a cells x features matrix (usually `cell_max`), all features at once:
- `mean[c, f]`: mean over the cells of category c.
- `auroc[c, f]`: one-vs-rest AUROC of the feature's value as a score for "cell is in c", from
  ranks (ties get their average rank, so a feature constant across cells scores 0.5).
- `specificity[f]`: the share of the per-category means that falls in the best category,
  `max_c mean[c, f] / sum_c mean[c, f]` (means clipped at 0): 1 when the feature is active in
  one category only, 1 / (number of categories) when it is equally active in all; NaN when the
  feature is silent in every cell.
- `best[f]`: the category with the highest AUROC (-1 when the feature is silent in every cell).
Cells whose label is missing are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import BioLLMError


@dataclass
class Association:
    column: str
    categories: list[str]
    counts: np.ndarray       # [C] cells per category
    mean: np.ndarray         # [C, F]
    auroc: np.ndarray        # [C, F]
    specificity: np.ndarray  # [F]
    best: np.ndarray         # [F] category index, -1 for silent features

    @property
    def best_category(self) -> np.ndarray:
        cats = np.asarray(self.categories + [""], dtype=object)
        return cats[self.best]

    @property
    def best_auroc(self) -> np.ndarray:
        out = np.full(self.auroc.shape[1], np.nan)
        ok = self.best >= 0
        out[ok] = self.auroc[self.best[ok], np.flatnonzero(ok)]
        return out


def categorical_columns(obs: pd.DataFrame, max_categories: int = 200) -> list[str]:
    """The obs columns that are categories (categorical, string or bool, few distinct values)."""
    out = []
    for name, col in obs.items():
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == bool or \
                pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            if 1 < col.nunique(dropna=True) <= max_categories:
                out.append(str(name))
    return out


def obs_column(obs: pd.DataFrame, key: str) -> pd.Series:
    if key not in obs.columns:
        valid = ", ".join(categorical_columns(obs)) or "none"
        raise BioLLMError(f"obs has no column {key!r}; categorical columns are: {valid}.")
    return obs[key]


def _column_ranks(m: sp.csc_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based, over all rows incl. implicit zeros) of the stored entries of each
    column, in CSC data order, and the rank shared by each column's zeros."""
    n, F = m.shape
    nnz_col = np.diff(m.indptr)
    col = np.repeat(np.arange(F), nnz_col)
    vals = m.data.astype(np.float64)
    order = np.lexsort((vals, col))
    c, v = col[order], vals[order]
    pos = np.arange(len(v)) - m.indptr[c]          # index within its column among stored values
    new = np.ones(len(v), bool)
    new[1:] = (c[1:] != c[:-1]) | (v[1:] != v[:-1])
    start = np.flatnonzero(new)
    size = np.diff(np.r_[start, len(v)])
    gid = np.cumsum(new) - 1
    less_nz = pos[start][gid]
    equal = size[gid]
    zeros = n - nnz_col
    neg = np.bincount(col[vals < 0], minlength=F)
    ranks_sorted = less_nz + np.where(v > 0, zeros[c], 0) + (equal + 1) / 2.0
    ranks = np.empty(len(v))
    ranks[order] = ranks_sorted
    zero_rank = neg + (zeros + 1) / 2.0
    return ranks, zero_rank


def associate(cell_matrix, labels, column: str = "") -> Association:
    """Mean, one-vs-rest AUROC, specificity and best category of every feature for `labels`."""
    labels = pd.Series(labels).reset_index(drop=True)
    m = sp.csr_matrix(cell_matrix)
    if m.shape[0] != len(labels):
        raise BioLLMError(f"{m.shape[0]} cells in the feature matrix but {len(labels)} labels in "
                          f"{column or 'the obs column'}; use the data set the cache was made from.")
    valid = labels.notna().to_numpy()
    cat = pd.Categorical(labels[valid].astype(str))
    categories = [str(c) for c in cat.categories]
    if not categories:
        raise BioLLMError(f"obs column {column!r} has no labels; pick another column.")
    m = sp.csr_matrix(m[valid], dtype=np.float64)
    m.eliminate_zeros()
    n, F = m.shape
    C = len(categories)
    onehot = sp.csr_matrix((np.ones(n), (cat.codes, np.arange(n))), shape=(C, n))
    counts = np.asarray(onehot.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.asarray((onehot @ m).todense()) / counts[:, None]

        csc = sp.csc_matrix(m)
        csc.sort_indices()
        ranks, zero_rank = _column_ranks(csc)
        rank_m = sp.csc_matrix((ranks, csc.indices, csc.indptr), shape=csc.shape)
        stored = sp.csc_matrix((np.ones(len(ranks)), csc.indices, csc.indptr), shape=csc.shape)
        nnz_c = np.asarray((onehot @ stored).todense())
        rank_sum = np.asarray((onehot @ rank_m).todense()) + (counts[:, None] - nnz_c) * zero_rank
        n_c = counts[:, None]
        auroc = (rank_sum - n_c * (n_c + 1) / 2.0) / (n_c * (n - n_c))

        pos = np.clip(mean, 0, None)
        total = pos.sum(axis=0)
        specificity = np.where(total > 0, pos.max(axis=0, initial=0) / total, np.nan)
    silent = np.diff(csc.indptr) == 0
    best = np.where(silent, -1, np.argmax(np.nan_to_num(auroc, nan=-np.inf), axis=0))
    return Association(column, categories, counts, mean, auroc, specificity, best)
