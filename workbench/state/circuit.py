"""The circuit being explored: one attribution graph, its live pruning, the clicked node, edits.

No Qt. The graph is built once (in a job); a threshold change re-prunes only the kept nodes'
block of the adjacency with the engine's own rules, so it takes milliseconds and gives exactly
what `circuits.prune` gives on the whole graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from psygnal import Signal

from biollm_engine.errors import BioLLMError


@dataclass
class CircuitRequest:
    """What to explain: one cell of a data set (or a typed prompt) and which logit."""

    model: str
    dictionaries: list[str]
    data: str = ""
    cell: int | None = None
    prompt: str = ""
    target: str = ""
    """cell type to explain; empty: the model's prediction"""
    top_genes: int = 200
    max_features: int = 300
    labels: list[str] | None = None
    """candidate cell types, whose probabilities interventions report"""


class Engine:
    """The model and transcoders behind a circuit, loaded once and kept for interventions."""

    def __init__(self, model: str, dictionaries: list[str]):
        from biollm_engine.circuits import ReplacementModel
        from biollm_engine.circuits.pipeline import load_transcoders
        from biollm_engine.models import load_model

        tcs, problems = [], []
        for d in dictionaries:
            try:
                tcs += load_transcoders(d)
            except BioLLMError as e:  # an SAE beside the transcoders is not an error
                problems.append(e.message)
        if not tcs:
            raise BioLLMError("no MLP transcoders among the workspace's dictionaries; add "
                              "transcoders (Model & dictionaries) to build a circuit. "
                              + (problems[0] if problems else ""))
        self.key = (model, tuple(dictionaries))
        self.lm = load_model(model, device="cpu")
        self.rm = ReplacementModel(self.lm, [tc.to(self.lm.device) for tc in tcs])


def build(req: CircuitRequest, engine: Engine | None = None, progress=None, cancel=None):
    """(graph, engine): attribute the request's cell or prompt; reuses `engine` when it fits."""
    from biollm_engine.circuits import attribute
    from biollm_engine.circuits.pipeline import cell_input
    from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig

    if (req.cell is None) == (not req.prompt.strip()):
        raise BioLLMError("choose one cell on the embedding, or type a prompt, to explain.")
    if not req.model:
        raise BioLLMError("no model in the workspace; open a model folder first.")
    if engine is None or engine.key != (req.model, tuple(req.dictionaries)):
        engine = Engine(req.model, req.dictionaries)
    lm = engine.lm
    if req.cell is None:
        prompt, ids, genes, meta = req.prompt, None, None, {}
    else:
        ds = CellDataset(req.data, CellSentenceConfig(top_k=req.top_genes))
        try:
            prompt, ids, genes, meta = cell_input(ds, req.cell, lm.tokenizer)
        finally:
            ds.close()
    graph = attribute(lm, engine.rm, prompt, input_ids=ids, target=req.target or None,
                      max_features=req.max_features, token_genes=genes, merge_genes=True,
                      progress=progress, cancel=cancel, meta=meta)
    return graph, engine


def live_prune(graph, influence: np.ndarray, node_threshold: float, edge_threshold: float):
    """`circuits.prune(graph, ...)` computed on the kept nodes' block only (same rules)."""
    import torch

    from biollm_engine.circuits.prune import PrunedGraph, _threshold, normalize
    from biollm_engine.circuits.prune import influence as flow

    n, mid = graph.n_nodes, graph.input_start
    node_inf = torch.as_tensor(influence)
    node_mask = torch.ones(n, dtype=torch.bool)
    if mid:
        node_mask[:mid] = node_inf[:mid] >= _threshold(node_inf[:mid], node_threshold)
    keep = torch.nonzero(node_mask).flatten()
    sub = graph.adjacency.detach().float()[keep[:, None], keep[None, :]]
    weights = graph.logit_weights()[keep]
    pnorm = normalize(sub)
    target_inf = flow(pnorm, weights) + weights
    scores = pnorm * target_inf[:, None]
    # zeros sort last and add nothing to the shares, so the nonzero scores give the same cut
    sub_edges = (scores >= _threshold(scores[scores > 0], edge_threshold)) & (scores > 0)
    # as the engine's _connect: each kept feature / error node keeps its strongest edge out
    # and (features) in, so nothing dangles
    mag = sub.abs()
    for j in torch.nonzero((keep < mid) & ~sub_edges.any(0)).flatten().tolist():
        if mag[:, j].max() > 0:
            sub_edges[int(mag[:, j].argmax()), j] = True
    for i in torch.nonzero((keep < graph.n_features) & ~sub_edges.any(1)).flatten().tolist():
        if mag[i].max() > 0:
            sub_edges[i, int(mag[i].argmax())] = True
    k = keep.numpy()
    t, s = np.nonzero(sub_edges.numpy())
    edge_mask = np.zeros((n, n), dtype=bool)
    edge_mask[k[t], k[s]] = True

    order = torch.argsort(node_inf, descending=True)
    cum = torch.zeros_like(node_inf)
    cum[order] = torch.cumsum(node_inf[order], 0) / node_inf.sum().clamp(min=1e-30)
    mid_total = float(node_inf[:mid].sum())
    kept = float(node_inf[:mid][node_mask[:mid]].sum()) / mid_total if mid_total > 0 else 1.0
    total = float(scores.sum())
    kept_edges = float(scores[sub_edges].sum()) / total if total > 0 else 1.0
    pruned = PrunedGraph(graph, node_mask.numpy(), edge_mask, node_inf.numpy(), cum.numpy(),
                         node_threshold, edge_threshold, kept, kept_edges)
    # the kept edges as lists, so drawing never scans the whole N x N mask
    pruned.edge_list = (k[s], k[t], sub.numpy()[t, s])
    return pruned


