"""How cells are coloured: categories with a palette, or values on a colour map (plain numpy).

The view turns a `Colouring` into pixels; tests and exports read the same object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# scanpy's default_20 palette (vega_20_scanpy), so cells look as they do in sc.pl.umap
DEFAULT_20 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
              "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
              "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#ad494a", "#8c6d31"]
GREY = "#d3d3d3"  # scanpy's na_color
MARKED, UNMARKED = "#d62728", "#4393c3"  # cells an evaluation or an edit marks, and the others
LEVELS = 256


@dataclass
class Colouring:
    kind: str
    """"none", "categorical" or "continuous"."""
    name: str = ""
    codes: np.ndarray | None = None
    """Categorical: category index per cell, -1 for missing."""
    categories: list[str] = field(default_factory=list)
    colours: list[str] = field(default_factory=list)
    levels: np.ndarray | None = None
    """Continuous: 0 = grey (missing, or zero activation), 1..LEVELS along the colour map."""
    vmin: float = 0.0
    vmax: float = 1.0
    cmap: str = "viridis"
    values: np.ndarray | None = None
    unit: str = ""
    """Continuous: what the values measure, the colour bar's title (the name when empty)."""

    def value_text(self, i: int) -> str:
        if self.kind == "categorical":
            c = int(self.codes[i])
            return self.categories[c] if c >= 0 else "NA"
        if self.kind == "continuous":
            return f"{float(self.values[i]):.4g}"
        return ""


def palette(n: int) -> list[str]:
    if n <= len(DEFAULT_20):
        return DEFAULT_20[:n]
    # evenly spaced hues at two lightnesses, for many categories
    import colorsys

    out = []
    for i in range(n):
        light = 0.45 if i % 2 else 0.65
        r, g, b = colorsys.hls_to_rgb((i * 0.618034) % 1.0, light, 0.65)
        out.append("#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255)))
    return out


def categorical(name: str, labels, stored_colours=None) -> Colouring:
    """`labels`: a pandas Categorical or any 1-D array of labels."""
    import pandas as pd

    cat = pd.Categorical(labels)
    categories = [str(c) for c in cat.categories]
    colours = list(stored_colours) if stored_colours is not None else []
    if len(colours) < len(categories):
        colours = palette(len(categories))
    return Colouring("categorical", name, codes=np.asarray(cat.codes, dtype=np.int32),
                     categories=categories, colours=[str(c) for c in colours[:len(categories)]])


def continuous(name: str, values, zero_is_grey: bool = False, unit: str = "") -> Colouring:
    v = np.asarray(values, dtype=np.float32).ravel()
    grey = ~np.isfinite(v)
    if zero_is_grey:
        grey |= v == 0
    shown = v[~grey]
    vmin = float(shown.min()) if shown.size else 0.0
    vmax = float(shown.max()) if shown.size else 1.0
    if zero_is_grey and vmin > 0:
        vmin = 0.0  # activations: the colour map starts at "not firing"
    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.clip((np.nan_to_num(v, nan=vmin) - vmin) / span, 0.0, 1.0)
    levels = (1 + np.minimum((scaled * LEVELS).astype(np.int32), LEVELS - 1)).astype(np.int32)
    levels[grey] = 0
    return Colouring("continuous", name, levels=levels, vmin=vmin, vmax=vmax, values=v,
                     unit=unit)
