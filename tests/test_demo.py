"""The embedded demo: a reduced rebuild learns real PBMC cell types, the shipped workspace loads
and its recorded accuracy is what its model does, and the headless run writes every file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from biollm_engine.cli import main
from biollm_engine.demo import DEFAULT_WORKSPACE, DemoBuildConfig, build
from biollm_engine.demo.data import LABEL_COLUMN, SPLIT_COLUMN, stratified_split
from biollm_engine.demo.tokenizer import build_tokenizer, label_token_ids
from biollm_engine.dictionaries import load_dictionary
from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
from biollm_engine.models import load_model, resolve_hookpoint

# the demo's model is small: a second torch thread only adds waiting on a shared machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def quick_ws(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "ws"
    assert main(["demo", "build", "--quick", "--out", str(out)]) == 0
    return out


def recount(ws: Path) -> tuple[dict[str, str], dict[str, float]]:
    """Predict every held-out cell again from the saved files alone: the saved model through
    load_model, the prompts from cells.h5ad through CellDataset (right-padded batch, each
    cell's prediction read after its own last prompt token)."""
    settings = json.loads((ws / "workspace.json").read_text())["settings"]
    lm = load_model(str(ws / "model"), device="cpu")
    top_k = settings["cell_sentence"]["top_k"]
    ds = CellDataset(ws / "cells.h5ad", CellSentenceConfig(top_k=top_k))
    obs = ds.obs
    labels = list(obs[LABEL_COLUMN].cat.categories)
    label_ids = [lm.tokenizer.convert_tokens_to_ids(label) for label in labels]
    held = np.flatnonzero(obs[SPLIT_COLUMN].astype(str).to_numpy() == "heldout")
    examples = list(ds.examples(lm.tokenizer, held))
    lengths = torch.tensor([len(ex.input_ids) for ex in examples])
    ids = torch.full((len(examples), int(lengths.max())), lm.tokenizer.pad_token_id)
    for i, ex in enumerate(examples):
        ids[i, :len(ex.input_ids)] = torch.from_numpy(ex.input_ids)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.inference_mode():
        logits = lm.model(input_ids=ids, attention_mask=mask).logits
    last = logits[torch.arange(len(examples)), lengths - 1][:, label_ids]
    top2 = torch.topk(last, 2).values
    names = [str(obs.index[ex.record]) for ex in examples]
    preds = {n: labels[int(k)] for n, k in zip(names, last.argmax(-1))}
    margins = {n: float(m) for n, m in zip(names, top2[:, 0] - top2[:, 1])}
    return preds, margins


def truth_of(ws: Path):
    import anndata as ad

    return ad.read_h5ad(ws / "cells.h5ad").obs[LABEL_COLUMN].astype(str)


def check_recorded_accuracy(ws: Path) -> dict:
    report = json.loads((ws / "demo.json").read_text())["model"]
    preds, margins = recount(ws)
    recorded = report["heldout_predictions"]
    assert set(recorded) == set(preds) and len(preds) == report["n_heldout"]
    # identical except where two cell types tie to float rounding (machines differ in last bits)
    differ = [c for c in preds if preds[c] != recorded[c]]
    assert all(margins[c] < 1e-4 for c in differ), differ
    truth = truth_of(ws)
    accuracy = np.mean([preds[c] == truth[c] for c in preds])
    if not differ:
        assert accuracy == pytest.approx(report["heldout_accuracy"], abs=1e-12)
    return report


def test_quick_build_learns_cell_types(quick_ws):
    report = json.loads((quick_ws / "demo.json").read_text())["model"]
    truth = truth_of(quick_ws)
    predicted = report["heldout_predictions"]
    assert np.mean([predicted[c] == truth[c] for c in predicted]) == report["heldout_accuracy"]
    assert set(truth[list(predicted)]) == set(truth)  # every cell type is held out
    # 10 cell types, the largest a third of the cells: a model that learnt nothing about
    # expression gets about the majority rate
    assert report["majority_rate"] < 0.4
    assert report["heldout_accuracy"] > report["majority_rate"] + 0.15
    losses = [h["gene_ce"] for h in report["history"]]
    assert losses[-1] < losses[0]
    assert report["n_heldout"] + report["n_train"] == 700


def test_quick_model_loads_like_a_c2s_model(quick_ws):
    lm = load_model(str(quick_ws / "model"), device="cpu")
    assert lm.arch.name.lower().replace("_", "") == "gptneox" and lm.is_causal
    tok = lm.tokenizer
    ds = CellDataset(quick_ws / "cells.h5ad")
    ids = tok(" ".join(ds.genes), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(ds.genes) == 765
    assert tok.convert_ids_to_tokens(ids) == ds.genes
    assert tok.unk_token_id not in ids
    labels = list(ds.obs[LABEL_COLUMN].cat.categories)
    assert len(set(label_token_ids(tok, labels))) == len(labels)


def test_quick_dictionaries_load_and_fit_the_model(quick_ws):
    ws = json.loads((quick_ws / "workspace.json").read_text())
    lm = load_model(str(quick_ws / ws["model"]), device="cpu")
    kinds = {}
    for rel in ws["dictionaries"]:
        d = load_dictionary(quick_ws / rel)
        assert d.cfg.d_in == resolve_hookpoint(lm, d.cfg.hookpoint).width
        assert (quick_ws / rel / d.cfg.model).resolve() == (quick_ws / "model").resolve()
        assert d.cfg.training["fvu"] < 0.5
        kinds.setdefault(d.cfg.kind, []).append(d.cfg.hookpoint)
    assert kinds == {"transcoder": [f"layers.{i}.mlp.in" for i in range(lm.num_layers)],
                     "sae": ["layers.1"]}


def test_demo_run_writes_tables_circuits_and_figures(quick_ws, tmp_path):
    import anndata as ad
    import pandas as pd

    out = tmp_path / "run"
    assert main(["demo", "--workspace", str(quick_ws), "--out", str(out)]) == 0  # run: default
    table = pd.read_csv(out / "features.csv")
    sae = load_dictionary(quick_ws / "dictionaries" / "sae" / "layers.1")
    assert len(table) == sae.num_latents
    cells = ad.read_h5ad(out / "cells_features.h5ad")
    assert cells.n_obs == 700 and any(v.shape == (700, sae.num_latents)
                                      for v in cells.obsm.values())
    labels = list(cells.obs[LABEL_COLUMN].cat.categories)
    circuits = sorted(p.stem for p in (out / "circuits").glob("*.json"))
    assert len(circuits) == len(labels) == 10
    graph = json.loads((out / "circuits" / f"{circuits[0]}.json").read_text())
    assert any(n["feature_type"] == "logit" for n in graph["nodes"]) and graph["links"]
    stems = {p.stem for p in (out / "figures").glob("*.png")}
    assert stems == {p.stem for p in (out / "figures").glob("*.svg")}
    assert {"umap_cell_types", "heatmap_features_cell_types"} <= stems
    assert any(s.startswith("umap_feature_") for s in stems)
    assert sum(s.startswith("circuit_") for s in stems) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["cell_types"]) == set(labels)
    assert summary["feature_analysis"]["from_cache"]  # the build stored it for these inputs


def test_cached_analysis_equals_live_and_goes_stale_with_any_input(quick_ws, tmp_path):
    import scipy.sparse as sp
    from safetensors.torch import load_file, save_file

    from biollm_engine.demo.features import analyse, features_config, load_cache
    from biollm_engine.provenance import features_key
    from biollm_engine.demo.workspace import read_workspace

    ws = read_workspace(quick_ws)
    cached = analyse(ws, tmp_path / "cached")
    live = analyse(ws, tmp_path / "live", use_cache=False)
    assert cached.cached and not live.cached and cached.key == live.key
    assert (tmp_path / "cached" / "features.csv").read_bytes() == \
        (tmp_path / "live" / "features.csv").read_bytes()
    assert (sp.csr_matrix(cached.cell_max) != live.cell_max).nnz == 0

    copy = tmp_path / "ws"
    shutil.copytree(quick_ws, copy)
    copied = read_workspace(copy)
    assert load_cache(copy, features_key(features_config(copied, tmp_path))) is not None
    weights = copied["sae"] / "dictionary.safetensors"
    tensors = load_file(weights)
    tensors["W_dec"][0, 0] += 1e-3  # one weight of one feature
    save_file(tensors, weights, metadata={"format": "pt"})
    assert load_cache(copy, features_key(features_config(copied, tmp_path))) is None


def test_dictionaries_are_trained_on_the_training_cells_only(quick_ws):
    from transformers import PreTrainedTokenizerFast

    report = json.loads((quick_ws / "demo.json").read_text())
    settings = json.loads((quick_ws / "workspace.json").read_text())["settings"]
    tok = PreTrainedTokenizerFast.from_pretrained(quick_ws / "model")
    ds = CellDataset(quick_ws / "cells.h5ad",
                     CellSentenceConfig(top_k=settings["cell_sentence"]["top_k"]))
    train = np.flatnonzero(ds.obs[SPLIT_COLUMN].astype(str).to_numpy() == "train")
    tokens = sum(int(ex.keep.sum()) for ex in ds.examples(tok, train))
    data = report["dictionary_data"]
    assert (data["cells"], data["tokens"], data["heldout_cells"]) == (len(train), tokens, 0)
    assert data["cells"] == report["model"]["n_train"]


def test_two_builds_write_identical_weights(tmp_path):
    """Seeds, one thread and deterministic algorithms: a rebuild gives the same bytes, whatever
    the state the process was left in before it; the DNA demo's folder survives a rebuild."""
    def tiny(out):
        return dataclasses.replace(DemoBuildConfig(out=str(out)).reduced(), top_k=8, layers=1,
                                   width=32, epochs=1, sae_layer=0, dict_latents=64,
                                   dict_tokens=2048, dict_batch_size=256, analysis=False)

    other = tmp_path / "a" / "dna" / "dna_demo.json"  # another demo's part of the workspace
    other.parent.mkdir(parents=True)
    other.write_text("{}")
    hashes = []
    for name in ("a", "b"):
        build(tiny(tmp_path / name))
        hashes.append({p.relative_to(tmp_path / name).as_posix():
                       hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted((tmp_path / name).rglob("*.safetensors"))})
        torch.manual_seed(12345)  # the second build starts from another global state
        np.random.seed(6789)
        torch.set_num_threads(2)
    assert len(hashes[0]) == 3  # model, transcoder, SAE
    assert hashes[0] == hashes[1]
    assert other.read_text() == "{}"  # carried over into the rebuilt workspace


def test_committed_demo_loads_and_its_accuracy_is_recounted():
    ws = DEFAULT_WORKSPACE
    size = sum(p.stat().st_size for p in ws.rglob("*") if p.is_file())
    assert size < 20 * 2**20
    report = check_recorded_accuracy(ws)
    assert report["heldout_accuracy"] > report["majority_rate"]
    workspace = json.loads((ws / "workspace.json").read_text())
    for rel in workspace["dictionaries"]:
        assert load_dictionary(ws / rel).cfg.hookpoint


def test_demo_run_on_a_missing_workspace_is_one_clear_error(tmp_path, capsys):
    code = main(["demo", "run", "--workspace", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_tokenizer_keeps_genes_and_cell_types_whole():
    genes = ["CD3E", "HLA-DRA", "RP11-782C8.1", "MT-ND3"]
    labels = ["CD4+/CD25 T Reg", "CD14+ Monocyte", "CD34+", "Dendritic"]
    tok = build_tokenizer(genes, labels, ["Cell sentence: CD3E.\nThe cell type is:"])
    text = "Cell sentence: HLA-DRA RP11-782C8.1 MT-ND3.\nThe cell type is: CD4+/CD25 T Reg"
    assert tok.convert_ids_to_tokens(tok(text)["input_ids"]) == [
        "Cell", "sentence", ":", "HLA-DRA", "RP11-782C8.1", "MT-ND3", ".", "The", "cell",
        "type", "is", ":", "CD4+/CD25 T Reg"]
    assert len(set(label_token_ids(tok, labels))) == 4
    assert tok("CD3E CD9")["input_ids"][1] == tok.unk_token_id


def test_split_is_stratified_and_fixed():
    labels = np.repeat(np.arange(4), [100, 40, 9, 2])
    a = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(a, stratified_split(labels, 0.2, seed=0))
    assert [int(a[labels == k].sum()) for k in range(4)] == [20, 8, 2, 1]
    assert not np.array_equal(a, stratified_split(labels, 0.2, seed=1))


def test_a_workspace_that_is_not_the_demo_is_one_clear_error(tmp_path, capsys):
    ws = tmp_path / "ws"
    (ws / "dictionaries" / "transcoders").mkdir(parents=True)
    (ws / "workspace.json").write_text(json.dumps({"dictionaries": ["dictionaries/sae/x"]}))
    (ws / "demo.json").write_text("{}")
    code = main(["demo", "run", "--workspace", str(ws), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "not describe a demo workspace" in err and "Traceback" not in err
