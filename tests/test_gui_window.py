"""The main window driven as a user would: drops, colouring, selection, errors, workspaces."""

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPointF, QRectF, QSettings, QUrl
from PySide6.QtWidgets import QMessageBox

from biollm_engine.inputs.cells import CellDataset
from workbench.window import MainWindow


@pytest.fixture
def messages(monkeypatch):
    """Every message box the window shows, as (kind, text), instead of a modal dialog."""
    shown = []
    for kind in ("critical", "information", "warning"):
        monkeypatch.setattr(QMessageBox, kind, lambda parent, title, text, *a, k=kind, **kw:
                            shown.append((k, text)) or QMessageBox.StandardButton.Ok)
    return shown


@pytest.fixture
def window(qtbot, tmp_path, messages):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    qtbot.waitExposed(w)
    return w


def drop(window, *paths):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    window.handle_drop(mime)


def load(qtbot, window, path, n):
    drop(window, path)
    qtbot.waitUntil(lambda: window.session.cells.n_cells == n, timeout=20000)
    qtbot.wait(50)


def test_window_opens_empty_with_panels_and_hint(window):
    assert set(window.docks) == {"Data", "Model & dictionaries", "Features", "Jobs", "Log"}
    assert window.embedding.stack.currentWidget() is window.embedding.empty
    assert "Drop an .h5ad" in window.embedding.empty.text()
    assert "Memory" in window.machine_label.text()


def test_a_damaged_fasta_is_one_error_line(window, messages, tmp_path):
    bad = tmp_path / "broken.fa.gz"
    bad.write_bytes(b"not gzip at all")
    drop(window, bad)
    assert len(messages) == 1 and messages[0][0] == "critical"
    assert "broken.fa.gz" in messages[0][1] and "\n" not in messages[0][1].strip()


def test_drop_h5ad_shows_every_cell_coloured_by_type(qtbot, window, pbmc, pbmc_h5ad):
    load(qtbot, window, pbmc_h5ad, 700)
    view, cells = window.embedding, window.session.cells
    assert view.stack.currentWidget() is view.glw
    np.testing.assert_allclose(cells.coords, pbmc.obsm["X_umap"][:, :2], rtol=1e-6)
    # every cell is drawn somewhere in the rendered image
    assert len(np.unique(view._fp.cell)) == 700
    img = view.rendered_image()
    assert (img[..., 3] > 0).mean() > 0.01
    # default colouring: the cell-type column, with scanpy's stored colours, one legend entry each
    assert cells.colour_by == "bulk_labels"
    assert view.legend_entries() == list(pbmc.obs["bulk_labels"].cat.categories)
    assert len(view.legend_entries()) == 10
    drawn = {tuple(c) for c in img[img[..., 3] > 0][:, :3].reshape(-1, 3)}
    stored = {tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in pbmc.uns["bulk_labels_colors"]}
    assert stored <= drawn
    assert "700 cells" in window.data_panel.summary.text()
    assert str(pbmc_h5ad.resolve()) in window.session.workspace.data


def test_colour_by_continuous_vector_greys_zeros_beneath(qtbot, window, pbmc_h5ad):
    load(qtbot, window, pbmc_h5ad, 700)
    cells, view = window.session.cells, window.embedding
    values = np.where(np.arange(700) % 2 == 0, np.linspace(0, 5, 700), 0.0)
    cells.set_values(values, "feature 7")
    assert view.colour_bar.scene() is not None and view.legend.scene() is None
    c = cells.colouring()
    assert c.kind == "continuous" and c.vmin == 0.0 and c.vmax == pytest.approx(values.max())
    assert view.colour_bar.levels() == pytest.approx((0.0, values.max()))
    assert (c.levels[values == 0] == 0).all() and (c.levels[values > 0] > 0).all()
    # an active cell is drawn over an inactive one at the same place
    keys = view._pal.keys
    assert keys[values > 0].min() > keys[values == 0].max()
    assert "feature 7" in [window.data_panel.colour.itemText(i)
                           for i in range(window.data_panel.colour.count())]
    cells.set_colour("n_genes")
    assert cells.colouring().kind == "continuous"
    assert view.colour_bar.levels() == pytest.approx(
        (cells.adata.obs["n_genes"].min(), cells.adata.obs["n_genes"].max()))
    cells.set_colour("bulk_labels")
    assert view.colour_bar.scene() is None and len(view.legend_entries()) == 10


