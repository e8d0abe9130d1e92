"""Human-readable labels and context windows for tokens: the gene, the base or the token text."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .chunks import TokenSources

Labeler = Callable[[np.ndarray, np.ndarray], list[str]]


def make_labeler(genes: Sequence[str] | None = None, tokenizer=None) -> Labeler:
    """Label tokens by gene symbol (cells, `unit >= 0`), else by their decoded text."""
    gene_names = np.asarray(list(genes), dtype=object) if genes is not None else None

    def label(token_ids: np.ndarray, units: np.ndarray) -> list[str]:
        out = []
        for tid, unit in zip(token_ids, units):
            if gene_names is not None and 0 <= unit < len(gene_names):
                out.append(str(gene_names[unit]))
            elif tokenizer is not None:
                out.append(tokenizer.decode([int(tid)]).strip() or repr(tokenizer.decode([int(tid)])))
            else:
                out.append(f"#{int(tid)}")
        return out

    return label


def token_contexts(token_ids: np.ndarray, sources: TokenSources, label: Labeler,
                   width: int = 5, merge_units: bool = True) -> list[str]:
    """For each global token index, "left ... [token] ... right" within its own record.

    With `merge_units`, consecutive tokens of the same gene (a symbol split into several BPE
    tokens) show as one word, and `width` counts words.
    """
    n = len(sources)
    out = []
    for i in np.asarray(token_ids, dtype=np.int64):
        if i < 0:
            out.append("")
            continue
        span = max(1, width) * 4 if merge_units else width
        lo, hi = max(0, i - span), min(n, i + span + 1)
        idx = np.arange(lo, hi)
        idx = idx[sources.record[lo:hi] == sources.record[i]]
        units = sources.unit[idx]
        labels = label(sources.token_id[idx], units)
        words: list[tuple[str, bool]] = []
        prev_unit = None
        for j, u, text in zip(idx, units, labels):
            centre = j == i
            if merge_units and u >= 0 and u == prev_unit and words:
                words[-1] = (words[-1][0], words[-1][1] or centre)
            else:
                words.append((text, centre))
            prev_unit = u
        c = next(k for k, (_, is_c) in enumerate(words) if is_c)
        words = words[max(0, c - width): c + width + 1]
        out.append(" ".join(f"[{w}]" if is_c else w for w, is_c in words))
    return out
