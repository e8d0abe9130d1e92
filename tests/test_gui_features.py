"""Features panel on the demo workspace: the engine's cached analysis in table, detail, heatmap."""

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from workbench.state.expression import read_cells
from workbench.state.features import FeatureResults, analysis_folder
from workbench.jobs import JobRunner
from workbench.state.session import Session
from workbench.views.features import FeaturesPanel
from workbench.views.table import FrameModel

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
SAE = "dictionaries/sae/layers.2"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A copy of the demo workspace (labels get saved into it)."""
    ws = tmp_path_factory.mktemp("ws") / "demo"
    shutil.copytree(DEMO, ws)
    return ws


@pytest.fixture
def panel(qtbot, demo):
    s = Session()
    s.open_workspace(demo)
    s.cells.set_data(read_cells(demo / "cells.h5ad"), demo / "cells.h5ad")
    s.cells.set_type_key("bulk_labels")
    runner = JobRunner(s.jobs)
    p = FeaturesPanel(s, lambda: runner)
    qtbot.addWidget(p)
    p.dictionary.setCurrentIndex(p.dictionary.findData(str((demo / SAE).resolve())))
    assert p.load_cached(), ("the demo's shipped analysis is stale (its key covers the analysis "
                             "code): run python -m workbench.state.features and commit it")
    return p


def test_table_shows_every_analysed_feature_and_colours_by_one(panel, demo):
    cached = FeatureResults.load(analysis_folder(demo, demo / SAE))
    assert panel.model.rowCount() == cached.num_features == 512
    assert {"frequency", "max", "best_bulk_labels", "auroc_bulk_labels", "top_genes",
            "label"} <= set(panel.model.df.columns)
    j = int(np.argmax(cached.table["frequency"].to_numpy() * (cached.table["max"] > 0)))
    panel.show_feature(j)
    cells = panel.session.cells
    np.testing.assert_allclose(cells.values[cells.colour_by], cached.cell_max[:, j].toarray()
                               .ravel())
    assert cells.colouring().kind == "continuous"


def test_clicked_cells_sentence_takes_that_cells_own_activation(panel, qtbot):
    from workbench.views.data import DataPanel

    r, cells = panel.results, panel.session.cells
    data = DataPanel(panel.session)
    qtbot.addWidget(data)
    j = int(np.argmax(r.table["frequency"].to_numpy() * (r.table["max"] > 0)))
    col = r.cell_max[:, j].toarray().ravel()
    a, b = np.flatnonzero(col > 0)[:2]
    panel.show_feature(j)
    seen = {}
    for i in (a, b):
        cells.set_current(i)
        assert cells.gene_values == {}  # never the previous cell's values
        qtbot.waitUntil(lambda: cells.gene_values != {}, timeout=60_000)
        tokens = panel.cell_tokens
        assert tokens.cell == i
        # the cell's own maximum over its tokens is the analysis' value for this cell
        assert tokens.acts[:, j].max() == pytest.approx(col[i], rel=1e-4, abs=1e-5)
        assert max(cells.gene_values.values()) <= col[i] * (1 + 1e-4) + 1e-5
        assert set(cells.gene_values) <= {g for g, _ in cells.sentence(i)}
        seen[i] = dict(cells.gene_values)
        shown = [(g, v) for g, v in cells.gene_values.items() if g in data.sentence.genes]
        gene, v = max(shown, key=lambda kv: kv[1])  # the chips show the first 120 genes
        flow = data.sentence.flow
        chip = next(w for w in (flow.itemAt(k).widget() for k in range(flow.count()))
                    if w.text() == gene)
        assert f"value {v:.3g}" in chip.toolTip()
    assert seen[a] != seen[b]
    # another feature of the same cell: no new job, the cell's tokens are reused
    jobs = len(panel.session.jobs.jobs)
    panel.show_feature(j + 1 if j + 1 < r.num_features else j - 1)
    assert len(panel.session.jobs.jobs) == jobs and panel.cell_tokens.cell == b


def test_detail_and_heatmap_show_the_chosen_feature(panel, qtbot):
    r = panel.results
    cells = panel.session.cells
    j = int(r.table["max"].idxmax())
    panel.show_feature(j)
    d = panel.detail
    types = cells.adata.obs["bulk_labels"]
    direct = pd.Series(r.cell_max[:, j].toarray().ravel()).groupby(types.values,
                                                                   observed=True).mean()
    assert list(d.type_means) == list(direct.sort_values(ascending=False, kind="stable").index)
    for name, v in d.type_means.items():
        assert v == pytest.approx(direct[name])
    firing = [i for i, v in zip(r.top_cells[j], r.top_cell_values[j]) if i >= 0 and v > 0]
    assert d.top_cells.count() == len(firing) > 0
    d.top_cells.itemClicked.emit(d.top_cells.item(0))
    assert list(cells.selection) == [firing[0]] and cells.current == firing[0]
    assert "promotes" in d.lens.text() and str(r.promoted[j][0]) in d.lens.text()
    h = panel.heatmap
    assert h.matrix.shape == (min(60, 512), types.nunique())
    assert sorted(h.types) == sorted(types.unique())
    assert np.allclose(h.matrix.max(axis=1), 1.0)


def test_label_persists_in_workspace_and_exports(panel, demo, tmp_path):
    panel.model.sort(0)
    panel.model.setData(panel.model.index(3, 1), "monocyte program")
    ws = panel.session.workspace
    assert ws.feature_labels == {"X_sae_layers.2:3": "monocyte program"}
    panel.session.save_workspace()
    again = Session()
    again.open_workspace(demo)
    assert again.workspace.feature_labels == {"X_sae_layers.2:3": "monocyte program"}
    panel.filter.setText("monocyte program")
    assert panel.model.rowCount() == 1
    # exports write the whole table, in feature order, whatever the filter shows
    for suffix in (".csv", ".tsv", ".parquet"):
        out = panel.export(tmp_path / f"features{suffix}")
        back = (pd.read_parquet(out) if suffix == ".parquet" else
                pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False))
        assert len(back) == len(panel.model.df) == 512
        assert list(back["feature"]) == list(range(512))
        assert back.loc[back["feature"] == 3, "label"].item() == "monocyte program"
    # a re-export of a fresh table keeps the label written in the earlier file
    panel.model.df["label"] = ""
    back = pd.read_csv(panel.export(tmp_path / "features.csv"), keep_default_na=False)
    assert back.loc[back["feature"] == 3, "label"].item() == "monocyte program"


def test_16k_rows_sort_and_filter_show_the_right_rows(qtbot):
    rng = np.random.default_rng(0)
    n = 16_384
    freq = rng.random(n)
    freq[::7] = 0.5  # ties keep feature order in both directions
    df = pd.DataFrame({"feature": np.arange(n), "label": [f"f{i}" for i in range(n)],
                       "frequency": freq, "best": rng.choice(["B", "T", "NK"], n)})
    model = FrameModel(df, editable=("label",))
    t = time.perf_counter()
    model.sort(2)
    model.set_filter("F123")  # case-insensitive, any column
    print(f"16k rows: sort + filter {1000 * (time.perf_counter() - t):.1f} ms")

    def shown():
        return [int(model.data(model.index(i, 0))) for i in range(model.rowCount())]

    by_freq = np.argsort(freq, kind="stable")
    assert shown() == [i for i in by_freq if "f123" in f"f{i}"]
    model.sort(2, Qt.SortOrder.DescendingOrder)
    down = pd.Series(freq).sort_values(ascending=False, kind="stable").index
    assert shown() == [i for i in down if "f123" in f"f{i}"]
    model.set_filter("NK")  # a word of another column
    assert shown() == [i for i in down if df["best"][i] == "NK"]
    model.set_filter("")
    assert shown() == list(down)
    model.sort(1)  # text sorts as text: f0, f1, f10, f100, ...
    assert [model.data(model.index(i, 1)) for i in range(4)] == ["f0", "f1", "f10", "f100"]
    # an edit lands on the shown row's feature and is found by the filter at once
    model.sort(2)
    j = int(by_freq[5])
    assert model.setData(model.index(5, 1), "interferon")
    assert model.df["label"][j] == "interferon"
    model.set_filter("interferon")
    assert shown() == [j]


def test_table_selection_follows_its_row_through_sort_and_filter(qtbot):
    from PySide6.QtWidgets import QTableView

    df = pd.DataFrame({"feature": np.arange(6), "label": list("abcdef"),
                       "max": [3.0, 1.0, 5.0, 2.0, 4.0, 0.5]})
    model = FrameModel(df)
    view = QTableView(sortingEnabled=True)
    qtbot.addWidget(view)
    view.setModel(model)
    view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    view.setCurrentIndex(model.index(4, 0))  # feature 4
    view.sortByColumn(2, Qt.SortOrder.DescendingOrder)
    assert view.currentIndex().row() == 1  # max 4.0 is the second largest
    assert model.frame_row(view.currentIndex().row()) == 4
    model.set_filter("e")
    assert model.rowCount() == 1 and view.currentIndex().row() == 0


def test_without_a_table_the_panel_says_how_to_get_one(qtbot, demo):
    bare = FeaturesPanel(Session())
    qtbot.addWidget(bare)
    bare.show()
    assert bare.empty.isVisible() and "biollm features --write-h5ad" in bare.empty.text()
    assert not bare.analyse_button.isEnabled()  # no dictionary to analyse
    assert bare.analyse() is None and "File › Open workspace" in bare.empty.text()
    s = Session()
    s.open_workspace(demo)
    s.cells.set_data(read_cells(demo / "cells.h5ad"), demo / "cells.h5ad")
    p = FeaturesPanel(s, lambda: None)
    qtbot.addWidget(p)
    p.show()
    assert p.analyse_button.isEnabled()
    # each choice is named beside it
    names = {label.buddy(): label.text().replace("&", "") for label in p.findChildren(QLabel)
             if label.buddy() is not None}
    assert names == {p.dictionary: "Dictionary", p.source: "Activations"}
    # a dictionary with no analysis yet: the empty state names it and the button that makes one
    tc = str((demo / "dictionaries/transcoders/layers.0.mlp.in").resolve())
    i = p.dictionary.findData(tc)
    assert i >= 0
    p.dictionary.setCurrentIndex(i)
    p.dictionary.activated.emit(i)
    assert p.results is None and p.empty.isVisible() and not p.table.isVisible()
    assert "layers.0.mlp.in" in p.empty.text() and "Analyse" in p.empty.text()
    # a workspace change (an analysis recorded when a job ends) keeps the dictionary chosen
    s.record("analyses", demo / "analysis" / "elsewhere")
    assert p.dictionary.currentData() == tc


def test_undefined_numbers_read_as_a_dash_and_headers_say_what_they_mean(qtbot):
    from workbench.views.features import column_tip

    df = pd.DataFrame({"feature": [0, 1], "frequency": [0.0, 0.25],
                       "best_bulk_labels": ["", "CD19+ B"],
                       "auroc_bulk_labels": [np.nan, 0.93], "label": ["", ""]})
    model = FrameModel(df, header_tips=column_tip)
    assert [model.data(model.index(r, 3)) for r in range(2)] == ["–", "0.93"]  # not "nan"
    tips = [model.headerData(c, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
            for c in range(len(df.columns))]
    assert "fires" in tips[1] and "bulk_labels" in tips[2] and "AUROC" in tips[3]
    assert all(tips)
    model.sort(3)  # the dash is display only: sorting still reads the numbers
    assert model.frame_row(0) == 1


def test_the_workspaces_own_analysis_is_chosen_before_one_in_the_user_cache(qtbot):
    from workbench.state.features import write_folder
    from workbench.state.workspace import BUNDLED

    s = Session()
    s.open_workspace(BUNDLED)
    tc = next(d for d in s.workspace.dictionaries if d.endswith("layers.0.mlp.in"))
    scratch = write_folder(BUNDLED, tc)  # under the tests' own XDG_CACHE_HOME
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "table.parquet").write_bytes(b"an earlier session's analysis")
    try:
        p = FeaturesPanel(s)
        qtbot.addWidget(p)
        assert Path(p.dictionary.currentData()).parts[-2:] == ("sae", "layers.2")
    finally:
        shutil.rmtree(scratch)


def test_detail_fits_a_narrow_dock_and_says_what_each_plot_counts(qtbot):
    from PySide6.QtWidgets import QScrollArea

    from workbench.state.cells import CellsState
    from workbench.views.feature_detail import FeatureDetail

    results = FeatureResults.load(analysis_folder(DEMO, DEMO / SAE))  # read only, key unchecked
    d = FeatureDetail(CellsState())
    scroll = QScrollArea(widgetResizable=True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(d)  # as the Features panel holds it
    qtbot.addWidget(scroll)
    scroll.resize(260, 700)  # beside a circuit
    scroll.show()
    d.set_results(results)
    j = int(np.argmax(results.table["frequency"].to_numpy()))
    d.show_feature(j)
    qtbot.wait(50)
    assert d.columns == 1
    assert d.width() <= scroll.viewport().width()  # nothing cut off at the right edge
    for plot in (d.hist, d.genes, d.types):
        item = plot.getPlotItem()
        # nothing inside is wider than the plot: a long title would be cut off
        assert item.titleLabel.item.boundingRect().width() <= plot.width()
        assert item.getAxis("bottom").labelText
    assert d.hist.getPlotItem().getAxis("left").labelText == "tokens"
    assert "all genes" in d.genes.getPlotItem().getAxis("bottom").labelText
    assert d.top_cells.parentWidget() is d.cells_box
    assert "Top cells" in d.cells_box.findChild(QLabel).text()


def test_heatmap_has_a_colour_bar_saying_what_the_colours_are(qtbot):
    import anndata as ad

    from workbench.views.heatmap import HeatmapView

    results = FeatureResults.load(analysis_folder(DEMO, DEMO / SAE))
    types = ad.read_h5ad(DEMO / "cells.h5ad", backed="r").obs["bulk_labels"].values
    view = HeatmapView()
    qtbot.addWidget(view)
    view.show()
    view.show_results(results, types)
    bar = view.colour_bar
    assert bar.scene() is view.plot.scene() and bar.levels() == (0, 1)
    assert bar.axis.labelText.startswith("mean activation in the type")
    assert view.matrix.max() == pytest.approx(1.0)  # rows scaled to their max: the bar's top
    ticks = view.plot.getAxis("bottom")._tickLevels[0]
    assert 5 <= len(ticks) <= 11  # a few feature numbers, not one every 3 columns overlapping
