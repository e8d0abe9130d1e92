"""The training loop on real cell-sentence activations of a tiny GPT-NeoX (pbmc68k_reduced)."""

import json
import time

import pytest
import torch

from biollm_engine import cli
from biollm_engine.dictionaries import Dictionary, DictionaryConfig, load_dictionary
from biollm_engine.errors import BioLLMError
from biollm_engine.progress import Cancelled, CancelToken
from biollm_engine.training import TrainConfig, train
from biollm_engine.training.splice_eval import EvalSet, evaluate_dictionary

HOOKPOINTS = ["layers.0", "layers.1", "layers.0.mlp.in", "layers.0.mlp.out"]
CELLS, MAX_LENGTH = 48, 128


def make_cell_cache(model_dir, h5ad, out):
    """Harvest HOOKPOINTS over CELLS real cells in float32 (so training is bitwise reproducible)."""
    from biollm_engine.harvest import HarvestConfig, harvest
    from biollm_engine.inputs import open_data
    from biollm_engine.models import load_model

    lm = load_model(str(model_dir), device="cpu")
    data = open_data(h5ad)
    examples = data.examples(lm.tokenizer, indices=range(CELLS), max_length=MAX_LENGTH)
    harvest(lm, examples, HarvestConfig(hookpoints=HOOKPOINTS, max_length=MAX_LENGTH,
                                        shard_tokens=2048, store_dtype="float32"),
            out, meta={"data": str(h5ad)})
    return out


def small_config(out, **kw) -> TrainConfig:
    base = dict(out=str(out), latents=256, k=8, tokens=256 * 40, batch_size=256, warmup_steps=5,
                eval_cells=0, checkpoint_every=0, log_every=5, device="cpu", max_length=MAX_LENGTH,
                shuffle_tokens=2048)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def neox(tiny_model_dirs):
    return tiny_model_dirs("gpt_neox")


@pytest.fixture(scope="module")
def cell_cache(neox, pbmc_h5ad, tmp_path_factory):
    return make_cell_cache(neox, pbmc_h5ad, tmp_path_factory.mktemp("cache") / "acts")


def _fvus(out, name):
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [ln[name]["fvu"] for ln in lines if name in ln]


@pytest.mark.parametrize("kind, hookpoints, name", [
    ("sae", ["layers.1"], "layers.1"),
    ("transcoder", ["layers.0.mlp.in"], "layers.0.mlp.in"),
    ("skip_transcoder", ["layers.0.mlp.in"], "layers.0.mlp.in"),
    ("crosscoder", ["layers.0", "layers.1"], "layers.0+layers.1"),
])
def test_each_kind_learns_real_activations(kind, hookpoints, name, cell_cache, tmp_path):
    cfg = small_config(tmp_path / "run", cache=str(cell_cache), hookpoint=hookpoints, kind=kind)
    paths = train(cfg)
    assert list(paths) == [name]
    fvus = _fvus(tmp_path / "run", name)
    assert fvus[-1] < 0.5 and fvus[-1] < 0.7 * fvus[0], fvus
    d = load_dictionary(paths[name])
    assert d.cfg.kind == kind and d.cfg.num_latents == 256 and d.cfg.k == 8
    summary = d.cfg.training
    assert summary["steps"] == 40 and summary["tokens"] == 40 * 256
    assert summary["fvu"] == pytest.approx(fvus[-1])
    if kind in ("transcoder", "skip_transcoder"):
        assert (d.cfg.hookpoint, d.cfg.target) == ("layers.0.mlp.in", "layers.0.mlp.out")
    if kind == "crosscoder":
        assert d.cfg.sources == hookpoints and d.decoder_norms().shape == (256, 2)
    assert not (tmp_path / "run" / "checkpoints").exists()  # a finished run leaves no checkpoint


def test_live_training_reports_progress_and_spliced_eval(neox, pbmc_h5ad, tmp_path):
    seen = []
    cfg = small_config(tmp_path / "run", model=str(neox), data=str(pbmc_h5ad),
                       hookpoint=["layers.1"], tokens=256 * 20, eval_cells=2, eval_every=10)
    paths = train(cfg, progress=seen.append)
    assert seen[-1].step == seen[-1].total == 20 and seen[-1].tokens == 20 * 256
    assert {"fvu", "l0", "dead_frac", "loss"} <= set(seen[-1].metrics)
    assert seen[-1].metrics["l0"] == pytest.approx(8)
    ev = load_dictionary(paths["layers.1"]).cfg.training["eval"]
    assert ev["prompts"] == 2 and 0 <= ev["agreement"] <= 1
    # a random model's losses carry no meaning; their relations do (exactness is tested below)
    assert ev["ce_delta"] == pytest.approx(ev["ce_spliced"] - ev["ce_clean"])
    assert ev["loss_recovered"] == pytest.approx(
        (ev["ce_zero"] - ev["ce_spliced"]) / (ev["ce_zero"] - ev["ce_clean"]))
    logged = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in ln and ln["step"] == 10 for ln in logged)
    assert json.loads((tmp_path / "run" / "cfg.json").read_text())["hookpoint"] == ["layers.1"]


