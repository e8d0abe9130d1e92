"""The Log panel: the `workbench` logger's records, from any thread."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QPlainTextEdit


class _Emitter(QObject):
    record = Signal(str)


class LogHandler(logging.Handler):
    def __init__(self, emitter: _Emitter):
        super().__init__()
        self.emitter = emitter
        self.setFormatter(logging.Formatter("%(asctime)s  %(levelname)-7s %(message)s",
                                            "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.emitter.record.emit(self.format(record))


class LogView(QPlainTextEdit):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(5000)
        self._emitter = _Emitter()
        self._emitter.record.connect(self.appendPlainText, Qt.ConnectionType.QueuedConnection)
        self.handler = LogHandler(self._emitter)
        logger = logging.getLogger("workbench")
        logger.setLevel(logging.INFO)
        logger.addHandler(self.handler)
        self.destroyed.connect(lambda *_: logger.removeHandler(self.handler))
