"""`evaluate(lm, dataset, obs_key, cfg)`: how well a model annotates labelled cells' types,
alone and with dictionaries spliced in (CellVerse-style)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import BioLLMError
from ..progress import CancelToken, ProgressCallback, ProgressTracker
from . import metrics
from .config import EvaluateConfig
from .labels import UNMATCHED, match_label
from .predict import generate, option_ids, score_options, spliced
from .prompts import choice_prompts, letters


@dataclass
class EvaluationResult:
    """Per-cell predictions and the metrics computed from them."""

    labels: list[str]
    cell_ids: list[str]
    truth: list[str]
    predictions: list[str]
    answers: list[str]  # raw answers: generated text (c2s) or the chosen option (choice)
    spliced_predictions: list[str] | None = None
    dictionaries: list[str] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return len(self.truth)

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.truth, dtype=object) == np.asarray(self.predictions, dtype=object)

    @property
    def changed(self) -> np.ndarray | None:
        if self.spliced_predictions is None:
            return None
        return (np.asarray(self.predictions, dtype=object)
                != np.asarray(self.spliced_predictions, dtype=object))

    def to_dict(self) -> dict:
        majority, chance = metrics.baselines(self.truth, self.labels)
        out = {
            "n_cells": self.n_cells,
            "accuracy": metrics.accuracy(self.truth, self.predictions),
            "macro_f1": metrics.macro_f1(self.truth, self.predictions),
            "baseline_majority": majority,
            "baseline_chance": chance,
            "unmatched": int(sum(p == UNMATCHED for p in self.predictions)),
            "per_type": metrics.per_type(self.truth, self.predictions, self.labels),
            "confusion": {"labels": list(self.labels),
                          "predicted": list(self.labels) + [UNMATCHED],
                          "matrix": metrics.confusion(self.truth, self.predictions,
                                                      self.labels).tolist()},
        }
        if self.spliced_predictions is not None:
            out.update(
                dictionaries=list(self.dictionaries),
                spliced_accuracy=metrics.accuracy(self.truth, self.spliced_predictions),
                spliced_macro_f1=metrics.macro_f1(self.truth, self.spliced_predictions),
                changed_fraction=float(self.changed.mean()),
                spliced_confusion=metrics.confusion(self.truth, self.spliced_predictions,
                                                    self.labels).tolist())
        return out

    def rows(self) -> list[dict]:
        """One record per cell, for a predictions table."""
        changed = self.changed
        return [{"cell_id": c, "label": t, "prediction": p, "answer": a,
                 "spliced_prediction": None if changed is None else self.spliced_predictions[i],
                 "correct": bool(t == p), "changed": None if changed is None else bool(changed[i])}
                for i, (c, t, p, a) in enumerate(zip(self.cell_ids, self.truth, self.predictions,
                                                     self.answers))]


def label_set(obs, obs_key: str) -> tuple[list[str], np.ndarray]:
    """The labels (category order, else sorted) and each cell's label (None when missing)."""
    if obs_key not in obs.columns:
        raise BioLLMError(f"no obs column {obs_key!r}; the columns are "
                          f"{', '.join(map(str, obs.columns)) or 'none'}.")
    col = obs[obs_key]
    values = np.asarray([None if v is None or (isinstance(v, float) and np.isnan(v))
                         or str(v).strip() == "" else str(v) for v in col], dtype=object)
    present = {v for v in values if v is not None}
    if not present:
        raise BioLLMError(f"obs column {obs_key!r} labels no cells; choose a column of cell "
                          "types.")
    if hasattr(col, "cat"):
        labels = [str(c) for c in col.cat.categories if str(c) in present]
    else:
        labels = sorted(present)
    return labels, values


