"""What recurs across the cells of one type, and what the weights alone connect.

`AggregateView`: the circuits of several cells of one type merged (`circuits.aggregate`), each
node sized by the number of cells whose circuit holds it. `WeightsView`: input-invariant
feature-to-feature weights between two layers' transcoders as a heatmap, top connections listed.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from biollm_engine.errors import BioLLMError

from ..state.circuit import aggregate_cells, layer_weights
from .circuit_graph import NEGATIVE, POSITIVE

ROW = {"input": 0, "feature": 1, "error": 1, "logit": 2}


def aggregate_layout(agg, n_layers: int) -> np.ndarray:
    """Rows: inputs, each layer's features and errors, logits; evenly spread within a row."""
    ys = np.array([-1 if k[0] == "input" else (n_layers if k[0] == "logit" else k[1])
                   for k in agg.keys], dtype=np.float64) + 1
    xy = np.zeros((len(agg.keys), 2))
    xy[:, 1] = ys
    for y in np.unique(ys):
        idx = np.flatnonzero(ys == y)
        xy[idx, 0] = np.linspace(0, 100, len(idx) + 2)[1:-1]
    return xy


def key_label(key: tuple) -> str:
    if key[0] == "feature":
        return f"L{key[1]}/{key[2]}"
    if key[0] == "error":
        return f"error L{key[1]}"
    return str(key[1])


class AggregateView(QWidget):
    def __init__(self, panel, parent=None):
        """`panel`: the Circuit panel, whose model, cells and job runner this view uses."""
        super().__init__(parent)
        self.panel = panel
        self.agg = None
        self.job = None
        self.cell_type = QComboBox()
        self.cell_type.addItems(panel.labels())
        self.n_cells = QSpinBox(minimum=2, maximum=200, value=8)
        self.n_cells.setToolTip("cells of that type to build circuits for")
        run = QPushButton("Aggregate")
        self.summary = QLabel("Circuits of several cells of one type, merged: node size = in "
                              "how many cells' circuits it appears.")
        self.summary.setWordWrap(True)
        self.plot = pg.PlotWidget(background="w")
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.edges = {1: pg.PlotCurveItem(pen=pg.mkPen(POSITIVE, width=1)),
                      -1: pg.PlotCurveItem(pen=pg.mkPen(NEGATIVE, width=1))}
        for item in self.edges.values():
            self.plot.addItem(item)
        self.nodes = pg.ScatterPlotItem(pen=pg.mkPen("#444444"), brush="#f4a582")
        self.plot.addItem(self.nodes)
        self.top = QLabel("")
        self.top.setWordWrap(True)
        row = QHBoxLayout()
        for w in (QLabel("Cell type"), self.cell_type, QLabel("Cells"), self.n_cells, run):
            row.addWidget(w)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.summary)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.top)
        run.clicked.connect(lambda: self.run())

    def run(self):
        p, c = self.panel, self.panel.cells
        engine = p.state.engine
        if engine is None or c.adata is None:
            self.summary.setText("Build one circuit first (it loads the model).")
            return None
        label = self.cell_type.currentText()
        truth = c.adata.obs[c.type_key].astype(str).to_numpy()
        cells = np.flatnonzero(truth == label)[: self.n_cells.value()]
        data, tg, mf = str(c.path), p.top_genes, p.max_features
        job = p._runner().submit(f"aggregate circuit of {len(cells)} {label} cells",
                                 lambda progress, cancel: aggregate_cells(
                                     engine, data, cells, tg, mf, p.state.node_threshold,
                                     progress, cancel))
        self.job = job

        def done(status: str) -> None:
            if job.result is not None:
                self.show_aggregate(job.result, label)
            elif job.error:
                self.summary.setText(job.error)

        job.finished.connect(done)
        return job

    def show_aggregate(self, agg, label: str = "") -> None:
        self.agg = agg
        n_layers = self.panel.state.engine.rm.n_layers if self.panel.state.engine else 1
        xy = aggregate_layout(agg, n_layers)
        sizes = 6 + 16 * agg.counts / max(agg.n_graphs, 1)
        self.nodes.setData(pos=xy, size=sizes, data=np.arange(len(agg.keys)))
        edges = agg.edges()
        for sign, item in self.edges.items():
            sel = [(s, t) for s, t, w, _ in edges if (w > 0) == (sign > 0)]
            if sel:
                s, t = np.array(sel).T
                xs = np.column_stack([xy[s, 0], xy[t, 0]]).ravel()
                ys = np.column_stack([xy[s, 1], xy[t, 1]]).ravel()
                item.setData(xs, ys, connect="pairs")
            else:
                item.setData([], [])
        feats = [i for i, k in enumerate(agg.keys) if k[0] == "feature"]
        feats.sort(key=lambda i: -agg.counts[i])
        self.summary.setText(f"{label}: {agg.n_graphs} cells, {len(agg.keys)} recurring nodes, "
                             f"{len(edges)} recurring edges")
        self.top.setText("Recurring features: " + ", ".join(
            f"{key_label(agg.keys[i])} ({agg.counts[i]}/{agg.n_graphs})" for i in feats[:12]))


class WeightsView(QWidget):
    def __init__(self, panel, parent=None):
        super().__init__(parent)
        self.panel = panel
        self.weights = None
        self.connections: list = []
        self.layer_a, self.layer_b = QComboBox(), QComboBox()
        run = QPushButton("Show weights")
        self.plot = pg.PlotWidget(background="w")
        self.plot.setLabel("left", "feature of the earlier layer")
        self.plot.setLabel("bottom", "feature of the later layer")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(pg.colormap.get("CET-D1"))
        self.plot.addItem(self.image)
        self.list = QLabel("")
        self.list.setWordWrap(True)
        self.list.setTextFormat(Qt.TextFormat.RichText)
        row = QHBoxLayout()
        for w in (QLabel("From layer"), self.layer_a, QLabel("to layer"), self.layer_b, run):
            row.addWidget(w)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.list)
        run.clicked.connect(lambda: self.show_layers(int(self.layer_a.currentText() or 0),
                                                     int(self.layer_b.currentText() or 0)))
        engine = panel.state.engine
        layers = [str(x) for x in sorted(engine.rm.transcoders)] if engine else []
        self.layer_a.addItems(layers)
        self.layer_b.addItems(layers)
        if len(layers) > 1:
            self.layer_b.setCurrentIndex(1)

    def show_layers(self, a: int, b: int) -> None:
        engine = self.panel.state.engine
        try:
            if engine is None:
                raise BioLLMError("build one circuit first (it loads the model).")
            w, top = layer_weights(engine, a, b)
        except BioLLMError as e:
            self.list.setText(e.message)
            return
        self.weights, self.connections = w.numpy(), top
        m = float(np.abs(self.weights).max()) or 1.0
        self.image.setImage(self.weights, levels=(-m, m))
        self.list.setText(f"<b>Strongest connections, layer {a} → {b}</b> (decoder · encoder "
                          "through the residual stream): " + ", ".join(
                              f"{i}→{j} ({v:+.3f})" for i, j, v in top))
