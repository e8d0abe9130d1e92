"""What every screenshot script shares: a main window with throw-away settings, and a wait."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def wait(app, seconds: float, until=lambda: False) -> None:
    end = time.time() + seconds
    while time.time() < end and not until():
        app.processEvents()
        time.sleep(0.02)


def new_window():
    """(app, window, tmp folder): a 1600x1000 MainWindow, not yet shown, with its own settings."""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from workbench.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    tmp = Path(tempfile.mkdtemp())
    w = MainWindow(settings=QSettings(str(tmp / "s.ini"), QSettings.Format.IniFormat))
    w.resize(1600, 1000)
    return app, w, tmp
