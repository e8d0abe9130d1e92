"""`FeatureTable`: one row per feature, the statistics a scientist reads and labels.

Columns: `feature`, `frequency`, `mean`, `mean_firing`, `max`, `top_genes`, `top_gene`,
`top_context` (the best token in its context), per associated obs column `best_<col>`,
`auroc_<col>`, `specificity_<col>`, the logit lens' `promoted`, `suppressed`, `promoted_gene`,
`promoted_cell_type`, `suppressed_gene`, `suppressed_cell_type`, and `label` (free text).
Saving over an earlier export keeps the labels written there, so a user's annotations survive a
re-run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BioLLMError
from ..fileio import atomic_path

FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BioLLMError(f"cannot tell the table format of {path}; use a .csv, .tsv or .parquet "
                          "file name.")
    return fmt


class FeatureTable:
    """A pandas DataFrame with one row per feature, indexed 0..F-1 by `feature`."""

    def __init__(self, df: pd.DataFrame):
        if "feature" not in df.columns:
            raise BioLLMError("a feature table needs a 'feature' column; export it again.")
        df = df.copy()
        if "label" not in df.columns:
            df["label"] = ""
        df["label"] = df["label"].fillna("").astype(str)
        self.df = df.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.df)

    @classmethod
    def build(cls, stats, genes=None, associations=(), lens=None, contexts=None,
              top_genes=None, n_genes: int = 5) -> "FeatureTable":
        """Assemble the table from a `FeatureStatsResult` and optional analyses of it."""
        F = stats.num_features
        cols: dict[str, object] = {
            "feature": np.arange(F),
            "frequency": stats.frequency,
            "mean": stats.mean,
            "mean_firing": stats.mean_firing,
            "max": stats.act_max,
        }
        if top_genes is not None and genes is not None:
            names = top_genes.names(genes)
            cols["top_genes"] = top_genes.summary(genes, n_genes)
            cols["top_gene"] = names[:, 0] if names.shape[1] else [""] * F
        if contexts is not None:
            cols["top_context"] = list(contexts)
        for a in associations:
            cols[f"best_{a.column}"] = a.best_category
            cols[f"auroc_{a.column}"] = a.best_auroc
            cols[f"specificity_{a.column}"] = a.specificity
        if lens is not None:
            cols.update(lens.columns())
        cols["label"] = [""] * F
        return cls(pd.DataFrame(cols))

    def with_labels_from(self, other: "FeatureTable") -> "FeatureTable":
        """Copy non-empty labels of `other` onto the same features here (ours win if set)."""
        theirs = other.df.set_index("feature")["label"]
        theirs = theirs[theirs.astype(str).str.len() > 0]
        df = self.df.copy()
        fill = (df["label"] == "") & df["feature"].isin(theirs.index)
        df.loc[fill, "label"] = theirs.reindex(df.loc[fill, "feature"]).to_numpy()
        return FeatureTable(df)

    def save(self, path: str | os.PathLike, keep_labels: bool = True) -> Path:
        """Write CSV / TSV / Parquet by suffix, atomically; keep labels of an earlier export."""
        path = Path(path)
        fmt = _format(path)
        table = self
        if keep_labels and path.exists():
            try:
                table = self.with_labels_from(FeatureTable.read(path))
            except BioLLMError:
                pass  # not a feature table we can read: it is simply replaced
        with atomic_path(path) as tmp:
            if fmt == "parquet":
                table.df.to_parquet(tmp, index=False)
            else:
                table.df.to_csv(tmp, index=False, sep="," if fmt == "csv" else "\t")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> "FeatureTable":
        path = Path(path)
        fmt = _format(path)
        if not path.exists():
            raise BioLLMError(f"feature table {path} does not exist; check the path.")
        try:
            if fmt == "parquet":
                df = pd.read_parquet(path)
            else:
                df = pd.read_csv(path, sep="," if fmt == "csv" else "\t",
                                 keep_default_na=False, na_values=[""])
        except Exception as e:  # pandas / pyarrow raise many types for a corrupt file
            raise BioLLMError(f"cannot read feature table {path} ({type(e).__name__}); "
                              "export it again.") from None
        return cls(df)

    def to_uns(self) -> dict[str, np.ndarray]:
        """Columns as arrays anndata can write into `uns` (strings as str, numbers as numbers)."""
        out = {}
        for name, col in self.df.items():
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                out[str(name)] = col.to_numpy()
            else:
                out[str(name)] = col.fillna("").astype(str).to_numpy(dtype=object)
        return out

    @classmethod
    def from_uns(cls, columns: dict) -> "FeatureTable":
        return cls(pd.DataFrame({k: np.asarray(v) for k, v in columns.items()}))
