"""`torchrun --nproc_per_node 2 -m biollm_engine train`: two CPU processes over Gloo."""

import subprocess
import sys

import pytest
import torch

from biollm_engine.dictionaries import load_dictionary
from biollm_engine.training import train
from test_training import make_cell_cache, small_config


@pytest.fixture(scope="module")
def cell_cache(tiny_model_dirs, pbmc_h5ad, tmp_path_factory):
    return make_cell_cache(tiny_model_dirs("gpt_neox"), pbmc_h5ad,
                           tmp_path_factory.mktemp("cache") / "acts")


def torchrun(out, cache, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "biollm_engine", "train", "--cache", str(cache), "--out", str(out),
           "--latents", "256", "--k", "8", "--tokens", str(256 * 20), "--batch-size", "256",
           "--warmup-steps", "5", "--eval-cells", "0", "--device", "cpu", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _single(tmp_path, cache, hookpoints, **kw):
    return train(small_config(tmp_path / "single", cache=str(cache), hookpoint=hookpoints,
                              tokens=256 * 20, **kw))


def test_data_parallel_matches_single_process(cell_cache, tmp_path):
    torchrun(tmp_path / "ddp", cell_cache, "--hookpoint", "layers.1")
    single = load_dictionary(_single(tmp_path, cell_cache, ["layers.1"])["layers.1"])
    ddp = load_dictionary(tmp_path / "ddp" / "layers.1")
    assert ddp.cfg.training["tokens"] == single.cfg.training["tokens"] == 20 * 256
    # the same global batches and gradients averaged over ranks: only each rank's own FVU
    # normaliser (its half of the batch's variance) separates the two runs
    for key, a in single.state_dict().items():
        b = ddp.state_dict()[key]
        assert (a - b).norm() <= 0.02 * a.norm(), key
    assert abs(ddp.cfg.training["fvu"] - single.cfg.training["fvu"]) < 0.02


def test_hookpoints_spread_over_ranks_match_single_process(cell_cache, tmp_path):
    hps = ["layers.0", "layers.1"]
    torchrun(tmp_path / "split", cell_cache, "--hookpoint", hps[0], "--hookpoint", hps[1],
             "--distribute", "hookpoints")
    single = _single(tmp_path, cell_cache, hps, distribute="hookpoints")
    for hp in hps:
        a, b = load_dictionary(single[hp]), load_dictionary(tmp_path / "split" / hp)
        for key, t in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[key], t, rtol=1e-5, atol=1e-6)
