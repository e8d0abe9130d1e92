"""A cell sentence as chips: its genes in rank order, coloured by per-gene values when given."""

from __future__ import annotations

import html

import numpy as np
from PySide6.QtWidgets import QLabel, QScrollArea, QVBoxLayout, QWidget

MAX_CHIPS = 120


class SentenceView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.header = QLabel("Click a cell to see its cell sentence.")
        self.header.setWordWrap(True)
        self.chips = QWidget()
        self.flow = None  # superqt's flow layout, made on the first click (after start-up)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(self.chips)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.header)
        lay.addWidget(scroll, 1)
        self._cmap = None  # pyqtgraph's viridis, loaded with the first coloured sentence
        self.genes: list[str] = []

    def _clear(self) -> None:
        self.genes = []
        if self.flow is None:
            from superqt import QFlowLayout

            self.flow = QFlowLayout(self.chips)
            self.flow.setSpacing(3)
        while self.flow.count():
            w = self.flow.takeAt(0).widget()
            if w is not None:
                w.deleteLater()

    def show_message(self, text: str) -> None:
        self._clear()
        self.header.setText(text)

    def show_sentence(self, title: str, sentence: list[tuple[str, float]],
                      gene_values: dict[str, float] | None = None) -> None:
        self._clear()
        shown = sentence[:MAX_CHIPS]
        more = len(sentence) - len(shown)
        self.header.setText(f"{title}: cell sentence of {len(sentence)} genes, highest first"
                            + (f" (first {MAX_CHIPS} shown)" if more > 0 else ""))
        top = max((abs(v) for v in (gene_values or {}).values()), default=0.0) or 1.0
        self.genes = [g for g, _ in shown]
        for rank, (gene, expr) in enumerate(shown, 1):
            chip = QLabel(html.escape(gene))
            chip.setToolTip(f"rank {rank}, expression {expr:.3g}"
                            + (f", value {gene_values[gene]:.3g}" if gene_values
                               and gene in gene_values else ""))
            bg, fg = "#ececec", "#222"
            if gene_values and gene_values.get(gene, 0) > 0:
                if self._cmap is None:
                    import pyqtgraph as pg

                    self._cmap = pg.colormap.get("viridis")
                c = self._cmap.map(np.float32(gene_values[gene] / top), mode="qcolor")
                bg = c.name()
                fg = "#fff" if c.lightnessF() < 0.55 else "#222"
            chip.setStyleSheet(f"background:{bg}; color:{fg}; border-radius:7px; "
                               "padding:1px 6px; font-family:monospace;")
            self.flow.addWidget(chip)
