"""`biollm-workbench`: what it opens first, and a start-up that imports nothing heavy."""

import os
import subprocess
import sys

from PySide6.QtCore import QSettings

from workbench import app as wb_app

CHILD = r"""
import sys
from PySide6.QtCore import QEvent, QObject
from workbench.app import create

app, window = create([])


class FirstPaint(QObject):
    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint:
            print("HEAVY", sorted(m for m in ("torch", "transformers", "scanpy", "anndata",
                                              "pandas", "superqt", "qtawesome")
                                  if m in sys.modules), flush=True)
            app.exit(0)
        return False


watcher = FirstPaint()
app.installEventFilter(watcher)
app.exec()
"""


def test_start_target_prefers_the_path_then_the_demo(tmp_path, monkeypatch):
    assert wb_app.start_target("x.h5ad").name == "x.h5ad"
    demo = tmp_path / "demo"
    monkeypatch.setattr(wb_app, "DEMO", demo)
    assert wb_app.start_target(None) is None  # no demo: the empty window says what to drop
    demo.mkdir()
    (demo / "cells.h5ad").write_bytes(b"")
    assert wb_app.start_target(None) == demo / "cells.h5ad"
    (demo / "workspace.json").write_text("{}")
    assert wb_app.start_target(None) == demo


def test_create_opens_the_file_given_on_the_command_line(qtbot, pbmc_h5ad, tmp_path):
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path))
    _app, window = wb_app.create([str(pbmc_h5ad)])
    qtbot.addWidget(window)
    assert window.isVisible() and window.windowTitle() == "BioLLM Workbench"
    qtbot.waitUntil(lambda: window.session.cells.n_cells == 700, timeout=20000)
    qtbot.waitUntil(lambda: window.machine_label.text().startswith("Device: CPU"), timeout=60000)
    assert str(pbmc_h5ad.resolve()) in window.recent_files()


def test_first_paint_comes_before_any_heavy_import(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
