"""The attribution graph drawn in layers: genes at the bottom, features by layer, logits on top.

Edges are drawn by six items in all (positive / negative × three width buckets), each one
`PlotCurveItem` with a `connect="pairs"` array, so thousands of edges redraw in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

from ..state.circuit import CircuitState

POSITIVE, NEGATIVE = "#d6604d", "#4393c3"  # red / blue of a diverging map
WIDTHS = (0.6, 1.6, 3.2)
# "prompt": an input token outside the cell sentence (the template's words, the final ":")
KIND_BRUSH = {"feature": "#f4a582", "error": "#bababa", "input": "#92c5de", "prompt": "#e0e0e0",
              "logit": "#1b7837"}
KIND_SYMBOL = {"feature": "o", "error": "s", "input": "t1", "prompt": "t1", "logit": "d"}
N_LABELS = (8, 14)  # inputs and features named on the graph, most influential first
LABEL_GAP = 7.0  # least x distance (of the layout's 100) between two labels in one row


def layout(graph, nodes: np.ndarray, width: float = 100.0) -> np.ndarray:
    """[N, 2] positions: each row (inputs, one per layer, logits) spreads its drawn nodes evenly
    across the width in prompt order (genes in rank order), so no row piles up at the last
    token; y is the layer (inputs -1)."""
    xy = np.zeros((graph.n_nodes, 2), dtype=np.float64)
    rows: dict[int, list[tuple[int, int, int]]] = {}
    for i in nodes.tolist():
        layer, pos = graph.layer_pos(i)
        rows.setdefault(layer, []).append((pos, i))
    for layer, members in rows.items():
        members.sort()
        n = len(members)
        xs = np.linspace(0, width, n + 2)[1:-1] if n > 1 else np.array([width / 2])
        for x, (_, i) in zip(xs, members):
            xy[i] = (x, layer + 1)
    return xy


class GraphItems:
    """The pyqtgraph items of one circuit inside a ViewBox, redrawn from the state."""

    def __init__(self, view: pg.ViewBox, state: CircuitState):
        self.view, self.state = view, state
        self.edges = {}
        for sign, colour in ((1, POSITIVE), (-1, NEGATIVE)):
            for b, w in enumerate(WIDTHS):
                item = pg.PlotCurveItem(pen=pg.mkPen(colour, width=w), antialias=False)
                item.setZValue(-10)
                view.addItem(item)
                self.edges[sign, b] = item
        self.highlight = pg.PlotCurveItem(pen=pg.mkPen((30, 30, 30, 150), width=1.5))
        self.highlight.setZValue(-5)
        view.addItem(self.highlight)
        self.nodes = pg.ScatterPlotItem(pxMode=True, hoverable=True)
        view.addItem(self.nodes)
        self.labels: list[pg.TextItem] = []
        self.xy = np.zeros((0, 2))
        self.node_ids = np.zeros(0, dtype=np.int64)
        self.drawn_edges = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
        self._fit = False
        self.kinds = np.zeros(0, dtype=str)
        self._brushes = {k: pg.mkBrush(c) for k, c in KIND_BRUSH.items()}
        self._pen = pg.mkPen("#444444", width=0.8)

    def set_graph(self) -> None:
        """A new graph: lay it out; the pruning that follows draws it."""
        g = self.state.graph
        self.kinds = g.kinds()
        for n, positions in enumerate(g.input_positions):
            if not g.token_genes[positions[0]]:
                self.kinds[g.input_start + n] = "prompt"
        self._fit = True

    def redraw(self) -> None:
        self._draw()
        if self._fit:
            self._fit = False
            self.view.autoRange(padding=0.05)

    def _draw(self) -> None:
        st = self.state
        nodes = st.pruned.nodes
        self.node_ids = nodes
        self.xy = layout(st.graph, nodes)
        infl = st.influence[nodes]
        top = max(float(infl.max()), 1e-12) if len(infl) else 1.0
        # a few sizes only: pyqtgraph renders each distinct symbol once and reuses it
        sizes = 7 + 3 * np.round(6 * np.sqrt(np.clip(infl / top, 0, 1)))
        kinds = self.kinds[nodes]
        self.nodes.setData(pos=self.xy[nodes], size=sizes, data=nodes,
                           brush=[self._brushes[k] for k in kinds],
                           symbol=[KIND_SYMBOL[k] for k in kinds], pen=self._pen)
        s, t, w = st.edge_arrays()
        self.drawn_edges = (s, t, w)
        mag = np.abs(w)
        cut = np.quantile(mag, [0.5, 0.9]) if len(mag) else np.zeros(2)
        bucket = np.searchsorted(cut, mag)
        for (sign, b), item in self.edges.items():
            sel = ((w > 0) if sign > 0 else (w <= 0)) & (bucket == b)
            self._set_pairs(item, s[sel], t[sel])
        self.highlight.setData([], [])
        self._label(nodes, infl, kinds)

    def _set_pairs(self, item, s, t) -> None:
        xs = np.empty(2 * len(s))
        ys = np.empty(2 * len(s))
        xs[0::2], xs[1::2] = self.xy[s, 0], self.xy[t, 0]
        ys[0::2], ys[1::2] = self.xy[s, 1], self.xy[t, 1]
        item.setData(xs, ys, connect="pairs")

    def _label(self, nodes, infl, kinds) -> None:
        """Name the logits and the most influential nodes, reusing the text items."""
        g = self.state.graph
        named = [int(i) for i in nodes[kinds == "logit"]]
        order = np.argsort(-infl)
        named += self._spaced([int(nodes[j]) for j in order if kinds[j] in ("input", "prompt")],
                              N_LABELS[0])
        named += self._spaced([int(nodes[j]) for j in order if kinds[j] == "feature"],
                              N_LABELS[1])
        while len(self.labels) < len(named):
            item = pg.TextItem("", color="#222222")
            self.view.addItem(item)
            self.labels.append(item)
        for item, i in zip(self.labels, named):
            text = g.label(i).strip()
            prompt = self.kinds[i] == "prompt"
            item.setText(f"“{text}”" if prompt else text)
            item.setColor("#777777" if prompt else "#222222")
            below = self.kinds[i] in ("input", "prompt")
            item.setAnchor((0.5, -0.4) if below else (0.5, 1.6))
            item.setPos(*self.xy[i])
            item.show()
        for item in self.labels[len(named):]:
            item.hide()

    def _spaced(self, candidates: list[int], n: int) -> list[int]:
        """Up to n of the candidates (most influential first) whose labels keep LABEL_GAP from
        those already kept in their row, so that no two names print over each other."""
        kept: list[int] = []
        for i in candidates:
            x, y = self.xy[i]
            if all(abs(x - self.xy[j, 0]) >= LABEL_GAP for j in kept if self.xy[j, 1] == y):
                kept.append(i)
                if len(kept) == n:
                    break
        return kept

    def show_paths(self, i: int | None) -> None:
        """Highlight the edges on the paths through node i (upstream and downstream)."""
        if i is None:
            self.highlight.setData([], [])
            return
        up, down = self.state.neighbourhood(i)
        on = np.zeros(self.state.graph.n_nodes, dtype=bool)
        on[up] = on[down] = on[i] = True
        s, t, _ = self.drawn_edges
        sel = on[s] & on[t] & ((np.isin(t, up) | (t == i)) & (np.isin(s, up) | (s == i))
                               | (np.isin(s, down) | (s == i)) & (np.isin(t, down) | (t == i)))
        self._set_pairs(self.highlight, s[sel], t[sel])

    def node_at(self, scene_pos) -> int | None:
        pts = self.nodes.pointsAt(self.nodes.mapFromScene(scene_pos))
        return int(pts[0].data()) if len(pts) else None
