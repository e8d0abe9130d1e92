"""The Circuit panel on the demo workspace: build, live pruning, node detail, edits, exports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import biollm_engine.circuits as circuits
from biollm_engine.circuits import Edit, intervene
from biollm_engine.circuits.prune import prune
from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
from workbench.state.session import Session
from workbench.views.circuit_graph import LABEL_GAP

from gui_helpers import wait_for
from test_circuits_export import Link, Model
from test_gui_dialogs import small_workspace

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
TOP_GENES, MAX_FEATURES = 10, 30


@pytest.fixture(scope="module")
def built(qapp):
    """The panel with one cell's circuit built through a real job; attribute() calls counted."""
    from workbench.jobs import JobRunner
    from workbench.views.circuit import CircuitPanel

    calls = []
    real = circuits.attribute

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(circuits, "attribute", counted)
        session = Session()
        session.open_workspace(DEMO)
        path = DEMO / "cells.h5ad"
        session.cells.set_data(ad.read_h5ad(path), path)
        runner = JobRunner(session.jobs)
        panel = CircuitPanel(session, lambda: runner, top_genes=TOP_GENES,
                             max_features=MAX_FEATURES)
        panel.resize(900, 900)
        panel.show()
        cell = int(np.flatnonzero(session.cells.adata.obs["bulk_labels"] == "CD19+ B")[0])
        session.cells.set_current(cell)
        job = panel.explain_cell()
        wait_for(job)
        assert job.error == "" and panel.state.graph is not None
        yield {"panel": panel, "calls": calls, "cell": cell, "runner": runner}
        panel.close()


def drawn_edges(panel) -> set[tuple[int, int]]:
    s, t, _ = panel.items.drawn_edges
    return set(zip(s.tolist(), t.tolist()))


def drawn_segments(panel) -> int:
    return sum(len(item.xData) // 2 for item in panel.items.edges.values()
               if item.xData is not None)


def test_build_draws_the_engines_pruned_graph(built):
    panel = built["panel"]
    g = panel.state.graph
    assert built["calls"] == [1]
    assert g.meta["cell"] == built["cell"]
    engine = prune(g, 0.8, 0.98)
    drawn_nodes = sorted(int(p.data()) for p in panel.items.nodes.points())
    assert drawn_nodes == engine.nodes.tolist()
    assert drawn_edges(panel) == {(s, t) for s, t, _ in engine.edges()}
    assert drawn_segments(panel) == len(engine.edges()) > 0
    # genes of the cell are single input nodes, however many tokens each has
    labels = [lab.strip() for lab in g.input_labels]
    with CellDataset(DEMO / "cells.h5ad", CellSentenceConfig(top_k=TOP_GENES)) as ds:
        sentence = [x.upper() for x in ds.sentence(built["cell"])]
    assert [lab for lab in labels if lab.upper() in sentence] == sentence
    assert "features" in panel.summary.text() and g.logit_labels[0].strip() in panel.summary.text()
    # tokens outside the cell sentence (the template's words, the final ":") are drawn and
    # counted as prompt tokens, not genes; no two labels of a row print over each other
    items = panel.items
    prompt = {g.input_start + n for n, pos in enumerate(g.input_positions)
              if not g.token_genes[pos[0]]}
    assert prompt and {i for i in range(g.n_nodes) if items.kinds[i] == "prompt"} == prompt
    drawn_prompt = len(prompt & set(drawn_nodes))
    assert f"{drawn_prompt} prompt tokens" in panel.summary.text()
    shown = [(lab.pos().x(), lab.pos().y(), lab.textItem.toPlainText())
             for lab in items.labels if lab.isVisible()]
    assert len(shown) > 5
    for a, (x, y, _) in enumerate(shown):
        assert all(abs(x - x2) >= LABEL_GAP for x2, y2, _ in shown[a + 1:] if y2 == y)
    assert any(text.startswith("“") for *_, text in shown if text != g.logit_labels[0].strip())


