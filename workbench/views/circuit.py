"""The Circuit panel: why did the model call this cell what it did?

Build the attribution graph of the current cell (or a typed prompt) in a job, prune it live with
the threshold sliders, click a node for its detail (hover shows its paths), edit features and
error nodes and see each cell type's probability move, and export the graph and the results.
"""

from __future__ import annotations

import logging

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QGridLayout, QHBoxLayout,
                               QLabel, QLineEdit, QPushButton, QSplitter, QToolButton,
                               QVBoxLayout, QWidget)
from superqt import QLabeledDoubleSlider

from biollm_engine.errors import BioLLMError

from ..state.colouring import MARKED, UNMARKED
from ..state.circuit import CircuitRequest, CircuitState, build, edit_cells
from ..state.session import Session
from .circuit_graph import NEGATIVE, POSITIVE, GraphItems
from .errors import guarded, show_error
from .export import ask_figure_path, export_figure, export_table

log = logging.getLogger("workbench")
PREDICTED = "(the prediction)"


def _slider(value: float, tip: str) -> QLabeledDoubleSlider:
    s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
    s.setRange(0.05, 1.0)
    s.setDecimals(2)
    s.setValue(value)
    s.setToolTip(tip)
    return s


class CircuitPanel(QWidget):
    feature_clicked = Signal(str, int)
    """a feature node was clicked: (its transcoder's folder, feature index)"""

    def __init__(self, session: Session, runner, parent=None, top_genes: int = 200,
                 max_features: int = 300):
        """`runner`: a callable giving the window's JobRunner (made on first use)."""
        super().__init__(parent)
        self.session, self.cells, self._runner = session, session.cells, runner
        self.state = CircuitState()
        self.top_genes, self.max_features = top_genes, max_features
        self.job = None

        self.explain = QPushButton("Explain current cell")
        self.explain.setToolTip("Build the attribution graph of the cell clicked on the embedding")
        self.target = QComboBox(toolTip="Which cell type's logit to explain")
        self.prompt = QLineEdit(placeholderText="…or type a prompt and press Enter")
        self.node_slider = _slider(0.8, "Keep the nodes holding this share of influence on the "
                                        "target (prunes live, nothing is recomputed)")
        self.edge_slider = _slider(0.98, "Keep the edges holding this share of edge influence")
        self.summary = QLabel("No circuit yet: click a cell on the embedding, then "
                              "<b>Explain current cell</b>.")
        self.summary.setWordWrap(True)

        self.glw = pg.GraphicsLayoutWidget()
        self.glw.setBackground("w")
        self.view = self.glw.addViewBox()
        self.view.setAspectLocked(False)
        self.items = GraphItems(self.view, self.state)
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        self.detail.setAlignment(Qt.AlignmentFlag.AlignTop)

        self.mode = QComboBox()
        self.mode.addItems(["ablate", "scale", "clamp"])
        self.value = QDoubleSpinBox(minimum=-100, maximum=100, value=0.0, decimals=2)
        self.value.setToolTip("factor for scale, activation for clamp")
        self.apply = QPushButton("Edit picked nodes")
        self.apply.setToolTip("Ctrl-click nodes to pick several; edits features and error nodes")
        self.apply_cells = QPushButton("…on selected cells")
        self.apply_cells.setToolTip("Apply the picked features' edit to every selected cell and "
                                    "count the cells whose predicted type changes")
        self.check = QPushButton("Attribution vs ablation")
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.bars = pg.PlotWidget(background="w")
        self.bars.setLabel("bottom", "Δ probability per type")
        self.bars.setMaximumHeight(230)
        self.scatter = pg.PlotWidget(background="w")
        self.scatter.setLabel("bottom", "attribution")
        self.scatter.setLabel("left", "logit drop, ablated")
        self.scatter.setMaximumHeight(230)
        # which marker is which model: the frozen one (attention and norms fixed) is what
        # attribution linearises, so its crosses sit on the diagonal
        self.scatter.addLegend(offset=(-5, 5), labelTextColor="#333333", labelTextSize="8pt")

        buttons = QHBoxLayout()
        for text, tip, slot in (("Figure…", "PNG, SVG or PDF", self.ask_export_figure),
                                ("JSON…", "circuit-tracer graph JSON", self.ask_export_json),
                                ("CSV…", "nodes and edges CSV", self.ask_export_csv),
                                ("Edit CSV…", "intervention result CSV",
                                 self.ask_export_intervention),
                                ("By cell type…", "circuits of many cells of one type, merged",
                                 lambda: self.open_view("aggregate")),
                                ("Layer weights…", "input-invariant feature-to-feature weights",
                                 lambda: self.open_view("weights"))):
            b = QToolButton(text=text, toolTip=tip)
            b.clicked.connect(lambda *_, f=slot: f())
            buttons.addWidget(b)
        buttons.addStretch(1)

        top = QGridLayout()
        top.addWidget(self.explain, 0, 0)
        top.addWidget(QLabel("Target"), 0, 1)
        top.addWidget(self.target, 0, 2)
        top.addWidget(self.prompt, 1, 0, 1, 3)
        top.addWidget(QLabel("Nodes"), 2, 0)
        top.addWidget(self.node_slider, 2, 1, 1, 2)
        top.addWidget(QLabel("Edges"), 3, 0)
        top.addWidget(self.edge_slider, 3, 1, 1, 2)
        edit = QHBoxLayout()
        for w in (self.mode, self.value, self.apply, self.apply_cells, self.check):
            edit.addWidget(w)
        lower = QWidget()
        lower_lay = QVBoxLayout(lower)
        lower_lay.setContentsMargins(0, 0, 0, 0)
        lower_lay.addWidget(self.detail)
        lower_lay.addLayout(edit)
        lower_lay.addWidget(self.result)
        plots = QHBoxLayout()
        plots.addWidget(self.bars)
        plots.addWidget(self.scatter)
        lower_lay.addLayout(plots)
        self.split = split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.glw)
        split.addWidget(lower)
        split.setSizes([500, 300])
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.summary)
        lay.addWidget(split, 1)
        lay.addLayout(buttons)

        self.explain.clicked.connect(lambda: self.explain_cell())
        self.prompt.returnPressed.connect(lambda: self.explain_prompt(self.prompt.text()))
        self.node_slider.valueChanged.connect(lambda v: self.state.set_thresholds(node=v))
        self.edge_slider.valueChanged.connect(lambda v: self.state.set_thresholds(edge=v))
        self.apply.clicked.connect(lambda: self.edit_picked())
        self.apply_cells.clicked.connect(lambda: self.edit_selected_cells())
        self.check.clicked.connect(lambda: self.run_ablation_check())
        self.items.nodes.sigClicked.connect(self._clicked)
        self.glw.scene().sigMouseMoved.connect(self._hover)
        self.state.graph_changed.connect(self.items.set_graph)
        self.state.pruned_changed.connect(self._on_pruned)
        self.state.node_changed.connect(self._on_node)
        self.state.intervention_changed.connect(self._on_intervention)
        self.cells.loaded.connect(self._fill_targets)
        self._fill_targets()

    # -- building -----------------------------------------------------------------------------
    def labels(self) -> list[str]:
        c = self.cells
        if c.adata is None or c.type_key is None:
            return []
        col = c.adata.obs[c.type_key]
        cats = col.cat.categories if hasattr(col, "cat") else sorted(col.unique())
        return [str(x) for x in cats]

    def _fill_targets(self) -> None:
        self.target.clear()
        self.target.addItems([PREDICTED] + self.labels())

    def request(self, cell: int | None = None, prompt: str = "") -> CircuitRequest:
        ws = self.session.workspace
        target = self.target.currentText()
        path = self.cells.path
        return CircuitRequest(model=ws.model or "", dictionaries=list(ws.dictionaries),
                              data=str(path) if path else "", cell=cell, prompt=prompt,
                              target="" if target == PREDICTED else target,
                              top_genes=self.top_genes, max_features=self.max_features,
                              labels=self.labels() or None)

    def explain_cell(self, cell: int | None = None):
        cell = self.cells.current if cell is None else cell
        if cell is None:
            self._error("Click a cell on the embedding first; its circuit is built.")
            return None
        return self._submit(self.request(cell=cell), f"circuit of cell {cell}")

    def explain_prompt(self, text: str):
        if not text.strip():
            return None
        return self._submit(self.request(prompt=text), "circuit of a prompt")

    def _submit(self, req: CircuitRequest, name: str):
        engine = self.state.engine
        job = self._runner().submit(name, lambda progress, cancel: build(req, engine, progress,
                                                                          cancel))
        self.job = job
        self.summary.setText(f"Building the {name}…")

        def done(status: str) -> None:
            if job.result is not None:
                graph, eng = job.result
                self.state.set_graph(graph, req, eng)
            elif job.error:
                self._error(job.error)

        job.finished.connect(done)
        return job

    # -- drawing ------------------------------------------------------------------------------
    def _on_pruned(self) -> None:
        self.items.redraw()
        pg_, g = self.state.pruned, self.state.graph
        kinds = self.items.kinds[pg_.nodes]
        where = (f"cell {g.meta['cell']} ({self.cells.cell_type(g.meta['cell'])})"
                 if "cell" in g.meta and self.cells.adata is not None else "the prompt")
        self.summary.setText(
            f"Why {where} → <b>{g.logit_labels[0].strip()}</b> "
            f"(p = {float(g.logit_probabilities[0]):.2f}): {int((kinds == 'feature').sum())} "
            f"features, {int((kinds == 'error').sum())} error nodes, "
            f"{int((kinds == 'input').sum())} genes, {int((kinds == 'prompt').sum())} prompt "
            f"tokens, {int(pg_.edge_mask.sum())} edges; "
            f"{pg_.kept_influence:.0%} of the influence kept. "
            f"<span style='color:{POSITIVE}'>excites</span> / "
            f"<span style='color:{NEGATIVE}'>inhibits</span>")

    def _clicked(self, _item, points, ev=None) -> None:
        if len(points):
            add = ev is not None and bool(ev.modifiers() & Qt.KeyboardModifier.ControlModifier)
            self.state.select_node(int(points[0].data()), add=add)

    def _hover(self, scene_pos) -> None:
        if self.state.graph is not None:
            self.items.show_paths(self.items.node_at(scene_pos))

    def _on_node(self) -> None:
        i = self.state.node
        if i is None:
            self.detail.setText("")
            return
        d = self.state.node_detail(i)
        lines = [f"<b>{d['label']}</b> ({d['kind']}, influence {d['influence']:.3f})"]
        if d["kind"] == "feature":
            lines.append(f"layer {d['layer']} transcoder, feature {d['feature']}, position "
                         f"{d['position']}, activation {d['activation']:.3g}")
            tc = self.state.engine.rm.transcoders.get(d["layer"]) if self.state.engine else None
            if getattr(tc, "path", None):  # the Features panel shows its full detail
                self.feature_clicked.emit(str(tc.path), d["feature"])
        elif d["kind"] == "input" and d.get("rank"):
            lines.append(f"gene {d['gene']}: expression rank {d['rank']} of {d['n_genes']} "
                         "in this cell")
        elif d["kind"] == "logit":
            lines.append(f"probability {d['probability']:.3f}")
        for key, title in (("top_in", "from"), ("top_out", "to")):
            if d[key]:
                lines.append(f"{title}: " + ", ".join(f"{n} ({w:+.3g})" for n, w in d[key]))
        picked = self.state.picked
        if len(picked) > 1:
            names = ", ".join(self.state.graph.label(j).strip() for j in picked)
            lines.append(f"picked for an edit: {names}")
        self.detail.setText("<br>".join(lines))

    # -- interventions ------------------------------------------------------------------------
    def edit_picked(self, nodes=None, frozen: bool = False):
        nodes = list(self.state.picked if nodes is None else nodes)
        try:
            return self.state.intervene(nodes, self.mode.currentText(), self.value.value(),
                                        frozen=frozen)
        except BioLLMError as e:
            self._error(e.message)
            return None

    def _on_intervention(self) -> None:
        r = self.state.intervention
        self.result.setText(
            f"{len(self.state.edits)} edit(s): prediction {r.base_prediction.strip()} → "
            f"<b>{r.prediction.strip()}</b>; target logit {r.target_logit_before:.3f} → "
            f"{r.target_logit_after:.3f} ({r.target_logit_change:+.3f})")
        self.bars.clear()
        if len(r.labels):
            change = r.prob_change
            y = np.arange(len(change))
            brushes = [pg.mkBrush(POSITIVE if v > 0 else NEGATIVE) for v in change]
            self.bars.addItem(pg.BarGraphItem(x0=0, y=y, width=change, height=0.7,
                                              brushes=brushes))
            self.bars.getAxis("left").setTicks([[(i, lab) for i, lab in enumerate(r.labels)]])

    def edit_selected_cells(self):
        st, c = self.state, self.cells
        feats = [j for j in st.picked if st.graph is not None and st.graph.kind(j) == "feature"]
        if not feats or not len(c.selection):
            self._error("Pick feature nodes in the circuit and select cells on the embedding.")
            return None
        g = st.graph
        spec = sorted({(int(g.features[j, 0]), int(g.features[j, 2]), self.mode.currentText(),
                        self.value.value()) for j in feats})
        cells = c.selection.copy()
        engine, data = st.engine, str(c.path)
        job = self._runner().submit(
            f"edit {len(spec)} feature(s) in {len(cells)} cells",
            lambda progress, cancel: edit_cells(engine, data, cells, spec, self.top_genes,
                                                progress, cancel))

        def done(status: str) -> None:
            if job.result is None:
                if job.error:
                    self._error(job.error)
                return
            changed = job.result[:, 0] != job.result[:, 1]
            marks = np.full(c.n_cells, None, dtype=object)  # cells not edited: grey
            marks[cells] = "unchanged"
            marks[cells[changed]] = "changed"
            self.result.setText(f"The edit changes the predicted type of "
                                f"<b>{int(changed.sum())}</b> of {len(cells)} selected cells "
                                "(coloured on the embedding).")
            c.set_labels(marks, "changed by the circuit edit", ["changed", "unchanged"],
                         [MARKED, UNMARKED])

        job.finished.connect(done)
        return job

    def run_ablation_check(self, top: int = 8):
        from biollm_engine.circuits import ablation_check

        st = self.state
        if st.graph is None:
            self._error("Build a circuit first.")
            return None
        rm, graph = st.engine.rm, st.graph
        job = self._runner().submit("attribution vs ablation",
                                    lambda progress, cancel: ablation_check(rm, graph, top))

        def done(status: str) -> None:
            if job.result is None:
                if job.error:
                    self._error(job.error)
                return
            df = job.result
            self.ablation = df
            self.scatter.clear()
            self.scatter.plot(df["attribution"], df["live_effect"], pen=None, symbol="o",
                              symbolBrush=POSITIVE, name="live model")
            self.scatter.plot(df["attribution"], df["frozen_effect"], pen=None, symbol="x",
                              symbolPen="#333333", name="frozen model")
            lo = float(min(df["attribution"].min(), 0))
            hi = float(max(df["attribution"].max(), 0))
            self.scatter.plot([lo, hi], [lo, hi],
                              pen=pg.mkPen("#999999", style=Qt.PenStyle.DashLine))

        job.finished.connect(done)
        return job

    def open_view(self, which: str):
        """The per-cell-type aggregate or the layer-weights view, in its own window."""
        from .circuit_aggregate import AggregateView, WeightsView

        view = (AggregateView if which == "aggregate" else WeightsView)(self)
        view.setWindowFlag(Qt.WindowType.Window)
        view.setParent(self, Qt.WindowType.Window)
        view.setWindowTitle("Circuit by cell type" if which == "aggregate" else "Layer weights")
        view.resize(800, 600)
        view.show()
        self.views = getattr(self, "views", []) + [view]
        return view

    # -- exports ------------------------------------------------------------------------------
    def export_figure(self, path, width_px: int = 1800, height_px: int | None = None,
                      dpi: int = 300):
        if self.state.graph is None:
            raise BioLLMError("no circuit to export yet; build one first.")
        return export_figure(self.view, path, width_px, height_px, dpi)

    def ask_export_figure(self) -> None:
        answer = ask_figure_path(self, "circuit.png")
        if answer is not None:
            guarded(lambda: self.export_figure(*answer), self._error)

    def ask_export_json(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export graph JSON", "circuit.json",
                                              "circuit-tracer JSON (*.json)")
        if path:
            guarded(lambda: self._needs_graph() and self.state.export_json(path), self._error)

    def ask_export_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export nodes and edges (prefix)",
                                              "circuit_", "CSV prefix (*)")
        if path:
            guarded(lambda: self._needs_graph() and self.state.export_csv(path), self._error)

    def ask_export_intervention(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export intervention", "intervention.csv",
                                              "CSV (*.csv)")
        if path:
            guarded(lambda: export_table(self.state.intervention_table(), path), self._error)

    def _needs_graph(self) -> bool:
        if self.state.graph is None:
            raise BioLLMError("no circuit to export yet; build one first.")
        return True

    def _error(self, text: str) -> None:
        show_error(self.summary, text)
