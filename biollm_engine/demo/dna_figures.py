"""The DNA demo's track figure: one held-out window with its genes and the best feature of each
annotation type along it, and a zoom to single bases at a gene start (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import atomic_path
from .dna_data import codon_edges

SHOWN = ("CDS +", "CDS -", "intergenic", "start codon", "stop codon", "codon 1 +", "codon 2 +",
         "codon 3 +")
ZOOM_TYPES = ("start codon", "codon 1 +", "codon 2 +", "codon 3 +")
STRAND_COLOURS = {1: "#2a6fbb", -1: "#c4572a"}
SMOOTH = 45  # bases in the overview's running mean: per-base values are too dense to read at 6 kb


def _pick(records, names: set[str]):
    """The shown window: the held-out one with the most '+' genes whose start is inside it, and
    that gene's start."""
    best = None
    for r in records:
        if r.name not in names:
            continue
        starts = [c.start for c in r.cds if c.strand == 1 and codon_edges(c, len(r.seq))[0]]
        if starts and (best is None or len(starts) > best[1]):
            best = (r, len(starts), starts[0])
    return best[0], best[2]


def track_figure(result, best: pd.DataFrame, records, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.svg; `result` is run_tracks' TracksResult on the held-out
    loci, `best` the best features per annotation type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.dna_tracks import read_bedgraph

    top = best[best["rank"] == 1].set_index("annotation")
    names = {r.name for r in records if r.heldout}
    record, gene_start = _pick(records, names)
    n = len(record.seq)
    paths = dict(zip(result.features, result.bedgraphs))
    values = {t: read_bedgraph(paths[int(top.loc[t, "feature"])], record.name, n)
              for t in SHOWN}
    fig = plt.figure(figsize=(11, 1.0 + 0.55 * len(SHOWN) + 2.6), constrained_layout=True)
    grid = fig.add_gridspec(len(SHOWN) + 2, 1,
                            height_ratios=[0.8] + [0.55] * len(SHOWN) + [2.2])
    genes = fig.add_subplot(grid[0])
    for c in record.cds:
        y = 0.5 + 0.25 * c.strand
        genes.annotate("", xy=((c.end if c.strand == 1 else c.start) / 1e3, y),
                       xytext=((c.start if c.strand == 1 else c.end) / 1e3, y),
                       arrowprops=dict(arrowstyle="-|>", lw=5, color=STRAND_COLOURS[c.strand],
                                       shrinkA=0, shrinkB=0, mutation_scale=8))
    genes.set_xlim(0, n / 1e3)
    genes.set_ylim(0, 1)
    genes.set_yticks([])
    genes.set_title(f"{record.name} ({record.origin}, held out): CDS on + (blue) and - "
                    "(orange); each row the SAE feature with the highest AUROC for its "
                    "annotation", fontsize=9, loc="left")
    x = np.arange(n) / 1e3
    axes = [genes]
    for i, t in enumerate(SHOWN):
        ax = fig.add_subplot(grid[i + 1], sharex=genes)
        smooth = np.convolve(values[t], np.ones(SMOOTH) / SMOOTH, mode="same")
        ax.fill_between(x, smooth, color="#444", lw=0, rasterized=True)  # a light SVG
        row = top.loc[t]
        ax.set_ylabel(f"f{int(row['feature'])}\n{t}\nAUROC {row['auroc']:.2f}", rotation=0,
                      ha="right", va="center", fontsize=7)
        ax.set_yticks([])
        ax.tick_params(labelbottom=False)
        axes.append(ax)
    axes[-1].tick_params(labelbottom=True)
    axes[-1].set_xlabel(f"kb (each track: running mean over {SMOOTH} bases)")
    _zoom(fig.add_subplot(grid[-1]), record, gene_start, values, top)
    stem = Path(stem)
    out = []
    for ext in ("png", "svg"):
        path = stem.with_name(stem.name + f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=110)
        out.append(path)
    plt.close(fig)
    return out


def _zoom(ax, record, gene_start: int, values: dict, top: pd.DataFrame) -> None:
    """Single bases around a gene start: each feature's value as bars, the letters below."""
    a = max(0, gene_start - 15)
    b = min(len(record.seq), a + 60)
    pos = np.arange(a, b)
    width = 0.8 / len(ZOOM_TYPES)
    for j, t in enumerate(ZOOM_TYPES):
        v = values[t][a:b]
        scale = v.max() or 1.0
        ax.bar(pos + (j - 1.5) * width, v / scale, width=width,
               label=f"f{int(top.loc[t, 'feature'])} ({t})")
    ax.set_xticks(pos, list(record.seq[a:b]), fontsize=7, family="monospace")
    ax.axvspan(gene_start - 0.5, gene_start + 2.5, color="#2a6fbb", alpha=0.15)
    ax.set_xlim(a - 0.5, b - 0.5)
    ax.set_ylabel("value / max")
    ax.set_title(f"bases {a}-{b} of {record.name}: the start codon (shaded) of a + gene at "
                 f"{gene_start}", fontsize=9, loc="left")
    ax.legend(fontsize=7, ncol=4, loc="upper right")