def test_threshold_prunes_live_without_recomputing(built):
    panel = built["panel"]
    g = panel.state.graph
    before = drawn_edges(panel)
    for node_t, edge_t in ((0.5, 0.98), (0.95, 0.9), (0.8, 0.98)):
        panel.node_slider.setValue(node_t)
        panel.edge_slider.setValue(edge_t)
        engine = prune(g, node_t, edge_t)
        assert sorted(int(p.data()) for p in panel.items.nodes.points()) == engine.nodes.tolist()
        assert drawn_edges(panel) == {(s, t) for s, t, _ in engine.edges()}
        if node_t == 0.5:
            assert drawn_edges(panel) != before
    assert drawn_edges(panel) == before
    assert built["calls"] == [1]


def test_click_a_node_shows_its_detail(built):
    panel = built["panel"]
    st, g = panel.state, panel.state.graph
    points = {int(p.data()): p for p in panel.items.nodes.points()}
    feature = next(i for i in st.pruned.nodes if g.kind(int(i)) == "feature")
    panel.items.nodes.sigClicked.emit(panel.items.nodes, [points[int(feature)]], None)
    text = panel.detail.text()
    layer, pos = g.layer_pos(int(feature))
    assert st.node == feature
    assert f"layer {layer} transcoder, feature {int(g.features[feature, 2])}" in text
    assert f"position {pos}" in text
    with CellDataset(DEMO / "cells.h5ad", CellSentenceConfig(top_k=TOP_GENES)) as ds:
        sentence = [x.upper() for x in ds.sentence(built["cell"])]
    gene = sentence[2]
    node = g.input_start + [lab.strip().upper() for lab in g.input_labels].index(gene)
    panel.items.nodes.sigClicked.emit(panel.items.nodes, [points[node]], None)
    assert f"expression rank 3 of {len(sentence)}" in panel.detail.text()
    # hovering a node highlights the edges on its paths, all of them drawn edges
    panel.items.show_paths(int(feature))
    hx = panel.items.highlight.xData
    assert hx is not None and len(hx) > 0
    panel.items.show_paths(None)


def test_ablation_changes_the_logit_as_the_engine_computes(built):
    panel = built["panel"]
    st, g = panel.state, panel.state.graph
    row = g.adjacency[g.logit_start, : g.n_features].abs()
    top = int(row.argmax())
    st.select_node(top)
    r = panel.edit_picked()
    layer, pos, feat = (int(v) for v in g.features[top])
    direct = intervene(st.engine.rm, g.input_ids, [Edit(layer, pos, feat, "ablate")],
                       target=int(g.logit_ids[0]))
    assert r.target_logit_after == pytest.approx(direct.target_logit_after, abs=1e-5)
    assert r.target_logit_change != 0
    # in the frozen replacement model the change is the feature's direct edge to the logit
    frozen = panel.edit_picked(frozen=True)
    assert frozen.target_logit_change == pytest.approx(
        -float(g.adjacency[g.logit_start, top]), abs=1e-4)
    assert len(r.labels) == 10 and "target logit" in panel.result.text()
    assert len(panel.bars.listDataItems()) + len(panel.bars.getPlotItem().items) > 0
    # every cell type named in full beside its bar
    assert [t for _, t in panel.bars.getAxis("left")._tickLevels[0]] == list(r.labels)
    # attribution vs ablation: a legend says which marker is which model
    job = panel.run_ablation_check(top=2)
    wait_for(job)
    legend = panel.scatter.getPlotItem().legend
    assert [label.text for _, label in legend.items] == ["live model", "frozen model"]
    assert "logit" in panel.scatter.getAxis("left").labelText


