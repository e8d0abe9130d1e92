"""AnnData `.h5ad` → cell sentences and prompts, the way Cell2Sentence (C2S) builds them.

A cell sentence is the cell's expressed genes (value > 0) ranked by descending expression, gene
symbols upper-cased, truncated to the top K. C2S breaks ties by shuffling each cell's genes and
then stable-sorting (`cell2sentence.utils.generate_sentences`); we do the same shuffle-then-stable-
sort, but seed each cell's shuffle with (seed, cell index) instead of drawing one stream over all
cells, so a cell's sentence is the same whether it is read alone, in a batch or from disk.
Files larger than a fraction of memory are read backed (rows in chunks, never the whole matrix).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import BioLLMError
from .base import TokenizedExample, spans_to_units, tokenize_with_offsets

TEMPLATES = {
    "cell_type_prediction": (
        "The following is a list of {num_genes} gene names ordered by descending expression level "
        "in a {organism} cell. Your task is to give the cell type which this cell belongs to based "
        "on its gene expression.\nCell sentence: {cell_sentence}.\n"
        "The cell type corresponding to these genes is:"),
    "sentence": "{cell_sentence}",
}
SYMBOL_COLUMNS = ("gene_symbols", "feature_name", "gene_name", "gene_symbol", "symbol")
BACKED_MEMORY_FRACTION = 0.25  # h5ad matrices often expand several-fold once decompressed
CHUNK_CELLS = 256
_TIE_BITS, _SORT_ROWS = 25, 256  # 8 row bits + 31 value bits + 25 tie bits = one uint64 key
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


@dataclass
class CellSentenceConfig:
    layer: str | None = field(default=None, metadata={
        "help": "matrix to rank genes by: unset for X (or raw when X is scaled), 'X' for X only, "
                "'raw' for adata.raw, or a layer name"})
    top_k: int = field(default=200, metadata={
        "help": "genes per cell sentence (top K by expression)"})
    organism: str = field(default="Homo sapiens", metadata={"help": "organism named in the prompt"})
    template: str = field(default="cell_type_prediction", metadata={
        "help": "prompt: a named template (cell_type_prediction, sentence) or your own text "
                "containing {cell_sentence} (and optionally {num_genes}, {organism})"})
    gene_symbol_column: str | None = field(default=None, metadata={
        "help": "var column holding gene symbols; unset: auto (gene_symbols, feature_name, "
                "gene_name, symbol) when var_names are Ensembl ids"})
    seed: int = field(default=1234, metadata={
        "help": "seed of the shuffle that breaks expression ties"})
    backed: Literal["auto", "yes", "no"] = field(default="auto", metadata={
        "help": "read the matrix from disk in chunks: auto (when the file is large), yes, no"})

    def __post_init__(self):
        if self.backed is True or self.backed is False:
            self.backed = "yes" if self.backed else "no"
        if self.backed not in ("auto", "yes", "no"):
            raise BioLLMError(f"backed must be auto, yes or no, not {self.backed!r}.")
        if int(self.top_k) < 1:
            raise BioLLMError(f"top_k must be at least 1, not {self.top_k}.")


def detect_matrix_kind(values: np.ndarray) -> str:
    """'scaled' (negative values), 'counts' (non-negative integers), 'log-normalized' (max < 20,
    i.e. below log1p of 1e8), else 'normalized'."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "counts"
    if values.min() < 0:
        return "scaled"
    if np.all(values == np.round(values)):
        return "counts"
    return "log-normalized" if values.max() < 20 else "normalized"


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, well-spread hash of uint64 values."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def tie_keys(seed: int, cells: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """Random 25-bit sort keys for (cell, gene) pairs: stable-sorting a cell's genes by them is
    a seeded shuffle (equal keys, about 1 pair in 10^4 tied genes, keep column order)."""
    with np.errstate(over="ignore"):
        s = _mix64(np.asarray([seed], dtype=np.uint64))
        c = _mix64(s ^ np.asarray(cells, dtype=np.uint64))
        return _mix64(c ^ np.asarray(genes, dtype=np.uint64)) >> np.uint64(64 - _TIE_BITS)


def rank_genes(X: sp.csr_matrix, cells: np.ndarray, seed: int, top_k: int) -> list[np.ndarray]:
    """Column indices of each row's values > 0, by descending value, ties by seeded shuffle."""
    out: list[np.ndarray] = []
    for r0 in range(0, X.shape[0], _SORT_ROWS):
        part = X[r0:r0 + _SORT_ROWS]
        n = part.shape[0]
        data, cols = part.data, part.indices
        row = np.repeat(np.arange(n), np.diff(part.indptr))
        pos = data > 0
        data, cols, row = data[pos].astype(np.float32), cols[pos], row[pos]
        # One 64-bit key per entry, sorted once (4x faster than a 3-key lexsort): row (8 bits),
        # descending value (the bits of a positive float32 order like the float, 31 bits), tie.
        desc = (np.uint32(0x7FFFFFFF) - data.view(np.uint32)).astype(np.uint64)
        key = ((row.astype(np.uint64) << np.uint64(31 + _TIE_BITS)) | (desc << np.uint64(_TIE_BITS))
               | tie_keys(seed, cells[r0 + row], cols))
        order = np.argsort(key, kind="stable")
        cols, row = cols[order], row[order]
        bounds = np.searchsorted(row, np.arange(n + 1))
        # copies, so that a kept sentence does not pin the whole block's sorted columns
        out += [cols[a:min(b, a + top_k)].copy() for a, b in zip(bounds[:-1], bounds[1:])]
    return out


