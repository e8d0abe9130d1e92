"""The logit lens of a feature: what its decoder direction pushes the model to say.

score[f, v] = W_U[v] · (g ⊙ W_dec[f]), where g is the final norm's scale (LayerNorm / RMSNorm
weight; 1 + weight for Gemma's RMSNorm) and W_U the unembedding: the direct effect of the feature
on the next-token logits, ignoring the norm's data-dependent denominator. Tokens are then
aggregated to genes and cell-type words of the data set: a token maps to a gene when its text
(stripped, upper-cased) is a gene symbol, and to a cell type when it is a whole category name or
a word (3+ characters, not "cell"/"cells") found in exactly one category. A gene's or cell type's
score is the max over the tokens that map to it when it is promoted, the min when suppressed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import BioLLMError

_GENERIC = {"cell", "cells", "type", "and", "the", "positive", "negative"}


def unembedding(lm):
    """(W_U [V, d] float32 tensor, final-norm scale [d] or None) of a causal model."""
    import torch

    if not lm.arch.unembed:
        raise BioLLMError(f"{lm.name} has no unembedding (an encoder); the logit lens needs a "
                          "causal language model.")
    W_U = lm.module(lm.arch.unembed).weight.detach().float()
    g = None
    if lm.arch.final_norm:
        norm = lm.module(lm.arch.final_norm)
        w = getattr(norm, "weight", None)
        w = getattr(norm, "scale", None) if w is None else w  # Evo 2's RMSNorm
        if w is not None:
            g = w.detach().float()
            if type(norm).__name__.startswith("Gemma"):  # Gemma RMSNorm scales by (1 + weight)
                g = 1.0 + g
    return W_U, (g if g is not None else torch.ones(W_U.shape[1]))


def vocab_map(tokenizer, names: Sequence[str], words: bool = False) -> np.ndarray:
    """For each token id, the index of the name it is (or a distinctive word of), else -1."""
    vocab = len(tokenizer)
    texts = [t.strip().upper() for t in tokenizer.batch_decode([[i] for i in range(vocab)])]
    lookup: dict[str, int] = {}
    for i, name in enumerate(names):
        lookup.setdefault(str(name).strip().upper(), i)
    if words:
        seen: dict[str, set[int]] = {}
        for i, name in enumerate(names):
            for w in re.findall(r"[A-Za-z0-9+\-]+", str(name)):
                if len(w) >= 3 and w.lower() not in _GENERIC:
                    seen.setdefault(w.upper(), set()).add(i)
        for w, cats in seen.items():
            if len(cats) == 1:
                lookup.setdefault(w, next(iter(cats)))
    out = np.full(vocab, -1, np.int64)
    for t, text in enumerate(texts):
        if text:
            out[t] = lookup.get(text, -1)
    return out


@dataclass
class LensResult:
    promoted_ids: np.ndarray      # [F, n] token ids, highest score first
    promoted_scores: np.ndarray
    suppressed_ids: np.ndarray    # [F, n] lowest score first
    suppressed_scores: np.ndarray
    token_text: list[str]         # the decoded text of each token id
    gene: np.ndarray | None = None          # [F] best promoted gene index (-1: none)
    gene_score: np.ndarray | None = None
    gene_names: Sequence[str] | None = None
    cell_type: np.ndarray | None = None     # [F] best promoted cell-type index (-1: none)
    cell_type_score: np.ndarray | None = None
    cell_type_names: Sequence[str] | None = None
    suppressed_gene: np.ndarray | None = None       # [F] most suppressed gene index (-1: none)
    suppressed_gene_score: np.ndarray | None = None
    suppressed_cell_type: np.ndarray | None = None  # [F] most suppressed cell-type index
    suppressed_cell_type_score: np.ndarray | None = None

    def columns(self, n: int = 5) -> dict[str, list]:
        """Feature-table columns: promoted, suppressed, promoted_gene, promoted_cell_type,
        suppressed_gene, suppressed_cell_type."""
        def fmt(ids):
            return [" ".join(repr(self.token_text[t]) for t in row[:n]) for row in ids]

        cols: dict[str, list] = {"promoted": fmt(self.promoted_ids),
                                 "suppressed": fmt(self.suppressed_ids)}
        for name, idx, names in [
                ("promoted_gene", self.gene, self.gene_names),
                ("promoted_cell_type", self.cell_type, self.cell_type_names),
                ("suppressed_gene", self.suppressed_gene, self.gene_names),
                ("suppressed_cell_type", self.suppressed_cell_type, self.cell_type_names)]:
            if idx is not None:
                cols[name] = [str(names[i]) if i >= 0 else "" for i in idx]
        return cols


def _best_by_group(scores, mapping: np.ndarray, num_groups: int, lowest: bool = False):
    """Max score over the tokens of each group, then the best group per feature; with
    `lowest`, the min over its tokens and the lowest group (the most suppressed). -1 where that
    score does not raise (or lower) the logit at all: the only gene a vocabulary spells is not
    'suppressed' by a feature that raises it."""
    import torch

    tokens = np.flatnonzero(mapping >= 0)
    if len(tokens) == 0 or num_groups == 0:
        F = scores.shape[0]
        return np.full(F, -1, np.int64), np.full(F, np.nan)
    sub = scores[:, torch.as_tensor(tokens)]
    groups = torch.as_tensor(mapping[tokens]).expand_as(sub)
    per = torch.full((scores.shape[0], num_groups), torch.inf if lowest else -torch.inf)
    per = per.scatter_reduce(1, groups, sub, reduce="amin" if lowest else "amax")
    best_score, best = per.min(dim=1) if lowest else per.max(dim=1)
    best = torch.where(best_score < 0 if lowest else best_score > 0, best, -1)
    return best.numpy().astype(np.int64), best_score.numpy().astype(np.float64)


def logit_lens(W_dec, W_U, norm_scale=None, top_n: int = 10, tokenizer=None,
               genes: Sequence[str] | None = None, cell_types: Sequence[str] | None = None,
               batch_features: int = 1024) -> LensResult:
    """Top promoted / suppressed tokens of every feature, and its best gene and cell type."""
    import torch

    W_dec = torch.as_tensor(W_dec).detach().float().cpu()
    W_U = torch.as_tensor(W_U).detach().float().cpu()
    if W_dec.shape[-1] != W_U.shape[1]:
        raise BioLLMError(f"decoder width {W_dec.shape[-1]} does not match the model's "
                          f"{W_U.shape[1]}; use a dictionary trained on this model.")
    if W_dec.ndim == 3:  # a crosscoder: read the decoder into its last source
        W_dec = W_dec[:, -1]
    if norm_scale is not None:
        W_dec = W_dec * torch.as_tensor(norm_scale).float().cpu()
    V = W_U.shape[0]
    n = min(top_n, V)
    gene_map = vocab_map(tokenizer, genes) if tokenizer is not None and genes else None
    cell_map = vocab_map(tokenizer, cell_types, words=True) \
        if tokenizer is not None and cell_types else None
    if gene_map is not None:
        gene_map = gene_map[:V]
    if cell_map is not None:
        cell_map = cell_map[:V]
    parts: dict[str, list] = {k: [] for k in ("pi", "ps", "si", "ss", "g", "gs", "c", "cs",
                                              "sg", "sgs", "sc", "scs")}
    for start in range(0, W_dec.shape[0], batch_features):
        scores = W_dec[start:start + batch_features] @ W_U.T
        top = scores.topk(n, dim=1)
        low = scores.topk(n, dim=1, largest=False)
        parts["pi"].append(top.indices.numpy())
        parts["ps"].append(top.values.numpy())
        parts["si"].append(low.indices.numpy())
        parts["ss"].append(low.values.numpy())
        for mapping, names, key in ((gene_map, genes, "g"), (cell_map, cell_types, "c")):
            if mapping is not None:
                for lowest, k in ((False, key), (True, "s" + key)):
                    best, score = _best_by_group(scores, mapping, len(names), lowest)
                    parts[k].append(best)
                    parts[k + "s"].append(score)
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    if tokenizer is not None:
        text = tokenizer.batch_decode([[i] for i in range(V)])
    else:
        text = [f"#{i}" for i in range(V)]
    return LensResult(cat["pi"], cat["ps"], cat["si"], cat["ss"], text,
                      cat["g"], cat["gs"], list(genes) if genes else None,
                      cat["c"], cat["cs"], list(cell_types) if cell_types else None,
                      cat["sg"], cat["sgs"], cat["sc"], cat["scs"])


def feature_logit_lens(lm, dictionary, top_n: int = 10, genes=None, cell_types=None) -> LensResult:
    """`logit_lens` of a dictionary's decoder through a loaded model's final norm and unembedding."""
    W_U, g = unembedding(lm)
    return logit_lens(dictionary.W_dec, W_U, g, top_n, lm.tokenizer, genes, cell_types)
