"""Kill a real `biollm train` process after its first checkpoint, resume it, and get exactly the
weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from biollm_engine.dictionaries import load_dictionary
from biollm_engine.training import TrainConfig, train
from test_training import make_cell_cache

STEPS = 150  # long enough that the kill lands mid-run, short enough to finish quickly


@pytest.fixture(scope="module")
def cell_cache(tiny_model_dirs, pbmc_h5ad, tmp_path_factory):
    return make_cell_cache(tiny_model_dirs("gpt_neox"), pbmc_h5ad,
                           tmp_path_factory.mktemp("cache") / "acts")


def _args(cache, out):
    return ["--cache", str(cache), "--out", str(out), "--hookpoint", "layers.1",
            "--hookpoint", "layers.0", "--latents", "128", "--k", "4", "--batch-size", "64",
            "--tokens", str(64 * STEPS), "--warmup-steps", "5", "--checkpoint-every", "10",
            "--eval-cells", "0", "--device", "cpu", "--seed", "3"]


def test_resume_after_sigkill_matches_uninterrupted_run(cell_cache, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "biollm_engine", "train",
                             *_args(cell_cache, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "checkpoints").glob("step-*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "layers.1").exists()  # killed before the end

    from biollm_engine import cli

    assert cli.main(["train", "--out", str(out), "--resume"]) == 0  # options from the checkpoint
    assert not (out / "checkpoints").exists()

    ns = dict(cache=str(cell_cache), out=str(tmp_path / "whole"), hookpoint=["layers.1", "layers.0"],
              latents=128, k=4, batch_size=64, tokens=64 * STEPS, warmup_steps=5,
              checkpoint_every=10, eval_cells=0, device="cpu", seed=3)
    whole = train(TrainConfig(**ns))
    for hp, path in whole.items():
        a, b = load_dictionary(path), load_dictionary(out / hp)
        assert b.cfg.training["steps"] == STEPS and b.cfg.training["tokens"] == 64 * STEPS
        for key, t in a.state_dict().items():
            assert torch.equal(t, b.state_dict()[key]), (hp, key)
