"""The CUDA paths, on a machine with an NVIDIA GPU: training under bfloat16 autocast, harvest from
a bfloat16 model, the feature table, circuits and DNA tracks on the GPU against the CPU, and Evo 2's
real StripedHyena (the `vortex` package that `evo2` builds on) through the adapter. CI has no GPU,
so this module is skipped there; run `pytest tests/test_cuda.py` on a GPU workstation."""

import numpy as np
import pandas as pd
import pytest
import torch

from biollm_engine.cli import main
from biollm_engine.models import capture, list_hookpoints, load_model, run_to

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def neox(tiny_model_dirs):
    return tiny_model_dirs("gpt_neox")


def test_training_on_cuda_learns_as_on_cpu(neox, pbmc_h5ad, tmp_path):
    from test_training import _fvus, make_cell_cache, small_config

    from biollm_engine.dictionaries import load_dictionary
    from biollm_engine.training import train

    cache = make_cell_cache(neox, pbmc_h5ad, tmp_path / "acts")
    final = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        paths = train(small_config(out, cache=str(cache), hookpoint=["layers.1"], device=device))
        fvus = _fvus(out, "layers.1")
        assert fvus[-1] < 0.7 * fvus[0], (device, fvus)
        final[device] = fvus[-1]
        d = load_dictionary(paths["layers.1"])  # saved from the GPU, loads on the CPU
        assert d.W_dec.device.type == "cpu" and d.W_dec.dtype == torch.float32
    # bfloat16 autocast on the GPU reaches the fp32 CPU run's reconstruction
    assert final["cuda"] < final["cpu"] + 0.05, final


def test_live_training_on_cuda(neox, pbmc_h5ad, tmp_path):
    from test_training import small_config

    from biollm_engine.training import train

    seen = []
    cfg = small_config(tmp_path / "live", model=str(neox), data=str(pbmc_h5ad),
                       hookpoint=["layers.1"], device="cuda", tokens=256 * 10)
    paths = train(cfg, progress=seen.append)
    assert list(paths) == ["layers.1"] and seen


def test_bfloat16_harvest_on_cuda_matches_float32_on_cpu(neox, pbmc_h5ad, tmp_path):
    from biollm_engine.harvest import HarvestConfig, harvest
    from biollm_engine.inputs import open_data

    caches = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "bfloat16")):
        lm = load_model(str(neox), device=device, dtype=dtype)
        examples = open_data(pbmc_h5ad).examples(lm.tokenizer, indices=range(24), max_length=96)
        caches[device] = harvest(lm, examples, HarvestConfig(hookpoints=["layers.1"],
                                                             max_length=96, batch_size=5),
                                 tmp_path / device)
    a, b = (c.read("layers.1", 0, c.num_tokens).float() for c in (caches["cpu"], caches["cuda"]))
    assert a.shape == b.shape and a.shape[0] > 1000
    rel = (a - b).norm(dim=1) / a.norm(dim=1)
    assert float(rel.median()) < 0.02 and float(rel.max()) < 0.1
    np.testing.assert_array_equal(caches["cpu"].sources()["token_id"],
                                  caches["cuda"].sources()["token_id"])


def test_feature_table_on_cuda_equals_cpu(pbmc, neox, tmp_path, capsys):
    from biollm_engine.dictionaries import Dictionary, DictionaryConfig

    small = pbmc[::20].copy()
    small.write_h5ad(tmp_path / "cells.h5ad")
    torch.manual_seed(1)
    Dictionary(DictionaryConfig(kind="sae", activation="topk", d_in=64, num_latents=24, k=4,
                                hookpoint="layers.1")).save(tmp_path / "sae")
    tables = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.parquet"
        rc = main(["features", "--model", str(neox), "--data", str(tmp_path / "cells.h5ad"),
                   "--dict", str(tmp_path / "sae"), "--top-k", "10", "--layer", "raw",
                   "--template", "sentence", "--obs-key", "bulk_labels", "--out", str(out),
                   "--device", device])
        assert rc == 0, capsys.readouterr().err
        tables[device] = pd.read_parquet(out)
    cpu, gpu = tables["cpu"], tables["cuda"]
    np.testing.assert_allclose(gpu["frequency"], cpu["frequency"], atol=0.01)
    np.testing.assert_allclose(gpu["max"], cpu["max"], rtol=1e-3, atol=1e-4)
    assert (gpu["best_bulk_labels"] == cpu["best_bulk_labels"]).mean() > 0.9


def test_circuit_on_cuda_is_exact(neox):
    from test_circuits import PROMPT, assert_exact, make_transcoders

    from biollm_engine.circuits import attribute

    lm = load_model(str(neox), device="cuda")
    tcs = [t.to("cuda") for t in make_transcoders(lm, skip_layer=1)]
    graph = attribute(lm, tcs, PROMPT, top_logits=3, batch_size=64)
    ids = torch.as_tensor(graph.input_ids)[None].to("cuda")
    names = [f"layers.{i}.mlp.in" for i in range(lm.num_layers)]
    with torch.no_grad(), capture(lm, names, stop=False) as acts:
        hidden = run_to(lm, ids).last_hidden_state
        by_layer = {int(t.cfg.hookpoint.split(".")[1]): t for t in tcs}
        pre = np.array([float(by_layer[l].pre_acts(acts[f"layers.{l}.mlp.in"][0, p][None])[0, f])
                        for l, p, f in graph.features])
        logits = lm.model.get_output_embeddings()(hidden[0, -1]).float().cpu().numpy()
    assert_exact(graph, pre, logits[graph.logit_ids])


