"""Matching a model's free-text answer to a data set's cell-type labels."""

from __future__ import annotations

import re

UNMATCHED = "unmatched"
_PUNCT = re.compile(r"[^\w+]+")  # keep '+': CD4+ and CD4 are different cell types


def normalize(text: str) -> str:
    """Lower case, punctuation other than '+' as spaces, runs of spaces as one."""
    return " ".join(_PUNCT.sub(" ", str(text).lower().replace("_", " ")).split())


def match_label(answer: str, labels: list[str]) -> str:
    """The label an answer names: the exact normalised match; else the longest label whose
    normalised form starts or is contained in the answer (word-aligned); else UNMATCHED."""
    ans = normalize(answer)
    if not ans:
        return UNMATCHED
    norm = {label: normalize(label) for label in labels}
    for label, n in norm.items():
        if n == ans:
            return label
    padded = f" {ans} "
    found = [label for label, n in norm.items() if n and f" {n} " in padded]
    return max(found, key=lambda label: len(norm[label])) if found else UNMATCHED