def test_edit_selected_cells_counts_changed_predictions(built):
    panel = built["panel"]
    st, cells = panel.state, panel.session.cells
    row = st.graph.adjacency[st.graph.logit_start, : st.graph.n_features].abs()
    st.select_node(int(row.argmax()))
    panel.mode.setCurrentText("scale")
    panel.value.setValue(20.0)
    cells.select(np.arange(6))
    forwards = []
    hook = st.engine.lm.base.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        job = panel.edit_selected_cells()
        wait_for(job)
    finally:
        hook.remove()
    assert job.error == ""
    before_after = job.result
    assert len(forwards) == 2  # the six cells in one batch: before and after, one pass each
    changed = int((before_after[:, 0] != before_after[:, 1]).sum())
    assert f"<b>{changed}</b> of 6 selected cells" in panel.result.text()
    marks = np.asarray(cells.values["changed by the circuit edit"], dtype=object)
    assert (marks[:6] == "changed").sum() == changed and set(marks[:6]) <= {"changed", "unchanged"}
    assert pd.isna(marks[6:]).all()  # cells not edited: grey, unlabelled
    c = cells.colouring()  # a legend of two labels, not a colour bar over 0..1
    assert c.kind == "categorical" and c.categories == ["changed", "unchanged"]
    # each cell as the engine edits it alone (every position, the same feature edit)
    g, j = st.graph, int(row.argmax())
    layer, feat = int(g.features[j, 0]), int(g.features[j, 2])
    with CellDataset(DEMO / "cells.h5ad", CellSentenceConfig(top_k=TOP_GENES)) as ds:
        for n, ex in enumerate(ds.examples(st.engine.lm.tokenizer, list(range(6)))):
            edits = [Edit(layer, p, feat, "scale", 20.0) for p in range(len(ex.input_ids))]
            r = intervene(st.engine.rm, ex.input_ids, edits)
            assert tuple(before_after[n]) == (r.base_prediction_id, r.prediction_id)
    panel.mode.setCurrentText("ablate")
    panel.value.setValue(0.0)


def test_exports_are_valid_files(built, tmp_path):
    panel = built["panel"]
    for suffix, magic in ((".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF")):
        out = panel.export_figure(tmp_path / f"circuit{suffix}", 600)
        assert out.read_bytes().startswith(magic)
    svg = panel.export_figure(tmp_path / "circuit.svg", 600)
    assert ET.parse(svg).getroot().tag.endswith("svg")
    data = json.loads(panel.state.export_json(tmp_path / "circuit.json").read_text())
    model = Model.model_validate(data)
    for link in model.links:
        Link.model_validate(link)
    assert len(model.links) == int(panel.state.pruned.edge_mask.sum())
    nodes, edges = panel.state.export_csv(tmp_path / "c_")
    assert len(pd.read_csv(edges)) == len(model.links)
    assert len(pd.read_csv(nodes)) == len(panel.state.pruned.nodes)
    st = panel.state
    st.select_node(int(st.graph.adjacency[st.graph.logit_start, : st.graph.n_features]
                       .abs().argmax()))
    panel.edit_picked()
    from workbench.views.export import export_table

    table = pd.read_csv(export_table(st.intervention_table(), tmp_path / "edit.csv"))
    assert list(table.columns) == ["cell_type", "probability_before", "probability_after",
                                   "change"]
    assert table["change"].to_numpy() == pytest.approx(
        (table["probability_after"] - table["probability_before"]).to_numpy(), abs=1e-6)


