"""AnnData write-back: a NEW .h5ad holding the input plus the features, ready for scanpy.

The new file is the input file copied byte for byte, then extended in place (so `X` and layers of
an atlas are never loaded into memory), all under a temporary name renamed into place at the end.
It gains:
- `obsm['X_<key>']`: cells x features, sparse CSR float32 (e.g. the per-cell max activation);
- `uns['<key>_features']`: the feature table, a dict of columns (`FeatureTable.from_uns` reads it);
- obs columns `feat_<i>` (dense float32) for the features picked by `obs_features` (an int picks
  that many of the features active in the most cells; a list picks those features), so that
  `sc.pl.umap(adata, color="feat_12")` works directly. Any feature can be plotted from obsm:
  `adata.obs["f"] = adata.obsm["X_<key>"][:, 12].toarray().ravel()`.
The input file is only ever read.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import BioLLMError
from ..fileio import atomic_path
from .table import FeatureTable


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def pick_obs_features(cell_matrix: sp.csr_matrix, obs_features: int | Sequence[int]) -> list[int]:
    if isinstance(obs_features, (int, np.integer)):
        cells_active = np.bincount(cell_matrix.indices, minlength=cell_matrix.shape[1])
        order = np.lexsort((np.arange(len(cells_active)), -cells_active))
        return sorted(int(f) for f in order[: int(obs_features)] if cells_active[f] > 0)
    from ..dictionaries.formats import check_features

    return check_features(obs_features, cell_matrix.shape[1]).tolist()


def write_back(input_h5ad, cell_matrix, table: FeatureTable | None, key: str, out_h5ad,
               obs_features: int | Sequence[int] = 10) -> Path:
    """Write `out_h5ad` = `input_h5ad` + the cell x feature matrix, table and obs columns."""
    import h5py
    from anndata.io import write_elem

    src, out = Path(input_h5ad), Path(out_h5ad)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", key or ""):
        raise BioLLMError(f"write-back key {key!r} must be letters, digits, '_', '.' or '-'.")
    if not src.is_file():
        raise BioLLMError(f"input {src} does not exist; check the path.")
    if _same_file(src, out):
        raise BioLLMError(f"the output {out} is the input file; write the features to a new "
                          ".h5ad name (the input is never modified).")
    m = sp.csr_matrix(cell_matrix, dtype=np.float32)
    feats = pick_obs_features(m, obs_features)
    with atomic_path(out, suffix=".h5ad.tmp") as tmp:
        shutil.copyfile(src, tmp)
        try:
            f = h5py.File(tmp, "r+")
        except OSError:
            raise BioLLMError(f"{src} is not an HDF5 .h5ad file; save it with anndata first.") \
                from None
        with f:
            obs = f.get("obs")
            if not isinstance(obs, h5py.Group) or "_index" not in obs.attrs:
                raise BioLLMError(f"{src} is in an old or unknown .h5ad layout; read it with "
                                  "anndata and write it again (adata.write_h5ad).")
            n_obs = len(obs[obs.attrs["_index"]])
            if m.shape[0] != n_obs:
                raise BioLLMError(f"{m.shape[0]} cells of features but {n_obs} cells in {src}; "
                                  "use the data set the features were computed from.")
            for group, name, value in [("obsm", f"X_{key}", m),
                                       ("uns", f"{key}_features",
                                        table.to_uns() if table is not None else None)]:
                if value is None:
                    continue
                g = f.require_group(group)
                if group == "obsm" and "encoding-type" not in g.attrs:
                    g.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
                if name in g:
                    del g[name]
                write_elem(g, name, value)
            order = [str(c) for c in obs.attrs.get("column-order", [])]
            for feat in feats:
                name = f"feat_{feat}"
                if name in obs:
                    del obs[name]
                write_elem(obs, name, m[:, feat].toarray().ravel())
                if name not in order:
                    order.append(name)
            obs.attrs["column-order"] = np.array(order, dtype=object) if order else \
                np.zeros(0, dtype=h5py.string_dtype())
    return out