def test_colour_bar_is_titled_with_what_the_colours_measure(qtbot, window, pbmc_h5ad):
    load(qtbot, window, pbmc_h5ad, 700)
    cells, view = window.session.cells, window.embedding
    cells.set_values(np.linspace(0, 3, 700), "X_sae:7", "max activation over the cell's tokens")
    assert view.colour_bar.axis.labelText == "max activation over the cell's tokens"
    assert view.colour_bar.axis.label.isVisible()
    cells.set_colour("n_genes")  # an obs column: its own name
    assert view.colour_bar.axis.labelText == "n_genes"
    cells.set_colour("X_sae:7")  # the unit stays with its vector
    assert view.colour_bar.axis.labelText == "max activation over the cell's tokens"


def test_rectangle_selection_equals_numpy_filter(qtbot, window, pbmc, pbmc_h5ad):
    load(qtbot, window, pbmc_h5ad, 700)
    xy = pbmc.obsm["X_umap"]
    rect = QRectF(QPointF(-5.0, -2.0), QPointF(5.0, 6.0))
    window.embedding._select_rect(rect)  # what the drag handler calls when the mouse is released
    expected = np.flatnonzero((xy[:, 0] >= -5) & (xy[:, 0] <= 5) & (xy[:, 1] >= -2)
                              & (xy[:, 1] <= 6))
    assert 0 < len(expected) < 700
    np.testing.assert_array_equal(window.session.cells.selection, expected)
    assert f"{len(expected)} of 700" in window.data_panel.selected.text()
    # selected cells are drawn above the rest
    keys = window.embedding._pal.keys
    sel = np.zeros(700, bool)
    sel[expected] = True
    assert keys[sel].min() > keys[~sel].max()


def test_lasso_selection_and_click_shows_cell_sentence(qtbot, window, pbmc, pbmc_h5ad):
    load(qtbot, window, pbmc_h5ad, 700)
    cells = window.session.cells
    xy = pbmc.obsm["X_umap"]
    cells.select_polygon([(-20, -20), (20, -20), (20, 20)])  # triangle below y = x
    np.testing.assert_array_equal(cells.selection, np.flatnonzero(xy[:, 1] < xy[:, 0]))
    i = window.embedding.cell_at(*xy[0])
    assert i is not None and np.linalg.norm(xy[i] - xy[0]) < 1.0
    window.embedding._click(*xy[i])
    chips = window.data_panel.sentence.genes
    # the engine's cell sentence (X is scaled, so raw is ranked), highest expression first
    assert chips == CellDataset(pbmc_h5ad).sentence(i)[:len(chips)]
    row = pbmc.raw.X[i].toarray().ravel()
    genes = [g.upper() for g in pbmc.raw.var_names]
    chip_values = [row[genes.index(g)] for g in chips]
    np.testing.assert_array_equal(chip_values, np.sort(row)[::-1][:len(chips)])
    assert cells.cell_id(i) in window.data_panel.sentence.header.text()
    assert "bulk_labels" in window.embedding.hover_text(i)


def test_corrupt_h5ad_gives_error_dialog_and_app_keeps_working(qtbot, window, messages,
                                                             tmp_path, pbmc_h5ad):
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"\x89HDF\r\n\x1a\nthis is not really hdf5" * 10)
    drop(window, bad)
    qtbot.waitUntil(lambda: bool(messages), timeout=10000)
    kind, text = messages[0]
    assert kind == "critical" and "broken.h5ad" in text and "not a readable .h5ad" in text
    assert window.session.cells.adata is None
    load(qtbot, window, pbmc_h5ad, 700)  # still works afterwards


def test_unknown_file_gets_a_message(qtbot, window, messages, tmp_path):
    odd = tmp_path / "notes.docx"
    odd.write_text("hello")
    drop(window, odd)
    assert messages and messages[0][0] == "information" and "notes.docx" in messages[0][1]
    qtbot.waitUntil(lambda: "notes.docx" in window.log_view.toPlainText())


def test_drop_sequences_dictionaries_and_models(window, tmp_path):
    fasta = tmp_path / "chr1.fa"
    fasta.write_text(">chr1\nACGT\n")
    sparsify = tmp_path / "sae"
    (sparsify / "layers.1").mkdir(parents=True)
    (sparsify / "layers.1" / "cfg.json").write_text(
        '{"expansion_factor": 8, "k": 16, "d_in": 64}')
    (sparsify / "layers.1" / "sae.safetensors").write_bytes(b"")
    model = tmp_path / "pythia-tiny"  # the panel reads only these two files
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt_neox", "num_hidden_layers": 2, '
                                       '"hidden_size": 64, "vocab_size": 300}')
    (model / "tokenizer.json").write_text("{}")
    drop(window, fasta, sparsify, model)
    ws = window.session.workspace
    assert ws.sequences == [str(fasta.resolve())]
    assert window.data_panel.sequences.item(0).text() == "chr1.fa"
    tracks = window.docks["Tracks"].widget()  # the genome browser shows the dropped file
    assert tracks.path == fasta and tracks.seq == "ACGT"
    assert window.models_panel.dictionary_names() == ["layers.1"]
    d = window.models_panel.tree.topLevelItem(1).child(0)
    assert [d.text(i) for i in range(1, 6)] == ["sae", "64", "512", "16", "sparsify"]
    assert ws.model == str(model.resolve())
    m = window.models_panel.tree.topLevelItem(0).child(0)
    assert m.text(1) == "gpt_neox" and m.text(3) == "2 layers" and m.text(5) == "vocab 300"
    # the model's numbers sit in the dictionaries' columns: each header says what both mean
    header = window.models_panel.tree.headerItem()
    assert "layers" in header.toolTip(3) and "latents" in header.toolTip(3)
    assert "vocabulary" in header.toolTip(5) and all(header.toolTip(i) for i in range(6))
    assert str(fasta.resolve()) in window.recent_files()


