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


def _matrix(adata):
    return adata.raw if adata.raw is not None else adata


def matrix_name(adata) -> str:
    return "raw.X" if adata.raw is not None else "X"


def expression_row(adata, i: int) -> np.ndarray:
    row = _matrix(adata).X[int(i)]
    if hasattr(row, "toarray"):
        row = row.toarray()
    return np.asarray(row, dtype=np.float32).ravel()


def cell_sentence(adata, i: int, max_genes: int | None = None) -> list[tuple[str, float]]:
    """Expressed genes (value > 0) of cell `i`, highest first; ties keep the gene order."""
    row = expression_row(adata, i)
    genes = _matrix(adata).var_names
    expressed = np.flatnonzero(row > 0)
    order = expressed[np.argsort(-row[expressed], kind="stable")]
    if max_genes is not None:
        order = order[:max_genes]
    return [(str(genes[g]).upper(), float(row[g])) for g in order]


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
