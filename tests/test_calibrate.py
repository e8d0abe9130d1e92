"""`biollm calibrate`: a BatchTopK dictionary without an inference threshold (Goodfire's Evo 2
layout) gets one from a real harvest, after which a token's latents no longer depend on the
tokens read beside it."""

import numpy as np
import pytest
import torch

from biollm_engine.cache import ActivationCache
from biollm_engine.cli import main
from biollm_engine.dictionaries import load_dictionary
from biollm_engine.dictionaries.config import DictionaryConfig
from biollm_engine.dictionaries.dictionary import Dictionary

K, LATENTS, BATCH = 4, 128, 256


@pytest.fixture(scope="module")
def files(tiny_model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), 3000))
    (root / "seq.fa").write_text(">chr\n" + "\n".join(seq[i:i + 80] for i in range(0, 3000, 80))
                                 + "\n")
    assert main(["harvest", "--model", str(tiny_model_dirs("gpt_neox")), "--data",
                 str(root / "seq.fa"), "--out", str(root / "acts"), "--hookpoint", "layers.1",
                 "--data-option", "tokenizer=byte", "--data-option", "window=200",
                 "--store-dtype", "float32", "--device", "cpu"]) == 0
    g = torch.Generator().manual_seed(0)
    x = ActivationCache(root / "acts").read("layers.1")
    W = torch.randn(x.shape[1], LATENTS, generator=g) / x.shape[1] ** 0.5
    state = {"W": W, "b_enc": torch.zeros(LATENTS), "b_dec": torch.zeros(x.shape[1])}
    torch.save(state, root / f"sae-layer1-k_{K}.pt")
    return root, x, state


def test_threshold_is_the_mean_smallest_kept_activation_and_reads_tokens_alone(files, tmp_path,
                                                                              capsys):
    root, x, state = files
    rc = main(["calibrate", "--dict", str(root / f"sae-layer1-k_{K}.pt"), "--cache",
               str(root / "acts"), "--out", str(tmp_path / "cal"), "--batch-tokens", str(BATCH)])
    assert rc == 0, capsys.readouterr().err
    # by hand: contiguous batches of BATCH tokens, the k·N largest of relu(x W + b_enc) in each
    lows = []
    for a in range(0, len(x), BATCH):
        f = (x[a:a + BATCH] @ state["W"] + state["b_enc"]).relu().flatten()
        lows.append(float(f.topk(K * min(BATCH, len(x) - a)).values.min()))
    d = load_dictionary(tmp_path / "cal")
    assert float(d.threshold) == pytest.approx(np.mean(lows), rel=1e-5)
    assert d.cfg.training["calibrated"]["batches"] == len(lows)
    # a token's latents are the same read alone or among others; uncalibrated they were not
    raw = load_dictionary(root / f"sae-layer1-k_{K}.pt")
    some = x[:8]
    assert torch.equal(d.encode(some), d.encode(x[:400])[:8])
    assert not torch.equal(raw.encode(some), raw.encode(x[:400])[:8])
    # and about k latents per token fire, as in the batches it was trained to keep
    l0 = float((d.encode(x) > 0).sum(1).float().mean())
    assert K / 2 < l0 < 2 * K


@pytest.mark.parametrize("case, message", [
    ("topk", "not batchtopk"),
    ("out_exists", "is not an empty folder"),
    ("hookpoint", "hookpoint 'layers.0' is not in the cache"),
    ("narrow", "width"),
    ("bad_int", "argument --batch-tokens: invalid int value: 'many'"),
])
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, case, message):
    root, x, state = files
    goodfire = str(root / f"sae-layer1-k_{K}.pt")
    args = {"dict": goodfire, "out": str(tmp_path / "cal"), "extra": []}
    if case == "topk":
        Dictionary(DictionaryConfig(kind="sae", d_in=x.shape[1], num_latents=8, k=2,
                                    hookpoint="layers.1")).save(tmp_path / "topk")
        args["dict"] = str(tmp_path / "topk")
    elif case == "out_exists":
        (tmp_path / "cal").mkdir()
        (tmp_path / "cal" / "keep.txt").write_text("mine")
    elif case == "hookpoint":
        args["extra"] = ["--hookpoint", "layers.0"]
    elif case == "narrow":
        torch.save({"W": torch.randn(8, 16), "b_enc": torch.zeros(16), "b_dec": torch.zeros(8)},
                   tmp_path / "sae-layer1-k_2.pt")
        args["dict"] = str(tmp_path / "sae-layer1-k_2.pt")
    elif case == "bad_int":
        args["extra"] = ["--batch-tokens", "many"]
    capsys.readouterr()
    rc = _exit_code(["calibrate", "--dict", args["dict"], "--cache", str(root / "acts"), "--out",
                     args["out"], *args["extra"]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    if case == "out_exists":
        assert (tmp_path / "cal" / "keep.txt").read_text() == "mine"
    else:
        assert not (tmp_path / "cal").exists()


def _exit_code(argv) -> int:
    """main's code, or argparse's (which exits)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code