class CircuitState:
    graph_changed = Signal()
    pruned_changed = Signal()
    node_changed = Signal()
    intervention_changed = Signal()

    def __init__(self) -> None:
        self.graph = None
        self.request: CircuitRequest | None = None
        self.engine: Engine | None = None
        self.influence: np.ndarray | None = None
        self.pruned = None
        self.node_threshold = 0.8
        self.edge_threshold = 0.98
        self.node: int | None = None
        self.picked: list[int] = []
        """nodes chosen for an intervention (ctrl-click adds)"""
        self.edits: list = []
        self.intervention = None

    def set_graph(self, graph, request: CircuitRequest | None = None,
                  engine: Engine | None = None) -> None:
        """A new graph: its node influence is computed once, here; thresholds only mask."""
        from biollm_engine.circuits.prune import influence, normalize

        self.graph, self.request = graph, request
        if engine is not None:
            self.engine = engine
        a = graph.adjacency.detach().float()
        self.influence = influence(normalize(a), graph.logit_weights()).numpy()
        self.node, self.picked, self.edits, self.intervention = None, [], [], None
        self.pruned = live_prune(graph, self.influence, self.node_threshold, self.edge_threshold)
        self.graph_changed.emit()
        self.pruned_changed.emit()

    def set_thresholds(self, node: float | None = None, edge: float | None = None) -> None:
        for name, v in (("node", node), ("edge", edge)):
            if v is not None and not 0.0 <= v <= 1.0:
                raise BioLLMError(f"the {name} threshold must be between 0 and 1 (got {v}).")
        self.node_threshold = self.node_threshold if node is None else float(node)
        self.edge_threshold = self.edge_threshold if edge is None else float(edge)
        if self.graph is not None:
            self._prune()

    def _prune(self) -> None:
        self.pruned = live_prune(self.graph, self.influence, self.node_threshold,
                                 self.edge_threshold)
        self.pruned_changed.emit()

    def select_node(self, i: int | None, add: bool = False) -> None:
        """Click a node (its detail); with `add`, also pick it for an edit beside the others."""
        self.node = None if i is None else int(i)
        if not add:
            self.picked = []
        if self.node is not None and self.node not in self.picked:
            self.picked.append(self.node)
        self.node_changed.emit()

    # -- what the views show ----------------------------------------------------------------
    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sources, targets, weights) of the kept edges."""
        return self.pruned.edge_list

    def neighbourhood(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Kept nodes upstream and downstream of node i (following kept edges)."""
        m = self.pruned.edge_mask
        out = []
        for step in (lambda f: m[f].any(0), lambda f: m[:, f].any(1)):  # up: sources; down
            seen = np.zeros(len(m), dtype=bool)
            frontier = np.zeros(len(m), dtype=bool)
            frontier[i] = True
            while frontier.any():
                nxt = step(frontier) & ~seen
                seen |= nxt
                frontier = nxt
            out.append(np.flatnonzero(seen))
        return out[0], out[1]

    def node_detail(self, i: int) -> dict:
        g = self.graph
        kind = g.kind(i)
        layer, pos = g.layer_pos(i)
        d = {"kind": kind, "label": g.label(i).strip(), "layer": layer, "position": pos,
             "influence": float(self.influence[i])}
        col = g.adjacency[:, i].detach().numpy()
        row = g.adjacency[i].detach().numpy()
        d["top_out"] = [(g.label(int(j)).strip(), float(col[j]))
                        for j in np.argsort(-np.abs(col))[:5] if col[j] != 0]
        d["top_in"] = [(g.label(int(j)).strip(), float(row[j]))
                       for j in np.argsort(-np.abs(row))[:5] if row[j] != 0]
        if kind == "feature":
            d["feature"] = int(g.features[i, 2])
            d["activation"] = float(g.activations[i])
        elif kind == "input":
            genes = [lab.strip() for lab in g.input_labels]
            gene_inputs = [j for j, x in enumerate(g.input_positions) if g.token_genes[x[0]]]
            j = i - g.input_start
            # the cell sentence lists genes by expression, so the gene's order is its rank
            d["rank"] = gene_inputs.index(j) + 1 if j in gene_inputs else None
            d["n_genes"] = len(gene_inputs)
            d["gene"] = genes[j]
        elif kind == "logit":
            d["probability"] = float(g.logit_probabilities[i - g.logit_start])
        return d

    # -- interventions -------------------------------------------------------------------------
    def edit_for(self, i: int, mode: str, value: float):
        from biollm_engine.circuits import Edit

        kind = self.graph.kind(i)
        if kind not in ("feature", "error"):
            raise BioLLMError("only features and error nodes can be edited; click one of them.")
        layer, pos = self.graph.layer_pos(i)
        feature = int(self.graph.features[i, 2]) if kind == "feature" else None
        return Edit(layer, pos, feature, mode, float(value))

    def intervene(self, nodes, mode: str = "ablate", value: float = 0.0, frozen: bool = False):
        """Edit the given nodes on this graph's prompt; the result is kept and announced."""
        from biollm_engine.circuits import intervene

        if self.graph is None or self.engine is None:
            raise BioLLMError("build a circuit first.")
        edits = [self.edit_for(int(i), mode, value) for i in nodes]
        if not edits:
            raise BioLLMError("select one or more features or error nodes to edit.")
        labels = (self.request.labels if self.request else None) or None
        self.edits = edits
        self.intervention = intervene(self.engine.rm, self.graph.input_ids, edits,
                                      target=int(self.graph.logit_ids[0]), labels=labels,
                                      frozen=frozen)
        self.intervention_changed.emit()
        return self.intervention

    def intervention_table(self):
        import pandas as pd

        r = self.intervention
        if r is None:
            raise BioLLMError("no intervention yet; select nodes and ablate, scale or clamp.")
        return pd.DataFrame({"cell_type": r.labels, "probability_before": r.prob_before,
                             "probability_after": r.prob_after, "change": r.prob_change})

    def export_json(self, path: str | Path) -> Path:
        from biollm_engine.circuits.export import write_json

        return write_json(self.pruned, path)

    def export_csv(self, prefix: str | Path) -> tuple[Path, Path]:
        from biollm_engine.circuits.export import write_csv

        return write_csv(self.pruned, prefix)


