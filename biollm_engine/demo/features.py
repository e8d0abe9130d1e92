"""The demo's feature analysis (the SAE on every cell), cached in the workspace under a hash.

Analysing the demo runs the model over all 700 prompts, yet its result changes only when the
model, the SAE, the cells, the analysis options or the code that computes it change. The build
stores the result in `cache/features/` with one SHA-256 over all of those (file contents, not
dates); a run reuses it only when the hash of what it would analyse now is the same, and
otherwise analyses live. A stale cache is never read, only recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_dir
from ..progress import CancelToken, ProgressCallback
from ..provenance import features_key, key_matches, write_key
from .data import LABEL_COLUMN

CACHE_DIR = Path("cache") / "features"


@dataclass
class DemoFeatures:
    table: "object"  # analysis.FeatureTable
    cell_max: "object"  # scipy CSR [cells, features]: each cell's maximum activation
    key: str
    cached: bool


def features_config(ws: dict, out: Path, device: str = "cpu"):
    """The analysis the demo runs: the SAE on every cell, associated with the cell types."""
    from ..analysis.pipeline import FeaturesConfig

    return FeaturesConfig(model=str(ws["model"]), data=str(ws["data"]), dict=str(ws["sae"]),
                          out=str(out / "features.csv"), obs_key=[LABEL_COLUMN],
                          write_h5ad=str(out / "cells_features.h5ad"), top_k=ws["top_k"],
                          device=device)


def save_cache(folder: Path, result: DemoFeatures) -> Path:
    import scipy.sparse as sp

    with atomic_dir(Path(folder) / CACHE_DIR) as tmp:
        result.table.save(tmp / "table.parquet", keep_labels=False)
        sp.save_npz(tmp / "cell_max.npz", result.cell_max)
        write_key(tmp, result.key)
    return Path(folder) / CACHE_DIR


def load_cache(folder: Path, key: str):
    """(table, cell_max) if the cache in `folder` was made from exactly these inputs, else None."""
    import scipy.sparse as sp

    from ..analysis.table import FeatureTable
    from ..errors import BioLLMError

    cache = Path(folder) / CACHE_DIR
    if not key_matches(cache, key):
        return None
    try:
        return FeatureTable.read(cache / "table.parquet"), sp.load_npz(cache / "cell_max.npz")
    except (OSError, ValueError, BioLLMError):
        return None  # missing or unreadable: analysed again


def analyse(ws: dict, out: Path, device: str = "cpu", use_cache: bool = True,
            progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None) -> DemoFeatures:
    """Write `features.csv` and `cells_features.h5ad` into `out`, from the cache when valid."""
    import scipy.sparse as sp

    from ..analysis.pipeline import run_features
    from ..analysis.writeback import write_back

    fcfg = features_config(ws, out, device)
    key = features_key(fcfg)
    hit = load_cache(ws["folder"], key) if use_cache else None
    if hit is not None:
        table, cell_max = hit
        table.save(fcfg.out)
        # what run_features writes: the same key, table and obs columns
        write_back(fcfg.data, cell_max, table, Path(fcfg.dict).name, fcfg.write_h5ad,
                   fcfg.obs_features)
        return DemoFeatures(table, cell_max.tocsr(), key, cached=True)
    result = run_features(fcfg, progress=progress, cancel=cancel)
    cell_max = sp.csr_matrix(result.stats.cell_max, dtype=np.float32)
    return DemoFeatures(result.table, cell_max, key, cached=False)
