"""Circuit exports (circuit-tracer JSON, CSV), the `biollm circuit` command and real cells."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

from biollm_engine.circuits import attribute, prune
from biollm_engine.circuits.export import node_id, to_circuit_tracer, write_csv, write_json
from biollm_engine.cli import main
from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
from biollm_engine.models import load_model

from test_circuits import assert_exact, make_transcoders, true_values

# tiny models: a second torch thread only adds waiting on a shared machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# circuit-tracer 0.5.0 frontend/graph_models.py (MIT licence, (c) its authors): the schema its
# viewer reads, copied because circuit-tracer itself pins transformers<=4.57.
class Metadata(BaseModel):
    slug: str
    scan: str
    transcoder_list: list[str]
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float | None = None
    schema_version: int | None = 1


class QParams(BaseModel):
    pinnedIds: list[str]
    supernodes: list[list[str]]
    linkType: str
    clickedId: str
    sg_pos: str


class Node(BaseModel):
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class Link(BaseModel):
    source: str
    target: str
    weight: float


class Model(BaseModel):
    metadata: Metadata
    qParams: QParams
    nodes: list[Node]
    links: list[dict]


@pytest.fixture(scope="module")
def neox(tiny_model_dirs):
    return load_model(str(tiny_model_dirs("gpt_neox")), device="cpu")


@pytest.fixture(scope="module")
def cells(pbmc_h5ad):
    ds = CellDataset(pbmc_h5ad, CellSentenceConfig(top_k=12))
    yield ds
    ds.close()


@pytest.fixture(scope="module")
def cell_graph(neox, cells):
    """A real pbmc68k_reduced cell through the tiny model, tokens merged into gene nodes."""
    tcs = make_transcoders(neox, k=4)
    ex = next(cells.examples(neox.tokenizer, [5]))
    genes = [cells.genes[u] if u >= 0 else "" for u in ex.unit]
    g = attribute(neox, tcs, ex.text, input_ids=ex.input_ids, token_genes=genes,
                  merge_genes=True, top_logits=2, batch_size=64)
    return tcs, g


def test_real_cell_graph_has_gene_nodes_and_is_exact(neox, cells, cell_graph):
    tcs, g = cell_graph
    sentence = cells.sentence(5)
    genes = [lab for lab, pos in zip(g.input_labels, g.input_positions)
             if g.token_genes[pos[0]]]
    assert genes == sentence  # one node per gene, in rank order
    assert g.n_inputs < g.n_pos
    pre, logits = true_values(neox, tcs, g)
    assert_exact(g, pre, logits)


def test_json_matches_circuit_tracer_schema(cell_graph, tmp_path):
    _, g = cell_graph
    pg = prune(g, 0.8, 0.98)
    path = write_json(pg, tmp_path / "cell5.json", labels={tuple(g.features[0, [0, 2]]): "T-cell"})
    data = json.loads(path.read_text())
    model = Model.model_validate(data)
    for link in model.links:
        Link.model_validate(link)
    ids = [n.node_id for n in model.nodes]
    assert len(ids) == len(set(ids))
    ends = {link["source"] for link in model.links} | {link["target"] for link in model.links}
    assert ends <= set(ids)
    kinds = {n.feature_type for n in model.nodes}
    assert kinds >= {"embedding", "logit", "cross layer transcoder"}
    target = [n for n in model.nodes if n.is_target_logit]
    assert len(target) == 1 and target[0].feature == int(g.logit_ids[0])
    assert target[0].token_prob == pytest.approx(float(g.logit_probabilities[0]))
    assert model.metadata.prompt_tokens == g.tokens and model.metadata.node_threshold == 0.8
    assert len(model.links) == sum(1 for _ in pg.edges())
    weights = {(lk["source"], lk["target"]): lk["weight"] for lk in model.links}
    for s, t, w in pg.edges():
        assert weights[(node_id(pg, s), node_id(pg, t))] == pytest.approx(w)
    feature_nodes = [n for n in model.nodes if n.feature_type == "cross layer transcoder"]
    assert all(n.activation is not None and n.layer.isdigit() for n in feature_nodes)
    assert "T-cell" in {n.clerp for n in feature_nodes} or not any(
        n.node_id.startswith(f"{g.features[0, 0]}_{g.features[0, 2]}_") for n in feature_nodes)
    assert to_circuit_tracer(pg)["metadata"]["scan"] == g.model


def test_csv_lists_the_kept_nodes_and_edges(cell_graph, tmp_path):
    _, g = cell_graph
    pg = prune(g, 0.7, 0.95)
    nodes_path, edges_path = write_csv(pg, tmp_path / "cell5_")
    nodes = pd.read_csv(nodes_path)
    edges = pd.read_csv(edges_path)
    assert len(nodes) == int(pg.node_mask.sum())
    assert len(edges) == int(pg.edge_mask.sum())
    assert set(edges.source) | set(edges.target) <= set(nodes.node_id)
    assert {"feature", "input", "logit"} <= set(nodes.kind)
    inputs = nodes[nodes.kind == "input"]
    assert set(inputs.gene.dropna()) <= set(g.token_genes)
    np.testing.assert_allclose(sorted(edges.weight), sorted(w for _, _, w in pg.edges()), rtol=1e-6)


def _save_transcoders(lm, folder, layers):
    for tc in make_transcoders(lm, layers=layers, k=4):
        tc.save(folder / tc.cfg.hookpoint)
    return folder


def test_cli_builds_a_graph_for_a_cell(neox, tiny_model_dirs, pbmc_h5ad, tmp_path, capsys):
    dicts = _save_transcoders(neox, tmp_path / "tc", [0, 1])
    out = tmp_path / "graph.json"
    rc = main(["circuit", "--model", str(tiny_model_dirs("gpt_neox")), "--dicts", str(dicts),
               "--data", str(pbmc_h5ad), "--cell", "3", "--top-genes", "8", "--out", str(out),
               "--csv", str(tmp_path / "g_"), "--graph", str(tmp_path / "g.safetensors"),
               "--device", "cpu", "--batch-size", "64"])
    assert rc == 0
    Model.model_validate(json.loads(out.read_text()))
    assert (tmp_path / "g_nodes.csv").exists() and (tmp_path / "g_edges.csv").exists()
    from biollm_engine.circuits import Graph
    g = Graph.load(tmp_path / "g.safetensors")
    assert g.meta["cell"] == 3 and g.meta["bulk_labels"]
    assert "target" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "wrong_layer", "cell_range", "no_input", "sae"])
def test_cli_bad_input_exits_2(neox, tiny_model_dirs, pbmc_h5ad, tmp_path, capsys, case):
    dicts = tmp_path / "tc"
    args = ["--cell", "0"]
    if case == "wrong_layer":
        _save_transcoders(neox, dicts, [0])
        tc = make_transcoders(neox, layers=[0])[0]
        tc.cfg.hookpoint, tc.cfg.target = "layers.5.mlp.in", "layers.5.mlp.out"
        tc.save(dicts / "layers.5.mlp.in")
    elif case == "cell_range":
        _save_transcoders(neox, dicts, [0])
        args = ["--cell", "700"]
    elif case == "no_input":
        _save_transcoders(neox, dicts, [0])
        args = []
    elif case == "sae":
        from biollm_engine.dictionaries import Dictionary, DictionaryConfig
        Dictionary(DictionaryConfig(kind="sae", d_in=64, num_latents=32, k=4,
                                    hookpoint="layers.0")).save(dicts / "layers.0")
    out = tmp_path / "g.json"
    rc = main(["circuit", "--model", str(tiny_model_dirs("gpt_neox")), "--dicts", str(dicts),
               "--data", str(pbmc_h5ad), *args, "--top-genes", "5", "--out", str(out),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("biollm: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    expect = {"missing": "does not exist", "wrong_layer": "layers.5.mlp.in",
              "cell_range": "out of range", "no_input": "exactly one", "sae": "transcoder"}[case]
    assert expect in err
