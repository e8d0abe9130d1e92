"""The Evaluate panel: how well the model annotates the open cells' types (CellVerse-style).

Runs `biollm_engine.evaluation.evaluate` as a job; shows the confusion matrix as a heatmap,
per-type accuracy as bars, and marks the wrong cells (or those whose prediction changes when a
dictionary is spliced in) on the embedding.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QPushButton, QVBoxLayout, QWidget)

from biollm_engine.errors import BioLLMError
from biollm_engine.evaluation import EvaluateConfig
from biollm_engine.evaluation.labels import UNMATCHED

from ..state.colouring import MARKED, UNMARKED
from ..state.evaluate import EvaluateState, run_evaluation
from ..state.session import Session
from .errors import guarded, show_error
from .export import export_table

log = logging.getLogger("workbench")
NO_DICT = "(model alone)"


class EvaluatePanel(QWidget):
    def __init__(self, session: Session, runner, parent=None, top_k: int = 200):
        super().__init__(parent)
        self.session, self.cells, self._runner = session, session.cells, runner
        self.state = EvaluateState()
        self.top_k = top_k
        self.job = None
        self.format = QComboBox(toolTip="c2s: the model's generated answer matched to the "
                                        "labels; choice: CellVerse multiple choice")
        self.format.addItems(["choice", "c2s"])
        self.which = QComboBox(toolTip="which labelled cells to evaluate")
        self.which.addItems(["heldout", "all", "100"])
        self.splice = QComboBox(toolTip="a dictionary to splice in place of its module")
        self.run_button = QPushButton("Evaluate")
        self.summary = QLabel("Evaluate the model's cell-type annotation on the open cells.")
        self.summary.setWordWrap(True)
        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground("w")
        # a title wider than the plot would widen the layout past the dock: the key goes below
        self.heat_plot = self.plots.addPlot(title="confusion matrix (cells)")
        self.heat_plot.setLabel("left", "label")
        self.heat_plot.setLabel("bottom", "predicted (? = unmatched)")
        self.heat = pg.ImageItem(axisOrder="row-major")
        self.heat.setColorMap(pg.colormap.get("viridis"))
        self.heat_plot.addItem(self.heat)
        self.heat_plot.invertY(True)
        self.counts: list[pg.TextItem] = []  # the number of cells written in each square
        self.plots.nextRow()
        # horizontal bars, as the other panels' per-type plots: the full names fit on the left
        self.bar_plot = self.plots.addPlot(title="accuracy per cell type")
        self.bar_plot.setLabel("bottom", "accuracy (fraction of the type's cells)")
        self.bar_plot.invertY(True)
        for plot in (self.heat_plot, self.bar_plot):
            plot.setMenuEnabled(False)
            plot.getAxis("left").setStyle(autoExpandTextSpace=True)
        show_wrong = QPushButton("Mark wrong cells")
        show_changed = QPushButton("Mark changed cells")
        save = QPushButton("Export CSV…")

        form = QFormLayout()
        form.addRow("Format", self.format)
        form.addRow("Cells", self.which)
        form.addRow("Splice", self.splice)
        row = QHBoxLayout()
        for b in (self.run_button, show_wrong, show_changed, save):
            row.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(self.summary)
        lay.addWidget(self.plots, 1)

        self.run_button.clicked.connect(lambda: self.run())
        show_wrong.clicked.connect(lambda: self.mark("wrong"))
        show_changed.clicked.connect(lambda: self.mark("changed"))
        save.clicked.connect(lambda: self.ask_export())
        self.state.finished.connect(self._show)
        session.workspace_changed.connect(self._fill_dictionaries)
        self._fill_dictionaries()

    def _fill_dictionaries(self) -> None:
        self.splice.clear()
        self.splice.addItem(NO_DICT)
        for d in self.session.workspace.dictionaries:
            self.splice.addItem(Path(d).name, d)

    def config(self) -> EvaluateConfig:
        return EvaluateConfig(format=self.format.currentText(), cells=self.which.currentText())

    def run(self):
        c, ws = self.cells, self.session.workspace
        if c.adata is None or c.type_key is None:
            self._error("Open cells with a cell-type column first.")
            return None
        try:
            cfg = self.config()
        except BioLLMError as e:
            self._error(e.message)
            return None
        dicts = [self.splice.currentData()] if self.splice.currentText() != NO_DICT else []
        model, data, key, top_k = ws.model or "", str(c.path or ""), c.type_key, self.top_k
        job = self._runner().submit(
            f"evaluate on {key}", lambda progress, cancel: run_evaluation(
                model, data, key, cfg, dicts, top_k, progress, cancel))
        self.job = job
        self.summary.setText("Evaluating…")

        def done(status: str) -> None:
            if job.result is not None:
                try:
                    self.state.set_result(job.result, c.adata.obs_names)
                except BioLLMError as e:
                    self._error(e.message)
            elif job.error:
                self._error(job.error)

        job.finished.connect(done)
        return job

    def _show(self) -> None:
        s = self.state.summary
        text = (f"{s['n_cells']} cells: accuracy <b>{s['accuracy']:.3f}</b>, macro-F1 "
                f"{s['macro_f1']:.3f} (majority baseline {s['baseline_majority']:.3f}, chance "
                f"{s['baseline_chance']:.3f})")
        if "spliced_accuracy" in s:
            text += (f"; spliced: accuracy <b>{s['spliced_accuracy']:.3f}</b>, "
                     f"{s['changed_fraction']:.1%} of predictions change")
        self.summary.setText(text)
        matrix, rows, cols = self.state.confusion()
        self.heat.setImage(matrix, levels=(0, max(1.0, float(matrix.max()))))
        # columns are the labels again (plus unmatched): numbered, each number beside its label,
        # so no name is cut to a stub that several labels share
        number = {r: str(i + 1) for i, r in enumerate(rows)} | {UNMATCHED: "?"}
        self.heat_plot.getAxis("left").setTicks([[(i + 0.5, f"{r}  {i + 1}") for i, r in
                                                  enumerate(rows)]])
        self.heat_plot.getAxis("bottom").setTicks([[(j + 0.5, number.get(c, c)) for j, c in
                                                    enumerate(cols)]])
        for item in self.counts:
            self.heat_plot.removeItem(item)
        top = float(matrix.max()) or 1.0
        self.counts = []
        for (i, j), n in np.ndenumerate(matrix):
            if n:
                t = pg.TextItem(f"{n:.0f}", anchor=(0.5, 0.5),
                                color="k" if n > 0.6 * top else "w")
                t.setPos(j + 0.5, i + 0.5)
                self.heat_plot.addItem(t)
                self.counts.append(t)
        names, acc = self.state.per_type_accuracy()
        self.bar_plot.clear()
        self.bars = pg.BarGraphItem(x0=0, y=np.arange(len(acc)), width=acc, height=0.7,
                                    brush="#4393c3")
        self.bar_plot.addItem(self.bars)
        self.bar_plot.getAxis("left").setTicks([[(i, n) for i, n in enumerate(names)]])
        self.bar_plot.setXRange(0, 1)

    def mark(self, which: str) -> np.ndarray | None:
        """Select the wrong (or changed) cells and colour them on the embedding."""
        if self.state.result is None:
            self._error("Run an evaluation first.")
            return None
        rows = self.state.wrong_cells() if which == "wrong" else self.state.changed_cells()
        if which == "changed" and self.state.result.changed is None:
            self._error("Choose a dictionary to splice, then evaluate, to see changed cells.")
            return None
        other = "right" if which == "wrong" else "unchanged"
        labels = np.full(self.cells.n_cells, None, dtype=object)  # not evaluated: grey
        labels[self.state.rows] = other
        labels[rows] = which
        self.cells.set_labels(labels, f"{which} prediction (evaluation)", [which, other],
                              [MARKED, UNMARKED])
        self.cells.select(rows)
        return rows

    def ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export evaluation", "evaluation.csv",
                                              "CSV (*.csv)")
        if path:
            guarded(lambda: export_table(self.state.table(), path), self._error)

    def _error(self, text: str) -> None:
        show_error(self.summary, text)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignLeft)
