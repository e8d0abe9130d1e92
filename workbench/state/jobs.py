"""Jobs as plain models: a name, an engine function taking (progress, cancel), its progress.

`workbench.jobs.JobRunner` runs them in worker threads and feeds `report` on the GUI thread.
"""

from __future__ import annotations

from typing import Any, Callable

from psygnal import Signal

from biollm_engine.progress import CancelToken, Progress

QUEUED, RUNNING, DONE, CANCELLED, FAILED = "queued", "running", "done", "cancelled", "failed"
FINAL = (DONE, CANCELLED, FAILED)


class Job:
    changed = Signal()
    finished = Signal(str)

    def __init__(self, name: str, fn: Callable[..., Any]):
        """`fn(progress=..., cancel=...)`: an engine function, e.g. partial(train, cfg)."""
        self.name = name
        self.fn = fn
        self.status = QUEUED
        self.progress: Progress | None = None
        self.history: dict[str, tuple[list[int], list[float]]] = {}
        self.cancel_token = CancelToken()
        self.result: Any = None
        self.error: str = ""

    @property
    def active(self) -> bool:
        return self.status not in FINAL

    def report(self, p: Progress) -> None:
        if self.status == QUEUED:
            self.status = RUNNING
        self.progress = p
        for k, v in p.metrics.items():
            steps, values = self.history.setdefault(k, ([], []))
            steps.append(p.step)
            values.append(float(v))
        self.changed.emit()

    def cancel(self) -> None:
        self.cancel_token.cancel()
        self.changed.emit()

    def finish(self, status: str, result: Any = None, error: str = "") -> None:
        self.status, self.result, self.error = status, result, error
        self.changed.emit()
        self.finished.emit(status)


class JobList:
    added = Signal(object)

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        self.added.emit(job)
        return job

    def active(self) -> list[Job]:
        return [j for j in self.jobs if j.active]
