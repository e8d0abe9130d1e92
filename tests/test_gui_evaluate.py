"""The Evaluate panel on the demo workspace: metrics equal direct counts, cells marked."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PySide6.QtCore import QCoreApplication

from workbench.state.session import Session

from gui_helpers import wait_for

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"


@pytest.fixture(scope="module")
def evaluated(qapp):
    from workbench.jobs import JobRunner
    from workbench.views.evaluate import EvaluatePanel

    session = Session()
    session.open_workspace(DEMO)
    path = DEMO / "cells.h5ad"
    session.cells.set_data(ad.read_h5ad(path), path)
    runner = JobRunner(session.jobs)
    panel = EvaluatePanel(session, lambda: runner)
    panel.show()
    panel.format.setCurrentText("choice")
    panel.which.addItem("16")
    panel.which.setCurrentText("16")
    sae = next(i for i in range(panel.splice.count())
               if "sae" in str(panel.splice.itemData(i) or ""))
    panel.splice.setCurrentIndex(sae)
    job = panel.run()
    wait_for(job, 300)
    assert job.error == "", job.error
    yield panel
    panel.close()


def test_accuracy_equals_a_direct_count(evaluated):
    st = evaluated.state
    r, s = st.result, st.summary
    assert r.n_cells == 16 and len(st.rows) == 16
    obs = evaluated.cells.adata.obs
    truth = obs["bulk_labels"].astype(str).to_numpy()[st.rows]
    assert list(truth) == list(r.truth)
    correct = sum(t == p for t, p in zip(truth, r.predictions))
    assert s["accuracy"] == pytest.approx(correct / 16)
    assert f"accuracy <b>{s['accuracy']:.3f}</b>" in evaluated.summary.text()
    # the heatmap is the confusion matrix counted from the predictions
    img = evaluated.heat.image
    labels, predicted = s["confusion"]["labels"], s["confusion"]["predicted"]
    counted = np.zeros((len(labels), len(predicted)))
    for t, p in zip(r.truth, r.predictions):
        counted[labels.index(t), predicted.index(p)] += 1
    np.testing.assert_array_equal(img, counted)
    # bars: per-type accuracy from the same counts
    names, acc = st.per_type_accuracy()
    for name, a in zip(names, acc):
        rows = [i for i, t in enumerate(r.truth) if t == name]
        assert a == pytest.approx(np.mean([r.predictions[i] == name for i in rows]))
    np.testing.assert_allclose(evaluated.bars.opts["width"], acc)


def test_confusion_and_bars_name_every_type_in_full(evaluated):
    s = evaluated.state.summary
    labels, predicted = s["confusion"]["labels"], s["confusion"]["predicted"]
    matrix = np.asarray(s["confusion"]["matrix"])
    rows = [t for _, t in evaluated.heat_plot.getAxis("left")._tickLevels[0]]
    cols = [t for _, t in evaluated.heat_plot.getAxis("bottom")._tickLevels[0]]
    # each row its whole label and a number; each column that number (or its own name)
    assert rows == [f"{name}  {i + 1}" for i, name in enumerate(labels)]
    assert predicted[-1] == "unmatched"
    assert evaluated.heat_plot.getAxis("bottom").labelText == "predicted (? = unmatched)"
    assert cols == [str(i + 1) for i in range(len(labels))] + ["?"]
    assert len(set(cols)) == len(cols)
    # every non-empty square has its count written in it
    written = {(t.pos().y() - 0.5, t.pos().x() - 0.5): t.textItem.toPlainText()
               for t in evaluated.counts}
    assert written == {(i, j): str(int(n)) for (i, j), n in np.ndenumerate(matrix) if n}
    # the plots fit the panel: nothing drawn past its right edge
    evaluated.resize(420, 700)
    QCoreApplication.processEvents()
    assert evaluated.plots.ci.minimumWidth() <= evaluated.plots.viewport().width()
    names, _ = evaluated.state.per_type_accuracy()
    assert [t for _, t in evaluated.bar_plot.getAxis("left")._tickLevels[0]] == names


def test_wrong_and_changed_cells_are_marked_on_the_embedding(evaluated):
    st, cells = evaluated.state, evaluated.cells
    r = st.result
    wrong = evaluated.mark("wrong")
    expected = sorted(st.rows[[t != p for t, p in zip(r.truth, r.predictions)]].tolist())
    assert cells.selection.tolist() == expected == sorted(wrong.tolist())
    marks = np.asarray(cells.values["wrong prediction (evaluation)"], dtype=object)
    assert set(np.flatnonzero(marks == "wrong")) == set(expected)
    assert set(np.flatnonzero(marks == "right")) == set(st.rows) - set(expected)
    assert pd.isna(np.delete(marks, st.rows)).all()  # not evaluated: grey, no label
    c = cells.colouring()  # a legend naming both, not a colour bar over 0..1
    assert c.kind == "categorical" and c.categories == ["wrong", "right"]
    changed = evaluated.mark("changed")
    assert r.spliced_predictions is not None
    n_changed = sum(a != b for a, b in zip(r.predictions, r.spliced_predictions))
    assert len(changed) == n_changed
    assert st.summary["changed_fraction"] == pytest.approx(n_changed / 16)


def test_evaluation_exports_as_csv(evaluated, tmp_path):
    from workbench.views.export import export_table

    df = pd.read_csv(export_table(evaluated.state.table(), tmp_path / "eval.csv"))
    assert len(df) == 16
    assert df["correct"].mean() == pytest.approx(evaluated.state.summary["accuracy"])
    assert (df["row"].to_numpy() == evaluated.state.rows).all()


def test_bad_request_is_one_line_in_the_panel(qapp):
    from workbench.views.evaluate import EvaluatePanel

    panel = EvaluatePanel(Session(), lambda: None)
    assert panel.run() is None
    assert "Open cells" in panel.summary.text()
    assert panel.mark("wrong") is None
