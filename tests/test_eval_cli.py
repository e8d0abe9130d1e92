"""`biollm train` then `biollm eval` end to end, and eval's one-line errors."""

import json

import pytest

from biollm_engine import cli
from biollm_engine.dictionaries import Dictionary, DictionaryConfig

EVAL_KEYS = {"dictionary", "hookpoint", "kind", "fvu", "l0", "dead_frac", "ce_clean",
             "ce_spliced", "ce_zero", "ce_delta", "loss_recovered", "agreement", "prompts"}


@pytest.fixture(scope="module")
def neox(tiny_model_dirs):
    return tiny_model_dirs("gpt_neox")


def test_train_then_eval_json(neox, pbmc_h5ad, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--model", str(neox), "--data", str(pbmc_h5ad), "--hookpoint",
                     "layers.0.mlp.in", "--kind", "skip-transcoder", "--latents", "128", "--k",
                     "8", "--tokens", "2560", "--batch-size", "256", "--warmup-steps", "2",
                     "--max-length", "96", "--eval-cells", "0", "--shuffle-tokens", "1024",
                     "--out", str(out), "--device", "cpu"]) == 0
    assert f"layers.0.mlp.in: {out / 'layers.0.mlp.in'}" in capsys.readouterr().out
    assert cli.main(["eval", "--model", str(neox), "--data", str(pbmc_h5ad), "--dict",
                     str(out / "layers.0.mlp.in"), "--cells", "2", "--max-length", "64", "--json",
                     "--device", "cpu", "--data-option", "top_k=50"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == EVAL_KEYS
    assert result["kind"] == "skip_transcoder" and result["prompts"] == 2
    assert 0 <= result["fvu"] < 1 and 0 < result["l0"] <= 8 and 0 <= result["agreement"] <= 1
    assert result["ce_delta"] == pytest.approx(result["ce_spliced"] - result["ce_clean"])

    assert cli.main(["eval", "--model", str(neox), "--data", str(pbmc_h5ad), "--dict",
                     str(out / "layers.0.mlp.in"), "--cells", "1", "--max-length", "32"]) == 0
    table = capsys.readouterr().out
    for label in ("FVU", "L0", "dead fraction", "CE delta", "loss recovered",
                  "cell-type agreement"):
        assert label in table


def _saved(tmp_path, d_in=64, hookpoint="layers.1"):
    d = Dictionary(DictionaryConfig(d_in=d_in, num_latents=64, k=4, hookpoint=hookpoint))
    return d.save(tmp_path / f"dict-{d_in}-{hookpoint}")


@pytest.mark.parametrize("case, message", [
    ("narrow", "width 32"),
    ("no_hookpoint", "layers.7"),
    ("no_dict", "does not exist"),
    ("no_model", "does not exist"),
    ("no_data", "does not exist"),
])
def test_eval_bad_input_is_one_line_exit_2(case, message, neox, pbmc_h5ad, tmp_path, capsys):
    model, data = str(neox), str(pbmc_h5ad)
    dictionary = _saved(tmp_path, d_in=32) if case == "narrow" else \
        _saved(tmp_path, hookpoint="layers.7") if case == "no_hookpoint" else _saved(tmp_path)
    if case == "no_dict":
        dictionary = tmp_path / "missing"
    if case == "no_model":
        model = str(tmp_path / "no-model")
    if case == "no_data":
        data = str(tmp_path / "cells.h5ad")
    assert cli.main(["eval", "--model", model, "--data", data, "--dict", str(dictionary),
                     "--cells", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("biollm: error:") and message in err
