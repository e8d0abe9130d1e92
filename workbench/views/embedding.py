"""The embedding view: cells on their UMAP, coloured, selectable, fast for a million cells.

Cells are drawn as an RGBA image (`raster`), recomputed for the visible range and the widget's
pixel size, so zoomed out a million cells cost one image and zoomed in each cell is a disk.
"""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QRectF, Qt, QTimer
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QSizePolicy, QStackedLayout, QToolButton,
                               QToolTip, QVBoxLayout, QWidget)

from ..state.cells import CellsState
from . import raster
from .icons import icon_later

PAN, RECT, LASSO, INK = "pan", "rect", "lasso", "#333333"  # as in .viewbox (pyqtgraph: later)


class EmbeddingView(QWidget):
    def __init__(self, state: CellsState, parent=None):
        super().__init__(parent)
        self.state = state
        self.oversample = 1.0
        self._fp: raster.Footprint | None = None
        self._fp_key = None
        self._pal: raster.Palette | None = None
        self._winners: np.ndarray | None = None
        self._rendered_range = None
        self.mode = PAN
        # the plot is built with the first cells: pyqtgraph is not imported before the first paint
        self.glw = self.vb = self.plot = self.image = self.legend = self.colour_bar = None
        self.cmap_lut = None

        self.empty = QLabel("Drop an .h5ad file here\n\nor use File › Open data…")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setStyleSheet("color: #888; font-size: 16pt;")
        self.stack = QStackedLayout()
        self.stack.addWidget(self.empty)

        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 0)
        self.mode_buttons = {}
        for mode, ico, text, tip in ((PAN, "fa5s.arrows-alt", "Pan", "Pan and zoom (shift-drag: "
                                      "rectangle selection)"),
                                     (RECT, "fa5s.vector-square", "Rectangle",
                                      "Rectangle selection"),
                                     (LASSO, "fa5s.draw-polygon", "Lasso", "Lasso selection")):
            b = self._button(text, tip, ico, checkable=True, autoExclusive=True)
            b.clicked.connect(lambda _=False, m=mode: self.set_mode(m))
            bar.addWidget(b)
            self.mode_buttons[mode] = b
        self.mode_buttons[PAN].setChecked(True)
        clear = self._button("Clear", "Clear the selection", "fa5s.times-circle")
        clear.clicked.connect(lambda: self.state.select([]))
        home = self._button("Fit", "Show all cells", "fa5s.expand")
        home.clicked.connect(self.reset_range)
        bar.addWidget(clear)
        bar.addWidget(home)
        bar.addStretch(1)
        self.info = QLabel("")
        self.info.setStyleSheet("color: #555;")
        bar.addWidget(self.info)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addLayout(bar)
        outer.addLayout(self.stack)

        self._timer = QTimer(self, singleShot=True, interval=20)
        self._timer.timeout.connect(self.redraw)

        state.loaded.connect(self._on_loaded)
        state.embedding_changed.connect(self._on_loaded)
        state.colour_changed.connect(self._on_colour)
        state.selection_changed.connect(self._on_selection)
        self._on_loaded()

    def _button(self, text: str, tip: str, icon_name: str, **kw) -> QToolButton:
        b = QToolButton(text=text, toolTip=tip, **kw)
        b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        icon_later(b, icon_name)
        return b

    def _ensure_plot(self) -> None:
        if self.glw is not None:
            return
        import pyqtgraph as pg

        from .viewbox import SelectViewBox

        self.cmap_lut = pg.colormap.get("viridis").getLookupTable(0.0, 1.0, 256, alpha=True)
        self.glw = pg.GraphicsLayoutWidget()
        self.glw.setBackground("w")
        self.vb = SelectViewBox(self._select_rect, self.state.select_polygon, self._click)
        self.vb.mode = self.mode
        self.plot = self.glw.addPlot(row=0, col=0, viewBox=self.vb)
        self.plot.setMenuEnabled(False)
        for name in ("left", "bottom"):
            ax = self.plot.getAxis(name)
            ax.setPen(INK)
            ax.setTextPen(INK)
            ax.setStyle(showValues=False)
            ax.setTicks([[], []])
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.legend = pg.LegendItem(labelTextColor=INK, labelTextSize="9pt", verSpacing=-6)
        self.legend.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.stack.addWidget(self.glw)
        self.vb.sigRangeChanged.connect(lambda *_: self._timer.start())
        self.vb.sigResized.connect(lambda *_: self._timer.start())
        self.glw.scene().sigMouseMoved.connect(self._hover)

    # -- state -> view ------------------------------------------------------------------------
    def _on_loaded(self) -> None:
        xy = self.state.coords
        self._fp = self._fp_key = self._pal = self._winners = None
        if xy is None:
            self.stack.setCurrentWidget(self.empty)
            if self.image is not None:
                self.image.clear()
            return
        self._ensure_plot()
        self.stack.setCurrentWidget(self.glw)
        key = self.state.obsm_key or ""
        label = key[2:] if key.startswith("X_") else key
        label = label.upper() if label.lower() in ("umap", "pca", "tsne", "phate") else label
        self.plot.setLabel("bottom", f"{label}1")
        self.plot.setLabel("left", f"{label}2")
        self._update_key()
        self.reset_range()
        self.redraw()

    def _on_colour(self) -> None:
        self._pal = self._winners = None
        if self.glw is None:
            return
        self._update_key()
        self.redraw()

    def _on_selection(self) -> None:
        self._pal = self._winners = None
        n = len(self.state.selection)
        self.info.setText(f"{n:,} of {self.state.n_cells:,} cells selected" if n else
                          f"{self.state.n_cells:,} cells")
        self.redraw()

    def reset_range(self) -> None:
        xy = self.state.coords
        if xy is None or not len(xy) or self.vb is None:
            return
        lo, hi = np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
        pad = np.maximum((hi - lo) * 0.04, 1e-6)
        lo, hi, pad = lo.astype(float), hi.astype(float), pad.astype(float)
        self.vb.setRange(xRange=(lo[0] - pad[0], hi[0] + pad[0]),
                         yRange=(lo[1] - pad[1], hi[1] + pad[1]), padding=0)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if self.vb is not None:
            self.vb.mode = mode
        self.mode_buttons[mode].setChecked(True)

    # -- legend and colour bar ----------------------------------------------------------------
    def _update_key(self) -> None:
        """Legend for categories, colour bar for values; built once, re-labelled per colouring."""
        import pyqtgraph as pg

        c = self.state.colouring()
        self.legend.clear()
        if c.kind == "continuous" and self.colour_bar is None:
            self.colour_bar = pg.ColorBarItem(values=(0, 1), colorMap="viridis",
                                              interactive=False, width=12)
            self.colour_bar.axis.setPen(INK)
            self.colour_bar.axis.setTextPen(INK)
        want = {"categorical": self.legend, "continuous": self.colour_bar}.get(c.kind)
        for item in (self.legend, self.colour_bar):
            if item is not None and item is not want and item.scene() is not None:
                self.glw.removeItem(item)
        self.plot.setTitle(c.name or None, color=INK, size="11pt")
        self.info.setText(f"{self.state.n_cells:,} cells")
        if c.kind == "categorical":
            for name, colour in zip(c.categories, c.colours):
                sample = pg.ScatterPlotItem(symbol="o", size=9, pen=None, brush=colour)
                self.legend.addItem(sample, name)
            self.legend.setColumnCount(max(1, math.ceil(len(c.categories) / 24)))
        elif c.kind == "continuous":
            self.colour_bar.setLevels((c.vmin, c.vmax))
            self.colour_bar.axis.setLabel(c.unit or c.name, color=INK)
        if want is not None and want.scene() is None:
            self.glw.addItem(want, row=0, col=1)
            top = want is self.legend
            self.glw.ci.layout.setAlignment(want, Qt.AlignmentFlag.AlignTop if top
                                            else Qt.AlignmentFlag.AlignVCenter)

    def legend_entries(self) -> list[str]:
        return [] if self.legend is None else [label.text for _, label in self.legend.items]

    # -- drawing ------------------------------------------------------------------------------
    def pixel_size(self) -> tuple[int, int]:
        dpr = self.devicePixelRatioF() * self.oversample
        return max(1, int(self.vb.width() * dpr)), max(1, int(self.vb.height() * dpr))

    def redraw(self) -> None:
        xy = self.state.coords
        if xy is None or self.glw is None:
            return
        (x0, x1), (y0, y1) = self.vb.viewRange()
        w, h = self.pixel_size()
        key = (x0, x1, y0, y1, w, h, id(xy))
        if self._fp is None or self._fp_key != key:
            self._fp = raster.footprint(xy, (x0, x1), (y0, y1), w, h, self.oversample)
            self._fp_key, self._winners = key, None
        if self._pal is None:
            self._pal = raster.palette(self.state.colouring(), len(xy), self.cmap_lut,
                                       self.state.selection)
        # RGBA bytes with no levels: pyqtgraph hands them to QImage without a conversion pass
        self.image.setImage(raster.render(self._fp, self._pal), autoLevels=False, levels=None)
        self.image.setRect(QRectF(x0, y0, x1 - x0, y1 - y0))
        self._rendered_range = (x0, x1, y0, y1, w, h)

    def rendered_image(self) -> np.ndarray | None:
        return None if self.image is None else self.image.image

    # -- cells under the mouse ----------------------------------------------------------------
    def cell_at(self, x: float, y: float, reach_px: int = 4) -> int | None:
        """The cell drawn nearest to data point (x, y), within a few pixels, or None."""
        if self._fp is None or self._pal is None or self._rendered_range is None:
            return None
        if self._winners is None:
            self._winners = raster.winners(self._fp, self._pal)
        x0, x1, y0, y1, w, h = self._rendered_range
        c = (x - x0) / (x1 - x0) * w
        r = (y - y0) / (y1 - y0) * h
        reach = int(reach_px * self.devicePixelRatioF() * self.oversample)
        best, best_d = None, None
        for dr in range(-reach, reach + 1):
            for dc in range(-reach, reach + 1):
                rr, cc = int(r) + dr, int(c) + dc
                if 0 <= rr < h and 0 <= cc < w:
                    cell = self._winners[rr * w + cc]
                    d = dr * dr + dc * dc
                    if cell >= 0 and (best_d is None or d < best_d):
                        best, best_d = int(cell), d
        return best

    def hover_text(self, i: int) -> str:
        s = self.state
        lines = [f"<b>{s.cell_id(i)}</b>"]
        if s.type_key:
            lines.append(f"{s.type_key}: {s.cell_type(i)}")
        c = s.colouring()
        if c.kind != "none" and c.name != s.type_key:
            lines.append(f"{c.name}: {c.value_text(i)}")
        top = s.top_features([i], n=3)
        if top:
            lines.append(f"top features ({s.activation_key}): "
                         + ", ".join(f"{j} ({v:.3g})" for j, v in top))
        return "<br>".join(lines)

    def _hover(self, scene_pos) -> None:
        if self.state.coords is None or not self.vb.sceneBoundingRect().contains(scene_pos):
            return
        p = self.vb.mapSceneToView(scene_pos)
        i = self.cell_at(p.x(), p.y())
        if i is None:
            QToolTip.hideText()
        else:
            QToolTip.showText(QCursor.pos(), self.hover_text(i), self.glw)

    def _click(self, x: float, y: float) -> None:
        i = self.cell_at(x, y)
        if i is not None:
            self.state.set_current(i)

    def _select_rect(self, rect: QRectF) -> None:
        self.state.select_rect(rect.left(), rect.right(), rect.top(), rect.bottom())

    # -- export -------------------------------------------------------------------------------
    def export(self, path, width_px: int = 1800, height_px: int | None = None, dpi: int = 300):
        """The plot with its legend or colour bar, cells re-drawn at the export's resolution."""
        from .export import export_figure

        item = self.glw.ci
        r = item.sceneBoundingRect()
        self.oversample = max(1.0, width_px / max(r.width(), 1.0),
                              (height_px or 0) / max(r.height(), 1.0))
        try:
            self.redraw()
            return export_figure(item, path, width_px, height_px, dpi)
        finally:
            self.oversample = 1.0
            self.redraw()
