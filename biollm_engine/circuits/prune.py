"""Pruning by influence on the logits, as circuit-tracer's `prune_graph`, adjustable afterwards.

Influence: with A the adjacency with each row's |weights| normalised to sum to 1, a node's
influence is how much of the logits' (probability-weighted) input flows through it over all
paths, `w · (A + A² + ...)` = `w · ((I - A)^-1 - I)`; the series ends because the graph has no
cycles. Nodes are kept, most influential first, until they hold `node_threshold` of the total;
then edges among kept nodes, scored by their share of their target's influence, until they hold
`edge_threshold` of the total edge score. Inputs and logits are always kept. Each kept feature
or error node keeps its strongest edge towards a kept node and, for features, from one, so the
drawing has no dangling nodes; nodes are never dropped after the node threshold, so the kept
share is at least what was asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import BioLLMError
from .graph import Graph


def normalize(adjacency: torch.Tensor) -> torch.Tensor:
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def influence(normalized: torch.Tensor, weights: torch.Tensor,
              max_iter: int = 10_000) -> torch.Tensor:
    """`weights · (A + A² + ...)` for a normalised acyclic adjacency A."""
    current = weights @ normalized
    total = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = current @ normalized
        total += current
    raise BioLLMError("influence did not converge: the graph has a cycle; rebuild it.")


def _threshold(scores: torch.Tensor, share: float) -> float:
    """The score above which the largest scores hold `share` of the total."""
    ordered = torch.sort(scores.flatten(), descending=True).values
    total = ordered.sum()
    if total <= 0:
        return float("inf")
    cumulative = torch.cumsum(ordered, 0) / total
    i = int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype)))
    return float(ordered[min(i, len(ordered) - 1)])


@dataclass
class PrunedGraph:
    """Which nodes and edges of `graph` survive the thresholds; the graph itself is unchanged."""

    graph: Graph
    node_mask: np.ndarray
    """[N] bool"""
    edge_mask: np.ndarray
    """[N, N] bool, `edge_mask[target, source]`"""
    node_influence: np.ndarray
    """[N] influence of each node on the logits"""
    cumulative: np.ndarray
    """[N] share of total influence held by this node and every more influential one"""
    node_threshold: float
    edge_threshold: float
    kept_influence: float
    """share of the feature and error nodes' total influence held by the kept ones"""
    kept_edge_score: float
    """share of the total edge score held by the kept edges"""

    @property
    def nodes(self) -> np.ndarray:
        return np.nonzero(self.node_mask)[0]

    def edges(self) -> list[tuple[int, int, float]]:
        """(source, target, weight) of every kept edge."""
        t, s = np.nonzero(self.edge_mask)
        w = self.graph.adjacency.detach().numpy()[t, s]
        return [(int(a), int(b), float(c)) for a, b, c in zip(s, t, w)]


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PrunedGraph:
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise BioLLMError(f"{name} must be between 0 and 1 (got {v}).")
    a = graph.adjacency.detach().float()
    weights = graph.logit_weights()
    norm = normalize(a)
    node_inf = influence(norm, weights)
    middle = slice(0, graph.input_start)  # features and errors: the nodes that can be pruned
    node_mask = torch.ones(graph.n_nodes, dtype=torch.bool)
    scores = node_inf[middle]
    if len(scores):
        node_mask[middle] = scores >= _threshold(scores, node_threshold)

    pruned = a.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    pnorm = normalize(pruned)
    target_inf = influence(pnorm, weights) + weights
    edge_scores = pnorm * target_inf[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores, edge_threshold)
    edge_mask &= edge_scores > 0
    _connect(graph, pruned, node_mask, edge_mask)

    order = torch.argsort(node_inf, descending=True)
    cum = torch.zeros_like(node_inf)
    total = node_inf.sum().clamp(min=1e-30)
    cum[order] = torch.cumsum(node_inf[order], 0) / total
    mid_total = float(node_inf[middle].sum())
    kept = float(node_inf[middle][node_mask[middle]].sum()) / mid_total if mid_total > 0 else 1.0
    es_total = float(edge_scores.sum())
    kept_edges = float(edge_scores[edge_mask].sum()) / es_total if es_total > 0 else 1.0
    return PrunedGraph(graph, node_mask.numpy(), edge_mask.numpy(), node_inf.numpy(),
                       cum.numpy(), node_threshold, edge_threshold, kept, kept_edges)


def _connect(graph: Graph, pruned: torch.Tensor, node_mask: torch.Tensor,
             edge_mask: torch.Tensor) -> None:
    """Give each kept feature / error node its strongest edge out and (features) in, if none."""
    mag = pruned.abs()
    for i in torch.nonzero(node_mask[: graph.input_start]).flatten().tolist():
        if not edge_mask[:, i].any() and mag[:, i].max() > 0:
            edge_mask[int(mag[:, i].argmax()), i] = True
        if i < graph.n_features and not edge_mask[i].any() and mag[i].max() > 0:
            edge_mask[i, int(mag[i].argmax())] = True
