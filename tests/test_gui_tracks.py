"""The Tracks panel on the DNA demo: open its FASTA, tracks with one value per base computed in
a job, zoom to single bases shows the letters, a click on a peak emits its feature, exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from gui_helpers import wait_for
from PySide6.QtCore import QCoreApplication, QPoint, QPointF, Qt

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo" / "dna"


@pytest.fixture(scope="module")
def panel(qapp):
    from workbench.jobs import JobRunner
    from workbench.state.session import Session
    from workbench.views.tracks import TracksPanel

    session = Session()
    session.open_workspace(DEMO)
    runner = JobRunner(session.jobs)
    panel = TracksPanel(session, lambda: runner)
    panel.resize(1000, 700)
    panel.show()
    panel.top.setValue(3)
    job = panel.open_sequence(DEMO / "heldout.fa")
    assert job is not None
    wait_for(job)
    assert job.error == ""
    yield panel
    panel.close()


def test_open_fasta_shows_one_value_per_base(panel):
    from biollm_engine.inputs.dna import read_sequences

    seq = "".join(c for r, _, _, c in read_sequences(DEMO / "heldout.fa") if r == 0)
    assert panel.seq == seq
    t = panel.tracks
    assert t.values.shape == (3, len(seq)) and len(panel.feature_plots) == 3
    for plot, v in zip(panel.feature_plots, t.values):
        x, y = plot.listDataItems()[0].getOriginalDataset()
        assert len(y) == len(seq) and np.array_equal(y, v)
        assert (v > 0).any()
    # annotations come from the workspace's BED: the record's CDS are drawn
    bars = [i for i in panel.ann_plot.items if type(i).__name__ == "BarGraphItem"]
    assert bars and panel.annotations is not None


def test_zoom_to_bases_shows_letters(panel):
    panel.zoom_all()
    QCoreApplication.processEvents()
    assert panel.visible_letters() == ""
    panel.zoom_to(100, 140)
    QCoreApplication.processEvents()
    assert panel.visible_letters() == panel.seq[100:140]
    lo, hi = panel.feature_plots[0].getViewBox().viewRange()[0]
    assert (lo, hi) == pytest.approx((100, 140), abs=0.5)  # tracks follow the ruler


def test_lanes_are_named_and_the_bases_lane_says_when_to_zoom(panel):
    ws = panel.session.workspace
    box = panel.dictionary_box
    # the dictionary as the Features panel names it; the path behind it is what is computed
    assert [box.itemText(i) for i in range(box.count())] == [Path(d).name
                                                             for d in ws.dictionaries]
    assert box.currentData() == ws.dictionaries[0] and "/" not in box.currentText()
    assert [p.getAxis("left").labelText for p in panel.feature_plots] == [
        f"feature {f}" for f in panel.tracks.features]
    assert "activation" in panel.status.text()
    assert panel.ann_plot.getAxis("left").labelText == "strand"
    panel.zoom_all()
    QCoreApplication.processEvents()
    assert panel.zoom_hint.isVisible() and "zoom in" in panel.zoom_hint.textItem.toPlainText()
    panel.zoom_to(100, 140)
    QCoreApplication.processEvents()
    assert not panel.zoom_hint.isVisible()


def test_click_on_peak_emits_feature(panel, qtbot):
    row = 1
    f, v = panel.tracks.features[row], panel.tracks.values[row]
    peak = int(np.argmax(v))
    panel.zoom_to(max(0, peak - 20), peak + 20)
    QCoreApplication.processEvents()
    vb = panel.feature_plots[row].getViewBox()
    scene = vb.mapViewToScene(QPointF(peak + 0.5, float(v[peak]) / 2))
    at = panel.glw.mapFromScene(scene)
    with qtbot.waitSignal(panel.feature_clicked, timeout=2000) as blocker:
        qtbot.mouseClick(panel.glw.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(at))
    assert blocker.args == [f]
    # ... and opens its detail: the strongest peak first, with its bases; double-click goes there
    assert panel.detail.isVisible() and panel.detail.feature == f
    rows = panel.detail.rows()
    assert rows[0][0] == peak and f"[{panel.seq[peak]}]" in rows[0][1]
    assert rows[0][1].replace(" ", "").replace("[", "").replace("]", "") == \
        panel.seq[peak - 10:peak + 11]
    assert all(v[p] > 0 for p, _ in rows) and len({p for p, _ in rows}) == len(rows)
    panel.detail.table.cellDoubleClicked.emit(len(rows) - 1, 0)
    lo, hi = vb.viewRange()[0]
    assert lo <= rows[-1][0] <= hi and hi - lo < 100
    # a click where the feature is silent opens nothing
    quiet = np.flatnonzero(v == 0)
    quiet = quiet[(quiet > 30) & (quiet < len(v) - 30)]
    silent = next(q for q in quiet if not v[q - 2:q + 3].any())  # a click reaches 1 base here
    panel.zoom_to(silent - 20, silent + 20)
    QCoreApplication.processEvents()
    scene = vb.mapViewToScene(QPointF(silent + 0.5, float(v.max()) / 2))
    got = []
    panel.feature_clicked.connect(got.append)
    qtbot.mouseClick(panel.glw.viewport(), Qt.MouseButton.LeftButton,
                     pos=QPoint(panel.glw.mapFromScene(scene)))
    QCoreApplication.processEvents()
    assert got == []


def test_exports(panel, tmp_path):
    for ext in ("png", "svg"):
        out = panel.export_figure(tmp_path / f"tracks.{ext}", width_px=900)
        assert out.stat().st_size > 1000
    from workbench.views.export import export_table

    export_table(panel.table(), tmp_path / "tracks.csv")
    df = pd.read_csv(tmp_path / "tracks.csv")
    assert len(df) == len(panel.seq) and "".join(df["base"]) == panel.seq
    assert np.allclose(df[f"feature_{panel.tracks.features[0]}"], panel.tracks.values[0])


def test_bad_feature_list_is_reported(panel):
    panel.features.setText("3,x")
    assert panel.compute() is None
    assert "comma-separated" in panel.status.text()
    panel.features.setText("")


def test_drop_genbank_shows_its_own_features(panel, tmp_path):
    """Runs last: it replaces the shown file. A dropped GenBank record brings its CDS as the
    annotation track; a dropped file that is not a sequence is reported, nothing shown changes."""
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqIO import write
    from Bio.SeqRecord import SeqRecord
    from PySide6.QtCore import QMimeData, QUrl

    from biollm_engine.demo.dna_data import load_records

    r = next(x for x in load_records() if x.heldout)
    rec = SeqRecord(Seq(r.seq[:2000]), id="piece", name="piece",
                    annotations={"molecule_type": "DNA"},
                    features=[SeqFeature(FeatureLocation(c.start, min(c.end, 2000), c.strand),
                                         type="CDS") for c in r.cds if c.start < 2000])
    write([rec], str(tmp_path / "piece.gb"), "genbank")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "piece.gb"))])
    panel.handle_drop(mime)
    wait_for(panel.job)
    assert panel.seq == r.seq[:2000] and panel.tracks.values.shape[1] == 2000
    assert set(panel.annotations["type"]) == {"CDS"}
    (tmp_path / "notes.txt").write_text("not a sequence\n")
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "notes.txt"))])
    panel.handle_drop(mime)
    assert "neither FASTA" in panel.status.text() and panel.seq == r.seq[:2000]