def edited_predictions(rm, ids: list[np.ndarray], edits_by_layer_feature) -> np.ndarray:
    """[n, 2] (prediction before, after) token ids of a batch of prompts, with each feature edit
    (layer, feature, mode, value) applied at every position: two forward passes for the batch.

    The prompts are right-padded: the model is causal, so a prompt's last token never sees the
    padding after it, and each row's prediction equals that prompt run alone.
    """
    import torch
    from biollm_engine.circuits import Edit

    lengths = torch.as_tensor([len(x) for x in ids])
    pad = rm.lm.tokenizer.pad_token_id
    batch = torch.full((len(ids), int(lengths.max())), 0 if pad is None else int(pad),
                       dtype=torch.long)
    for b, x in enumerate(ids):
        batch[b, :len(x)] = torch.as_tensor(np.asarray(x), dtype=torch.long)
    batch = batch.to(rm.unembed.weight.device)
    by_layer: dict[int, list] = {}
    for layer, feature, mode, value in edits_by_layer_feature:
        by_layer.setdefault(int(layer), []).append(Edit(int(layer), 0, int(feature), mode,
                                                        float(value)))
    xs: dict[int, torch.Tensor] = {}

    def on_out(layer, out):
        if layer not in by_layer:
            return None
        y = out[0] if isinstance(out, tuple) else out
        tc = rm.transcoders[layer]
        x = xs[layer]
        acts = tc.encode(x.reshape(-1, x.shape[-1]).to(tc.W_enc.dtype)).float()
        w = tc.W_dec.detach().float()
        delta = torch.zeros(acts.shape[0], w.shape[1], device=acts.device)
        for e in by_layer[layer]:
            a = acts[:, e.feature]
            delta += (e.new_value(a) - a)[:, None] * w[e.feature]
        new = y + delta.reshape(y.shape).to(y.dtype)
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

    last = torch.arange(len(ids)), lengths - 1
    with torch.no_grad():
        before = rm.body(input_ids=batch)[last]
        with rm.mlp_hooks(xs.__setitem__, on_out):
            after = rm.body(input_ids=batch)[last]
        return torch.stack([rm.logits(before).argmax(-1), rm.logits(after).argmax(-1)],
                           1).cpu().numpy()


