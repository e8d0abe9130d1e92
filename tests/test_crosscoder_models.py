"""Crosscoders across two models (model diffing) on real cells (pbmc68k_reduced).

The "fine-tuned" model is a copy of the tiny GPT-NeoX with one planted feature: a fixed
direction v added to the embeddings of a third of the vocabulary, so that at layers.1 it exists
in the fine-tuned model only. A crosscoder trained on both must carry v in its fine-tuned
decoders alone. (With TopK latents and a short run, v is absorbed into shared per-token latents
rather than getting a fine-tuned-only latent of its own, so the test checks the decoders'
projection on v, not one latent's relative norm.)
"""

import json

import pytest
import torch

from biollm_engine import cli
from biollm_engine.dictionaries import load_dictionary
from biollm_engine.errors import BioLLMError
from biollm_engine.training import TrainConfig, train

HP, CELLS, MAX_LENGTH = "layers.1", 48, 96
SOURCES = ["base:layers.1", "finetuned:layers.1"]
TRAIN = ["--hookpoint", HP, "--kind", "crosscoder", "--latents", "256", "--k", "8",
         "--tokens", str(256 * 30), "--batch-size", "256", "--warmup-steps", "5",
         "--checkpoint-every", "0", "--device", "cpu", "--max-length", str(MAX_LENGTH),
         "--shuffle-tokens", "4096"]


