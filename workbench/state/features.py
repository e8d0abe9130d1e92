"""Feature activations stored with the cells (obsm, cells × features) and their summary table.

The engine's write-back puts a dictionary's activations in `obsm['X_<dictionary>']`; any obsm
matrix with three or more columns can be read the same way (principal components included).
"""

from __future__ import annotations

from pathlib import Path
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


# -- the engine's feature analysis, cached in the workspace folder ------------------------------

ANALYSIS_DIR = "analysis"


class FeatureResults:
    """A dictionary's analysis as plain arrays: the table plus what the detail views draw.

    Saved as one folder (table.parquet, arrays.npz, cells.npz) so a second launch reads it back
    instead of running the model again.
    """

    ARRAYS = ("hist", "hist_edges", "top_cells", "top_cell_values", "top_gene", "top_gene_act",
              "top_gene_rate", "base_rate", "gene_mean", "genes", "promoted", "promoted_score",
              "suppressed", "suppressed_score")

    def __init__(self, table, cell_max, **arrays):
        self.table = table          # pandas DataFrame, one row per feature
        self.cell_max = cell_max    # scipy CSR [cells, F]: each cell's maximum activation
        for k in self.ARRAYS:
            setattr(self, k, arrays.get(k))

    @property
    def num_features(self) -> int:
        return len(self.table)

    @classmethod
    def from_analysis(cls, a) -> "FeatureResults":
        """From the engine's `FeatureAnalysis` (cells data: genes, cells and the lens known)."""
        from biollm_engine.analysis.stats import HIST_EDGES

        s = a.stats
        arrays = {"hist": s.hist, "hist_edges": np.asarray(HIST_EDGES)}
        if a.top_cells is not None:
            arrays["top_cell_values"], arrays["top_cells"] = (np.asarray(x) for x in a.top_cells)
        if a.top_genes is not None:
            tg = a.top_genes
            arrays.update(top_gene=tg.gene, top_gene_act=tg.mean_act, top_gene_rate=tg.rate,
                          base_rate=tg.base_rate)
            tokens = np.maximum(np.asarray(s.unit_tokens, np.float64), 1)[:, None]
            arrays["gene_mean"] = np.asarray(s.unit_sum.toarray() / tokens, np.float32)
        if a.lens is not None:
            text = np.asarray(a.lens.token_text, dtype=object)
            arrays.update(promoted=text[a.lens.promoted_ids].astype(str),
                          promoted_score=a.lens.promoted_scores,
                          suppressed=text[a.lens.suppressed_ids].astype(str),
                          suppressed_score=a.lens.suppressed_scores)
        return cls(a.table.df, s.cell_max, **arrays)

    def with_genes(self, genes) -> "FeatureResults":
        self.genes = np.asarray([str(g) for g in genes])
        return self

    def save(self, folder: str | Path, key: str) -> Path:
        """Into `folder`, with the `biollm_engine.provenance.features_key` of what it was
        computed from."""
        import scipy.sparse as sp
        from biollm_engine.fileio import atomic_dir
        from biollm_engine.provenance import write_key

        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            write_key(tmp, key)
            self.table.to_parquet(tmp / "table.parquet", index=False)
            sp.save_npz(tmp / "cells.npz", sp.csr_matrix(self.cell_max))
            np.savez_compressed(tmp / "arrays.npz", **{k: getattr(self, k) for k in self.ARRAYS
                                                        if getattr(self, k) is not None})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "FeatureResults":
        import pandas as pd
        import scipy.sparse as sp
        from biollm_engine.errors import BioLLMError

        folder = Path(folder)
        try:
            table = pd.read_parquet(folder / "table.parquet")
            cell_max = sp.load_npz(folder / "cells.npz").tocsr()
            with np.load(folder / "arrays.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise BioLLMError(f"cannot read the feature analysis in {folder} ({e}); delete the "
                              "folder and analyse again.") from None
        table["label"] = table["label"].fillna("").astype(str)
        return cls(table, cell_max, **arrays)

    def per_type_means(self, types) -> tuple[list[str], np.ndarray]:
        """Mean of each cell's maximum activation per cell type: [types, F]."""
        import pandas as pd
        import scipy.sparse as sp

        cat = pd.Categorical(types)
        n = len(cat)
        onehot = sp.csr_matrix((np.ones(n), (cat.codes.clip(0), np.arange(n))),
                               shape=(len(cat.categories), n))
        counts = np.maximum(np.bincount(cat.codes.clip(0), minlength=len(cat.categories)), 1)
        sums = np.asarray((onehot @ self.cell_max).todense())
        return [str(c) for c in cat.categories], sums / counts[:, None]

    def cell_values(self, j: int) -> np.ndarray:
        return column(self.cell_max, j)


def analysis_folder(workspace_folder: str | Path, dictionary: str | Path) -> Path:
    """A dictionary's cached analysis: in the workspace, unless the workspace is read-only (the
    bundled demo) and did not ship one, then in the user's cache."""
    from .workspace import is_read_only

    folder = Path(workspace_folder) / ANALYSIS_DIR / _analysis_name(dictionary)
    if folder.exists() or not is_read_only(workspace_folder):
        return folder
    return write_folder(workspace_folder, dictionary)


def write_folder(workspace_folder: str | Path, dictionary: str | Path) -> Path:
    """Where a new analysis of a dictionary is written: the workspace, or the user's cache when
    the workspace is read-only, even where it shipped a (now stale) one: never into the
    installed package."""
    from .workspace import is_read_only, scratch_folder

    name = _analysis_name(dictionary)
    if is_read_only(workspace_folder):
        return scratch_folder(workspace_folder) / ANALYSIS_DIR / name
    return Path(workspace_folder) / ANALYSIS_DIR / name