def _exact(kind, d, sources=()):
    """A ReLU dictionary that reconstructs exactly: latents +e_i and -e_i."""
    S = max(1, len(sources))
    cfg = DictionaryConfig(kind=kind, activation="relu", d_in=d, num_latents=2 * S * d,
                           hookpoint=sources[0] if sources else "layers.1", sources=list(sources))
    dic = Dictionary(cfg)
    eye = torch.eye(S * d)
    W = torch.cat([eye, -eye]).reshape(dic.W_enc.shape)
    with torch.no_grad():
        dic.W_enc.copy_(W)
        dic.W_dec.copy_(W)
        dic.b_enc.zero_()
        dic.b_dec.zero_()
    return dic


@pytest.mark.parametrize("kind, sources", [("sae", ()), ("crosscoder", ("layers.0", "layers.1"))])
def test_spliced_eval_of_exact_and_of_null_dictionaries(kind, sources, neox, pbmc_h5ad):
    from biollm_engine.inputs import open_data
    from biollm_engine.models import load_model

    lm = load_model(str(neox), device="cpu")
    evalset = EvalSet.held_out(lm, open_data(pbmc_h5ad), 2, seed=0, max_length=64)
    exact = evaluate_dictionary(lm, _exact(kind, 64, sources), evalset)
    assert exact["fvu"] == pytest.approx(0, abs=1e-6)
    assert exact["ce_delta"] == pytest.approx(0, abs=1e-4)
    assert exact["loss_recovered"] == pytest.approx(1, abs=1e-3)
    assert exact["agreement"] == 1.0 and exact["dead_frac"] == 0.0
    null = _exact(kind, 64, sources)
    with torch.no_grad():
        null.W_dec.zero_()
    zeroed = evaluate_dictionary(lm, null, evalset)
    assert zeroed["loss_recovered"] == pytest.approx(0, abs=1e-4)
    assert zeroed["ce_spliced"] == pytest.approx(zeroed["ce_zero"], rel=1e-5)


def test_cancel_checkpoints_and_resume_is_exact(cell_cache, tmp_path):
    kw = dict(cache=str(cell_cache), hookpoint=["layers.0", "layers.1"], tokens=256 * 12,
              activation="batchtopk", checkpoint_every=4)
    whole = train(small_config(tmp_path / "whole", **kw))

    token = CancelToken()

    # Progress reports are throttled to one per 0.1 s: waiting that long in the callback makes
    # every step report, so the cancel lands at step 6 however fast the steps run.
    def stop_at_6(p):
        time.sleep(0.11)
        if p.step >= 6:
            token.cancel()

    cfg = small_config(tmp_path / "cut", **kw)
    with pytest.raises(Cancelled):
        train(cfg, progress=stop_at_6, cancel=token)
    ckpts = list((tmp_path / "cut" / "checkpoints").iterdir())
    assert len(ckpts) == 1 and 6 < int(ckpts[0].name.split("-")[1]) < 12  # the newest only
    with pytest.raises(BioLLMError, match="--resume"):
        train(cfg)
    with pytest.raises(BioLLMError, match="different options"):
        train(small_config(tmp_path / "cut", **{**kw, "k": 4}, resume=True))
    resumed = train(small_config(tmp_path / "cut", **kw, resume=True))
    for name in whole:
        a, b = load_dictionary(whole[name]), load_dictionary(resumed[name])
        for key, t in a.state_dict().items():
            assert torch.equal(t, b.state_dict()[key]), (name, key)


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model", "--data", "{h5ad}", "--hookpoint", "layers.0"],
     "does not exist"),
    (["--model", "{model}", "--data", "/nonexistent.h5ad", "--hookpoint", "layers.0"],
     "does not exist"),
    (["--model", "{model}", "--data", "{h5ad}", "--hookpoint", "layers.9"], "layers.9"),
    (["--model", "{model}", "--data", "{h5ad}", "--hookpoint", "layers.0", "--resume"],
     "no checkpoint"),
    (["--model", "{model}", "--hookpoint", "layers.0"], "--data"),
    (["--model", "{model}", "--data", "{h5ad}", "--hookpoint", "layers.0", "--kind",
      "transcoder"], "--target"),
])
def test_train_cli_bad_input_is_one_line_exit_2(args, message, neox, pbmc_h5ad, tmp_path,
                                                 capsys):
    args = [a.format(model=neox, h5ad=pbmc_h5ad) for a in args]
    assert cli.main(["train", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("biollm: error:") and message in err
