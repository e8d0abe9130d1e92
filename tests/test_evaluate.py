"""biollm evaluate: cell-type annotation metrics on a tiny GPTNeoX and pbmc68k_reduced."""

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from biollm_engine.cli import main
from biollm_engine.dictionaries import Dictionary, DictionaryConfig
from biollm_engine.errors import BioLLMError
from biollm_engine.evaluation import UNMATCHED, EvaluateConfig, evaluate, match_label, normalize
from biollm_engine.evaluation.predict import generate
from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
from biollm_engine.models import load_model

LABEL = "bulk_labels"


@pytest.fixture(scope="module")
def lm(tiny_model_dirs):
    return load_model(str(tiny_model_dirs("gpt_neox")), device="cpu")


@pytest.fixture(scope="module")
def cells(pbmc_h5ad):
    return CellDataset(pbmc_h5ad, CellSentenceConfig(top_k=8))


def _dictionary(lm, exact: bool) -> Dictionary:
    """A ReLU SAE at layers.0 that reconstructs exactly ([I; -I] both ways) or outputs zeros."""
    d = lm.d_model
    cfg = DictionaryConfig(kind="sae", activation="relu", d_in=d, num_latents=2 * d,
                           hookpoint="layers.0", apply_b_dec_to_input=False,
                           normalize_decoder=False)
    sae = Dictionary(cfg)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]) if exact else torch.zeros(2 * d, d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_label_normalisation_and_matching():
    assert normalize("  CD4+   T cell ") == normalize("cd4+ t cell") == "cd4+ t cell"
    assert normalize("CD4+/CD45RO+ Memory") == "cd4+ cd45ro+ memory"
    labels = ["CD4+/CD45RO+ Memory", "CD4+ T cell", "T cell", "CD14+ Monocyte", "B"]
    assert match_label("cd4+ t  cell", labels) == "CD4+ T cell"
    assert match_label("CD4+ / CD45RO+ memory", labels) == "CD4+/CD45RO+ Memory"
    # a label contained in the answer, longest first; word-aligned ("B" is not in "CD14+")
    assert match_label("a CD4+ T cell of the blood", labels) == "CD4+ T cell"
    assert match_label("CD14+ monocytes", labels) == UNMATCHED
    assert match_label("CD14+ Monocyte, classical", labels) == "CD14+ Monocyte"
    assert match_label("", labels) == UNMATCHED
    assert match_label("CD4 T cell", labels) == "T cell"  # '+' matters: CD4 is not CD4+


def test_batched_left_padded_generation_matches_one_by_one(lm, cells):
    prompts = [e.input_ids.tolist() for e in cells.examples(lm.tokenizer, indices=[0, 5, 9])]
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    assert generate(lm, prompts, 6) == [generate(lm, [p], 6)[0] for p in prompts]


def _check_metrics(r, s):
    truth, pred = np.asarray(r.truth), np.asarray(r.predictions)
    assert s["n_cells"] == len(truth) == len(pred)
    assert s["accuracy"] == pytest.approx(np.mean(truth == pred))
    assert s["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro",
                                                   zero_division=0))
    m = np.asarray(s["confusion"]["matrix"])
    assert m.sum() == s["n_cells"]
    assert np.trace(m) == (truth == pred).sum()
    for t, v in s["per_type"].items():
        assert v["n"] == (truth == t).sum() and v["correct"] == ((truth == t) & (pred == t)).sum()
    counts = np.unique(truth, return_counts=True)[1]
    assert s["baseline_majority"] == pytest.approx(counts.max() / len(truth))
    assert s["baseline_chance"] == pytest.approx(1 / len(r.labels))


def test_c2s_predictions_are_matched_answers(lm, cells):
    r = evaluate(lm, cells, LABEL, EvaluateConfig(cells="8", batch_size=4, max_new_tokens=3))
    assert r.predictions == [match_label(a, r.labels) for a in r.answers]
    assert set(r.truth) <= set(r.labels)
    truth = cells.obs[LABEL].astype(str).to_numpy()
    assert r.truth == [truth[cells.cell_ids.index(c)] for c in r.cell_ids]
    _check_metrics(r, r.to_dict())


@pytest.mark.parametrize("scoring", ["text", "letter"])
def test_choice_format_gives_a_valid_option_for_every_cell(lm, cells, scoring):
    r = evaluate(lm, cells, LABEL, EvaluateConfig(format="choice", choice_scoring=scoring,
                                                  cells="5", batch_size=50))
    assert len(r.predictions) == 5 and set(r.predictions) <= set(r.labels)
    if scoring == "letter":
        assert all(len(a) == 1 and a.isupper() for a in r.answers)
    _check_metrics(r, r.to_dict())


def test_own_answers_score_one_exact_dictionary_keeps_them_zeroing_changes_them(lm, pbmc):
    """Labels set to the model's own greedy answers: accuracy 1; an exact SAE changes no
    prediction; one that zeros the residual stream gives every cell the same answer."""
    adata = pbmc[:10].copy()
    ds = CellDataset(adata, CellSentenceConfig(top_k=8, template="sentence"))
    cfg = EvaluateConfig(cells="all", batch_size=10, max_new_tokens=4)
    answers = generate(lm, [e.input_ids.tolist() for e in ds.examples(lm.tokenizer)], 4)
    answers = [a if normalize(a) else "" for a in answers]  # "" leaves a cell unlabelled
    adata.obs["own"] = answers
    ds = CellDataset(adata, CellSentenceConfig(top_k=8, template="sentence"))
    exact = evaluate(lm, ds, "own", cfg, [_dictionary(lm, exact=True)])
    s = exact.to_dict()
    assert s["n_cells"] == sum(a != "" for a in answers) >= 5
    assert s["accuracy"] == 1.0 == np.mean(exact.correct)
    _check_metrics(exact, s)
    assert s["changed_fraction"] == 0.0 and s["spliced_accuracy"] == 1.0
    zeroed = evaluate(lm, ds, "own", cfg, [_dictionary(lm, exact=False)])
    z = zeroed.to_dict()
    assert len(set(zeroed.spliced_predictions)) == 1
    assert z["changed_fraction"] == pytest.approx(np.mean(
        np.asarray(zeroed.predictions) != np.asarray(zeroed.spliced_predictions)))
    assert z["changed_fraction"] >= 1 - max(np.unique(zeroed.truth, return_counts=True)[1]) / len(
        zeroed.truth)
    assert z["spliced_accuracy"] < 1.0


