"""The application launched with no argument opens the embedded demo workspace."""

import json

from PySide6.QtCore import QSettings

from workbench import app as wb_app


def test_launch_opens_the_demo_workspace(qtbot, tmp_path):
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path))
    ws = json.loads((wb_app.DEMO / "workspace.json").read_text())
    _app, window = wb_app.create([])
    qtbot.addWidget(window)
    cells = window.session.cells
    qtbot.waitUntil(lambda: cells.n_cells > 0, timeout=30000)
    assert cells.path == (wb_app.DEMO / ws["data"][0]).resolve()
    assert cells.obsm_key == ws["settings"]["embedding"]
    assert cells.colour_by == ws["settings"]["colour_by"]
    assert len(window.embedding.legend_entries()) == cells.adata.obs[cells.colour_by].nunique()
    names = window.models_panel.dictionary_names()
    assert len(names) == len(ws["dictionaries"])
    assert window.session.workspace.model == str((wb_app.DEMO / ws["model"]).resolve())
