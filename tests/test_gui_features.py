"""Features panel on the demo workspace: the engine's cached analysis in table, detail, heatmap."""

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.state.expression import read_cells
from workbench.state.features import FeatureResults, analysis_folder
from workbench.state.session import Session
from workbench.views.features import FeaturesPanel
from workbench.views.table import FrameModel, proxy_for

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
    p = FeaturesPanel(s)
    qtbot.addWidget(p)
    p.dictionary.setCurrentIndex(p.dictionary.findData(str((demo / SAE).resolve())))
    assert p.load_cached()
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
    # the sentence chips read the feature's mean activation on each gene's tokens
    g = int(np.argmax(cached.gene_mean[:, j]))
    assert cells.gene_values[str(cached.genes[g])] == pytest.approx(cached.gene_mean[g, j])


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
    panel.proxy.sort(0)
    panel.proxy.setData(panel.proxy.index(3, 1), "monocyte program")
    ws = panel.session.workspace
    assert ws.feature_labels == {"X_sae_layers.2:3": "monocyte program"}
    panel.session.save_workspace()
    again = Session()
    again.open_workspace(demo)
    assert again.workspace.feature_labels == {"X_sae_layers.2:3": "monocyte program"}
    panel.filter.setText("monocyte program")
    assert panel.proxy.rowCount() == 1
    for suffix in (".csv", ".tsv", ".parquet"):
        out = panel.export(tmp_path / f"features{suffix}")
        back = (pd.read_parquet(out) if suffix == ".parquet" else
                pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False))
        assert len(back) == panel.model.rowCount() == 512
        assert back.loc[back["feature"] == 3, "label"].item() == "monocyte program"
    # a re-export of a fresh table keeps the label written in the earlier file
    panel.model.df["label"] = ""
    back = pd.read_csv(panel.export(tmp_path / "features.csv"), keep_default_na=False)
    assert back.loc[back["feature"] == 3, "label"].item() == "monocyte program"


def test_16k_rows_sort_and_filter(qtbot):
    rng = np.random.default_rng(0)
    n = 16_384
    df = pd.DataFrame({"feature": np.arange(n), "label": [f"f{i}" for i in range(n)],
                       "frequency": rng.random(n), "best": rng.choice(["B", "T", "NK"], n)})
    model = FrameModel(df, editable=("label",))
    proxy = proxy_for(model)
    t = time.perf_counter()
    proxy.sort(2)
    proxy.setFilterFixedString("f123")
    print(f"16k rows: sort + filter {1000 * (time.perf_counter() - t):.1f} ms")
    shown = [int(proxy.data(proxy.index(i, 0))) for i in range(proxy.rowCount())]
    expected = [i for i in np.argsort(df["frequency"].to_numpy(), kind="stable")
                if "f123" in f"f{i}"]
    assert shown == expected