def test_dna_tracks_on_cuda_equal_cpu(tmp_path):
    from pathlib import Path

    from biollm_engine.analysis.dna_tracks import _chrom, read_bedgraph
    from biollm_engine.inputs.dna import DnaConfig, DnaDataset

    demo = Path(__file__).resolve().parents[1] / "resources" / "demo" / "dna"
    table = DnaDataset(demo / "heldout.fa", DnaConfig(window=512, stride=256)).windows_table()
    lengths = table.groupby("name").end.max()
    values, chosen = {}, ["--top", "4"]  # the CPU's four busiest features, then the same on GPU
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(["tracks", "--model", str(demo / "model"), "--data",
                     str(demo / "heldout.fa"), "--dict", str(demo / "dictionaries" / "sae"),
                     *chosen, "--window", "512", "--stride", "256",
                     "--out", str(out), "--device", device]) == 0
        chosen = ["--features", ",".join(p.stem.split("_")[-1]
                                         for p in sorted(out.glob("*.bedgraph")))]
        values[device] = [np.concatenate([read_bedgraph(p, _chrom(n), n_bases)
                                          for n, n_bases in lengths.items()])
                          for p in sorted(out.glob("*.bedgraph"))]
    assert len(values["cpu"]) == 4 and values["cpu"][0].size == lengths.sum()
    for a, b in zip(values["cpu"], values["cuda"]):
        assert (a > 0).any()
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)


# Evo 2's real architecture: evo2's own 7B configuration shrunk to 4 blocks, random weights
def tiny_striped_hyena():
    pytest.importorskip("vortex.model.model")
    from biollm_engine.models.evo2 import random_striped_hyena

    torch.manual_seed(0)
    return random_striped_hyena(
        hidden_size=64, num_filters=64, num_layers=4, hcs_layer_idxs=[0], hcm_layer_idxs=[1],
        attn_layer_idxs=[2], hcl_layer_idxs=[3], hcl_filter_groups=64, hcm_filter_groups=4,
        hcs_filter_groups=4, num_attention_heads=4, inner_mlp_size=128, max_seqlen=1024)


def test_real_striped_hyena_through_the_adapter(tmp_path):
    pytest.importorskip("evo2")
    from test_evo2_adapter import SEQ

    from biollm_engine.analysis.encode import encode_live
    from biollm_engine.analysis.logit_lens import unembedding
    from biollm_engine.dictionaries.formats import load_dictionary
    from biollm_engine.harvest import HarvestConfig, harvest
    from biollm_engine.inputs.dna import DnaConfig, DnaDataset
    from biollm_engine.models.evo2 import wrap_striped_hyena

    model = tiny_striped_hyena()
    lm = wrap_striped_hyena(model, "evo2:tiny", "cuda", "bfloat16")
    paths = {h.name: (h.module_path, h.io) for h in list_hookpoints(lm)}
    assert paths["layers.1"] == ("model.blocks.1", "output")
    assert paths["layers.1.attn.out"] == ("model.blocks.1.out_filter_dense", "output")
    assert paths["layers.2.attn.out"] == ("model.blocks.2.inner_mha_cls", "output")
    assert paths["layers.3.mlp.in"] == ("model.blocks.3.mlp", "input")
    ids = torch.tensor([list(SEQ.encode())], device="cuda")
    # what evo2's own Evo2.forward(return_embeddings=True) hooks: each block's output[0]
    theirs, handles = {}, []
    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_hook(
            lambda _m, _i, out, i=i: theirs.__setitem__(i, out[0].detach())))
    names = [h.name for h in list_hookpoints(lm)]
    with torch.no_grad(), capture(lm, names, stop=False) as acts:
        logits = run_to(lm, ids)
    for h in handles:
        h.remove()
    ref, _ = model(ids)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, ref)
    prev = acts["embed"]
    for i in range(lm.num_layers):
        torch.testing.assert_close(acts[f"layers.{i}"], theirs[i])
        added = acts[f"layers.{i}.attn.out"].float() + acts[f"layers.{i}.mlp.out"].float()
        # the block adds in bfloat16: one rounding at the residual stream's largest magnitude
        ulp = float(acts[f"layers.{i}"].float().abs().max()) * 2 ** -7
        torch.testing.assert_close(acts[f"layers.{i}"].float(), prev.float() + added,
                                   rtol=0, atol=2 * ulp)
        prev = acts[f"layers.{i}"]
    W_U, g = unembedding(lm)
    torch.testing.assert_close(W_U, model.embedding_layer.weight.float())
    torch.testing.assert_close(g, model.norm.scale.float())
    # harvest and a Goodfire-layout SAE through the same engine code as every model
    fasta = tmp_path / "bmyD.fa"
    fasta.write_text(f">bmyD\n{SEQ}\n")
    data = DnaDataset(fasta, DnaConfig(window=40, stride=30))
    cache = harvest(lm, data.examples(), HarvestConfig(hookpoints=["layers.2"], batch_size=3),
                    tmp_path / "cache")
    table = data.windows_table()
    assert cache.num_tokens == int((table.end - table.start).sum())
    torch.manual_seed(2)
    torch.save({"W": torch.randn(64, 128) * 0.2, "b_enc": torch.zeros(128),
                "b_dec": torch.zeros(64)}, tmp_path / "sae-layer2-k4.pt")
    d = load_dictionary(tmp_path / "sae-layer2-k4.pt").to("cuda")
    d.threshold.fill_(0.5)
    chunks = list(encode_live(lm, data.examples(), d, batch_size=3))
    assert sum(c.acts.shape[0] for c in chunks) == cache.num_tokens
    assert sum(c.acts.nnz for c in chunks) > 0
