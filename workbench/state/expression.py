"""Reading cells: open an .h5ad, rank one cell's genes, compute a missing UMAP.

Called from worker threads (anndata and scanpy are imported here, never at start-up).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biollm_engine.errors import BioLLMError


def read_cells(path: str | Path):
    """Open an .h5ad backed (obs and obsm in memory, the matrix read a row at a time)."""
    import anndata

    path = Path(path)
    if not path.is_file():
        raise BioLLMError(f"{path} does not exist; check the path.")
    if path.stat().st_size == 0:
        raise BioLLMError(f"{path} is empty; re-export it from scanpy with adata.write_h5ad().")
    try:
        adata = anndata.read_h5ad(path, backed="r")
    except Exception as e:  # h5py / anndata raise many types for a damaged file
        raise BioLLMError(f"{path.name} is not a readable .h5ad file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); re-export it "
                          "with adata.write_h5ad().") from None
    if adata.n_obs == 0:
        raise BioLLMError(f"{path.name} has no cells; choose a file with at least one cell.")
    return adata


def sentence_reader(adata):
    """The engine's cell-sentence reader over an open AnnData (the model's view of a cell)."""
    from biollm_engine.inputs.cells import CellDataset

    return CellDataset(adata)


def _matrix(adata, name: str):
    if name == "raw":
        return adata.raw.X
    return adata.X if name == "X" else adata.layers[name]


def cell_sentence(reader, adata, i: int) -> list[tuple[str, float]]:
    """Cell `i`'s sentence (its top genes by expression, highest first) with each expression."""
    genes = reader.ranked([int(i)])[0]
    row = _matrix(adata, reader.matrix_name)[int(i)]
    row = np.asarray(row.toarray() if hasattr(row, "toarray") else row, dtype=np.float32).ravel()
    return [(reader.genes[g], float(row[g])) for g in genes]


def compute_umap(adata) -> np.ndarray:
    """UMAP of the cells with scanpy's defaults (PCA, 15 neighbours) when the file has none."""
    import scanpy as sc

    a = adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()
    if a.n_obs < 4:
        raise BioLLMError(f"a UMAP needs at least 4 cells, this file has {a.n_obs}.")
    if "X_pca" not in a.obsm:
        sc.pp.pca(a, n_comps=min(50, a.n_obs - 1, a.n_vars - 1))
    sc.pp.neighbors(a, n_neighbors=min(15, a.n_obs - 1), use_rep="X_pca")
    sc.tl.umap(a, random_state=0)
    return np.asarray(a.obsm["X_umap"], dtype=np.float32)
