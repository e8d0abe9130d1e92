"""Prompts: the C2S generative prompt (the data set's own) and CellVerse's multiple choice."""

from __future__ import annotations

import string

CHOICE_TEMPLATE = (
    "The following is a list of {num_genes} gene names ordered by descending expression level "
    "in a {organism} cell.\nCell sentence: {cell_sentence}.\n"
    "Which cell type does this cell belong to?\n{options}\nAnswer:")


def letters(n: int) -> list[str]:
    """Option letters A, B, ..., Z, then AA, AB, ... (spreadsheet columns)."""
    out = []
    for i in range(n):
        s, i = "", i + 1
        while i:
            i, r = divmod(i - 1, 26)
            s = string.ascii_uppercase[r] + s
        out.append(s)
    return out


def choice_prompts(dataset, indices, labels: list[str]) -> list[str]:
    """The cell sentence of each cell followed by the lettered candidate types and 'Answer:'."""
    options = "\n".join(f"{c}. {label}" for c, label in zip(letters(len(labels)), labels))
    genes = dataset.genes
    cfg = dataset.cfg
    return [CHOICE_TEMPLATE.format(num_genes=len(ranked), organism=cfg.organism, options=options,
                                   cell_sentence=" ".join(genes[g] for g in ranked))
            for ranked in dataset.ranked(indices)]
