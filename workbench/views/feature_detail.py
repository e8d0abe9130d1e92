"""One feature in detail: how strongly it fires, in which cells, on which genes, what it writes.

Plots are pyqtgraph (this module loads with the first analysis, after start-up). Clicking a top
cell selects it on the embedding through the cells state.
"""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (QGridLayout, QLabel, QListWidget, QListWidgetItem, QVBoxLayout,
                               QWidget)

from ..state.cells import CellsState
from ..state.features import FeatureResults

BAR = (70, 130, 180)
BACKGROUND = (200, 80, 60)
NARROW = 620  # pixels: below this the plots stack in one column


def _plot(title: str) -> pg.PlotWidget:
    w = pg.PlotWidget(background="w")
    w.setTitle(title, color="#222", size="9pt")
    w.setMenuEnabled(False)
    w.setMinimumHeight(150)
    return w


def hbars(plot: pg.PlotWidget, names: list[str], values, colour=BAR) -> None:
    """Horizontal bars, first name at the top, each labelled on the left axis."""
    plot.clear()
    n = len(names)
    y = np.arange(n)[::-1].astype(float)
    plot.addItem(pg.BarGraphItem(x0=0, y=y, height=0.7, width=np.asarray(values, float),
                                 brush=pg.mkBrush(*colour), pen=None))
    plot.getAxis("left").setTicks([[(float(y[i]), names[i]) for i in range(n)]])
    plot.setYRange(-0.6, max(n - 0.4, 0.6), padding=0)


