"""magicgui job dialogs from the engine's configs, started from the Analyse menu as real jobs;
training in a child process while the window keeps answering."""

import dataclasses
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from PySide6.QtCore import QSettings, QTimer

from biollm_engine.training import checkpoint
from biollm_engine.training.config import TrainConfig
from workbench.state.jobs import CANCELLED, DONE, JobList
from workbench.state.session import Session
from workbench.state.workspace import open_workspace
from workbench.training_process import start_training
from workbench.views.dialogs import TRAIN_FIELDS, ConfigDialog, harvest_dialog, train_dialog

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"


def test_train_dialog_is_built_from_trainconfig_and_checks_values(qtbot, tmp_path):
    ws = open_workspace(DEMO)
    d = train_dialog(ws)
    qtbot.addWidget(d)
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
    assert [w.name for w in d.form] == list(TRAIN_FIELDS)
    assert d.form.k.tooltip == helps["k"]
    assert d.form.model.value == ws.model and d.form.data.value == ws.data[0]
    d.form.out.value = str(tmp_path / "out")
    cfg = d.validate()
    assert isinstance(cfg, TrainConfig) and cfg.hookpoint == ["layers.1"] and cfg.k == 16
    d.form.hookpoint.value = "layers.9"
    assert d.validate() is None and "layers.9 is not in the model" in d.message.text()
    d.form.hookpoint.value = "layers.1"
    d.form.k.value = 600
    assert d.validate() is None and "smaller than latents" in d.message.text()
    d.form.k.value = 16
    d.form.model.value = str(tmp_path / "missing")
    d.accept()
    assert d.config is None and "does not exist" in d.message.text()
    h = harvest_dialog(ws)
    qtbot.addWidget(h)
    h.form.out.value = str(tmp_path / "cache")
    assert h.validate().hookpoints == ["layers.1"]
    h.form.hookpoints.value = ""
    assert h.validate() is None and "at least one hookpoint" in h.message.text()


def test_training_subprocess_reports_progress_and_cancels_with_a_checkpoint(qtbot, tmp_path):
    ws = open_workspace(DEMO)
    out = tmp_path / "train"
    cfg = TrainConfig(out=str(out), model=ws.model, data=ws.data[0], hookpoint=["layers.1"],
                      latents=256, k=8, tokens=50_000_000, batch_size=256, device="cpu",
                      checkpoint_every=0, log_every=1, eval_cells=0)
    jobs = JobList()
    ticks = []
    timer = QTimer(interval=20)  # what the window's own timers and repaints need
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    t0 = time.monotonic()
    job = start_training(jobs, cfg)
    assert jobs.jobs == [job] and job.active
    qtbot.waitUntil(lambda: job.progress is not None and job.progress.step >= 2,
                    timeout=120_000)
    assert job.progress.total and "loss" in job.history
    job.cancel()
    qtbot.waitUntil(lambda: not job.active, timeout=60_000)
    t1 = time.monotonic()
    timer.stop()
    assert job.status == CANCELLED, job.error
    assert checkpoint.latest(out) is not None
    # the event loop kept turning from start to end of the training job
    during = np.array([t for t in ticks if t0 <= t <= t1])
    gaps = np.diff(np.r_[t0, during, t1])
    print(f"event loop during subprocess training: {len(during)} ticks of 20 ms in "
          f"{t1 - t0:.1f} s, max gap {1000 * gaps.max():.0f} ms, median "
          f"{1000 * np.median(gaps):.0f} ms")
    quarter = (t1 - t0) / 4
    assert len(during) > 20
    assert (during < t0 + quarter).any() and (during > t1 - quarter).any()


def small_workspace(folder: Path, n_cells: int = 60) -> Path:
    """The demo's model and dictionaries over its first cells (and one B cell), saved in
    `folder` so analyses are cached there, not in the repository."""
    full = ad.read_h5ad(DEMO / "cells.h5ad")
    b_cell = int(np.flatnonzero(full.obs["bulk_labels"] == "CD19+ B")[0])
    keep = np.unique(np.r_[np.arange(n_cells - 1), b_cell])
    full[keep].copy().write_h5ad(folder / "cells.h5ad")
    s = Session()
    ws = s.open_workspace(DEMO)
    ws.data = [str(folder / "cells.h5ad")]
    s.save_workspace(folder)
    return folder


