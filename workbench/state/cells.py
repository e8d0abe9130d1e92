"""The cells being looked at: data set, embedding, colouring, selection and the clicked cell.

Pure Python with psygnal events; views observe it and never hold state of their own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from psygnal import Signal

from biollm_engine.errors import BioLLMError

from . import colouring as col

UMAP_KEY = "X_umap"
MAX_CATEGORIES = 200  # beyond this a column is an identifier, not a grouping to colour by
_LABEL_DTYPES = ("category", "object", "bool", "string")


class CellsState:
    loaded = Signal()
    embedding_changed = Signal()
    colour_changed = Signal()
    selection_changed = Signal()
    current_changed = Signal()
    values_added = Signal(str)

    def __init__(self) -> None:
        self.adata = None
        self.path: Path | None = None
        self.obsm_key: str | None = None
        self.colour_by: str | None = None
        self.type_key: str | None = None
        self.values: dict = {}  # name -> per-cell float array, or labels (a pd.Categorical)
        self.units: dict[str, str] = {}  # what each of `values` measures
        self.label_colours: dict[str, list[str]] = {}  # `values` that are labels: their colours
        self.selection = np.empty(0, dtype=np.int64)
        self.current: int | None = None
        self.gene_values: dict[str, float] = {}
        """the current cell's value per gene of its sentence (a feature's activation)"""
        self.activation_key: str | None = None  # obsm matrix of feature activations in use
        self._coords: np.ndarray | None = None
        self._reader = None  # the engine's CellDataset, made on the first click
        self._colouring = col.Colouring("none")

    # -- data ---------------------------------------------------------------------------------
    @property
    def n_cells(self) -> int:
        return 0 if self.adata is None else int(self.adata.n_obs)

    def set_data(self, adata, path: str | Path | None = None) -> None:
        old = self.adata
        self.adata, self.path = adata, Path(path) if path else None
        self.values, self.gene_values, self.current = {}, {}, None
        self.units, self.label_colours = {}, {}
        self.activation_key = None
        self.selection = np.empty(0, dtype=np.int64)
        keys = self.embedding_keys()
        self.obsm_key = UMAP_KEY if UMAP_KEY in keys else (keys[0] if keys else None)
        self._coords = self._reader = None
        cats = self.categorical_columns()
        self.type_key = next((c for c in ("cell_type", "celltype", "bulk_labels", "leiden",
                                          "louvain") if c in cats), cats[0] if cats else None)
        self.colour_by = self.type_key
        self._colouring = self._make_colouring()
        if old is not None and old is not adata and getattr(old, "isbacked", False):
            old.file.close()
        self.loaded.emit()

    def embedding_keys(self) -> list[str]:
        """obsm entries usable as a 2-D embedding: exactly 2-D first, then wider (first 2 dims)."""
        if self.adata is None:
            return []
        shapes = {k: np.shape(v) for k, v in self.adata.obsm.items()}
        usable = [k for k, s in shapes.items() if len(s) == 2 and s[1] >= 2]
        return sorted(usable, key=lambda k: (shapes[k][1] != 2, k != UMAP_KEY, k))

    def has_2d_embedding(self) -> bool:
        """Whether obsm holds an embedding made for looking at (exactly two columns); without
        one a UMAP is computed, and the first two columns of a wider one are shown meanwhile."""
        return self.adata is not None and any(
            len(np.shape(v)) == 2 and np.shape(v)[1] == 2 for v in self.adata.obsm.values())

    def set_embedding(self, key: str) -> None:
        if key not in self.embedding_keys():
            raise BioLLMError(f"obsm['{key}'] is not a 2-D embedding of these cells; choose one "
                              f"of {self.embedding_keys() or 'none (compute UMAP first)'}.")
        self.obsm_key, self._coords = key, None
        self.embedding_changed.emit()

    def add_embedding(self, key: str, coords: np.ndarray) -> None:
        self.adata.obsm[key] = np.asarray(coords)
        self.set_embedding(key)

    @property
    def coords(self) -> np.ndarray | None:
        if self._coords is None and self.obsm_key is not None:
            xy = np.asarray(self.adata.obsm[self.obsm_key])[:, :2]
            self._coords = np.ascontiguousarray(xy, dtype=np.float32)
        return self._coords

    # -- colouring ----------------------------------------------------------------------------
    def categorical_columns(self) -> list[str]:
        """obs columns of labels with at most MAX_CATEGORIES distinct values."""
        if self.adata is None:
            return []
        obs = self.adata.obs
        return [str(c) for c in obs.columns if str(obs[c].dtype) in _LABEL_DTYPES
                and obs[c].nunique() <= MAX_CATEGORIES]

    def colour_options(self) -> list[str]:
        """obs columns, then per-cell vectors given with `set_values` (feature activations)."""
        if self.adata is None:
            return []
        return [str(c) for c in self.adata.obs.columns] + [k for k in self.values
                                                           if k not in self.adata.obs.columns]

    def set_colour(self, name: str | None) -> None:
        if name is not None and name not in self.colour_options():
            raise BioLLMError(f"cannot colour by '{name}': it is neither an obs column nor a "
                              "feature vector; choose one from the Data panel.")
        old, self.colour_by = self.colour_by, name
        try:
            self._colouring = self._make_colouring()
        except BioLLMError:
            self.colour_by = old
            raise
        self.colour_changed.emit()

    def set_values(self, array, name: str, unit: str = "") -> None:
        """Colour the cells by a per-cell vector, e.g. a feature's activation (zeros drawn grey);
        `unit`: what the values measure, written beside the colour bar."""
        v = np.asarray(array, dtype=np.float32).ravel()
        if v.shape[0] != self.n_cells:
            raise BioLLMError(f"'{name}' has {v.shape[0]} values but there are {self.n_cells} "
                              "cells; give one value per cell.")
        new = name not in self.values
        self.values[name] = v
        self.units[name] = unit
        self.label_colours.pop(name, None)
        if new:
            self.values_added.emit(name)
        self.set_colour(name)

    def set_labels(self, labels, name: str, categories: list[str], colours: list[str]) -> None:
        """Colour the cells by a per-cell label, e.g. which an evaluation got wrong: `labels` holds
        one of `categories` per cell, or None (drawn grey, beneath); legend in `colours`."""
        import pandas as pd

        v = pd.Categorical(np.asarray(labels, dtype=object).ravel(), categories=categories)
        if len(v) != self.n_cells:
            raise BioLLMError(f"'{name}' has {len(v)} labels but there are {self.n_cells} "
                              "cells; give one label per cell.")
        new = name not in self.values
        self.values[name] = v
        self.units[name] = ""
        self.label_colours[name] = list(colours)
        if new:
            self.values_added.emit(name)
        self.set_colour(name)

    def set_type_key(self, name: str) -> None:
        self.type_key = name
        self.current_changed.emit()

    def colouring(self) -> col.Colouring:
        return self._colouring

    def _make_colouring(self) -> col.Colouring:
        name = self.colour_by
        if self.adata is None or name is None:
            return col.Colouring("none")
        if name in self.label_colours:
            return col.categorical(name, self.values[name], self.label_colours[name])
        if name in self.values:
            return col.continuous(name, self.values[name], zero_is_grey=True,
                                  unit=self.units.get(name, ""))
        s = self.adata.obs[name]
        if str(s.dtype) in _LABEL_DTYPES:
            n = s.nunique()
            if n > MAX_CATEGORIES:
                raise BioLLMError(f"obs['{name}'] has {n:,} distinct values, too many to colour "
                                  f"by (at most {MAX_CATEGORIES}); choose a cell-type or cluster "
                                  "column.")
            return col.categorical(name, s.values, self.adata.uns.get(f"{name}_colors"))
        return col.continuous(name, s.to_numpy(dtype=np.float32, na_value=np.nan))

    # -- selection ----------------------------------------------------------------------------
    def select(self, indices) -> None:
        self.selection = np.unique(np.asarray(indices, dtype=np.int64))
        self.selection_changed.emit()

    def select_rect(self, x0: float, x1: float, y0: float, y1: float) -> None:
        xy = self.coords
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        self.select(np.flatnonzero(inside))

    def select_polygon(self, vertices) -> None:
        from matplotlib.path import Path as MplPath

        verts = np.asarray(vertices, dtype=np.float64)
        if len(verts) < 3:
            self.select([])
            return
        self.select(np.flatnonzero(MplPath(verts).contains_points(self.coords)))

    # -- one cell -----------------------------------------------------------------------------
    def set_current(self, i: int | None) -> None:
        i = None if i is None else int(i)
        if i != self.current:
            self.gene_values = {}  # they were the previous cell's
        self.current = i
        self.current_changed.emit()

    def cell_id(self, i: int) -> str:
        return str(self.adata.obs_names[i])

    def cell_type(self, i: int) -> str:
        if self.type_key is None:
            return ""
        return str(self.adata.obs[self.type_key].iloc[i])

    def sentence(self, i: int) -> list[tuple[str, float]]:
        """The cell's sentence as the model reads it (Cell2Sentence ranking), with expression."""
        from .expression import cell_sentence, sentence_reader

        if self._reader is None:
            self._reader = sentence_reader(self.adata)
        return cell_sentence(self._reader, self.adata, i)

    def top_features(self, cells, n: int = 5) -> list[tuple[int, float]]:
        """The features with the highest mean activation over `cells` (those above zero)."""
        if self.activation_key is None or len(cells) == 0:
            return []
        from .features import rows_mean

        mean = rows_mean(self.adata.obsm[self.activation_key], cells)
        order = np.argsort(-mean, kind="stable")[:n]
        return [(int(j), float(mean[j])) for j in order if mean[j] > 0]

    def summary(self) -> dict:
        a = self.adata
        return {"path": str(self.path or ""), "n_cells": a.n_obs, "n_genes": a.n_vars,
                "obs": [str(c) for c in a.obs.columns], "obsm": list(a.obsm.keys()),
                "matrix": "raw.X" if a.raw is not None else "X"}
