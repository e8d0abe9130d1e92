"""Screenshots of the Features panel on the demo workspace: table + detail, and the heatmap.

    xvfb-run -s "-screen 0 1600x1000x24" python docs/screenshots/features_screenshots.py
"""

from __future__ import annotations

from _window import HERE, new_window, wait


def main() -> None:
    from PySide6.QtCore import Qt

    from workbench.app import DEMO

    app, w, tmp = new_window()
    w.open_after_paint = DEMO
    w.show()
    panel = w.features_panel
    wait(app, 60, lambda: panel.results is not None or w.session.cells.n_cells > 0)
    wait(app, 2, lambda: panel.results is not None)
    if panel.results is None:  # the shipped analysis is stale: Analyse, as a user would
        panel.choose_dictionary(next(d for d in w.session.workspace.dictionaries
                                     if d.endswith("sae/layers.2")))
        job = panel.analyse()
        wait(app, 600, lambda: job is None or not job.active)
    w.resizeDocks([w.docks["Features"]], [760], Qt.Orientation.Horizontal)
    r = panel.results
    j = int(r.table["auroc_bulk_labels"].idxmax())
    panel.model.sort(0)
    panel.table.selectRow(j)
    wait(app, 20, lambda: panel.detail.feature == j)
    cells = w.session.cells
    cells.set_current(int(r.top_cells[j][0]))
    wait(app, 60, lambda: bool(cells.gene_values))  # the cell's own activations, from a job
    wait(app, 1)
    w.grab().save(str(HERE / "features_detail.png"))
    panel.tabs.setCurrentWidget(panel.heatmap)
    wait(app, 2)
    w.grab().save(str(HERE / "features_heatmap.png"))
    w.close()


if __name__ == "__main__":
    main()