def _available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 8 << 30


class _AnnDataStore:
    """An AnnData object in memory (or opened backed by anndata itself)."""

    def __init__(self, adata, backed: bool = False):
        self.adata = adata
        self.backed = backed
        self.obs = adata.obs
        self.layers = list(adata.layers.keys())
        self.has_raw = adata.raw is not None
        self.obsm_keys = list(adata.obsm.keys())

    def var(self, which: str | None) -> pd.DataFrame:
        return self.adata.raw.var if which == "raw" else self.adata.var

    def matrix(self, which: str | None):
        if which == "raw":
            return self.adata.raw.X
        return self.adata.X if which is None else self.adata.layers[which]

    def obsm(self, key: str) -> np.ndarray:
        return np.asarray(self.adata.obsm[key])

    def close(self):
        pass


class _H5Store:
    """An .h5ad file read lazily with h5py: obs / var in memory, matrix rows on demand."""

    def __init__(self, path: Path):
        import h5py
        from anndata.io import read_elem

        self._read_elem = read_elem
        self.backed = True
        self.f = h5py.File(path, "r")
        if "obs" not in self.f or "var" not in self.f:
            self.f.close()
            raise BioLLMError(f"{path} is HDF5 but not an AnnData .h5ad file (no obs / var); "
                              "write it with anndata's write_h5ad.")
        self.obs = read_elem(self.f["obs"])
        self.layers = list(self.f["layers"].keys()) if "layers" in self.f else []
        self.has_raw = "raw" in self.f and "X" in self.f["raw"]
        self.obsm_keys = list(self.f["obsm"].keys()) if "obsm" in self.f else []

    def var(self, which: str | None) -> pd.DataFrame:
        return self._read_elem(self.f["raw/var" if which == "raw" else "var"])

    def matrix(self, which: str | None):
        import h5py
        from anndata.io import sparse_dataset

        elem = self.f["raw/X" if which == "raw" else "X" if which is None else f"layers/{which}"]
        if isinstance(elem, h5py.Dataset):
            return elem
        enc = elem.attrs.get("encoding-type", "")
        if enc == "csc_matrix":
            raise BioLLMError("the matrix is stored by genes (CSC), which cannot be read cell by "
                              "cell from disk; open it with backed=no or re-save it as CSR.")
        if enc != "csr_matrix":
            raise BioLLMError(f"the matrix is stored as {enc or 'an unknown encoding'}, not a "
                              "dense or CSR matrix; re-save the file with a recent anndata.")
        return sparse_dataset(elem)

    def obsm(self, key: str) -> np.ndarray:
        return np.asarray(self._read_elem(self.f[f"obsm/{key}"]))

    def close(self):
        self.f.close()