def edit_cells(engine: Engine, data: str, cells, edits_by_layer_feature, top_genes: int,
               progress=None, cancel=None, batch_size: int = 16) -> np.ndarray:
    """Apply feature edits (layer, feature, mode, value) at every position of each cell, a batch
    of cells per forward pass; returns [n, 2] (prediction before, after) token ids, so the view
    can count changed predictions."""
    from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
    from biollm_engine.progress import ProgressTracker

    cells = [int(c) for c in cells]
    for layer, feature, _mode, _value in edits_by_layer_feature:
        tc = engine.rm.transcoders.get(int(layer))
        if tc is None or not 0 <= int(feature) < tc.W_dec.shape[0]:
            raise BioLLMError(f"layer {layer} has no transcoder feature {feature}; pick feature "
                              "nodes of this circuit.")
    out = np.zeros((len(cells), 2), dtype=np.int64)
    tracker = ProgressTracker("edit cells", len(cells), progress, cancel)
    ds = CellDataset(data, CellSentenceConfig(top_k=top_genes))
    try:
        examples = ds.examples(engine.lm.tokenizer, cells)
        done = 0
        while batch := [ex.input_ids for _, ex in zip(range(batch_size), examples)]:
            out[done:done + len(batch)] = edited_predictions(engine.rm, batch,
                                                             edits_by_layer_feature)
            done += len(batch)
            tracker.update(steps=len(batch))
    finally:
        ds.close()
    return out


def aggregate_cells(engine: Engine, data: str, cells, top_genes: int, max_features: int,
                    node_threshold: float = 0.8, progress=None, cancel=None):
    """The graphs of several cells (their predictions as targets) merged: what recurs."""
    from biollm_engine.circuits import attribute
    from biollm_engine.circuits.aggregate import aggregate  # the package name is the module too
    from biollm_engine.circuits.pipeline import cell_input
    from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
    from biollm_engine.progress import CancelToken

    cells = [int(c) for c in cells]
    if not cells:
        raise BioLLMError("no cells of that type to aggregate; choose another cell type.")
    cancel = cancel or CancelToken()
    graphs = []
    ds = CellDataset(data, CellSentenceConfig(top_k=top_genes))
    try:
        for c in cells:
            cancel.raise_if_cancelled()
            prompt, ids, genes, meta = cell_input(ds, c, engine.lm.tokenizer)
            graphs.append(attribute(engine.lm, engine.rm, prompt, input_ids=ids,
                                    max_features=max_features, token_genes=genes,
                                    merge_genes=True, progress=progress, cancel=cancel,
                                    meta=meta))
    finally:
        ds.close()
    return aggregate(graphs, min_fraction=0.5, node_threshold=node_threshold)


def layer_weights(engine: Engine, layer_a: int, layer_b: int, top: int = 15):
    """(weights [n_a, n_b], top connections) between two layers' transcoders."""
    from biollm_engine.circuits import feature_to_feature_weights, top_connections

    tcs = engine.rm.transcoders
    missing = [x for x in (layer_a, layer_b) if x not in tcs]
    if missing:
        raise BioLLMError(f"layer {missing[0]} has no transcoder; choose among layers "
                          f"{sorted(tcs)}.")
    w = feature_to_feature_weights(tcs[layer_a], tcs[layer_b], engine.lm)
    return w, top_connections(w, top)