def _analysis_name(dictionary: str | Path) -> str:
    return "_".join(Path(dictionary).parts[-2:]).replace(" ", "_")


def cached(workspace_folder: str | Path, dictionary: str | Path, cfg) -> FeatureResults | None:
    """The analysis of `cfg` where it was shipped or, after that went stale, recomputed."""
    for folder in dict.fromkeys((analysis_folder(workspace_folder, dictionary),
                                 write_folder(workspace_folder, dictionary))):
        results = load_or_none(folder, cfg)
        if results is not None:
            return results
    return None


def features_config(workspace_folder: str | Path, model: str, data: str, dictionary: str,
                    type_key: str | None, **options):
    """The engine's FeaturesConfig for a workspace dictionary, its table beside the cache."""
    from biollm_engine.analysis.pipeline import FeaturesConfig

    folder = analysis_folder(workspace_folder, dictionary)
    values = {"obs_key": [type_key] if type_key else [], "device": "cpu", **options}
    return FeaturesConfig(model=model, data=data, dict=dictionary,
                          out=str(folder.parent / f"{folder.name}.features.parquet"), **values)


def analyse(cfg, folder: str | Path, progress=None, cancel=None) -> FeatureResults:
    """Run the engine's feature analysis (a FeaturesConfig) and cache it in `folder` (a job:
    progress, cancel)."""
    from biollm_engine.analysis.pipeline import run_features
    from biollm_engine.inputs import open_data
    from biollm_engine.provenance import features_key

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    key = features_key(cfg)  # before the run: inputs changed meanwhile make the cache stale
    result = FeatureResults.from_analysis(run_features(cfg, progress, cancel))
    genes = open_data(cfg.data, top_k=cfg.top_k).units
    result.with_genes(genes).save(folder, key)
    return result


def load_or_none(folder: str | Path, cfg) -> FeatureResults | None:
    """The analysis cached in `folder` if it was computed from what `cfg` would analyse now
    (same options, model, dictionary, data and engine code), else None: a stale one is
    recomputed, never shown."""
    from biollm_engine.provenance import features_key, key_matches

    return FeatureResults.load(folder) if key_matches(folder, features_key(cfg)) else None


class CellEncoder:
    """The model and dictionary of one analysis, loaded once (in a job), encoding single cells:
    what a clicked cell's sentence is coloured by."""

    def __init__(self, cfg):
        from biollm_engine.dictionaries.formats import load_dictionary
        from biollm_engine.inputs import open_data
        from biollm_engine.models import load_model, resolve_hookpoint

        self.key = encoder_key(cfg)
        self.dictionary = load_dictionary(cfg.dict)
        self.lm = load_model(cfg.model, device=cfg.device)
        self.hookpoint = resolve_hookpoint(self.lm, cfg.hookpoint or self.dictionary.cfg.hookpoint
                                           or "").name
        self.dictionary = self.dictionary.to(self.lm.device)
        self.data = open_data(cfg.data, top_k=cfg.top_k, layer=cfg.layer, template=cfg.template)

    def encode(self, cell: int) -> "CellTokens":
        from biollm_engine.analysis.encode import encode_live

        chunks = list(encode_live(self.lm, self.data.examples(self.lm.tokenizer, [int(cell)]),
                                  self.dictionary, self.hookpoint, batch_size=1))
        import scipy.sparse as sp

        acts = sp.vstack([c.acts for c in chunks], format="csc")
        units = np.concatenate([c.sources.unit for c in chunks])
        return CellTokens(int(cell), units, acts, self.data.units)


def encoder_key(cfg) -> tuple:
    return (cfg.model, cfg.data, cfg.dict, cfg.hookpoint, cfg.top_k, cfg.layer, cfg.template)


def encode_cell(cfg, cell: int, encoder: CellEncoder | None = None, progress=None, cancel=None):
    """(encoder, CellTokens): one cell's token activations; `encoder` is reused when it fits."""
    if encoder is None or encoder.key != encoder_key(cfg):
        encoder = CellEncoder(cfg)
    return encoder, encoder.encode(cell)


class CellTokens:
    """One cell's feature activations on each of its tokens, and the gene each token spells."""

    def __init__(self, cell: int, units: np.ndarray, acts, genes):
        self.cell, self.units, self.acts, self.genes = cell, np.asarray(units), acts, genes

    def gene_values(self, j: int) -> dict[str, float]:
        """Feature j's activation on each gene of the sentence (the maximum over the gene's
        tokens), genes where it fires only."""
        col = np.asarray(self.acts[:, j].toarray()).ravel()
        on = (self.units >= 0) & (col > 0)
        best: dict[str, float] = {}
        for u, v in zip(self.units[on], col[on]):
            g = str(self.genes[u])
            best[g] = max(best.get(g, 0.0), float(v))
        return best


def refresh_shipped(workspace_folder: str | Path) -> list[Path]:
    """Recompute the analyses a workspace ships (its `analysis/` folders) for its first data
    file and cell-type key, under the current key: run after changing the analysis code, the
    model, a dictionary or the cells, so that the bundled demo opens at once again."""
    from .workspace import open_workspace

    ws = open_workspace(workspace_folder)
    done = []
    for d in ws.dictionaries:
        folder = analysis_folder(ws.folder, d)
        if folder.is_relative_to(Path(ws.folder)) and folder.exists():
            cfg = features_config(ws.folder, ws.model, ws.data[0], d,
                                  ws.settings.get("type_key"))
            if load_or_none(folder, cfg) is None:
                analyse(cfg, folder)
                done.append(folder)
    return done


if __name__ == "__main__":
    from .workspace import BUNDLED

    for path in refresh_shipped(BUNDLED):
        print(f"recomputed {path}")
