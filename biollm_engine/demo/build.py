"""`biollm demo build`: make the embedded demo workspace from scanpy's PBMC data.

The workspace folder holds `model/` (tokenizer + GPTNeoX, save_pretrained), `dictionaries/`
(a transcoder per MLP layer and a TopK SAE on one residual layer, trained by the project's own
trainer on the training cells only), `cells.h5ad` (pbmc68k_reduced with the train / held-out
split in obs), `cache/features/` (the SAE's feature analysis, keyed by a content hash),
`demo.json` (what was measured) and `workspace.json` (what the workbench opens). Each part is
one function (`build_cells`, `build_model`, `build_dictionaries`, `build_analysis`) on the
folder being built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import to_dict
from ..errors import BioLLMError
from ..fileio import atomic_dir, write_json
from ..progress import CancelToken, ProgressCallback
from .data import LABEL_COLUMN, SPLIT_COLUMN, build_sequences, cell_dataset, stratified_split
from .model import deterministic
from .workspace import DEFAULT_WORKSPACE, OTHER_DEMOS


@dataclass
class DemoBuildConfig:
    """How the demo workspace is built; saved in its demo.json."""

    out: str = field(default=str(DEFAULT_WORKSPACE), metadata={"help": "workspace folder to write"})
    quick: bool = field(default=False, metadata={
        "help": "a reduced build for tests: shorter sentences, a smaller model, fewer steps"})
    top_k: int = field(default=200, metadata={
        "help": "genes per cell sentence (200 is the engine's default, so every part of it reads "
                "the demo's cells as the model was trained on them)"})
    layers: int = field(default=4, metadata={"help": "transformer layers"})
    width: int = field(default=128, metadata={"help": "model width (d_model)"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    epochs: int = field(default=5, metadata={"help": "passes over the training cells"})
    batch_size: int = field(default=16, metadata={"help": "cells per optimisation step"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (one-cycle schedule)"})
    answer_weight: float = field(default=1.0, metadata={
        "help": "weight of the cell-type token relative to all other tokens of its sequence"})
    heldout_fraction: float = field(default=0.2, metadata={
        "help": "fraction of each cell type held out from training, for the accuracy"})
    seed: int = field(default=0, metadata={"help": "seed of the split, initialisation and order"})
    threads: int = field(default=1, metadata={
        "help": "torch CPU threads (fixed, for determinism; one thread also degrades least on a "
                "busy machine)"})
    dict_latents: int = field(default=512, metadata={"help": "latents per dictionary"})
    dict_k: int = field(default=16, metadata={"help": "active latents per token (TopK)"})
    dict_tokens: int = field(default=400_000, metadata={"help": "training tokens per dictionary"})
    dict_batch_size: int = field(default=1024, metadata={"help": "tokens per dictionary step"})
    dict_eval_cells: int = field(default=16, metadata={
        "help": "held-out prompts for the trainer's spliced evaluation (it reads cells with the "
                "engine's default 200-gene sentences, so it is off when top_k differs)"})
    sae_layer: int = field(default=2, metadata={"help": "residual layer of the SAE (layers.i)"})
    analysis: bool = field(default=True, metadata={
        "help": "also store the SAE's feature analysis (`biollm demo run` reuses it)"})

    def reduced(self) -> "DemoBuildConfig":
        """The `--quick` variant: what a test can afford, still on all 700 real cells."""
        return dataclasses.replace(self, top_k=24, layers=2, width=64, heads=4, epochs=3,
                                   lr=3e-3, dict_latents=128, dict_k=8, dict_tokens=20_000,
                                   dict_batch_size=512, dict_eval_cells=0, sae_layer=1)


def build(cfg: DemoBuildConfig, progress: ProgressCallback | None = None,
          cancel: CancelToken | None = None) -> Path:
    """Build the workspace into `cfg.out` (atomically: the old one stays until the new is done;
    the other demos' folders in it are carried over)."""
    if cfg.quick:
        cfg = cfg.reduced()
    if not 0 < cfg.heldout_fraction < 1:
        raise BioLLMError("heldout_fraction must be between 0 and 1.")
    if not 0 <= cfg.sae_layer < cfg.layers:
        raise BioLLMError(f"sae_layer must be a layer of the model (0..{cfg.layers - 1}).")
    out = Path(cfg.out)
    clock = _Clock()
    with atomic_dir(out) as tmp:
        report = {}
        with clock("cells"):
            heldout = build_cells(cfg, tmp)
        with clock("model"):
            report["model"] = build_model(cfg, tmp, heldout, progress, cancel)
        with clock("dictionaries"):
            dictionaries = build_dictionaries(cfg, tmp, heldout, progress, cancel)
        report["dictionaries"] = dictionaries["report"]
        report["dictionary_data"] = dictionaries["data"]
        write_json(tmp / "workspace.json", _workspace(cfg, dictionaries["paths"]))
        if cfg.analysis:
            with clock("analysis"):
                report["analysis"] = build_analysis(cfg, tmp, progress, cancel)
        report.update(timings_s=clock.report(),
                      machine={"platform": platform.platform(), "threads": cfg.threads},
                      config={k: v for k, v in to_dict(cfg).items() if k != "out"})
        write_json(tmp / "demo.json", report)
        for name in OTHER_DEMOS:
            if (out / name).is_dir():
                shutil.copytree(out / name, tmp / name)
    return out


class _Clock:
    """Wall and CPU seconds of each part of the build (CPU: on a busy shared machine a better
    estimate than the wall time of what the build takes on an idle one)."""

    def __init__(self):
        self.t0, self.cpu0, self.parts = time.perf_counter(), time.process_time(), {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t, c = time.perf_counter(), time.process_time()
        yield
        self.parts[f"{name}_s"] = time.perf_counter() - t
        self.parts[f"{name}_cpu_s"] = time.process_time() - c

    def report(self) -> dict:
        total = {"total_s": time.perf_counter() - self.t0,
                 "cpu_s": time.process_time() - self.cpu0}
        return {k: round(v, 1) for k, v in {**self.parts, **total}.items()}


def build_cells(cfg: DemoBuildConfig, ws: Path) -> np.ndarray:
    """`cells.h5ad`: pbmc68k_reduced with the stratified train / held-out split; the mask."""
    from .data import load_pbmc

    adata = load_pbmc()
    codes = adata.obs[LABEL_COLUMN].cat.codes.to_numpy().astype(np.int64)
    heldout = stratified_split(codes, cfg.heldout_fraction, cfg.seed)
    adata.obs[SPLIT_COLUMN] = np.where(heldout, "heldout", "train")
    adata.obs[SPLIT_COLUMN] = adata.obs[SPLIT_COLUMN].astype("category")
    adata.write_h5ad(ws / "cells.h5ad", compression="gzip")
    return heldout


def build_model(cfg: DemoBuildConfig, ws: Path, heldout: np.ndarray, progress=None,
                cancel=None) -> dict:
    """`model/`: the tokenizer and the GPTNeoX trained on the training cells; its report."""
    import anndata as ad
    import transformers as tf

    from .model import gpt_neox_config, predict, train_model
    from .tokenizer import build_tokenizer, label_token_ids

    dest = ws / "model"
    adata = ad.read_h5ad(ws / "cells.h5ad")
    labels = list(adata.obs[LABEL_COLUMN].cat.categories)
    codes = adata.obs[LABEL_COLUMN].cat.codes.to_numpy().astype(np.int64)
    dataset = cell_dataset(adata, cfg.top_k)
    tokenizer = build_tokenizer(dataset.genes, labels, [dataset.prompt(0)])
    label_ids = label_token_ids(tokenizer, labels)
    seqs = build_sequences(dataset, tokenizer, label_ids, codes)
    train_idx, test_idx = np.flatnonzero(~heldout), np.flatnonzero(heldout)
    with deterministic(cfg.seed, cfg.threads):
        config = gpt_neox_config(tokenizer, cfg.layers, cfg.width, cfg.heads,
                                 int(seqs.input_ids.shape[1]) + 8)
        model = tf.GPTNeoXForCausalLM(config)
        history = train_model(model, seqs, train_idx, epochs=cfg.epochs,
                              batch_size=cfg.batch_size, lr=cfg.lr,
                              answer_weight=cfg.answer_weight, seed=cfg.seed,
                              progress=progress, cancel=cancel)
        pred, free = predict(model, seqs, test_idx, label_ids)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    truth = codes[test_idx]
    majority = int(np.bincount(codes[train_idx]).argmax())
    return {
        "architecture": "GPTNeoX (Pythia)", "layers": cfg.layers, "width": cfg.width,
        "heads": cfg.heads, "vocab_size": len(tokenizer),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "cell_sentence": to_dict(dataset.cfg), "data": dataset.describe(),
        "labels": labels, "label_column": LABEL_COLUMN, "split_column": SPLIT_COLUMN,
        "n_train": int(len(train_idx)), "n_heldout": int(len(test_idx)),
        "heldout_accuracy": float(np.mean(pred == truth)),
        "heldout_accuracy_unrestricted": float(np.mean(free == np.asarray(label_ids)[truth])),
        "majority_class": labels[majority],
        "majority_rate": float(np.mean(truth == majority)),
        "accuracy_note": "argmax over the cell-type tokens of the next token after the prompt "
                         "(unrestricted: argmax over the whole vocabulary); majority rate: share "
                         "of held-out cells of the most frequent training cell type",
        "heldout_predictions": {str(obs_name): labels[p]
                                for obs_name, p in zip(adata.obs_names[test_idx], pred)},
        "history": history,
        "loss": "next-token CE over the whole sequence, the cell-type token weighted "
                f"{cfg.answer_weight}x the other tokens together",
    }


def build_dictionaries(cfg: DemoBuildConfig, ws: Path, heldout: np.ndarray, progress=None,
                       cancel=None) -> dict:
    """Harvest every needed hookpoint over the training cells' prompts once, then train the
    transcoders (one pass for all layers) and the SAE from that cache. The held-out cells are
    left out of the dictionaries as they are of the model; the trainer's spliced evaluation
    reads them (a copy of the held-out cells is the cache's data set)."""
    from ..harvest import HarvestConfig, harvest
    from ..models import load_model
    from ..training import TrainConfig, train

    transcoder_in = [f"layers.{i}.mlp.in" for i in range(cfg.layers)]
    runs = {
        "transcoders": dict(kind="transcoder", hookpoint=transcoder_in),
        "sae": dict(kind="sae", hookpoint=[f"layers.{cfg.sae_layer}"]),
    }
    hookpoints = transcoder_in + [f"layers.{i}.mlp.out" for i in range(cfg.layers)] \
        + [f"layers.{cfg.sae_layer}"]
    paths, report = [], {}
    with tempfile.TemporaryDirectory(prefix="biollm-demo-cache-") as tmp, \
            deterministic(cfg.seed, cfg.threads):
        cache_dir, eval_data = Path(tmp) / "cache", Path(tmp) / "heldout.h5ad"
        lm = load_model(str(ws / "model"), device="cpu")
        with cell_dataset(ws / "cells.h5ad", cfg.top_k) as dataset:
            _write_subset(ws / "cells.h5ad", heldout, eval_data)
            train_idx = np.flatnonzero(~heldout)
            cache = harvest(lm, dataset.examples(lm.tokenizer, train_idx),
                            HarvestConfig(hookpoints=hookpoints, store_dtype="float32"),
                            cache_dir, progress=progress, cancel=cancel,
                            total_examples=len(train_idx),
                            meta={"data": str(eval_data), "units": dataset.genes,
                                  "records": "training cells of cells.h5ad"})
        records = np.unique(cache.sources()["record"].to_numpy())
        data = {
            "cells": int(len(records)), "tokens": int(cache.num_tokens),
            "heldout_cells": int(heldout[records].sum()),
            "note": "activations the dictionaries were trained on: every token of the training "
                    "cells' prompts; the spliced evaluation reads held-out cells"}
        for name, spec in runs.items():
            out = ws / "dictionaries" / name
            tc = TrainConfig(out=str(out), model=str(ws / "model"), cache=str(cache_dir),
                             activation="topk", latents=cfg.dict_latents, k=cfg.dict_k,
                             tokens=cfg.dict_tokens, batch_size=cfg.dict_batch_size,
                             warmup_steps=max(1, cfg.dict_tokens // cfg.dict_batch_size // 10),
                             device="cpu", seed=cfg.seed, checkpoint_every=0,
                             eval_cells=cfg.dict_eval_cells, **spec)
            written = train(tc, progress=progress, cancel=cancel)
            for hookpoint, folder in written.items():
                relative_paths(Path(folder), ws)
                paths.append(Path(folder).relative_to(ws).as_posix())
                summary = json.loads((Path(folder) / "cfg.json").read_text()).get("training", {})
                report[hookpoint] = {k: v for k, v in summary.items() if k != "config"}
    return {"paths": paths, "report": report, "data": data}


def _write_subset(h5ad: Path, mask: np.ndarray, dest: Path) -> None:
    import anndata as ad

    ad.read_h5ad(h5ad)[mask].copy().write_h5ad(dest)


def build_analysis(cfg: DemoBuildConfig, ws: Path, progress=None, cancel=None) -> dict:
    """`cache/features/`: the SAE's feature analysis of every cell, under its content hash."""
    from .features import CACHE_DIR, analyse, save_cache
    from .workspace import read_workspace

    files = read_workspace(ws)
    with tempfile.TemporaryDirectory(prefix="biollm-demo-features-") as tmp, \
            deterministic(cfg.seed, cfg.threads):
        result = analyse(files, Path(tmp), use_cache=False, progress=progress, cancel=cancel)
        save_cache(ws, result)
    return {"cache": CACHE_DIR.as_posix(), "sha256": result.key}


def relative_paths(folder: Path, ws: Path) -> None:
    """The trainer records where the model, data and output were at build time (a temporary
    folder); record them relative to the dictionary's own folder instead, so that they stay
    right wherever the workspace is moved and name no machine's paths."""
    path = folder / "cfg.json"
    data = json.loads(path.read_text())
    data["model"] = os.path.relpath(ws / "model", folder)
    config = data.get("training", {}).get("config", {})
    for key in ("model", "data", "out"):
        if config.get(key):
            config[key] = os.path.relpath(config[key], folder)
    config["cache"] = "(the demo prompts' activations, harvested during the build, then deleted)"
    write_json(path, data)


def _workspace(cfg: DemoBuildConfig, dictionaries: list[str]) -> dict:
    """workspace.json in the workbench's format (paths relative to the workspace)."""
    return {
        "version": 1, "model": "model", "dictionaries": dictionaries, "data": ["cells.h5ad"],
        "sequences": [], "caches": [], "analyses": [], "feature_labels": {}, "figures": [],
        "settings": {"embedding": "X_umap", "type_key": LABEL_COLUMN, "colour_by": LABEL_COLUMN,
                     "cell_sentence": {"top_k": cfg.top_k},
                     "split_column": SPLIT_COLUMN},
    }
