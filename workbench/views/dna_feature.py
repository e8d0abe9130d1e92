"""A DNA feature's detail, opened by clicking its peak in the Tracks panel: how much of the
record it covers, its strongest peaks with their sequence (double-click one to go there) and
the base composition around them (a frequency logo: what the feature fires on)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

FLANK = 10  # bases either side of a peak in its context and logo
PEAKS = 12
BASES = "ACGT"


class DnaFeatureDetail(QWidget):
    go_to = Signal(int)
    """a peak row was double-clicked: its base position (0-based)"""

    def __init__(self, colours: dict[str, str], parent=None):
        super().__init__(parent)
        self.colours = colours
        self.feature: int | None = None
        self.peaks = np.zeros(0, dtype=np.int64)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["position", "value", f"context (±{FLANK} bp)"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.cellDoubleClicked.connect(lambda row, _: self.go_to.emit(int(self.peaks[row])))
        self.logo = pg.PlotWidget(background="w")
        self.logo.setMouseEnabled(False, False)
        self.logo.setLabel("left", "base frequency")
        self.logo.setLabel("bottom", "position from peak (bp)")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.logo, 1)
        lay.addWidget(self.table, 1)

    def show_feature(self, feature: int, values: np.ndarray, seq: str, record: str) -> None:
        from biollm_engine.analysis.dna_enrichment import frequency_matrix
        from biollm_engine.analysis.dna_tracks import track_peaks

        self.feature = int(feature)
        self.peaks = track_peaks(values, PEAKS, FLANK)
        fires = float(np.mean(values > 0)) if len(values) else 0.0
        self.title.setText(f"<b>Feature {feature}</b> on {record}: fires on {fires:.1%} of "
                           f"{len(values):,} bases, max {float(values.max()):.3g}; its "
                           f"{len(self.peaks)} strongest peaks. Bases: " + " ".join(
                               f'<b style="color:{self.colours[b]}">{b}</b>' for b in BASES))
        contexts = [_context(seq, int(p)) for p in self.peaks]
        self.table.setRowCount(len(self.peaks))
        for row, (p, c) in enumerate(zip(self.peaks, contexts)):
            text = f"{c[:FLANK]} [{c[FLANK]}] {c[FLANK + 1:]}"
            for col, v in enumerate((f"{p + 1:,}", f"{values[p]:.3g}", text)):
                item = QTableWidgetItem(v)
                if col == 2:
                    item.setFont(self.mono)
                self.table.setItem(row, col, item)
        self.table.resizeColumnsToContents()
        self.logo.clear()
        if contexts:
            self._draw_logo(frequency_matrix(contexts))

    def _draw_logo(self, freq: np.ndarray) -> None:
        x = np.arange(len(freq)) - FLANK
        bottom = np.zeros(len(freq))
        for j, base in enumerate(BASES):
            self.logo.addItem(pg.BarGraphItem(x=x, y0=bottom, height=freq[:, j], width=0.85,
                                              brush=self.colours[base], pen=None))
            bottom = bottom + freq[:, j]
        self.logo.setXRange(x[0] - 0.5, x[-1] + 0.5, padding=0)
        self.logo.setYRange(0, 1, padding=0.02)

    def rows(self) -> list[tuple[int, str]]:
        """(position, context) of each peak row, as shown."""
        return [(int(p), self.table.item(i, 2).text()) for i, p in enumerate(self.peaks)]


def _context(seq: str, p: int) -> str:
    """The bases around p, padded with N where the record ends (every context has one length)."""
    left = "N" * max(0, FLANK - p) + seq[max(0, p - FLANK):p]
    right = seq[p + 1:p + FLANK + 1]
    return left + seq[p] + right + "N" * (FLANK - len(right))
