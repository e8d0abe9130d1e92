"""Recolour the embedding of 100k and 1M cells by a random feature vector (goal: < 100 ms).

Times the workbench's path end to end (per-cell colours, raster, image upload) and the same
plus the paint, beside pyqtgraph's ScatterPlotItem with 256 cached brushes at 100k cells, all in
this one run. Usage: python bench/embedding_recolour.py [--sizes 100000 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _timing import median_ms  # noqa: E402


def fake_cells(n: int, rng):
    """n cells on a UMAP-like layout: 12 Gaussian blobs of different sizes."""
    import anndata
    import numpy as np
    import pandas as pd

    centres = rng.uniform(-10, 10, size=(12, 2))
    which = rng.integers(0, 12, size=n)
    xy = (centres[which] + rng.normal(scale=rng.uniform(0.4, 1.5, 12)[which, None],
                                      size=(n, 2))).astype(np.float32)
    obs = pd.DataFrame({"cluster": pd.Categorical(which.astype(str))},
                       index=[f"c{i}" for i in range(n)])
    return anndata.AnnData(obs=obs, obsm={"X_umap": xy})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    import pyqtgraph as pg
    from PySide6.QtWidgets import QApplication

    from workbench.state.cells import CellsState
    from workbench.views.embedding import EmbeddingView

    app = QApplication.instance() or QApplication([])
    rng = np.random.default_rng(0)
    print(f"{'cells':>9} {'recolour ms':>12} {'+ paint ms':>11} {'image px':>11}")
    for n in args.sizes:
        state = CellsState()
        view = EmbeddingView(state)
        view.resize(1200, 900)
        view.show()
        state.set_data(fake_cells(n, rng))
        app.processEvents()
        vectors = [np.where(rng.random(n) < 0.3, rng.exponential(size=n), 0.0).astype(np.float32)
                   for _ in range(args.repeats)]
        it = itertools.cycle(vectors)

        def recolour():
            state.set_values(next(it), "feature")

        def recolour_and_paint():
            recolour()
            view.glw.viewport().repaint()

        r = median_ms(recolour, args.repeats)
        rp = median_ms(recolour_and_paint, args.repeats)
        h, w = view.rendered_image().shape[:2]
        print(f"{n:>9,} {r:>12.1f} {rp:>11.1f} {w:>5}x{h:<5}")
        view.close()
        if n == 100_000:
            plot = pg.PlotWidget()
            plot.resize(1200, 900)
            plot.show()
            xy = state.coords
            scatter = pg.ScatterPlotItem(x=xy[:, 0], y=xy[:, 1], size=4, pen=None)
            plot.addItem(scatter)
            app.processEvents()
            lut = pg.colormap.get("viridis").getLookupTable(0, 1, 256)
            brushes = [pg.mkBrush(*c) for c in lut]

            def scatter_recolour():
                v = next(it)
                idx = np.clip((v / v.max() * 255).astype(int), 0, 255)
                scatter.setBrush([brushes[i] for i in idx])
                plot.viewport().repaint()

            s = median_ms(scatter_recolour, args.repeats)
            print(f"  ScatterPlotItem, 256 cached brushes, 100,000 cells: {s:.1f} ms "
                  f"(workbench raster + paint is {s / rp:.1f}x faster)")
            plot.close()


if __name__ == "__main__":
    main()
