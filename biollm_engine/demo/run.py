"""`biollm demo run`: the whole pipeline on the demo workspace, headless and offline.

Writes into `out`: `features.csv` (the SAE's feature table), `cells_features.h5ad` (the cells
with every feature's per-cell activation), `circuits/<cell type>.json` (one attribution graph
per cell type, circuit-tracer format), `figures/` (PNG and SVG: UMAP by cell type and by one
feature, the feature × cell-type heatmap, one circuit drawing) and `summary.json` (for each cell
type: its most specific features with their top genes, and its circuit's most influential
genes). The feature analysis comes from the workspace's cache when its content hash matches
(`demo.features`); torch runs on one thread (on a shared 2-core machine two threads made the
circuits 6x slower).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BioLLMError
from ..fileio import read_json, write_json
from ..progress import CancelToken, ProgressCallback
from .data import LABEL_COLUMN, SPLIT_COLUMN
from .workspace import DEFAULT_WORKSPACE, read_workspace


@dataclass
class DemoRunConfig:
    out: str = field(metadata={"help": "folder for the tables, circuits and figures"})
    workspace: str = field(default=str(DEFAULT_WORKSPACE), metadata={
        "help": "demo workspace (built by `biollm demo build`)"})
    feature: int | None = field(default=None, metadata={
        "help": "SAE feature to colour the UMAP by (default: the one most specific to a cell "
                "type, by AUROC)"})
    features_per_type: int = field(default=2, metadata={
        "help": "features per cell type in the heatmap (the most specific ones)"})
    max_features: int = field(default=300, metadata={
        "help": "feature nodes per circuit, most influential first"})
    node_threshold: float = field(default=0.8, metadata={
        "help": "circuits keep the nodes holding this share of influence"})
    cache: bool = field(default=True, metadata={
        "help": "reuse the workspace's cached feature analysis when the hash of the model, SAE, "
                "cells, options and analysis code matches (otherwise it is computed)"})
    save_cache: bool = field(default=False, metadata={
        "help": "store this run's feature analysis in the workspace's cache for later runs"})
    threads: int = field(default=1, metadata={
        "help": "torch CPU threads (a small model on a shared machine runs fastest on one)"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, mps or auto"})


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "cells"


def run(cfg: DemoRunConfig, progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None) -> list[Path]:
    """Run features, write-back, circuits and figures; return the files written."""
    from .model import deterministic

    ws = read_workspace(cfg.workspace)
    ws["demo"] = read_json(Path(cfg.workspace) / "demo.json", "demo report")
    out = Path(cfg.out)
    if out.resolve() == Path(cfg.workspace).resolve():
        raise BioLLMError("--out is the demo workspace itself; choose another folder.")
    if cfg.threads < 1:
        raise BioLLMError("--threads must be at least 1.")
    with deterministic(0, cfg.threads):
        return _run(cfg, ws, out, progress, cancel)


def _run(cfg: DemoRunConfig, ws: dict, out: Path, progress, cancel) -> list[Path]:
    import anndata as ad

    from . import figures
    from .features import analyse, save_cache

    figs = out / "figures"
    analysis = analyse(ws, out, cfg.device, cfg.cache, progress, cancel)
    if cfg.save_cache and not analysis.cached:
        save_cache(ws["folder"], analysis)
    written: list[Path] = [out / "features.csv", out / "cells_features.h5ad"]
    table = analysis.table.df
    cells = ad.read_h5ad(ws["data"])
    labels = list(cells.obs[LABEL_COLUMN].cat.categories)
    cell_max = analysis.cell_max.toarray()

    best = _specific_features(table, labels, cfg.features_per_type)
    feature = cfg.feature if cfg.feature is not None else int(
        table.loc[table[f"auroc_{LABEL_COLUMN}"].idxmax(), "feature"])
    if not 0 <= feature < cell_max.shape[1]:
        raise BioLLMError(f"feature {feature} does not exist; the SAE has "
                          f"{cell_max.shape[1]} features (0..{cell_max.shape[1] - 1}).")
    xy = np.asarray(cells.obsm["X_umap"])
    colors = cells.uns.get(f"{LABEL_COLUMN}_colors")
    written += figures.umap_by_category(xy, cells.obs[LABEL_COLUMN], colors,
                                        "pbmc68k_reduced: bulk_labels", figs / "umap_cell_types")
    row = table.set_index("feature").loc[feature]
    written += figures.umap_by_value(
        xy, cell_max[:, feature],
        f"SAE feature {feature} ({row.get('best_' + LABEL_COLUMN, '')}, AUROC "
        f"{row.get('auroc_' + LABEL_COLUMN, float('nan')):.2f})\n{row.get('top_genes', '')}",
        figs / f"umap_feature_{feature}")
    codes = cells.obs[LABEL_COLUMN].cat.codes.to_numpy()
    means = np.stack([cell_max[codes == c].mean(axis=0) for c in range(len(labels))], axis=1)
    rows = [f for fs in best.values() for f in fs]
    row_labels = [f"{f}: {_short_genes(table, f)}" for f in rows]
    written += figures.heatmap(means[rows], row_labels, labels,
                               "SAE features most specific to each cell type",
                               figs / "heatmap_features_cell_types")

    circuits = _circuits(cfg, ws, cells, labels, out / "circuits", progress, cancel)
    # one drawing: the circuit of the cell type that the UMAP's feature is most specific to
    shown = str(row.get("best_" + LABEL_COLUMN, "")) if str(row.get(
        "best_" + LABEL_COLUMN, "")) in circuits else next(iter(circuits))
    c = circuits[shown]
    written += figures.circuit(c["pruned"], f"cell {c['cell']} ({shown}): predicted "
                               f"{c['predicted']!r}", figs / f"circuit_{slug(shown)}")
    for c in circuits.values():
        written.append(c.pop("file"))
        c.pop("pruned")
    summary = {
        "heldout_accuracy": ws["demo"]["model"]["heldout_accuracy"],
        "majority_rate": ws["demo"]["model"]["majority_rate"], "umap_feature": feature,
        "feature_analysis": {"sha256": analysis.key, "from_cache": analysis.cached},
        "cell_types": {
            label: {"features": [_feature_summary(table, f) for f in best[label]],
                    "circuit": circuits[label]}
            for label in labels},
    }
    write_json(out / "summary.json", summary)
    written.append(out / "summary.json")
    return written


def _specific_features(table, labels, n: int) -> dict[str, list[int]]:
    """For each cell type, the `n` features with the highest AUROC whose best type it is."""
    best, auroc = table[f"best_{LABEL_COLUMN}"].astype(str), table[f"auroc_{LABEL_COLUMN}"]
    out = {}
    for label in labels:
        mine = table[(best == label) & (table["frequency"] > 0)]
        out[label] = mine.loc[auroc[mine.index].sort_values(ascending=False).index[:n],
                              "feature"].astype(int).tolist()
    return out


def _short_genes(table, feature: int, n: int = 3) -> str:
    genes = str(table.set_index("feature").loc[feature].get("top_genes", ""))
    return " ".join(re.sub(r"\([^)]*\)", " ", genes).replace(",", " ").split()[:n])


def _feature_summary(table, feature: int) -> dict:
    row = table.set_index("feature").loc[feature]
    keys = ("frequency", f"best_{LABEL_COLUMN}", f"auroc_{LABEL_COLUMN}",
            f"specificity_{LABEL_COLUMN}", "top_genes", "promoted_cell_type")
    return {"feature": int(feature), **{k: _plain(row[k]) for k in keys if k in row.index}}


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _circuits(cfg, ws, cells, labels, folder: Path, progress, cancel) -> dict:
    """One circuit per cell type: its first held-out cell (by index), whatever the model
    predicted for it; the target is the model's own prediction. The model, transcoders and
    cells are loaded once for all of them."""
    from ..circuits.attribution import attribute
    from ..circuits.export import write_json as write_graph
    from ..circuits.pipeline import load_transcoders
    from ..circuits.prune import prune
    from ..circuits.replacement import ReplacementModel
    from ..models import load_model
    from .data import cell_dataset

    lm = load_model(str(ws["model"]), device=cfg.device)
    rm = ReplacementModel(lm, load_transcoders(ws["transcoders"], lm.device))
    split = cells.obs[SPLIT_COLUMN].astype(str).to_numpy()
    truth = cells.obs[LABEL_COLUMN].astype(str).to_numpy()
    out = {}
    with cell_dataset(ws["data"], ws["top_k"]) as ds:
        for label in labels:
            candidates = np.flatnonzero((truth == label) & (split == "heldout"))
            if not len(candidates):
                continue
            cell = int(candidates[0])
            ex = next(ds.examples(lm.tokenizer, [cell]))
            genes = [ds.genes[u] if u >= 0 else "" for u in ex.unit]
            graph = attribute(lm, rm, ex.text, input_ids=ex.input_ids, token_genes=genes,
                              merge_genes=True, max_features=cfg.max_features,
                              progress=progress, cancel=cancel,
                              meta={"cell": cell, "cell_type": label, "data": "cells.h5ad"})
            pruned = prune(graph, cfg.node_threshold)
            path = write_graph(pruned, folder / f"{slug(label)}.json", slug(label))
            predicted = graph.logit_labels[0].strip()
            out[label] = {"cell": cell, "predicted": predicted,
                          "probability": float(graph.logit_probabilities[0]),
                          "top_genes": _top_input_genes(pruned), "file": path,
                          "pruned": pruned}
    return out


def _top_input_genes(pruned, n: int = 8) -> list[str]:
    """Input genes of the circuit, most influential first (prompt words left out)."""
    g = pruned.graph
    inputs = [int(i) for i in pruned.nodes if g.kind(int(i)) == "input"
              and g.token_genes[g.layer_pos(int(i))[1]]]
    inputs.sort(key=lambda i: pruned.cumulative[i])
    return [g.label(i).strip() for i in inputs[:n]]
