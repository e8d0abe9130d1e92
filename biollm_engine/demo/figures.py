"""The demo's figures (matplotlib, headless Agg): UMAPs, the feature × cell-type heatmap and
circuit drawings. Each is written as PNG and SVG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..fileio import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.svg atomically; close the figure."""
    plt = _pyplot()
    paths = []
    for suffix in (".png", ".svg"):
        path = stem.with_suffix(suffix)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def umap_by_category(xy: np.ndarray, categories, colors: Sequence[str] | None, title: str,
                     stem: Path) -> list[Path]:
    plt = _pyplot()
    import pandas as pd

    cats = pd.Categorical(categories)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    palette = list(colors) if colors is not None and len(colors) >= len(cats.categories) \
        else [plt.cm.tab10(i % 10) for i in range(len(cats.categories))]
    for i, name in enumerate(cats.categories):
        sel = cats.codes == i
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=palette[i], label=f"{name} ({sel.sum()})",
                   linewidths=0)
    ax.set(title=title, xlabel="UMAP 1", ylabel="UMAP 2", xticks=[], yticks=[])
    ax.legend(fontsize=7, markerscale=2, frameon=False, loc="center left",
              bbox_to_anchor=(1.0, 0.5))
    return save(fig, stem)


def umap_by_value(xy: np.ndarray, values: np.ndarray, title: str, stem: Path) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    order = np.argsort(values, kind="stable")  # the strongest cells drawn last, on top
    sc = ax.scatter(xy[order, 0], xy[order, 1], c=values[order], s=8, cmap="viridis",
                    linewidths=0)
    fig.colorbar(sc, ax=ax, label="max activation in the cell")
    ax.set(xlabel="UMAP 1", ylabel="UMAP 2", xticks=[], yticks=[])
    ax.set_title(title, fontsize=9)
    return save(fig, stem)


def heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
            title: str, stem: Path) -> list[Path]:
    """Rows: features, columns: cell types; each row scaled to its maximum."""
    plt = _pyplot()
    scaled = matrix / np.maximum(matrix.max(axis=1, keepdims=True), 1e-12)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(col_labels), 1.2 + 0.28 * len(row_labels)))
    im = ax.imshow(scaled, aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mean activation / row max", shrink=0.7)
    return save(fig, stem)


def circuit(pruned, title: str, stem: Path, max_nodes: int = 40) -> list[Path]:
    """Kept nodes of a pruned attribution graph by layer (rows) and token position (columns),
    the `max_nodes` most influential ones; edges blue (excitatory) or red (inhibitory)."""
    plt = _pyplot()
    g = pruned.graph
    nodes = [int(i) for i in pruned.nodes]
    kinds = {i: g.kind(i) for i in nodes}
    always = [i for i in nodes if kinds[i] == "logit"]
    ranked = sorted((i for i in nodes if kinds[i] != "logit"),
                    key=lambda i: pruned.cumulative[i])
    shown = always + ranked[:max_nodes - len(always)]
    positions = sorted({g.layer_pos(i)[1] for i in shown})
    groups: dict[tuple[int, int], list[int]] = {}
    for i in shown:
        groups.setdefault(g.layer_pos(i), []).append(i)
    # each position's column as wide as its fullest layer (the answer position holds most
    # features), so side-by-side nodes and their labels do not overlap the next column
    step = 0.4
    widths = {p: max(1.0, step * max(len(v) for (_, q), v in groups.items() if q == p))
              for p in positions}
    edges_x = np.cumsum([0.0] + [widths[p] for p in positions])
    centre = {p: edges_x[c] + widths[p] / 2 for c, p in enumerate(positions)}
    xy = {}
    for (layer, pos), same in groups.items():
        for k, i in enumerate(same):
            xy[i] = (centre[pos] + (k - (len(same) - 1) / 2) * step, layer + 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * edges_x[-1] + 2), 5))
    edges = [(s, t, w) for s, t, w in pruned.edges() if s in xy and t in xy]
    wmax = max([abs(w) for _, _, w in edges] or [1.0])
    for s, t, w in edges:
        ax.plot([xy[s][0], xy[t][0]], [xy[s][1], xy[t][1]], color="tab:blue" if w > 0
                else "tab:red", alpha=0.15 + 0.6 * abs(w) / wmax, lw=0.4 + 2.5 * abs(w) / wmax,
                zorder=1)
    style = {"input": ("s", "#6a9955"), "feature": ("o", "#d08c2f"), "error": ("D", "#9e9e9e"),
             "logit": ("^", "#4a6fd1")}
    for i in shown:
        marker, color = style[kinds[i]]
        ax.scatter(*xy[i], marker=marker, s=90, color=color, edgecolors="black", linewidths=0.5,
                   zorder=2)
        if kinds[i] == "feature":
            ax.annotate(f"{int(g.features[i, 2])}", xy[i], fontsize=6, ha="center",
                        va="bottom", xytext=(0, 6), textcoords="offset points", rotation=90)
        elif kinds[i] == "logit":
            ax.annotate(g.label(i), xy[i], fontsize=7, ha="center", va="bottom",
                        xytext=(0, 6), textcoords="offset points")
    ticks = [g.token_genes[p] or g.tokens[p] for p in positions]
    ax.set_xticks([centre[p] for p in positions], ticks, rotation=70, fontsize=7)
    ax.set_yticks(range(g.n_layers + 2),
                  ["genes"] + [f"L{k} MLP" for k in range(g.n_layers)] + ["output"], fontsize=7)
    ax.set_xlim(-0.3, edges_x[-1] + 0.3)
    ax.set_title(title, fontsize=9)
    for kind, (marker, color) in style.items():
        ax.scatter([], [], marker=marker, color=color, edgecolors="black", linewidths=0.5,
                   label=kind)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save(fig, stem)