def test_window_docks_the_circuit_panel_from_the_analyse_menu(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from workbench.views.circuit import CircuitPanel
    from workbench.window import MainWindow

    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    assert "Circuit" not in w.docks  # nothing heavy before it is asked for
    menu = next(a.menu() for a in w.menuBar().actions() if a.text() == "&Analyse")
    next(a for a in menu.actions() if a.text() == "Circuit explorer").trigger()
    assert isinstance(w.docks["Circuit"].widget(), CircuitPanel)
    assert w.docks["Circuit"].widget().session is w.session


def test_aggregate_over_cells_of_one_type_counts_recurrence(built):
    from biollm_engine.circuits.aggregate import aggregate
    from biollm_engine.circuits.pipeline import cell_input

    panel = built["panel"]
    view = panel.open_view("aggregate")
    view.cell_type.setCurrentText("CD19+ B")
    view.n_cells.setValue(2)
    job = view.run()
    wait_for(job)
    agg = view.agg
    assert agg is not None and agg.n_graphs == 2
    assert len(view.nodes.points()) == len(agg.keys)
    assert (agg.counts >= 1).all() and (agg.counts <= 2).all()
    # the same as aggregating the two cells' graphs directly
    cells = np.flatnonzero(panel.cells.adata.obs["bulk_labels"] == "CD19+ B")[:2]
    st = panel.state
    assert cells[0] == built["cell"]  # its graph is the one the panel built
    with CellDataset(DEMO / "cells.h5ad", CellSentenceConfig(top_k=TOP_GENES)) as ds:
        graphs = [st.graph]
        for c in cells[1:]:
            prompt, ids, genes, meta = cell_input(ds, int(c), st.engine.lm.tokenizer)
            graphs.append(circuits.attribute(st.engine.lm, st.engine.rm, prompt, input_ids=ids,
                                             max_features=MAX_FEATURES, token_genes=genes,
                                             merge_genes=True))
    direct = aggregate(graphs, 0.5, st.node_threshold)
    assert direct.keys == agg.keys
    np.testing.assert_array_equal(direct.counts, agg.counts)
    assert "2 cells" in view.summary.text() and "/2)" in view.top.text()
    view.close()


def test_layer_weights_heatmap_lists_the_top_connections(built):
    from biollm_engine.circuits import feature_to_feature_weights

    panel = built["panel"]
    view = panel.open_view("weights")
    view.show_layers(0, 2)
    rm = panel.state.engine.rm
    w = feature_to_feature_weights(rm.transcoders[0], rm.transcoders[2], panel.state.engine.lm)
    np.testing.assert_allclose(view.image.image, w.numpy(), rtol=1e-5, atol=1e-6)
    i, j, v = view.connections[0]
    assert abs(v) == pytest.approx(float(w.abs().max()))
    assert f"{i}→{j}" in view.list.text()
    view.show_layers(2, 0)
    assert "earlier layer to a later one" in view.list.text()
    view.close()


def test_clicking_a_feature_node_opens_its_features_detail(qtbot, tmp_path):
    """Window wiring end to end on 60 demo cells: circuit, click, the transcoder analysed (a
    job), its feature chosen in the Features table with detail and cell colours."""
    from PySide6.QtCore import QSettings

    from workbench.state.features import analysis_folder
    from workbench.window import MainWindow

    small_workspace(tmp_path)
    session = Session()
    w = MainWindow(session, QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.open_workspace(tmp_path)
    qtbot.waitUntil(lambda: session.cells.adata is not None, timeout=30_000)
    panel = w.open_panel("Circuit").widget()
    panel.top_genes, panel.max_features = TOP_GENES, MAX_FEATURES
    session.cells.set_current(session.cells.n_cells - 1)
    wait_for(panel.explain_cell())
    st, g = panel.state, panel.state.graph
    node = next(int(i) for i in st.pruned.nodes if g.kind(int(i)) == "feature")
    layer, j = int(g.features[node, 0]), int(g.features[node, 2])
    points = {int(p.data()): p for p in panel.items.nodes.points()}
    panel.items.nodes.sigClicked.emit(panel.items.nodes, [points[node]], None)
    features = w.features_panel
    # the detail opens beside the circuit, not in a tab behind it
    assert w.docks["Circuit"] not in w.tabifiedDockWidgets(w.docks["Features"])
    tc_path = str(st.engine.rm.transcoders[layer].path)
    assert features.dictionary.currentData() == str(Path(tc_path).resolve())
    wait_for(features.analysis_job, timeout=300)
    assert features.analysis_job.error == ""
    assert (analysis_folder(tmp_path, tc_path) / "table.parquet").exists()  # cached for next time
    assert features.results.num_features == st.engine.rm.transcoders[layer].num_latents
    assert features.detail.feature == j and features.feature == j
    row = features.table.currentIndex().row()
    assert features.model.frame_row(row) == j
    assert session.cells.colour_by.startswith(f"X_{analysis_folder(tmp_path, tc_path).name}:{j}")
    assert not features.tabs.isHidden()
    assert w.runner.wait(120)  # the clicked cell's sentence colouring, started by the feature
