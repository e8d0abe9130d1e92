"""Training in a child process, so the window never shares the GIL with the trainer.

The child (`python -m workbench.training_process CONFIG.json`) runs the engine's `train` and
writes one JSON object per line on stdout: {"event": "progress", ...Progress fields},
then "done" (with the dictionary paths), "cancelled" or "error". SIGINT cancels it: the trainer
saves a checkpoint first, so the run continues later with resume=True. The parent side,
`start_training`, turns those lines into the same `Job` the Jobs panel shows for thread jobs.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
from pathlib import Path


def _line(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    from biollm_engine import config
    from biollm_engine.errors import BioLLMError
    from biollm_engine.fileio import read_json
    from biollm_engine.progress import Cancelled, CancelToken
    from biollm_engine.training import train
    from biollm_engine.training.config import TrainConfig

    cancel = CancelToken()
    signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    try:
        cfg = config.from_dict(TrainConfig, read_json(argv[0]))
        paths = train(cfg, progress=lambda p: _line(event="progress", **dataclasses.asdict(p)),
                      cancel=cancel)
    except Cancelled:
        _line(event="cancelled", out=str(cfg.out))
        return 130
    except BioLLMError as e:
        _line(event="error", message=e.message)
        return 2
    _line(event="done", paths={k: str(v) for k, v in paths.items()})
    return 0


def start_training(jobs, cfg, name: str | None = None):
    """Run `cfg` (a TrainConfig) in a child process; returns its Job at once (in `jobs`)."""
    from PySide6.QtCore import QProcess

    from biollm_engine.fileio import write_json
    from biollm_engine.progress import Progress

    from .state.jobs import CANCELLED, DONE, FAILED, RUNNING, Job

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "workbench-train.json"
    write_json(config_path, dataclasses.asdict(cfg))
    job = jobs.add(Job(name or f"Train {cfg.kind} on {', '.join(cfg.hookpoint)}", None))
    proc = QProcess()
    proc.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
    state = {"buffer": b"", "final": None, "stderr": b""}

    def read() -> None:
        state["buffer"] += bytes(proc.readAllStandardOutput())
        *lines, state["buffer"] = state["buffer"].split(b"\n")
        for raw in lines:
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # a library printing on stdout: not ours
            kind = event.pop("event", None)
            if kind == "progress":
                job.report(Progress(**event))
            elif kind in ("done", "cancelled", "error"):
                state["final"] = (kind, event)

    def finished(code, _status) -> None:
        read()
        state["stderr"] += bytes(proc.readAllStandardError())
        _LIVE.pop(job, None)
        kind, event = state["final"] or ("error", {})
        if kind == "done":
            job.finish(DONE, result=event.get("paths"))
        elif kind == "cancelled" or job.cancel_token.cancelled:
            job.finish(CANCELLED, result=event.get("out"))
        else:
            tail = state["stderr"].decode(errors="replace").strip().splitlines()[-1:]
            job.finish(FAILED, error=event.get("message") or (tail[0] if tail else
                                                             f"training exited with {code}"))

    def cancel_requested() -> None:
        if job.cancel_token.cancelled and proc.state() == QProcess.ProcessState.Running:
            import os

            os.kill(int(proc.processId()), signal.SIGINT)  # the trainer checkpoints, then stops

    proc.readyReadStandardOutput.connect(read)
    proc.finished.connect(finished)
    job.changed.connect(cancel_requested)
    _LIVE[job] = proc
    job.status = RUNNING
    proc.start(sys.executable, ["-m", "workbench.training_process", str(config_path)])
    return job


_LIVE: dict = {}  # running processes, kept alive until they finish


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