class FeatureDetail(QWidget):
    def __init__(self, cells: CellsState, parent=None):
        super().__init__(parent)
        self.cells = cells
        self.results: FeatureResults | None = None
        self.feature: int | None = None
        self.title = QLabel("Choose a feature in the table.")
        self.title.setWordWrap(True)
        # short titles: a plot narrower than its title (the detail beside a circuit) clips it;
        # what the numbers are goes on the axes
        self.hist = _plot("Activations when firing")
        self.hist.setLabel("bottom", "activation (log₂ bins)")
        self.hist.setLabel("left", "tokens")
        self.genes = _plot("Top genes")
        self.genes.setLabel("bottom", "firing rate (red: on all genes)")
        self.types = _plot("Mean per cell type")
        self.types.setLabel("bottom", "mean of the cells' max activation")
        self.top_cells = QListWidget()
        self.top_cells.setToolTip("Click a cell to select it on the embedding")
        self.top_cells.itemClicked.connect(self._cell_clicked)
        self.cells_box = QWidget()  # the list under its title, as the plots beside it
        box = QVBoxLayout(self.cells_box)
        box.setContentsMargins(0, 0, 0, 0)
        heading = QLabel("<b>Top cells</b> (max activation; click to select)")
        heading.setWordWrap(True)
        box.addWidget(heading)
        box.addWidget(self.top_cells, 1)
        self.lens = QLabel("")
        self.lens.setWordWrap(True)
        self.grid = QGridLayout(self)
        self.columns = 0
        self._arrange(2)

    def _arrange(self, columns: int) -> None:
        """Two columns of plots when there is room, one (scrolled by the panel) when narrow,
        e.g. beside a circuit."""
        grid, self.columns = self.grid, columns
        for w in (self.title, self.hist, self.genes, self.types, self.cells_box, self.lens):
            grid.removeWidget(w)
        grid.addWidget(self.title, 0, 0, 1, columns)
        for k, w in enumerate((self.hist, self.genes, self.types, self.cells_box)):
            grid.addWidget(w, 1 + k // columns, k % columns)
            w.setMaximumHeight(260 if columns == 1 else 16777215)  # stacked: scroll, not stretch
        grid.addWidget(self.lens, 1 + 4 // columns, 0, 1, columns)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        columns = 1 if event.size().width() < NARROW else 2
        if columns != self.columns:
            self._arrange(columns)

    def set_results(self, results: FeatureResults | None) -> None:
        self.results, self.feature = results, None

    def show_feature(self, j: int, label: str = "") -> None:
        r = self.results
        if r is None:
            return
        self.feature = j
        row = r.table.iloc[j]
        self.title.setText(f"<b>Feature {j}</b>{' — ' + html.escape(label) if label else ''}: "
                           f"fires on {row['frequency']:.2%} of tokens, max {row['max']:.3g}")
        self._histogram(r, j)
        self._genes(r, j)
        self._types(r, j)
        self._cells(r, j)
        self._lens(r, j)

    def _histogram(self, r, j) -> None:
        self.hist.clear()
        counts = np.asarray(r.hist[j], float)
        edges = np.log2(np.asarray(r.hist_edges, float))
        x = np.concatenate([[edges[0] - 1], edges])[:len(counts)]
        self.hist.addItem(pg.BarGraphItem(x=x + 0.5, height=counts, width=0.9,
                                          brush=pg.mkBrush(*BAR), pen=None))

    def _genes(self, r, j) -> None:
        if r.top_gene is None or r.genes is None:
            self.genes.clear()
            return
        keep = r.top_gene[j] >= 0
        names = [str(r.genes[g]) for g in r.top_gene[j][keep]]
        self.gene_names = names
        hbars(self.genes, names, r.top_gene_rate[j][keep])
        self.genes.addItem(pg.InfiniteLine(pos=float(r.base_rate[j]), angle=90,
                                           pen=pg.mkPen(*BACKGROUND, width=2)))

    def _types(self, r, j) -> None:
        c = self.cells
        if c.adata is None or not c.type_key or r.cell_max.shape[0] != c.n_cells:
            self.types.clear()
            self.type_means = {}
            return
        names, means = r.per_type_means(c.adata.obs[c.type_key].values)
        order = np.argsort(-means[:, j])
        self.type_means = {names[i]: float(means[i, j]) for i in order}
        hbars(self.types, [names[i] for i in order], means[order, j])

    def _cells(self, r, j) -> None:
        self.top_cells.clear()
        if r.top_cells is None:
            return
        c = self.cells
        for i, v in zip(r.top_cells[j], r.top_cell_values[j]):
            if i < 0 or v <= 0 or i >= c.n_cells:
                continue
            kind = f" · {c.cell_type(int(i))}" if c.type_key else ""
            item = QListWidgetItem(f"{c.cell_id(int(i))}{kind} · {v:.3g}")
            item.setData(256, int(i))
            self.top_cells.addItem(item)

    def _cell_clicked(self, item: QListWidgetItem) -> None:
        i = int(item.data(256))
        self.cells.select([i])
        self.cells.set_current(i)

    def _lens(self, r, j) -> None:
        if r.promoted is None:
            self.lens.setText("")
            return

        def word(t) -> str:
            t = str(t)
            # punctuation and tokens with their leading space quoted: "," and " in" would
            # vanish in the list
            plain = t == t.strip() and any(c.isalnum() for c in t)
            return html.escape(t if plain else f"“{t}”")

        def words(tokens, scores):
            return ", ".join(f"{word(t)} ({s:+.2f})" for t, s in zip(tokens, scores))

        best = r.table.iloc[j]
        verbs = {"promoted": "raises", "suppressed": "lowers"}
        extra = "".join(f" · {verbs[k.split('_', 1)[0]]} {k.split('_', 1)[1].replace('_', ' ')}: "
                        f"<b>{html.escape(str(best[k]))}</b>"
                        for k in ("promoted_gene", "promoted_cell_type", "suppressed_gene",
                                  "suppressed_cell_type")
                        if k in r.table and str(best[k]) not in ("", "nan"))
        self.lens.setText(f"<b>Logit lens</b>{extra}<br><b>promotes</b> "
                          f"{words(r.promoted[j][:8], r.promoted_score[j][:8])}<br>"
                          "<b>suppresses</b> "
                          f"{words(r.suppressed[j][:8], r.suppressed_score[j][:8])}")