def test_workspace_save_and_reopen_restores_data_and_view(qtbot, window, pbmc_h5ad, tmp_path):
    load(qtbot, window, pbmc_h5ad, 700)
    window.session.cells.set_colour("louvain")
    window.session.workspace.feature_labels["X_sae:3"] = "B-cell marker"
    out = window.save_workspace(tmp_path / "ws")
    assert (out / "workspace.json").is_file()
    window.session.cells.set_colour("phase")
    window.open_path(tmp_path / "ws")
    qtbot.waitUntil(lambda: window.session.cells.colour_by == "louvain", timeout=20000)
    assert window.session.workspace.feature_labels == {"X_sae:3": "B-cell marker"}


def test_layout_is_remembered(qtbot, tmp_path, messages):
    path = str(tmp_path / "layout.ini")
    w = MainWindow(settings=QSettings(path, QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    w.docks["Features"].hide()
    w.close()
    w2 = MainWindow(settings=QSettings(path, QSettings.Format.IniFormat))
    qtbot.addWidget(w2)
    w2.show()
    assert not w2.docks["Features"].isVisible() and w2.docks["Data"].isVisible()


def test_closing_during_a_job_asks_then_cancels_or_waits(qtbot, tmp_path, monkeypatch, messages):
    from test_gui_jobs import work

    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    job = w.runner.submit("long", lambda progress, cancel: work(100_000, progress, cancel))
    qtbot.waitUntil(lambda: job.progress is not None, timeout=20000)
    asked = []
    answer = [QMessageBox.StandardButton.No]
    monkeypatch.setattr(QMessageBox, "question",
                        lambda parent, title, text, *a, **k: asked.append(text) or answer[0])
    assert not w.close()  # "No": the window stays and the job keeps running
    assert w.isVisible() and job.active and "1 job(s) still running" in asked[0]
    answer[0] = QMessageBox.StandardButton.Yes
    assert w.close()  # "Yes": the job is cancelled, then the window closes
    assert job.status == "cancelled" and not w.isVisible()


def test_cells_without_a_2d_embedding_get_a_umap_from_a_worker(qtbot, window, pbmc, tmp_path,
                                                               monkeypatch):
    import threading

    import anndata as ad
    from sklearn.neighbors import NearestNeighbors

    from workbench.state import expression

    a = pbmc.copy()
    del a.obsm["X_umap"]
    path = tmp_path / "no_umap.h5ad"
    a.write_h5ad(path)
    threads = []
    real = expression.compute_umap

    def recorded(adata):
        threads.append(threading.current_thread())
        return real(adata)

    monkeypatch.setattr(expression, "compute_umap", recorded)
    load(qtbot, window, path, 700)
    cells = window.session.cells
    assert cells.obsm_key == "X_pca"  # the first two components while the UMAP is computed
    assert not window.data_panel.umap_button.isHidden()
    job = window.session.jobs.jobs[-1]
    assert job.name == "UMAP of no_umap.h5ad"
    qtbot.waitUntil(lambda: cells.obsm_key == "X_umap", timeout=180_000)
    assert job.error == "" and threads and threads[0] is not threading.main_thread()
    xy = cells.coords
    assert xy.shape == (700, 2) and np.isfinite(xy).all()
    assert window.data_panel.umap_button.isHidden()
    # neighbours on the new UMAP share their cell type far more often than chance
    types = a.obs["bulk_labels"].to_numpy()
    _, nn = NearestNeighbors(n_neighbors=11).fit(xy).kneighbors(xy)
    same = (types[nn[:, 1:]] == types[:, None]).mean()
    chance = (a.obs["bulk_labels"].value_counts(normalize=True) ** 2).sum()
    assert same > 2 * chance
    assert "X_umap" not in ad.read_h5ad(path).obsm  # the user's file is left as it was
