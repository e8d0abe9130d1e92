"""Figures to PNG, SVG and PDF at a chosen size and DPI; tables to CSV, TSV and Parquet.

Every file is written atomically; the clipboard gets the same image or tab-separated text.
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from PySide6.QtCore import QMarginsF, QRect, QRectF, QSize, QSizeF, Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPageSize, QPainter, QPdfWriter
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog,
                               QFormLayout, QSpinBox)

from biollm_engine.errors import BioLLMError
from biollm_engine.fileio import atomic_path

if TYPE_CHECKING:
    import pandas as pd

FIGURE_FORMATS = (".png", ".svg", ".pdf")
TABLE_FORMATS = (".csv", ".tsv", ".parquet")
# pyqtgraph caches axes as QPictures, which Qt rescales when played on a device of another
# logical DPI; painting devices therefore keep the screen's 96 DPI and the chosen DPI is
# recorded in the file (PNG metadata, PDF page size) instead.
SCREEN_DPI = 96


def _size(item, width_px: int, height_px: int | None) -> tuple[int, int]:
    r = item.sceneBoundingRect()
    if height_px is None:
        height_px = max(1, round(width_px * r.height() / max(r.width(), 1.0)))
    return int(width_px), int(height_px)


def _render(item, device, w: int, h: int) -> None:
    """Paint the item's part of its scene onto a device, centred at its own aspect ratio."""
    import pyqtgraph.exporters as pex

    source = item.sceneBoundingRect()
    scale = min(w / max(source.width(), 1.0), h / max(source.height(), 1.0))
    switch = pex.ImageExporter(item)  # used for its export mode: axes and pens scale with us
    painter = QPainter(device)
    try:
        switch.setExportMode(True, {"antialias": True, "background": QColor("white"),
                                    "painter": painter, "resolutionScale": scale})
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.TextAntialiasing)
        tw, th = source.width() * scale, source.height() * scale
        item.scene().render(painter, QRectF((w - tw) / 2, (h - th) / 2, tw, th), source)
    finally:
        switch.setExportMode(False)
        painter.end()


def export_figure(item, path: str | Path, width_px: int = 1800, height_px: int | None = None,
                  dpi: int = 300) -> Path:
    """Write a pyqtgraph item (a plot, or a whole layout) to .png, .svg or .pdf: one painter
    path for all three, so the files show the same figure."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise BioLLMError(f"cannot export a figure as '{suffix}'; use one of "
                          f"{', '.join(FIGURE_FORMATS)}.")
    w, h = _size(item, width_px, height_px)
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".png":
            img = QImage(w, h, QImage.Format.Format_ARGB32)
            img.fill(Qt.GlobalColor.white)
            _render(item, img, w, h)
            dots_per_metre = round(dpi / 0.0254)  # after painting: see SCREEN_DPI
            img.setDotsPerMeterX(dots_per_metre)
            img.setDotsPerMeterY(dots_per_metre)
            if not img.save(str(tmp), "PNG"):
                raise BioLLMError(f"could not write {path}; check the folder is writable.")
        elif suffix == ".svg":
            from PySide6.QtSvg import QSvgGenerator

            gen = QSvgGenerator()
            gen.setFileName(str(tmp))
            gen.setSize(QSize(w, h))
            gen.setViewBox(QRect(0, 0, w, h))
            gen.setResolution(SCREEN_DPI)
            gen.setTitle(path.stem)
            _render(item, gen, w, h)
        else:
            writer = QPdfWriter(str(tmp))
            writer.setResolution(SCREEN_DPI)
            writer.setPageSize(QPageSize(QSizeF(w / dpi, h / dpi), QPageSize.Unit.Inch))
            writer.setPageMargins(QMarginsF(0, 0, 0, 0))
            # vector page of w/dpi inches; the cells' image keeps its w-pixel resolution inside
            _render(item, writer, round(w * SCREEN_DPI / dpi), round(h * SCREEN_DPI / dpi))
    return path


def copy_figure(item, scale: float = 2.0) -> None:
    r = item.sceneBoundingRect()
    w, h = max(1, round(r.width() * scale)), max(1, round(r.height() * scale))
    img = QImage(w, h, QImage.Format.Format_ARGB32)
    img.fill(Qt.GlobalColor.white)
    _render(item, img, w, h)
    QGuiApplication.clipboard().setImage(img)


def export_table(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise BioLLMError(f"cannot export a table as '{suffix}'; use one of "
                          f"{', '.join(TABLE_FORMATS)}.")
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, sep="\t" if suffix == ".tsv" else ",", index=False)
    return path


def copy_table(df: pd.DataFrame) -> None:
    QGuiApplication.clipboard().setText(df.to_csv(sep="\t", index=False))


class FigureSizeDialog(QDialog):
    """Width and height in inches and the DPI: the pixels a journal figure needs."""

    def __init__(self, parent=None, width_in: float = 6.0, height_in: float = 4.0, dpi: int = 300):
        super().__init__(parent)
        self.setWindowTitle("Figure size")
        self.width_in = QDoubleSpinBox(minimum=0.5, maximum=40, value=width_in, suffix=" in")
        self.height_in = QDoubleSpinBox(minimum=0.5, maximum=40, value=height_in, suffix=" in")
        self.dpi = QSpinBox(minimum=36, maximum=1200, value=dpi, suffix=" dpi")
        form = QFormLayout(self)
        form.addRow("Width", self.width_in)
        form.addRow("Height", self.height_in)
        form.addRow("Resolution", self.dpi)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def pixels(self) -> tuple[int, int, int]:
        dpi = self.dpi.value()
        return round(self.width_in.value() * dpi), round(self.height_in.value() * dpi), dpi


def ask_figure_path(parent, start: str = "figure.png") -> tuple[Path, int, int, int] | None:
    path, _ = QFileDialog.getSaveFileName(parent, "Export figure", start,
                                          "PNG image (*.png);;SVG vector (*.svg);;PDF (*.pdf)")
    if not path:
        return None
    dialog = FigureSizeDialog(parent)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return None
    return (Path(path), *dialog.pixels())
