"""Harvesting activations into a cache: correctness, token selection, limits, resuming, CLI."""

import json

import numpy as np
import pytest
import torch

from biollm_engine.cache import ActivationCache
from biollm_engine.cli import main
from biollm_engine.errors import BioLLMError
from biollm_engine.harvest import HarvestConfig, harvest, live_batches
from biollm_engine.inputs.base import TokenizedExample
from biollm_engine.models import capture, load_model, run_to
from biollm_engine.progress import Cancelled, CancelToken
from tiny_models import ARCHS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


GENES = ["CD3E", "CD3D", "IL7R", "MALAT1", "RPL13", "RPS27", "LTB", "CCR7", "NKG7", "GNLY",
         "GZMB", "MS4A1", "CD79A", "CD79B", "HLA-DRA", "CD74", "CD14", "LYZ", "S100A8", "FCGR3A"]


def make_examples(tokenizer, n=24, seed=0, genes_only=False):
    """Gene-name sentences of varied length; `unit` = the token's word index, -1 for the rest."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n):
        words = list(rng.choice(GENES, size=int(rng.integers(2, 9)), replace=False))
        text = "Cell: " + " ".join(words)
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        starts = np.cumsum([0] + [len(w) + 1 for w in ["Cell:"] + words])[:-1]
        unit = np.array([int(np.searchsorted(starts, (a + b) // 2, side="right")) - 2
                         if b > a else -1 for a, b in enc["offset_mapping"]], dtype=np.int32)
        keep = unit >= 0 if genes_only else np.ones(len(ids), dtype=bool)
        out.append(TokenizedExample(r, ids, keep, unit, text))
    return out


@pytest.fixture(scope="module")
def neox(tiny_model_dirs):
    return load_model(tiny_model_dirs("gpt_neox"), device="cpu")


def reference(lm, examples, hookpoints):
    """Each example alone, unpadded: the kept tokens' activations, concatenated."""
    out = {h: [] for h in hookpoints}
    for e in examples:
        with torch.inference_mode(), capture(lm, hookpoints) as acts:
            run_to(lm, torch.from_numpy(e.input_ids)[None])
        for h in hookpoints:
            out[h].append(acts[h][0][torch.from_numpy(e.keep)])
    return {h: torch.cat(v).float() for h, v in out.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_harvest_equals_unbatched_forward(tiny_model_dirs, tmp_path, arch):
    lm = load_model(tiny_model_dirs(arch), device="cpu")
    hps = ["layers.0", "layers.1.mlp.out"]
    examples = make_examples(lm.tokenizer, genes_only=True)
    cfg = HarvestConfig(hookpoints=hps, batch_size=5, shard_tokens=40, store_dtype="float32")
    cache = harvest(lm, examples, cfg, tmp_path / "c")
    ref = reference(lm, examples, hps)
    assert cache.num_tokens == sum(int(e.keep.sum()) for e in examples)
    assert len(cache.shards) > 2 and cache.complete
    for h in hps:
        torch.testing.assert_close(cache.read(h), ref[h], atol=1e-4, rtol=1e-4)
    src = cache.sources()
    exp = [(e.record, p, e.input_ids[p], e.unit[p]) for e in examples for p in np.nonzero(e.keep)[0]]
    assert list(map(tuple, src[["record", "position", "token_id", "unit"]].to_numpy())) == exp
    assert (src["unit"] >= 0).all()  # genes only: every kept token maps back to a gene


def test_index_records_what_was_harvested(neox, tmp_path):
    examples = make_examples(neox.tokenizer)
    cfg = HarvestConfig(hookpoints=["layers.1", "embed"], shard_tokens=64)
    cache = harvest(neox, examples, cfg, tmp_path / "c",
                    meta={"data": "genes.txt", "units": GENES})
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["hookpoints"] == ["layers.1", "embed"] and index["dtype"] == "float16"
    assert index["widths"] == {"layers.1": 64, "embed": 64}
    assert index["num_tokens"] == sum(s["tokens"] for s in index["shards"]) == cache.num_tokens
    assert index["examples_consumed"] == len(examples) and index["complete"]
    assert cache.meta["model"] == neox.name and cache.meta["units"] == GENES
    assert cache.meta["config"]["shard_tokens"] == 64
    assert cache.read("embed").dtype == torch.float16
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == \
        ["index.json"] + [f"shard_{i:05d}.safetensors" for i in range(len(cache.shards))]


def test_max_tokens_is_exact_and_progress_reaches_it(neox, tmp_path):
    reports = []
    cfg = HarvestConfig(hookpoints=["layers.0"], max_tokens=37, batch_size=4)
    cache = harvest(neox, make_examples(neox.tokenizer), cfg, tmp_path / "c", progress=reports.append)
    assert cache.num_tokens == 37
    assert reports[-1].step == reports[-1].total == 37 and reports[-1].tokens == 37


def test_memory_budget_bounds_the_shards(neox, tmp_path):
    # 2 hookpoints x 64 floats x 4 bytes = 512 B/token; 0.02 MB leaves 20 tokens per buffer
    cfg = HarvestConfig(hookpoints=["layers.0", "layers.1"], batch_size=1, store_dtype="float32",
                        memory_budget_mb=0.02)
    cache = harvest(neox, make_examples(neox.tokenizer), cfg, tmp_path / "c")
    longest = max(len(e.input_ids) for e in make_examples(neox.tokenizer))
    assert len(cache.shards) > 5
    assert max(s["tokens"] for s in cache.shards) < 20 + longest


class Interrupt(Exception):
    pass


def interrupted(examples, after, token=None):
    for i, e in enumerate(examples):
        if i == after:
            if token is None:
                raise Interrupt
            token.cancel()
        yield e


def test_cancelled_harvest_resumes_to_the_same_cache(neox, tmp_path):
    examples = make_examples(neox.tokenizer, n=30)
    cfg = HarvestConfig(hookpoints=["layers.1.mlp.in"], batch_size=3, shard_tokens=30,
                        store_dtype="float32")
    full = harvest(neox, examples, cfg, tmp_path / "full")
    token = CancelToken()
    with pytest.raises(Cancelled):
        harvest(neox, interrupted(examples, 14, token), cfg, tmp_path / "c", cancel=token)
    part = ActivationCache(tmp_path / "c")
    assert not part.complete and 0 < part.num_tokens < full.num_tokens
    assert part.index["examples_consumed"] == 15  # the batch in flight is saved too
    steps = []
    resumed = harvest(neox, examples, cfg, tmp_path / "c", progress=steps.append)
    assert steps[0].step > 15 and steps[-1].step == 30
    torch.testing.assert_close(resumed.read("layers.1.mlp.in"), full.read("layers.1.mlp.in"))
    assert resumed.sources().equals(full.sources())


def test_crashed_harvest_keeps_complete_shards_and_resumes(neox, tmp_path):
    examples = make_examples(neox.tokenizer, n=30)
    cfg = HarvestConfig(hookpoints=["layers.0"], batch_size=2, shard_tokens=25)
    full = harvest(neox, examples, cfg, tmp_path / "full")
    with pytest.raises(Interrupt):
        harvest(neox, interrupted(examples, 21), cfg, tmp_path / "c")
    part = ActivationCache(tmp_path / "c")
    assert 0 < part.index["examples_consumed"] <= 20 and not part.complete
    assert not list((tmp_path / "c").glob(".*"))  # no temporary files left behind
    resumed = harvest(neox, examples, cfg, tmp_path / "c")
    assert torch.equal(resumed.read("layers.0"), full.read("layers.0"))
    again = harvest(neox, examples, cfg, tmp_path / "c")  # finished: nothing to do
    assert again.shards == resumed.shards


def test_output_folder_guards(neox, tmp_path):
    examples = make_examples(neox.tokenizer, n=4)
    harvest(neox, examples, HarvestConfig(hookpoints=["layers.0"]), tmp_path / "c")
    with pytest.raises(BioLLMError, match="another harvest"):
        harvest(neox, examples, HarvestConfig(hookpoints=["layers.1"]), tmp_path / "c")
    for other in (HarvestConfig(hookpoints=["layers.0"], genes_only=True),
                  HarvestConfig(hookpoints=["layers.0"], max_tokens=5)):
        with pytest.raises(BioLLMError, match="another harvest"):
            harvest(neox, examples, other, tmp_path / "c")
    cache = harvest(neox, examples, HarvestConfig(hookpoints=["layers.1"]), tmp_path / "c",
                    overwrite=True)
    assert cache.hookpoints == ["layers.1"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BioLLMError, match="not empty"):
        harvest(neox, examples, HarvestConfig(hookpoints=["layers.0"]), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(BioLLMError, match="valid names"):
        harvest(neox, examples, HarvestConfig(hookpoints=["layers.9"]), tmp_path / "x")
    for e in examples:
        e.keep[:] = False
    with pytest.raises(BioLLMError, match="no tokens to harvest"):
        harvest(neox, examples, HarvestConfig(hookpoints=["layers.0"]), tmp_path / "none")
    with pytest.raises(BioLLMError, match="no tokens to harvest"):
        harvest(neox, [], HarvestConfig(hookpoints=["layers.0"]), tmp_path / "none2")
    with pytest.raises(BioLLMError, match="no hookpoints"):
        harvest(neox, examples, HarvestConfig(), tmp_path / "x")
    with pytest.raises(BioLLMError, match="store dtype"):
        HarvestConfig(hookpoints=["layers.0"], store_dtype="int8")


def test_live_batches_match_the_cache(neox, tmp_path):
    examples = make_examples(neox.tokenizer, genes_only=True)
    hps = ["layers.0", "layers.1"]
    cache = harvest(neox, examples, HarvestConfig(hookpoints=hps, store_dtype="float32"), tmp_path / "c")
    batches = list(live_batches(neox, examples, hps, batch_size=16, forward_batch_size=3))
    assert all(len(b["layers.0"]) == 16 for b in batches[:-1]) and 0 < len(batches[-1]["layers.0"]) <= 16
    for h in hps:
        torch.testing.assert_close(torch.cat([b[h] for b in batches]), cache.read(h))
    dropped = list(live_batches(neox, examples, hps, batch_size=16, drop_last=True))
    assert sum(len(b["layers.0"]) for b in dropped) == cache.num_tokens // 16 * 16


def test_cli_harvest_of_pbmc_cells_maps_tokens_to_genes(tiny_model_dirs, pbmc_h5ad, tmp_path, capsys):
    out = tmp_path / "cache"
    rc = main(["harvest", "--model", str(tiny_model_dirs("gpt_neox")), "--data", str(pbmc_h5ad),
               "--hookpoint", "layers.1", "--hookpoint", "layers.0.mlp.out", "--out", str(out),
               "--max-tokens", "600", "--genes-only", "--data-option", "top_k=12",
               "--batch-size", "4", "--device", "cpu"])
    assert rc == 0
    assert "harvested 600 tokens" in capsys.readouterr().out
    cache = ActivationCache(out)
    assert cache.num_tokens == 600 and cache.hookpoints == ["layers.1", "layers.0.mlp.out"]
    genes = cache.meta["units"]
    assert len(genes) == 765 and cache.meta["data_kind"] == "cells"
    lm = load_model(tiny_model_dirs("gpt_neox"), device="cpu")
    src = cache.sources()
    complete = src[src["record"] < src["record"].max()]  # the last cell may be cut by max-tokens
    per_cell = complete.groupby("record")["unit"].nunique()
    assert (per_cell == 12).all()
    for (record, unit), rows in list(complete.groupby(["record", "unit"], sort=False))[:40]:
        assert lm.tokenizer.decode(rows["token_id"].tolist()).strip() == genes[unit]
    acts = cache.read("layers.1")
    assert acts.shape == (600, 64) and torch.isfinite(acts.float()).all()


def test_cli_harvest_bad_input_is_one_line(tiny_model_dirs, pbmc_h5ad, tmp_path, capsys):
    model = str(tiny_model_dirs("gpt_neox"))

    def run(*argv):
        rc = main(["harvest", "--out", str(tmp_path / "o"), "--device", "cpu", *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("biollm: error:") and "\n" not in err
        return err

    assert "does not exist" in run("--model", model, "--data", str(tmp_path / "none.h5ad"),
                                   "--hookpoint", "layers.0")
    err = run("--model", model, "--data", str(pbmc_h5ad), "--hookpoint", "layers.5.mlp.out")
    assert "layers.5.mlp.out" in err and "valid names: embed, layers.0..layers.1" in err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_model_dirs("gpt_neox") / "config.json").read_text())
    assert "no tokenizer" in run("--model", str(bare), "--data", str(pbmc_h5ad),
                                 "--hookpoint", "layers.0")
    assert "KEY=VALUE" in run("--model", model, "--data", str(pbmc_h5ad), "--hookpoint",
                              "layers.0", "--data-option", "top_k")
    assert not (tmp_path / "o").exists()


def test_bfloat16_model_into_bfloat16_store(tiny_model_dirs, tmp_path):
    lm = load_model(tiny_model_dirs("gemma2"), device="cpu", dtype="bfloat16")
    examples = make_examples(lm.tokenizer, n=6)
    cache = harvest(lm, examples, HarvestConfig(hookpoints=["layers.1.attn.out"],
                                                store_dtype="bfloat16"), tmp_path / "c")
    acts = cache.read("layers.1.attn.out")
    assert acts.dtype == torch.bfloat16 and cache.dtype == "bfloat16"
    torch.testing.assert_close(acts, reference(lm, examples, ["layers.1.attn.out"])["layers.1.attn.out"]
                               .to(torch.bfloat16))