def _copy(base, out, edit=None, tokenizer=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    model.save_pretrained(out)
    (tokenizer or AutoTokenizer.from_pretrained(base)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tiny_model_dirs, tmp_path_factory):
    """(base folder, fine-tuned folder with the planted feature, its direction v)."""
    base = tiny_model_dirs("gpt_neox")
    g = torch.Generator().manual_seed(1)
    v = torch.randn(64, generator=g)
    v /= v.norm()

    def plant(model):
        emb = model.gpt_neox.embed_in.weight
        rows = torch.randperm(emb.shape[0], generator=g)[: emb.shape[0] // 3]
        emb[rows] += 6 * emb.norm(dim=1).mean() * v

    ft = _copy(base, tmp_path_factory.mktemp("finetuned") / "model", plant)
    return base, ft, v


def _harvest(model_dir, h5ad, out, first=0):
    from biollm_engine.harvest import HarvestConfig, harvest
    from biollm_engine.inputs import open_data
    from biollm_engine.models import load_model

    lm = load_model(str(model_dir), device="cpu")
    examples = open_data(h5ad).examples(lm.tokenizer, indices=range(first, first + CELLS),
                                        max_length=MAX_LENGTH)
    harvest(lm, examples, HarvestConfig(hookpoints=[HP], max_length=MAX_LENGTH,
                                        shard_tokens=1024, store_dtype="float32"),
            out, meta={"data": str(h5ad)})
    return out


def test_live_two_models_train_and_eval(models, pbmc_h5ad, tmp_path, capsys):
    base, ft, _ = models
    out = tmp_path / "run"
    assert cli.main(["train", "--model", str(base), "--model2", str(ft), "--data",
                     str(pbmc_h5ad), "--out", str(out), "--eval-cells", "4", *TRAIN]) == 0
    d = load_dictionary(out / "layers.1.base_vs_finetuned")
    assert d.cfg.sources == SOURCES and d.cfg.hookpoint == HP
    assert d.cfg.models == {"base": str(base), "finetuned": str(ft)}
    r = d.relative_decoder_norms()
    assert r.shape == (256,) and float(r.min()) >= 0 and float(r.max()) <= 1
    summary = d.cfg.training
    ev = summary["eval"]  # held-out cells, both models
    assert ev["fvu_base"] < 0.7 and ev["fvu_finetuned"] < 0.7, ev
    assert all(ev[f"ce_{m}_{label}"] > 0 for m in ("clean", "spliced", "zero")
               for label in ("base", "finetuned"))
    shares = summary["decoder_norms"]
    assert shares["thresholds"] == [0.1, 0.9]
    assert shares["base_only"] + shares["shared"] + shares["finetuned_only"] == pytest.approx(1)
    capsys.readouterr()

    # biollm eval reads both models and reports the same kind of split
    assert cli.main(["eval", "--model", str(base), "--model2", str(ft), "--data", str(pbmc_h5ad),
                     "--dict", str(out / "layers.1.base_vs_finetuned"), "--cells", "3",
                     "--max-length", str(MAX_LENGTH), "--device", "cpu", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["fvu_base"] < 0.7 and res["fvu_finetuned"] < 0.7
    assert res["decoder_norms"]["finetuned_only"] == shares["finetuned_only"]
    assert cli.main(["eval", "--model", str(base), "--data", str(pbmc_h5ad), "--dict",
                     str(out / "layers.1.base_vs_finetuned"), "--cells", "3"]) == 2
    assert "--model2" in capsys.readouterr().err.strip().splitlines()[-1]


def test_two_caches_train_and_must_hold_the_same_tokens(models, pbmc_h5ad, tmp_path):
    base, ft, v = models
    cache_a = _harvest(base, pbmc_h5ad, tmp_path / "a")
    cache_b = _harvest(ft, pbmc_h5ad, tmp_path / "b")
    cfg = TrainConfig(out=str(tmp_path / "run"), cache=str(cache_a), cache2=str(cache_b),
                      hookpoint=[HP], kind="crosscoder", latents=128, k=8, tokens=256 * 60, lr=0.02,
                      batch_size=256, warmup_steps=5, eval_cells=0, checkpoint_every=0,
                      log_every=5, device="cpu")
    path = train(cfg)["layers.1.base_vs_finetuned"]
    d = load_dictionary(path)
    assert d.cfg.models == {"base": str(base), "finetuned": str(ft)}  # read from the caches
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fvus = [ln["layers.1.base_vs_finetuned"]["fvu"] for ln in lines]
    assert fvus[-1] < 0.5 and fvus[-1] < 0.7 * fvus[0], fvus

    # per source, on the cached activations themselves
    from biollm_engine.cache import ActivationCache

    x = torch.stack([ActivationCache(c).read(HP) for c in (cache_a, cache_b)], dim=1)
    with torch.no_grad():
        recon = d(x).out
    fvu = [float((recon[:, s] - x[:, s]).pow(2).sum() / (x[:, s] - x[:, s].mean(0)).pow(2).sum())
           for s in range(2)]
    # the planted direction lives in the fine-tuned source's decoders only (TopK absorbs it
    # into shared per-token latents rather than a latent of its own: see the module docstring)
    r = d.relative_decoder_norms()
    along_v = (d.W_dec.detach() @ v).norm(dim=0)  # [sources]
    shares = d.cfg.training["decoder_norms"]
    seen = (fvu, along_v.tolist(), shares)
    assert max(fvu) < 0.5, seen
    assert along_v[1] > 3 * along_v[0], seen
    assert float(r.min()) >= 0 and float(r.max()) <= 1
    assert shares["base_only"] + shares["shared"] + shares["finetuned_only"] == pytest.approx(1)

    other = _harvest(ft, pbmc_h5ad, tmp_path / "other", first=1)
    with pytest.raises(BioLLMError, match="different tokens"):
        train(TrainConfig(out=str(tmp_path / "bad"), cache=str(cache_a), cache2=str(other),
                          hookpoint=[HP], kind="crosscoder", device="cpu"))


def test_different_tokenizers_are_refused(models, pbmc_h5ad, tmp_path, capsys):
    from tiny_models import build_tokenizer

    base, _, _ = models
    other = _copy(base, tmp_path / "other", tokenizer=build_tokenizer(vocab_size=350))
    assert cli.main(["train", "--model", str(base), "--model2", str(other), "--data",
                     str(pbmc_h5ad), "--out", str(tmp_path / "o"), *TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "same tokenizer" in err[-1], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--model2", "M2", "--hookpoint", HP], "--kind crosscoder"),
    (["--model2", "M2", "--kind", "crosscoder", "--hookpoint", HP, "--hookpoint", "layers.0"],
     "one --hookpoint"),
    (["--cache2", "C2", "--kind", "crosscoder", "--hookpoint", HP], "--model2"),
])
def test_two_model_options_are_checked(args, message, pbmc_h5ad, tmp_path, capsys):
    assert cli.main(["train", "--model", "M", "--data", str(pbmc_h5ad), "--out",
                     str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