@pytest.fixture
def window(qtbot, tmp_path):
    from workbench.window import MainWindow

    small_workspace(tmp_path)
    w = MainWindow(Session(), QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.open_workspace(tmp_path)
    qtbot.waitUntil(lambda: w.session.cells.adata is not None, timeout=30_000)
    yield w
    assert w.runner.wait(120)


def answer_dialog(monkeypatch, fill):
    """The dialog answered as a user would: fields filled, OK pressed (no modal loop)."""
    def run(self):
        fill(self.form)
        self.accept()
        return self.result()

    monkeypatch.setattr(ConfigDialog, "exec", run)


def menu_action(w, text):
    menu = next(a.menu() for a in w.menuBar().actions() if a.text() == "&Analyse")
    return next(a for a in menu.actions() if a.text() == text)


def test_harvest_from_the_menu_writes_a_cache_into_the_workspace(window, monkeypatch, tmp_path):
    from biollm_engine.cache import ActivationCache

    def fill(form):
        assert form.model.value == window.session.workspace.model
        assert form.data.value == str(tmp_path / "cells.h5ad")  # the open cells
        form.hookpoints.value = "layers.1, layers.2.mlp.out"
        form.max_tokens.value = 1500
        form.device.value = "cpu"

    answer_dialog(monkeypatch, fill)
    menu_action(window, "Harvest activations…").trigger()
    job = window.session.jobs.jobs[-1]
    assert window.runner.wait(120) and job.status == DONE, job.error
    cache = ActivationCache(job.result)
    assert cache.hookpoints == ["layers.1", "layers.2.mlp.out"]
    assert 1500 <= cache.num_tokens and Path(job.result) == tmp_path / "caches" / "harvest"
    assert str(Path(job.result).resolve()) in window.session.workspace.caches


def test_analysis_dialog_from_the_menu_runs_the_engines_analysis(window, monkeypatch, tmp_path):
    from workbench.state.features import analysis_folder

    sae = str((DEMO / "dictionaries" / "sae" / "layers.2").resolve())

    def fill(form):
        assert form.obs_key.value == "bulk_labels"
        form.dict.value = sae
        form.top_n.value = 4

    answer_dialog(monkeypatch, fill)
    menu_action(window, "Analyse features with options…").trigger()
    panel = window.features_panel
    job = panel.analysis_job
    assert window.runner.wait(180) and job.status == DONE, job.error
    assert panel.analysis_cfg.top_n == 4 and panel.analysis_cfg.dict == sae
    folder = analysis_folder(tmp_path, sae)
    assert (folder / "table.parquet").exists() and panel.results.num_features == 512
    assert panel.model.rowCount() == 512 and panel.results.top_cells.shape[1] == 4
    assert panel.dictionary.currentData() == sae


def test_model_diffing_from_the_menu_shows_a_two_model_crosscoder(window, tmp_path):
    from biollm_engine.dictionaries import Dictionary, DictionaryConfig
    from biollm_engine.harvest import live_batches
    from biollm_engine.inputs import open_data
    from biollm_engine.models import load_model
    from workbench.views.diffing import DiffingView

    lm = load_model(str(DEMO / "model"), device="cpu")
    torch.manual_seed(0)
    d = Dictionary(DictionaryConfig(
        kind="crosscoder", d_in=lm.d_model, num_latents=64, k=8,
        sources=["base:layers.1", "finetuned:layers.1"],
        models={"base": str(DEMO / "model"), "finetuned": str(DEMO / "model")}))
    d.save(tmp_path / "crosscoder")
    assert menu_action(window, "Model diffing (crosscoder)…") is not None
    job = window.diff_crosscoder(tmp_path / "crosscoder", n_cells=12)
    assert window.runner.wait(120) and job.status == DONE, job.error
    view = window.docks["Diffing"].widget()
    assert isinstance(view, DiffingView) and len(view.points.points()) == 64
    # the same model twice: both sources read the same activations
    data = open_data(tmp_path / "cells.h5ad")
    x = torch.cat([b["layers.1"] for b in live_batches(lm, data.examples(lm.tokenizer,
                                                                          list(range(12))),
                                                         ["layers.1"], 4096)])
    fired = (d.encode(torch.stack([x, x], 1)) > 0).float().mean(0).numpy()
    np.testing.assert_allclose(view.table["frequency"], fired, atol=1e-6)
