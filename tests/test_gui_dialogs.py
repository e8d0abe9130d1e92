"""magicgui job dialogs from the engine's configs, and training in a child process."""

import dataclasses
from pathlib import Path

from biollm_engine.training import checkpoint
from biollm_engine.training.config import TrainConfig
from workbench.state.jobs import CANCELLED, JobList
from workbench.state.workspace import open_workspace
from workbench.training_process import start_training
from workbench.views.dialogs import TRAIN_FIELDS, harvest_dialog, train_dialog

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"


def test_train_dialog_is_built_from_trainconfig_and_checks_values(qtbot, tmp_path):
    ws = open_workspace(DEMO)
    d = train_dialog(ws)
    qtbot.addWidget(d)
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
    assert [w.name for w in d.form] == [n for n in helps if n in TRAIN_FIELDS]
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
    h = harvest_dialog()
    qtbot.addWidget(h)
    assert h.validate().hookpoints == ["layers.1"]


def test_training_subprocess_reports_progress_and_cancels_with_a_checkpoint(qtbot, tmp_path):
    ws = open_workspace(DEMO)
    out = tmp_path / "train"
    cfg = TrainConfig(out=str(out), model=ws.model, data=ws.data[0], hookpoint=["layers.1"],
                      latents=256, k=8, tokens=50_000_000, batch_size=256, device="cpu",
                      checkpoint_every=0, log_every=1, eval_cells=0)
    jobs = JobList()
    job = start_training(jobs, cfg)
    assert jobs.jobs == [job] and job.active
    qtbot.waitUntil(lambda: job.progress is not None and job.progress.step >= 2,
                    timeout=120_000)
    assert job.progress.total and "loss" in job.history
    job.cancel()
    qtbot.waitUntil(lambda: not job.active, timeout=60_000)
    assert job.status == CANCELLED, job.error
    assert checkpoint.latest(out) is not None