def _read_rows(matrix, rows: np.ndarray) -> sp.csr_matrix:
    """Rows (sorted, unique) of a dense / sparse / on-disk matrix, as CSR."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        part = matrix[int(rows[0]):int(rows[-1]) + 1]
    else:
        part = matrix[rows]
    if sp.issparse(part):
        return sp.csr_matrix(part)
    return sp.csr_matrix(np.asarray(part))


class CellDataset:
    """Cells of an AnnData file or object, as C2S cell sentences and prompts (a DataSource)."""

    kind = "cells"

    def __init__(self, path_or_adata, cfg: CellSentenceConfig | None = None):
        self.cfg = cfg = cfg or CellSentenceConfig()
        self.path = None
        self._template = TEMPLATES.get(cfg.template, cfg.template)
        self._prefix, self._suffix = self._split_template()
        self._store = self._open(path_or_adata)
        try:
            self._choose_matrix()
            self.genes = self._gene_symbols()
        except BaseException:
            self._store.close()
            raise
        self._gene_array = np.asarray(self.genes, dtype=object)
        self._gene_len = np.asarray([len(g) for g in self.genes], dtype=np.int64)

    # -- opening -------------------------------------------------------------------------------
    def _split_template(self) -> tuple[str, str]:
        t = self._template
        if "{cell_sentence}" not in t:
            raise BioLLMError(f"template {self.cfg.template!r} is neither a named template "
                              f"({', '.join(TEMPLATES)}) nor text containing {{cell_sentence}}.")
        try:
            full = t.format(num_genes=self.cfg.top_k, organism=self.cfg.organism,
                            cell_sentence="\x00")
        except (KeyError, IndexError, ValueError) as e:
            raise BioLLMError(f"template has an unknown or malformed field ({e}); use only "
                              "{num_genes}, {organism} and {cell_sentence}.") from None
        parts = full.split("\x00")
        if len(parts) != 2:
            raise BioLLMError("template must contain {cell_sentence} exactly once.")
        return parts[0], parts[1]

    def _open(self, src):
        import anndata as ad

        if isinstance(src, ad.AnnData):
            return _AnnDataStore(src, backed=bool(src.isbacked))
        path = self.path = Path(src)
        if not path.is_file():
            raise BioLLMError(f"{path} does not exist; check the path.")
        if path.stat().st_size == 0:
            raise BioLLMError(f"{path} is empty; re-export the .h5ad file.")
        backed = self.cfg.backed == "yes" or (
            self.cfg.backed == "auto"
            and path.stat().st_size > BACKED_MEMORY_FRACTION * _available_memory())
        try:
            if backed:
                return _H5Store(path)
            return _AnnDataStore(ad.read_h5ad(path))
        except BioLLMError:
            raise
        except Exception as e:  # h5py / anndata raise many types for a bad file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BioLLMError(f"{path} is not a readable .h5ad file ({first}); check that it was "
                              "written by anndata and copied completely.") from None

    def _sample_values(self, matrix, n: int) -> np.ndarray:
        rows = np.unique(np.linspace(0, n - 1, min(n, 256)).astype(np.int64))
        X = _read_rows(matrix, rows)
        return X.data

    def _choose_matrix(self):
        store, layer = self._store, self.cfg.layer
        self.n_cells = len(store.obs)
        if self.n_cells == 0:
            raise BioLLMError("the data set has no cells.")
        if layer == "raw" and not store.has_raw:
            raise BioLLMError("layer 'raw' was asked for but the file has no .raw; "
                              f"use X (no layer) or one of the layers {store.layers}.")
        if layer not in (None, "X", "raw") and layer not in store.layers:
            raise BioLLMError(f"no layer {layer!r}; layers are {store.layers or 'none'} "
                              f"{'(and raw)' if store.has_raw else ''}; leave layer unset for X.")
        which, note = (None if layer == "X" else layer), ""
        kind = detect_matrix_kind(self._sample_values(store.matrix(which), self.n_cells))
        if kind == "scaled":
            name = "X" if which is None else which
            if layer is None and store.has_raw:
                raw = store.matrix("raw")
                raw_kind = detect_matrix_kind(self._sample_values(raw, self.n_cells))
                if raw_kind != "scaled":
                    which, kind = "raw", raw_kind
                    note = "X is scaled (negative values), so raw was used"
            if kind == "scaled":
                raise BioLLMError(f"{name} holds scaled data (negative values), so ranking genes "
                                  "by expression is not meaningful; choose a counts or "
                                  "log-normalized "
                                  f"matrix with layer (layers: {store.layers or 'none'}"
                                  f"{', raw' if store.has_raw else ''}).")
        self.matrix_name = "X" if which is None else which
        self.matrix_kind = kind
        self._which, self._note = which, note
        self._matrix = store.matrix(which)
        if self._matrix.shape[0] != self.n_cells:
            raise BioLLMError(f"{self.matrix_name} has {self._matrix.shape[0]} rows but obs has "
                              f"{self.n_cells} cells; the file is inconsistent.")

    def _gene_symbols(self) -> list[str]:
        var = self._store.var(self._which)
        names = pd.Index(var.index.astype(str))
        col = self.cfg.gene_symbol_column
        if col is None:
            looks_ensembl = np.mean([bool(_ENSEMBL.match(n)) for n in names[:1000]]) > 0.5
            if not looks_ensembl:
                return [n.upper() for n in names]
            col = next((c for c in SYMBOL_COLUMNS if c in var.columns
                        or (self._which == "raw" and c in self._store.var(None).columns)), None)
            if col is None:
                raise BioLLMError(
                    f"gene names of {self.matrix_name} are Ensembl ids (e.g. {names[0]}) and no "
                    f"gene symbol column was found (var columns: {list(var.columns) or 'none'}); "
                    "pass gene_symbol_column=<column> (--gene-symbol-column).")
        if col in var.columns:
            symbols = var[col]
        elif self._which == "raw" and col in self._store.var(None).columns:
            symbols = self._store.var(None)[col].reindex(var.index)
        else:
            raise BioLLMError(f"gene_symbol_column {col!r} is not a var column; columns are "
                              f"{list(var.columns) or 'none'}.")
        symbols = symbols.astype(object).where(symbols.notna(), None)
        return [(str(s) if s not in (None, "") else n).upper() for s, n in zip(symbols, names)]

    # -- the DataSource protocol ---------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_cells

    @property
    def units(self) -> list[str]:
        return self.genes

    @property
    def obs(self) -> pd.DataFrame:
        return self._store.obs

    @property
    def cell_ids(self) -> list[str]:
        return [str(c) for c in self._store.obs.index]

    @property
    def obsm_keys(self) -> list[str]:
        return list(self._store.obsm_keys)

    def obsm(self, key: str) -> np.ndarray:
        if key not in self._store.obsm_keys:
            raise BioLLMError(f"no obsm {key!r}; available: {self._store.obsm_keys or 'none'}.")
        return self._store.obsm(key)

    def describe(self) -> str:
        where = "read from disk in chunks" if self._store.backed else "read in memory"
        note = f"; {self._note}" if self._note else ""
        template = self.cfg.template if self.cfg.template in TEMPLATES else "custom"
        return (f"{self.n_cells} cells × {len(self.genes)} genes from {self.matrix_name} "
                f"({self.matrix_kind}{note}), top {self.cfg.top_k} genes, {template} prompt, "
                f"{where}")

    def close(self):
        self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- sentences -----------------------------------------------------------------------------
    def _check(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_cells):
            bad = idx[(idx < 0) | (idx >= self.n_cells)][0]
            raise BioLLMError(f"cell index {bad} is out of range: there are {self.n_cells} cells.")
        return idx

    def ranked(self, indices: Sequence[int]) -> list[np.ndarray]:
        """For each cell in `indices` (in that order), its sentence as gene indices into `genes`."""
        idx = self._check(indices)
        rows = np.unique(idx)
        ranked: list[np.ndarray] = []
        for s in range(0, len(rows), CHUNK_CELLS):  # bounded reads, also when backed
            block = rows[s:s + CHUNK_CELLS]
            X = _read_rows(self._matrix, block)
            if X.data.size and np.nanmin(X.data) < 0:
                raise BioLLMError(f"{self.matrix_name} has negative values in cells "
                                  f"{block[0]}..{block[-1]}: it is scaled; choose a counts or "
                                  "log-normalized matrix with layer.")
            ranked += rank_genes(X, block, self.cfg.seed, self.cfg.top_k)
        where = np.searchsorted(rows, idx)
        return [ranked[w] for w in where]

    def sentence(self, i: int) -> list[str]:
        return self._gene_array[self.ranked([i])[0]].tolist()

    def _prompt_of(self, genes: np.ndarray) -> str:
        return self._prefix + " ".join(self._gene_array[genes]) + self._suffix

    def prompt(self, i: int) -> str:
        """The template filled with this cell's sentence. Like C2S, {num_genes} is top_k."""
        return self._prompt_of(self.ranked([i])[0])

    def examples(self, tokenizer, indices: Sequence[int] | None = None, genes_only: bool = False,
                 max_length: int | None = None) -> Iterator[TokenizedExample]:
        """Tokenized prompts in the order of `indices` (all cells by default); each token carries
        the gene whose symbol it overlaps (unit) and that gene's rank in the sentence."""
        idx = np.arange(self.n_cells) if indices is None else self._check(indices)
        for start in range(0, len(idx), CHUNK_CELLS):
            chunk = idx[start:start + CHUNK_CELLS]
            ranked = self.ranked(chunk)
            prompts = [self._prompt_of(g) for g in ranked]
            encoded = tokenize_with_offsets(tokenizer, prompts, max_length)
            for cell, genes, text, (ids, offsets, special) in zip(chunk, ranked, prompts, encoded):
                lengths = self._gene_len[genes]
                starts = len(self._prefix) + np.cumsum(lengths + 1) - (lengths + 1)
                rank = spans_to_units(offsets, starts, starts + lengths)
                rank[special] = -1
                unit = np.where(rank >= 0, genes[np.maximum(rank, 0)] if len(genes) else -1, -1)
                keep = ~special & (rank >= 0) if genes_only else ~special
                yield TokenizedExample(record=int(cell), input_ids=ids, keep=keep,
                                       unit=unit.astype(np.int32), text=text, rank=rank)
