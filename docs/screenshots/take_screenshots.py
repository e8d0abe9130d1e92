"""Screenshots of the workbench for the README, taken from the real application.

Run under a virtual X server:
    xvfb-run -s "-screen 0 1600x1000x24" python docs/screenshots/take_screenshots.py
"""

from __future__ import annotations

import sys

import numpy as np

from _window import HERE, new_window, wait


def main() -> None:
    import scanpy as sc
    from PySide6.QtCore import Qt


    app, w, tmp = new_window()
    path = tmp / "pbmc68k_reduced.h5ad"
    sc.datasets.pbmc68k_reduced().write_h5ad(path)

    w.show()
    wait(app, 1.0)
    w.open_path(path)
    cells = w.session.cells
    wait(app, 30, lambda: cells.n_cells > 0)
    wait(app, 1.0)
    # click a B cell, so the Data panel shows its cell sentence
    b_cell = int(np.flatnonzero(cells.adata.obs["bulk_labels"] == "CD19+ B")[0])
    cells.set_current(b_cell)
    wait(app, 60, lambda: w.device != "…")
    wait(app, 0.5)
    w.grab().save(str(HERE / "main_window.png"))

    # colour by a B-cell marker gene and lasso the B-cell cluster
    genes = list(cells.adata.raw.var_names)
    cd79a = np.asarray(cells.adata.raw.X[:, genes.index("CD79A")].toarray()).ravel()
    cells.set_values(cd79a, "CD79A expression (raw)")
    xy = cells.coords[cells.adata.obs["bulk_labels"].values == "CD19+ B"]
    lo, hi = xy.min(0) - 0.5, xy.max(0) + 0.5
    cells.select_polygon([(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])])
    wait(app, 1.0)
    w.grab().save(str(HERE / "values_and_selection.png"))

    # a real training job (a tiny random test model, so only the Jobs panel is of interest)
    import functools

    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    from tiny_models import make_tiny_model

    from biollm_engine.training import TrainConfig, train

    model = make_tiny_model("gpt_neox", tmp / "tiny")
    cfg = TrainConfig(out=str(tmp / "run"), model=str(model), data=str(path),
                      hookpoint=["layers.1"], latents=256, k=8, tokens=128 * 100_000,
                      batch_size=128, warmup_steps=10, eval_cells=0, checkpoint_every=0,
                      device="cpu", max_length=64, shuffle_tokens=1024)
    job = w.runner.submit("train SAE on layers.1 (tiny test model)", functools.partial(train, cfg))
    w.docks["Jobs"].raise_()
    w.resizeDocks([w.docks["Jobs"]], [330], Qt.Orientation.Vertical)
    wait(app, 240, lambda: job.progress is not None and job.progress.step >= 150)
    wait(app, 1.5)
    w.grab().save(str(HERE / "training_job.png"))
    job.cancel()
    w.runner.wait(60)
    print("written:", *sorted(p.name for p in HERE.glob("*.png")))
    w.close()


if __name__ == "__main__":
    main()
