"""The shared core: errors, progress/cancel, atomic writes, dataclass configs, the CLI."""

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from biollm_engine import config
from biollm_engine.errors import BioLLMError
from biollm_engine.fileio import atomic_dir, atomic_path, read_json, write_json
from biollm_engine.progress import Cancelled, CancelToken, ProgressTracker


@dataclasses.dataclass
class _Job:
    data: str = dataclasses.field(metadata={"help": "input file"})
    hookpoint: list[str] = dataclasses.field(default_factory=list, metadata={"help": "hp"})
    k: int = dataclasses.field(default=32, metadata={"help": "active latents"})
    lr: float | None = dataclasses.field(default=None, metadata={"help": "learning rate"})
    resume: bool = dataclasses.field(default=False, metadata={"help": "resume"})


def test_config_round_trips_through_argparse_and_json():
    p = argparse.ArgumentParser()
    config.add_arguments(p, _Job)
    ns = p.parse_args(["--data", "x.h5ad", "--hookpoint", "layers.1", "--hookpoint", "layers.2",
                       "--k", "8", "--resume"])
    job = config.from_args(_Job, ns)
    assert job == _Job("x.h5ad", ["layers.1", "layers.2"], 8, None, True)
    assert config.from_dict(_Job, json.loads(json.dumps(config.to_dict(job)))) == job
    with pytest.raises(SystemExit):
        p.parse_args([])  # --data is required
    with pytest.raises(BioLLMError, match="unknown _Job options: bogus"):
        config.from_dict(_Job, {"data": "x", "bogus": 1}, strict=True)


def test_progress_reports_eta_and_cancel_stops_the_loop():
    seen = []
    token = CancelToken()
    tracker = ProgressTracker("train", total=10, callback=seen.append, cancel=token,
                              min_interval_s=0)
    for i in range(3):
        tracker.update(tokens=100, loss=1.0 / (i + 1))
    assert [p.step for p in seen] == [1, 2, 3]
    assert seen[-1].tokens == 300 and seen[-1].metrics["loss"] == pytest.approx(1 / 3)
    assert seen[-1].eta_s is not None and seen[-1].fraction == pytest.approx(0.3)
    token.cancel()
    with pytest.raises(Cancelled):
        tracker.update()


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    dest = tmp_path / "table.csv"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert dest.read_text() == "old"
    assert list(tmp_path.iterdir()) == [dest]

    out = tmp_path / "dict"
    with atomic_dir(out) as tmp:
        (tmp / "cfg.json").write_text("{}")
    assert (out / "cfg.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dict", "table.csv"]

    write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BioLLMError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_atomic_writes_get_the_modes_a_plain_write_would(tmp_path):
    # the temporary names are private (0600 / 0700); the finished files must not stay so, or a
    # lab's shared exports become unreadable to the group
    (tmp_path / "plain").write_text("")
    (tmp_path / "plaindir").mkdir()
    write_json(tmp_path / "new.json", {})
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("")
    kept = tmp_path / "kept.csv"
    kept.write_text("old")
    kept.chmod(0o640)
    with atomic_path(kept) as tmp:
        tmp.write_text("new")
    mode = {n: (tmp_path / n).stat().st_mode & 0o777 for n in
            ("plain", "plaindir", "new.json", "d", "kept.csv")}
    assert (mode["new.json"], mode["d"], mode["kept.csv"]) == (mode["plain"], mode["plaindir"],
                                                                0o640), mode


def test_cli_without_command_prints_help_and_exits_2():
    r = subprocess.run([sys.executable, "-m", "biollm_engine"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "usage: biollm" in r.stdout


@pytest.mark.parametrize("argv, message", [
    (["features", "--model", "m"], "the following arguments are required: --data"),
    (["features", "--model", "m", "--data", "d", "--dict", "x", "--out", "t.csv", "--top-n",
      "ten"], "argument --top-n: invalid int value: 'ten'"),
    (["models", "bogus"], "argument ACTION: invalid choice: 'bogus'"),
])
def test_cli_option_errors_are_one_line_and_exit_2(argv, message):
    r = subprocess.run([sys.executable, "-m", "biollm_engine", *argv], capture_output=True,
                       text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "--help` lists the options" in lines[0], \
        r.stderr
    assert not r.stdout


def test_cli_help_lists_every_command_without_importing_torch():
    # Only the command being run builds its full parser: `biollm --help` must not pay for the
    # imports (torch, transformers) that the commands need when they run.
    probe = ("import sys\nfrom biollm_engine.cli import build_parser, command_names\n"
             "text = build_parser('').format_help()\n"
             "print([n for n in command_names() if n not in text], "
             "'torch' in sys.modules, 'transformers' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "False", "False"]
