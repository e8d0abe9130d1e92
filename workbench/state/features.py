"""Feature activations stored with the cells (obsm, cells × features) and their summary table.

The engine's write-back puts a dictionary's activations in `obsm['X_<dictionary>']`; any obsm
matrix with three or more columns can be read the same way (principal components included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

EMBEDDINGS = ("X_pca", "X_umap", "X_tsne", "X_diffmap", "X_phate", "X_scvi", "X_draw_graph_fa",
              "X_draw_graph_fr", "X_mde")


def activation_keys(adata) -> list[str]:
    """obsm entries with ≥ 3 columns, activations first, known embeddings last."""
    if adata is None:
        return []
    keys = [k for k, v in adata.obsm.items() if len(np.shape(v)) == 2 and np.shape(v)[1] >= 3]
    return sorted(keys, key=lambda k: (k in EMBEDDINGS, k))


def default_activation_key(adata) -> str | None:
    keys = [k for k in activation_keys(adata) if k not in EMBEDDINGS]
    return keys[0] if keys else None


def column(matrix, j: int) -> np.ndarray:
    col = matrix[:, j]
    if hasattr(col, "toarray"):
        col = col.toarray()
    return np.asarray(col, dtype=np.float32).ravel()


def rows_mean(matrix, rows) -> np.ndarray:
    """Mean activation of each feature over the given cells."""
    sub = matrix[np.asarray(rows, dtype=np.int64)]
    return np.asarray(sub.mean(axis=0), dtype=np.float64).ravel()


def feature_stats(matrix, types=None, labels: dict[int, str] | None = None) -> pd.DataFrame:
    """One row per feature: how often it fires, how strongly, and in which cell type most."""
    import pandas as pd
    import scipy.sparse as sp

    m = sp.csc_matrix(matrix) if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float32)
    n = m.shape[0]
    if sp.issparse(m):
        freq = np.asarray((m > 0).sum(axis=0)).ravel() / n
        mx = m.max(axis=0).toarray().ravel()
        mean = np.asarray(m.mean(axis=0)).ravel()
    else:
        freq = (m > 0).mean(axis=0)
        mx = m.max(axis=0)
        mean = m.mean(axis=0)
    df = pd.DataFrame({"feature": np.arange(m.shape[1]),
                       "label": [(labels or {}).get(j, "") for j in range(m.shape[1])],
                       "frequency": freq.astype(np.float64), "max": mx.astype(np.float64),
                       "mean": mean.astype(np.float64)})
    if types is not None:
        cat = pd.Categorical(types)
        onehot = sp.csr_matrix((np.ones(n), (cat.codes.clip(0), np.arange(n))),
                               shape=(len(cat.categories), n))
        counts = np.maximum(np.bincount(cat.codes.clip(0), minlength=len(cat.categories)), 1)
        sums = onehot @ m
        per_type = (sums.toarray() if sp.issparse(sums) else np.asarray(sums)) / counts[:, None]
        df["top_type"] = np.asarray(cat.categories.astype(str))[np.argmax(per_type, axis=0)]
    return df
