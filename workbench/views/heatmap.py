"""Feature × cell-type heatmap, rows and columns ordered by hierarchical clustering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QSpinBox, QToolButton, QVBoxLayout, QWidget

from ..state.features import FeatureResults
from .export import export_figure, export_table


def cluster_order(m: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage clustering of the rows (correlation distance)."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    if m.shape[0] < 3:
        return np.arange(m.shape[0])
    x = m - m.mean(axis=1, keepdims=True)
    x = np.where(np.abs(x).sum(axis=1, keepdims=True) > 0, x, 1e-9 * np.arange(m.shape[1]))
    return leaves_list(linkage(x, "average", metric="correlation"))


def feature_type_matrix(results: FeatureResults, types, n_features: int):
    """The `n_features` most type-specific features × cell types, each row scaled to its max,
    clustered. Returns (matrix [F, T], feature ids, type names)."""
    names, means = results.per_type_means(types)
    m = means.T  # [F, T]
    mx = m.max(axis=1)
    spread = mx - np.median(m, axis=1)
    keep = np.flatnonzero(mx > 0)
    keep = keep[np.argsort(-spread[keep], kind="stable")][:n_features]
    m = m[keep] / mx[keep, None]
    rows, cols = cluster_order(m), cluster_order(m.T)
    return m[rows][:, cols], keep[rows], [names[c] for c in cols]


class HeatmapView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.matrix = np.zeros((0, 0))
        self.features: np.ndarray = np.zeros(0, int)
        self.types: list[str] = []
        self._args = None
        self.count = QSpinBox(minimum=2, maximum=100_000, value=60, prefix="top ",
                              suffix=" features", toolTip="Most cell-type-specific features shown")
        self.count.valueChanged.connect(lambda *_: self._args and self.show_results(*self._args))
        save = QToolButton(text="Export…", toolTip="PNG / SVG / PDF of the heatmap, or its CSV")
        save.clicked.connect(self._export)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMenuEnabled(False)
        self.plot.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(pg.colormap.get("viridis"))
        self.plot.addItem(self.image)
        self.plot.setLabel("bottom", "feature (clustered)")
        self.colour_bar = pg.ColorBarItem(values=(0, 1), colorMap="viridis", interactive=False,
                                          width=12)
        self.colour_bar.axis.setLabel("mean activation in the type / its highest type mean")
        self.colour_bar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        top = QHBoxLayout()
        top.addWidget(self.count)
        top.addStretch(1)
        top.addWidget(save)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.plot, 1)

    def show_results(self, results: FeatureResults, types) -> None:
        self._args = (results, types)
        self.matrix, self.features, self.types = feature_type_matrix(results, types,
                                                                     self.count.value())
        # drawn with cell types as rows: their names read horizontally on the left axis
        self.image.setImage(self.matrix.T.astype(np.float32), levels=(0, 1))
        n_f, n_t = self.matrix.shape
        self.plot.getAxis("left").setTicks([[(i + 0.5, t) for i, t in enumerate(self.types)]])
        step = max(1, n_f // 10)  # about ten labels: five digits each fit beside the bar
        self.plot.getAxis("bottom").setTicks(
            [[(i + 0.5, str(int(f))) for i, f in enumerate(self.features) if i % step == 0]])
        self.plot.setLimits(xMin=0, xMax=n_f, yMin=0, yMax=n_t)
        self.plot.setRange(xRange=(0, n_f), yRange=(0, n_t), padding=0)

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.matrix, index=pd.Index(self.features, name="feature"),
                            columns=self.types)

    def export(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix.lower() in (".csv", ".tsv", ".parquet"):
            return export_table(self.frame().reset_index(), path)
        export_figure(self.plot.plotItem, path)
        return path

    def _export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export heatmap", "heatmap.png",
                                              "PNG (*.png);;SVG (*.svg);;PDF (*.pdf);;CSV (*.csv)")
        if path:
            self.export(path)
