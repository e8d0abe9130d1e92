"""A pyqtgraph ViewBox whose left drag pans, or draws a rectangle or a lasso that selects."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsPathItem, QGraphicsRectItem

PAN, RECT, LASSO = "pan", "rect", "lasso"
INK = "#333333"


class SelectViewBox(pg.ViewBox):
    """A ViewBox whose left drag pans, or draws a rectangle or lasso that selects cells."""

    def __init__(self, on_rect, on_lasso, on_click):
        super().__init__()
        self.mode = PAN
        self._on_rect, self._on_lasso, self._on_click = on_rect, on_lasso, on_click
        self._path: list[QPointF] = []
        pen = QPen(QColor(INK), 0, Qt.PenStyle.DashLine)
        self._rect_item = QGraphicsRectItem()
        self._lasso_item = QGraphicsPathItem()
        for item in (self._rect_item, self._lasso_item):
            item.setPen(pen)
            item.setZValue(1e9)
            item.hide()
            self.addItem(item, ignoreBounds=True)

    def mouseDragEvent(self, ev, axis=None):
        shift = bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        mode = RECT if (self.mode == PAN and shift) else self.mode
        if mode == PAN or ev.button() != Qt.MouseButton.LeftButton:
            return super().mouseDragEvent(ev, axis)
        ev.accept()
        p0, p = self.mapSceneToView(ev.buttonDownScenePos()), self.mapSceneToView(ev.scenePos())
        if mode == RECT:
            rect = QRectF(p0, p).normalized()
            self._rect_item.setRect(rect)
            self._rect_item.setVisible(not ev.isFinish())
            if ev.isFinish():
                self._on_rect(rect)
            return
        if ev.isStart():
            self._path = [p0]
        self._path.append(p)
        path = QPainterPath(self._path[0])
        for q in self._path[1:]:
            path.lineTo(q)
        path.closeSubpath()
        self._lasso_item.setPath(path)
        self._lasso_item.setVisible(not ev.isFinish())
        if ev.isFinish():
            self._on_lasso([(q.x(), q.y()) for q in self._path])

    def mouseClickEvent(self, ev):
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            p = self.mapSceneToView(ev.scenePos())
            self._on_click(p.x(), p.y())
        else:
            super().mouseClickEvent(ev)
