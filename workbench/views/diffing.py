"""Model diffing with a crosscoder: which features belong to one model, which are shared.

Each feature is a point: its relative decoder norm ‖d_b‖ / (‖d_a‖ + ‖d_b‖) (0: source a only,
0.5: shared, 1: source b only) against how often it fires; click one for its detail. Groups
follow the engine's thresholds (training/pair.py).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from biollm_engine.errors import BioLLMError
from biollm_engine.training.pair import THRESHOLDS

LOW, HIGH = THRESHOLDS  # the engine's base-only / shared / fine-tuned-only cut (Lindsey et al.)

ONLY_A, SHARED, ONLY_B = "#4393c3", "#999999", "#d6604d"


def diffing_table(dictionary, activations, a: int = 0, b: int = 1):
    """One row per feature: relative decoder norm, each source's norm, firing frequency.

    `activations`: [N, S, d] inputs of the crosscoder (its sources stacked)."""
    import pandas as pd
    import torch

    if dictionary.cfg.kind != "crosscoder" or dictionary.cfg.n_sources < 2:
        raise BioLLMError("model diffing needs a crosscoder over two sources (models); this "
                          f"dictionary is a {dictionary.cfg.kind}.")
    with torch.no_grad():
        norms = dictionary.decoder_norms().float().cpu().numpy()
        rel = dictionary.relative_decoder_norms(a, b).float().cpu().numpy()
        fired = (dictionary.encode(torch.as_tensor(activations)) > 0).float().mean(0)
    names = dictionary.cfg.sources
    group = np.where(rel < LOW, f"{names[a]} only", np.where(rel > HIGH, f"{names[b]} only",
                                                              "shared"))
    return pd.DataFrame({"feature": np.arange(len(rel)), "relative_norm": rel,
                         f"norm_{names[a]}": norms[:, a], f"norm_{names[b]}": norms[:, b],
                         "frequency": fired.cpu().numpy(), "group": group})


class DiffingView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.table = None
        self.clicked: int | None = None
        self.plot = pg.PlotWidget(background="w")
        self.plot.setLabel("bottom", "relative decoder norm (0: source a only, 1: source b only)")
        self.plot.setLabel("left", "firing frequency (log10)")
        self.points = pg.ScatterPlotItem(size=7, pen=None, hoverable=True)
        self.plot.addItem(self.points)
        self.detail = QLabel("Open a crosscoder over two models to compare them.")
        self.detail.setWordWrap(True)
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        lay = QVBoxLayout(self)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.detail)
        self.points.sigClicked.connect(lambda _i, pts, _ev=None: len(pts) and
                                       self.show_feature(int(pts[0].data())))

    def set_crosscoder(self, dictionary, activations) -> None:
        df = diffing_table(dictionary, activations)
        self.table = df
        colours = np.where(df["relative_norm"] < LOW, ONLY_A,
                           np.where(df["relative_norm"] > HIGH, ONLY_B, SHARED))
        y = np.log10(np.maximum(df["frequency"].to_numpy(), 1e-6))
        self.points.setData(x=df["relative_norm"].to_numpy(), y=y, data=df["feature"].to_numpy(),
                            brush=[pg.mkBrush(c) for c in colours])
        counts = df["group"].value_counts()
        self.detail.setText(", ".join(f"{n} features {g}" for g, n in counts.items()))

    def show_feature(self, j: int) -> None:
        row = self.table.iloc[j]
        norms = ", ".join(f"{c[5:]} {row[c]:.3f}" for c in self.table.columns
                          if c.startswith("norm_"))
        self.clicked = j
        self.detail.setText(f"<b>feature {j}</b> ({row['group']}): relative decoder norm "
                            f"{row['relative_norm']:.3f}; decoder norms {norms}; fires on "
                            f"{row['frequency']:.1%} of tokens")