def test_heldout_split_and_bad_inputs(lm, cells, pbmc):
    with pytest.raises(BioLLMError, match="bulk_labels"):
        evaluate(lm, cells, "no_such_column", EvaluateConfig(cells="4"))
    with pytest.raises(BioLLMError, match="held-out"):
        evaluate(lm, cells, LABEL, EvaluateConfig(cells="heldout"))
    with pytest.raises(BioLLMError, match="--cells"):
        EvaluateConfig(cells="some")
    adata = pbmc.copy()
    adata.obs["split"] = np.where(np.arange(adata.n_obs) % 100 == 0, "test", "train")
    adata.obs["empty"] = ""
    ds = CellDataset(adata, CellSentenceConfig(top_k=8))
    r = evaluate(lm, ds, LABEL, EvaluateConfig(cells="heldout", split_value="test",
                                               max_new_tokens=2))
    assert r.cell_ids == [str(c) for c in adata.obs_names[::100]]
    with pytest.raises(BioLLMError, match="labels no cells"):
        evaluate(lm, ds, "empty", EvaluateConfig(cells="4"))


def test_cli_json_predictions_and_errors(tiny_model_dirs, pbmc_h5ad, tmp_path, capsys, lm):
    model = str(tiny_model_dirs("gpt_neox"))
    sae = tmp_path / "sae"
    _dictionary(lm, exact=True).save(sae)
    out = tmp_path / "pred.csv"
    base = ["evaluate", "--model", model, "--data", str(pbmc_h5ad), "--obs-key", LABEL,
            "--data-option", "top_k=8", "--cells", "6", "--device", "cpu"]
    assert main(base + ["--format", "choice", "--choice-scoring", "letter", "--dicts", str(sae),
                        "--json", "--predictions", str(out)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert {"accuracy", "macro_f1", "baseline_majority", "baseline_chance", "per_type",
            "confusion", "n_cells", "spliced_accuracy", "changed_fraction",
            "spliced_macro_f1"} <= set(s)
    assert s["n_cells"] == 6 and s["changed_fraction"] == 0.0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 6
    assert s["accuracy"] == pytest.approx(np.mean([r["label"] == r["prediction"] for r in rows]))
    assert all(r["correct"] == str(r["label"] == r["prediction"]) for r in rows)
    assert all(r["changed"] == "False" for r in rows)

    assert main(base + ["--max-new-tokens", "2"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "confusion" in text and "CD14+ Monocyte" in text

    assert main(base + ["--obs-key", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    wrong = tmp_path / "wrong"
    Dictionary(DictionaryConfig(kind="sae", d_in=32, num_latents=64, k=4,
                                hookpoint="layers.0")).save(wrong)
    assert main(base + ["--dicts", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0


def test_demo_heldout_accuracy_is_a_direct_count_and_the_recorded_one(tmp_path, capsys):
    """On the shipped demo, `biollm evaluate --cells heldout` counts the same correct cells as
    its per-cell predictions and as the demo build recorded (argmax over the whole vocabulary:
    the demo's answer is one cell-type token, then end-of-sequence)."""
    from biollm_engine.demo import DEFAULT_WORKSPACE as ws

    report = json.loads((ws / "demo.json").read_text())["model"]
    out = tmp_path / "demo.csv"
    assert main(["evaluate", "--model", str(ws / "model"), "--data", str(ws / "cells.h5ad"),
                 "--obs-key", report["label_column"], "--cells", "heldout", "--split-key",
                 report["split_column"], "--max-new-tokens", "2", "--batch-size", "32",
                 "--device", "cpu", "--json", "--predictions", str(out)]) == 0
    s = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(open(out)))
    assert s["n_cells"] == len(rows) == report["n_heldout"]
    assert s["accuracy"] == pytest.approx(np.mean([r["label"] == r["prediction"] for r in rows]))
    recorded = report["heldout_predictions"]
    # the same answer for every cell, but where two cell types tie to float rounding
    assert sum(recorded[r["cell_id"]] != r["prediction"] for r in rows) <= 1
    assert s["accuracy"] == pytest.approx(report["heldout_accuracy_unrestricted"],
                                          abs=1.01 / len(rows))
    assert s["accuracy"] > s["baseline_majority"]


def test_progress_reaches_every_cell_and_cancel_stops(lm, cells):
    from biollm_engine.progress import Cancelled, CancelToken

    seen = []
    cfg = EvaluateConfig(format="choice", choice_scoring="letter", cells="6", batch_size=2)
    evaluate(lm, cells, LABEL, cfg, progress=seen.append)
    assert seen[-1].step == seen[-1].total == 6

    token = CancelToken()

    def cancel_after_first(p):
        token.cancel()

    with pytest.raises(Cancelled):
        evaluate(lm, cells, LABEL, cfg, progress=cancel_after_first, cancel=token)
