"""Screenshots of the Circuit and Evaluate panels for the README, from the real application.

    xvfb-run -s "-screen 0 1600x1000x24" python docs/screenshots/circuit_screenshots.py
"""

from __future__ import annotations


import numpy as np

from _window import HERE, new_window, wait
DEMO = HERE.parents[1] / "resources" / "demo"


def main() -> None:
    from PySide6.QtCore import Qt


    app, w, tmp = new_window()
    w.show()
    wait(app, 1.0)
    w.open_path(DEMO)
    cells = w.session.cells
    wait(app, 60, lambda: cells.n_cells > 0)
    b_cell = int(np.flatnonzero(cells.adata.obs["bulk_labels"] == "CD19+ B")[0])
    cells.set_current(b_cell)
    panel = w.open_panel("Circuit").widget()
    panel.top_genes, panel.max_features = 25, 120
    w.resizeDocks([w.docks["Circuit"]], [900], Qt.Orientation.Horizontal)
    job = panel.explain_cell()
    wait(app, 400, lambda: not job.active)
    wait(app, 1.0)
    st = panel.state
    top = int(st.graph.adjacency[st.graph.logit_start, : st.graph.n_features].abs().argmax())
    for name in ("Jobs", "Log", "Data", "Model & dictionaries"):  # room for the circuit
        w.docks[name].hide()
    st.select_node(top)  # its transcoder is analysed (a job) and the feature shown beside
    features = w.features_panel
    wait(app, 600, lambda: features.analysis_job is None or not features.analysis_job.active)
    panel.edit_picked()
    job = panel.run_ablation_check()
    wait(app, 300, lambda: not job.active)
    panel.items.show_paths(top)
    wait(app, 0.5)
    panel.split.setSizes([540, 420])
    wait(app, 1.0)
    w.grab().save(str(HERE / "circuit.png"))
    for name in ("Jobs", "Data", "Model & dictionaries"):
        w.docks[name].show()
    w.resizeDocks([w.docks["Data"]], [330], Qt.Orientation.Horizontal)  # back to its width
    w.tabifyDockWidget(w.docks["Circuit"], w.docks["Features"])

    ev = w.open_panel("Evaluate").widget()
    ev.format.setCurrentText("choice")
    ev.which.setCurrentText("heldout")
    sae = next(i for i in range(ev.splice.count()) if "sae" in str(ev.splice.itemData(i) or ""))
    ev.splice.setCurrentIndex(sae)
    job = ev.run()
    wait(app, 500, lambda: not job.active)
    ev.mark("wrong")  # selects them too: the Features panel lists their top features
    wait(app, 1.5)
    w.grab().save(str(HERE / "evaluate.png"))
    w.close()


if __name__ == "__main__":
    main()
