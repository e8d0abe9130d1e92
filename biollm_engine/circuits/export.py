"""Exports of a pruned graph: circuit-tracer's frontend JSON, and CSV tables of nodes and edges.

The JSON follows circuit-tracer 0.5.0's `frontend/graph_models.py` (metadata, qParams, nodes,
links) and its node ids, so graphs open in its viewer and in Neuronpedia-style tools. A merged
gene node is written as an embedding node at its first token.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..fileio import atomic_path
from .prune import PrunedGraph

_NODE_COLUMNS = ["node_id", "kind", "layer", "pos", "feature", "label", "gene", "activation",
                 "influence", "cumulative_influence", "value", "bias"]


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def node_id(pg: PrunedGraph, i: int) -> str:
    g = pg.graph
    kind = g.kind(i)
    layer, pos = g.layer_pos(i)
    if kind == "feature":
        return f"{layer}_{int(g.features[i, 2])}_{pos}"
    if kind == "error":
        return f"0_{layer}_{pos}"
    if kind == "input":
        return f"E_{int(g.input_ids[pos])}_{pos}"
    return f"{g.n_layers + 1}_{int(g.logit_ids[i - g.logit_start])}_{pos}"


def _node(pg: PrunedGraph, i: int, labels: dict) -> dict:
    g = pg.graph
    kind = g.kind(i)
    layer, pos = g.layer_pos(i)
    nid = node_id(pg, i)
    infl = float(pg.cumulative[i])
    node = dict(node_id=nid, ctx_idx=pos, influence=infl, activation=None, token_prob=0.0,
                is_target_logit=False, run_idx=0, reverse_ctx_idx=0, clerp="")
    if kind == "feature":
        feat = int(g.features[i, 2])
        node.update(feature=_cantor(layer, feat), layer=str(layer),
                    feature_type="cross layer transcoder",
                    jsNodeId=f"{layer}_{feat}-0", activation=float(g.activations[i]),
                    clerp=labels.get((layer, feat), ""))
    elif kind == "error":
        node.update(feature=-1, layer=str(layer), feature_type="mlp reconstruction error",
                    jsNodeId=f"{layer}_{pos}-0")
    elif kind == "input":
        vocab = int(g.input_ids[pos])
        node.update(feature=pos, layer="E", feature_type="embedding", jsNodeId=f"E_{vocab}-{pos}",
                    clerp=g.input_labels[i - g.input_start])
    else:
        k = i - g.logit_start
        vocab, p = int(g.logit_ids[k]), float(g.logit_probabilities[k])
        node.update(feature=vocab, layer=str(g.n_layers + 1), feature_type="logit",
                    jsNodeId=f"L_{vocab}-{pos}", token_prob=p, is_target_logit=k == 0,
                    clerp=f'Output "{g.logit_labels[k]}" (p={p:.3f})', influence=None)
    return node


def to_circuit_tracer(pg: PrunedGraph, slug: str = "cell", labels: dict | None = None) -> dict:
    """The graph as circuit-tracer's frontend reads it. `labels`: (layer, feature) -> text."""
    g = pg.graph
    labels = labels or {}
    nodes = {int(i): _node(pg, int(i), labels) for i in pg.nodes}
    links = [dict(source=nodes[s]["node_id"], target=nodes[t]["node_id"], weight=w)
             for s, t, w in pg.edges() if s in nodes and t in nodes]
    connected = {x for link in links for x in (link["source"], link["target"])}
    used = [n for n in nodes.values()
            if n["node_id"] in connected or n["feature_type"] in ("embedding", "logit")]
    metadata = dict(slug=slug, scan=g.model, transcoder_list=[d for d in g.dictionaries if d],
                    prompt_tokens=list(g.tokens), prompt=g.prompt,
                    node_threshold=pg.node_threshold, schema_version=1)
    qparams = dict(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos="")
    return dict(metadata=metadata, qParams=qparams, nodes=used, links=links)


def write_json(pg: PrunedGraph, path: str | Path, slug: str | None = None,
               labels: dict | None = None) -> Path:
    path = Path(path)
    data = to_circuit_tracer(pg, slug or path.stem, labels)
    with atomic_path(path) as tmp:
        # compact: json's C encoder (indent falls back to the pure-Python one, 5x slower)
        tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path


def node_rows(pg: PrunedGraph) -> list[dict]:
    g = pg.graph
    values, rows = g.values(), []
    for i in pg.nodes:
        i = int(i)
        kind = g.kind(i)
        layer, pos = g.layer_pos(i)
        gene = ""
        if kind == "input":
            gene = g.token_genes[g.input_positions[i - g.input_start][0]]
        elif kind in ("feature", "error"):
            gene = g.token_genes[pos]
        rows.append(dict(node_id=node_id(pg, i), kind=kind, layer=layer, pos=pos,
                         feature=int(g.features[i, 2]) if kind == "feature" else "",
                         label=g.label(i), gene=gene,
                         activation=float(g.activations[i]) if kind == "feature" else "",
                         influence=float(pg.node_influence[i]),
                         cumulative_influence=float(pg.cumulative[i]),
                         value="" if values[i] != values[i] else float(values[i]),
                         bias=float(g.bias[i])))
    return rows


def write_csv(pg: PrunedGraph, prefix: str | Path) -> tuple[Path, Path]:
    """Write `<prefix>nodes.csv` and `<prefix>edges.csv` (the prefix may end in a folder /)."""
    prefix = str(prefix)
    nodes_path, edges_path = Path(prefix + "nodes.csv"), Path(prefix + "edges.csv")
    ids = {int(i): node_id(pg, int(i)) for i in pg.nodes}
    with atomic_path(nodes_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_NODE_COLUMNS)
        w.writeheader()
        w.writerows(node_rows(pg))
    with atomic_path(edges_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target", "weight"])
        w.writerows((ids[s], ids[t], wt) for s, t, wt in pg.edges() if s in ids and t in ids)
    return nodes_path, edges_path