def select_cells(obs, values: np.ndarray, cfg: EvaluateConfig) -> np.ndarray:
    """Indices of the labelled cells to evaluate, in data-set order."""
    labelled = np.flatnonzero(values != None)  # noqa: E711 (object array)
    if cfg.cells == "heldout":
        key = cfg.split_key or next((c for c in obs.columns
                                     if (obs[c].astype(str) == cfg.split_value).any()), None)
        if key is None or key not in obs.columns:
            raise BioLLMError(f"no obs column marks held-out cells with {cfg.split_value!r}; "
                              "give --split-key and --split-value (or --cells all).")
        held = np.flatnonzero(obs[key].astype(str).to_numpy() == cfg.split_value)
        labelled = np.intersect1d(labelled, held)
    elif cfg.cells != "all":
        n = int(cfg.cells)
        if n < len(labelled):
            rng = np.random.default_rng(cfg.seed)
            labelled = np.sort(rng.choice(labelled, n, replace=False))
    if not len(labelled):
        raise BioLLMError("no labelled cells to evaluate; check --obs-key and --cells.")
    return labelled


def check_dictionaries(lm, dictionaries) -> None:
    from ..training.evaluate import check_widths

    for d in dictionaries:
        if d.cfg.kind == "crosscoder":
            raise BioLLMError("a crosscoder reads later layers than it writes, so it cannot be "
                              "spliced into generation; evaluate SAEs or transcoders.")
        if not d.cfg.hookpoint:
            raise BioLLMError("a dictionary does not record its hookpoint; it cannot be spliced.")
        check_widths(lm, d)


def evaluate(lm, dataset, obs_key: str, cfg: EvaluateConfig | None = None, dictionaries=None,
             progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> EvaluationResult:
    """Predict the cell type of every selected labelled cell (and again with `dictionaries`
    spliced in); metrics come from `EvaluationResult.to_dict()`."""
    cfg = cfg or EvaluateConfig()
    dictionaries = list(dictionaries or [])
    if not lm.is_causal:
        raise BioLLMError(f"{lm.name} is not a causal language model; evaluate needs one that "
                          "generates or scores answers.")
    if getattr(dataset, "kind", None) != "cells":
        raise BioLLMError("evaluate needs cells (an .h5ad file with cell-type labels).")
    check_dictionaries(lm, dictionaries)
    labels, values = label_set(dataset.obs, obs_key)
    cells = select_cells(dataset.obs, values, cfg)
    passes = [None] + ([dictionaries] if dictionaries else [])
    tracker = ProgressTracker("evaluate", len(cells) * len(passes), progress, cancel)
    options = letters(len(labels)) if cfg.choice_scoring == "letter" else labels
    opt_ids = option_ids(lm.tokenizer, options) if cfg.format == "choice" else None
    results = [([], []) for _ in passes]
    for s in range(0, len(cells), cfg.batch_size):
        batch = cells[s:s + cfg.batch_size]
        prompts = _prompts(lm, dataset, batch, labels, cfg)
        for (preds, answers), dicts in zip(results, passes):
            with spliced(lm, dicts):
                if cfg.format == "c2s":
                    got = generate(lm, prompts, cfg.max_new_tokens)
                    answers += got
                    preds += [match_label(a, labels) for a in got]
                else:
                    best = score_options(lm, prompts, opt_ids, cfg.batch_size).argmax(1).tolist()
                    answers += [options[b] for b in best]
                    preds += [labels[b] for b in best]
            tracker.update(steps=len(batch), tokens=sum(map(len, prompts)))
    (preds, answers), spliced_preds = results[0], (results[1][0] if dictionaries else None)
    ids = dataset.cell_ids
    return EvaluationResult(labels=labels, cell_ids=[ids[i] for i in cells],
                            truth=[values[i] for i in cells], predictions=preds, answers=answers,
                            spliced_predictions=spliced_preds,
                            dictionaries=[d.cfg.hookpoint for d in dictionaries])


def _prompts(lm, dataset, batch, labels, cfg) -> list[list[int]]:
    if cfg.format == "c2s":  # the data set's own prompt, tokenized as harvest and training do
        return [ex.input_ids.tolist() for ex in dataset.examples(lm.tokenizer, indices=batch)]
    return [lm.tokenizer(p)["input_ids"] for p in choice_prompts(dataset, batch, labels)]
