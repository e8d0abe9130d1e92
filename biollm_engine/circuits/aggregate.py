"""`aggregate`: one graph over many cells of one type, keeping the features and edges that recur.

Each graph is pruned first; its kept nodes are matched across cells by identity, not position:
a feature by (layer, latent), an error node by layer, an input by its gene (or token text), a
logit by its label. A node or edge is kept when it appears in at least `min_fraction` of the
graphs; edge weights are averaged over the graphs it appears in (summed within one graph, where
several positions map to the same pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BioLLMError
from .graph import Graph
from .prune import prune


@dataclass
class AggregateGraph:
    keys: list[tuple]
    """per node: ("feature", layer, latent), ("error", layer), ("input", gene), ("logit", label)"""
    counts: np.ndarray
    """[M] number of graphs in which the node survived pruning"""
    mean_influence: np.ndarray
    """[M] mean influence over the graphs in which it appears"""
    edge_counts: np.ndarray
    """[M, M] graphs in which the edge (target, source) survived"""
    edge_weights: np.ndarray
    """[M, M] mean weight over those graphs"""
    n_graphs: int

    def edges(self) -> list[tuple[int, int, float, int]]:
        """(source, target, mean weight, count) of every kept edge."""
        t, s = np.nonzero(self.edge_counts)
        return [(int(a), int(b), float(self.edge_weights[b, a]), int(self.edge_counts[b, a]))
                for a, b in zip(s, t)]


def node_key(graph: Graph, i: int) -> tuple:
    kind = graph.kind(i)
    layer, _ = graph.layer_pos(i)
    if kind == "feature":
        return ("feature", layer, int(graph.features[i, 2]))
    if kind == "error":
        return ("error", layer)
    if kind == "input":
        return ("input", graph.input_labels[i - graph.input_start].strip())
    return ("logit", graph.logit_labels[i - graph.logit_start].strip())


def aggregate(graphs: list[Graph], min_fraction: float = 0.5, node_threshold: float = 0.8,
              edge_threshold: float = 0.98) -> AggregateGraph:
    if not graphs:
        raise BioLLMError("no graphs to aggregate; build graphs for some cells first.")
    if not 0.0 < min_fraction <= 1.0:
        raise BioLLMError(f"min_fraction must be in (0, 1] (got {min_fraction}).")
    node_count: dict[tuple, int] = {}
    node_infl: dict[tuple, float] = {}
    edge_count: dict[tuple, int] = {}
    edge_sum: dict[tuple, float] = {}
    for g in graphs:
        pg = prune(g, node_threshold, edge_threshold)
        keys = {int(i): node_key(g, int(i)) for i in pg.nodes}
        infl: dict[tuple, float] = {}
        for i, k in keys.items():
            infl[k] = infl.get(k, 0.0) + float(pg.node_influence[i])
        for k, v in infl.items():
            node_count[k] = node_count.get(k, 0) + 1
            node_infl[k] = node_infl.get(k, 0.0) + v
        weights: dict[tuple, float] = {}
        for s, t, w in pg.edges():
            if s in keys and t in keys:
                pair = (keys[t], keys[s])
                weights[pair] = weights.get(pair, 0.0) + w
        for pair, w in weights.items():
            edge_count[pair] = edge_count.get(pair, 0) + 1
            edge_sum[pair] = edge_sum.get(pair, 0.0) + w
    need = min_fraction * len(graphs) - 1e-9
    kept = sorted((k for k, c in node_count.items() if c >= need), key=_order)
    index = {k: i for i, k in enumerate(kept)}
    M = len(kept)
    counts = np.array([node_count[k] for k in kept], dtype=np.int64)
    mean_infl = np.array([node_infl[k] / node_count[k] for k in kept], dtype=np.float32)
    ec = np.zeros((M, M), dtype=np.int64)
    ew = np.zeros((M, M), dtype=np.float32)
    for (t, s), c in edge_count.items():
        if c >= need and t in index and s in index:
            ec[index[t], index[s]] = c
            ew[index[t], index[s]] = edge_sum[(t, s)] / c
    return AggregateGraph(kept, counts, mean_infl, ec, ew, len(graphs))


def _order(key: tuple):
    rank = {"input": 0, "feature": 1, "error": 1, "logit": 2}[key[0]]
    layer = key[1] if key[0] in ("feature", "error") else 0
    return (rank, layer, str(key))
