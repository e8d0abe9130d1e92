"""Annotation metrics from label / prediction lists: accuracy, macro-F1, per type, confusion."""

from __future__ import annotations

import numpy as np

from .labels import UNMATCHED


def accuracy(truth: list[str], pred: list[str]) -> float:
    return float(np.mean(np.asarray(truth, dtype=object) == np.asarray(pred, dtype=object)))


def macro_f1(truth: list[str], pred: list[str]) -> float:
    """Mean F1 over every class that is a label or a prediction (scikit-learn's
    f1_score(average="macro"), with 0 for a class never predicted)."""
    t, p = np.asarray(truth, dtype=object), np.asarray(pred, dtype=object)
    f1 = []
    for c in sorted(set(truth) | set(pred)):
        tp = np.sum((t == c) & (p == c))
        denom = np.sum(t == c) + np.sum(p == c)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def per_type(truth: list[str], pred: list[str], labels: list[str]) -> dict[str, dict]:
    """Per label with cells: n, correct and accuracy (recall)."""
    t, p = np.asarray(truth, dtype=object), np.asarray(pred, dtype=object)
    out = {}
    for label in labels:
        n = int(np.sum(t == label))
        if n:
            correct = int(np.sum((t == label) & (p == label)))
            out[label] = {"n": n, "correct": correct, "accuracy": correct / n}
    return out


def confusion(truth: list[str], pred: list[str], labels: list[str]) -> np.ndarray:
    """Counts [labels, labels + unmatched]: rows the true label, columns the prediction."""
    cols = {c: j for j, c in enumerate(list(labels) + [UNMATCHED])}
    rows = {c: i for i, c in enumerate(labels)}
    m = np.zeros((len(labels), len(cols)), dtype=np.int64)
    for a, b in zip(truth, pred):
        m[rows[a], cols[b]] += 1
    return m


def baselines(truth: list[str], labels: list[str]) -> tuple[float, float]:
    """(majority, chance): the share of the most frequent label, and 1 / number of labels."""
    values, counts = np.unique(np.asarray(truth, dtype=object), return_counts=True)
    return float(counts.max() / counts.sum()), 1.0 / len(labels)
