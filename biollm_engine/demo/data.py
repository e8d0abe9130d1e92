"""The demo's data: scanpy's pbmc68k_reduced, a fixed held-out split, and training sequences.

pbmc68k_reduced ships inside scanpy (no download): 700 PBMC cells from 10x Genomics' 68k PBMC
data set, 765 highly variable genes, `bulk_labels` cell types assigned by correlation with
FACS-sorted bulk profiles (Zheng et al. 2017). Its `X` is scaled (negative values); `raw` holds
the log-normalized expression that cell sentences rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # anndata and pandas load only when cells are read, not for `biollm --help`
    from ..inputs.cells import CellDataset

LABEL_COLUMN = "bulk_labels"
SPLIT_COLUMN = "demo_split"


def load_pbmc():
    """pbmc68k_reduced as shipped with scanpy (read from the package, never downloaded)."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


def stratified_split(labels, heldout_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out cells: `heldout_fraction` of each label, at least one per label
    with two or more cells, chosen by a seeded permutation."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    heldout = np.zeros(len(labels), dtype=bool)
    for label in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == label)
        n = int(round(heldout_fraction * len(idx)))
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        heldout[rng.permutation(idx)[:n]] = True
    return heldout


@dataclass
class Sequences:
    """Token sequences `prompt + answer + eos`, right-padded, for every cell."""

    input_ids: "np.ndarray"  # int64 [N, T]
    lengths: np.ndarray  # int64 [N]: real tokens per row
    answer_pos: np.ndarray  # int64 [N]: position of the answer (cell-type) token
    label: np.ndarray  # int64 [N]: index into `labels`


def cell_dataset(adata_or_path, top_k: int) -> CellDataset:
    """The cells as the engine reads them by default (X is scaled, so raw is used; the default
    tie-breaking seed), so that features, circuits and the workbench see the training prompts."""
    from ..inputs.cells import CellDataset, CellSentenceConfig

    return CellDataset(adata_or_path, CellSentenceConfig(top_k=top_k))


def build_sequences(dataset: CellDataset, tokenizer, label_ids: list[int], labels) -> Sequences:
    """Each cell's tokenized C2S prompt followed by its cell-type token and end-of-sequence."""
    rows = [np.concatenate([ex.input_ids, [label_ids[labels[ex.record]], tokenizer.eos_token_id]])
            for ex in dataset.examples(tokenizer)]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.full((len(rows), lengths.max()), tokenizer.pad_token_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return Sequences(ids, lengths, lengths - 2, np.asarray(labels, dtype=np.int64))
