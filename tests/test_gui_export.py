"""Figures and tables leave the workbench as valid files; the Features panel's table is right."""

import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PySide6.QtGui import QImage

from biollm_engine.errors import BioLLMError
from workbench.state.session import Session
from workbench.views.embedding import EmbeddingView
from workbench.views.export import export_figure, export_table
from workbench.views.features import FeaturesPanel


@pytest.fixture
def cells_with_features(pbmc):
    """pbmc68k_reduced with a sparse non-negative activation matrix, as the write-back stores."""
    a = pbmc.copy()
    acts = np.maximum(a.obsm["X_pca"][:, :12], 0).astype(np.float32)
    acts[acts < 0.5] = 0
    a.obsm["X_sae"] = sp.csr_matrix(acts)
    return a, acts


@pytest.fixture
def session(qtbot, cells_with_features):
    s = Session()
    s.cells.set_data(cells_with_features[0])
    return s


def test_embedding_exports_png_svg_pdf(qtbot, session, tmp_path):
    view = EmbeddingView(session.cells)
    qtbot.addWidget(view)
    view.resize(800, 600)
    view.show()
    qtbot.waitExposed(view)
    png = view.export(tmp_path / "umap.png", width_px=1200, height_px=900, dpi=300)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = QImage(str(png))
    assert (img.width(), img.height()) == (1200, 900)
    assert round(img.dotsPerMeterX() * 0.0254) == 300
    # drawn cells at export resolution: far from a blank page
    arr = np.frombuffer(img.constBits(), np.uint8).reshape(900, img.bytesPerLine())[:, :1200 * 4]
    assert (arr.reshape(900, 1200, 4)[..., :3] < 200).any(axis=-1).mean() > 0.02
    assert view.oversample == 1.0  # the on-screen view is restored
    svg = view.export(tmp_path / "umap.svg", width_px=800)
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and any(e.tag.endswith("image") for e in root.iter())
    pdf = view.export(tmp_path / "umap.pdf", width_px=1200, height_px=900, dpi=300)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and b"%%EOF" in data[-64:]
    with pytest.raises(BioLLMError, match="use one of .png, .svg, .pdf"):
        export_figure(view.glw.ci, tmp_path / "umap.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["umap.pdf", "umap.png", "umap.svg"]


def test_features_panel_table_click_label_and_export(qtbot, session, cells_with_features,
                                                    tmp_path):
    a, acts = cells_with_features
    panel = FeaturesPanel(session)
    qtbot.addWidget(panel)
    assert panel.key == "X_sae"
    qtbot.waitUntil(lambda: panel.model.rowCount() == 12, timeout=10000)
    df = panel.model.df
    np.testing.assert_allclose(df["frequency"], (acts > 0).mean(0), rtol=1e-6)
    np.testing.assert_allclose(df["max"], acts.max(0), rtol=1e-6)
    per_type = pd.DataFrame(acts).groupby(a.obs["bulk_labels"].values, observed=True).mean()
    assert list(df["top_type"]) == list(per_type.idxmax(axis=0))
    # a click on the header sorts; the top row is then the most frequent feature
    panel.table.sortByColumn(2, panel.table.horizontalHeader().sortIndicatorOrder().DescendingOrder)
    top = panel.model.index(0, 0)
    panel.table.setCurrentIndex(top)
    j = int(np.argmax((acts > 0).mean(0)))
    np.testing.assert_array_equal(session.cells.values[f"X_sae:{j}"], acts[:, j])
    assert session.cells.colour_by == f"X_sae:{j}"
    # typing a label stores it in the workspace
    panel.model.setData(panel.model.index(0, 1), "monocyte program")
    assert session.workspace.feature_labels == {f"X_sae:{j}": "monocyte program"}
    panel.filter.setText("monocyte program")
    assert panel.model.rowCount() == 1
    for suffix in (".csv", ".tsv", ".parquet"):
        out = export_table(panel.model.df, tmp_path / f"features{suffix}")
        back = (pd.read_parquet(out) if suffix == ".parquet"
                else pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False))
        assert len(back) == 12 and list(back.columns) == list(df.columns)
        np.testing.assert_allclose(back["max"], df["max"])
    with pytest.raises(BioLLMError, match="table"):
        export_table(df, tmp_path / "features.xlsx")
    # selecting cells lists the features they share, highest mean activation first
    b_cells = np.flatnonzero(a.obs["bulk_labels"].values == "CD19+ B")
    session.cells.select(b_cells)
    expected = np.argsort(-acts[b_cells].mean(0), kind="stable")[:5]
    assert panel.top_of_selection == [j for j in expected if acts[b_cells, j].mean() > 0]
    assert f"{len(b_cells)} selected cells" in panel.selection_top.text()


def test_hover_names_a_cells_top_features(qtbot, session, cells_with_features):
    a, acts = cells_with_features
    panel = FeaturesPanel(session)
    view = EmbeddingView(session.cells)
    qtbot.addWidget(panel)
    qtbot.addWidget(view)
    i = int(np.argmax(acts.sum(1)))
    top = np.argsort(-acts[i], kind="stable")[:3]
    text = view.hover_text(i)
    assert a.obs_names[i] in text and "bulk_labels: " in text
    assert f"top features (X_sae): {top[0]} ({acts[i, top[0]]:.3g})" in text
