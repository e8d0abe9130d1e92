"""Run engine functions in worker threads (superqt workers) and bring their progress home.

The engine reports through a `ProgressCallback` in the worker thread; a queued Qt signal carries
each `Progress` to the GUI thread, where the `Job` model is updated and the views redraw.
"""

from __future__ import annotations

import logging
import sys
import time

from PySide6.QtCore import QCoreApplication, QObject, Qt, Signal, Slot
from superqt.utils import create_worker

from biollm_engine.errors import BioLLMError
from biollm_engine.progress import Cancelled

from .state.jobs import CANCELLED, DONE, FAILED, RUNNING, Job, JobList
from .state.system import compute_threads

log = logging.getLogger("workbench")


class _Bridge(QObject):
    """Lives in the GUI thread; `progressed` emitted from the worker is queued to it."""

    progressed = Signal(object)

    def __init__(self, job: Job):
        super().__init__()
        self.job = job
        self.progressed.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    @Slot(object)
    def _deliver(self, p) -> None:
        self.job.report(p)


_STOPPED = object()  # what a cancelled job returns


def reserve_core_for_ui() -> None:
    torch = sys.modules.get("torch")  # importing it here would hold the GIL for a second
    if torch is not None and torch.get_num_threads() > compute_threads():
        torch.set_num_threads(compute_threads())


def _call(job: Job, emit):
    reserve_core_for_ui()
    try:
        job.cancel_token.raise_if_cancelled()
        return job.fn(progress=emit, cancel=job.cancel_token)
    except Cancelled:
        return _STOPPED


class JobRunner(QObject):
    def __init__(self, jobs: JobList | None = None):
        super().__init__()
        self.jobs = jobs or JobList()
        self._live: dict[Job, tuple] = {}

    def submit(self, name: str, fn) -> Job:
        """Start `fn(progress=, cancel=)` in a worker thread; returns its Job at once."""
        job = self.jobs.add(Job(name, fn))
        bridge = _Bridge(job)
        worker = create_worker(_call, job, bridge.progressed.emit, _start_thread=False,
                               _ignore_errors=True)
        worker.returned.connect(lambda r, j=job: self._finish(j, r, None))
        worker.errored.connect(lambda e, j=job: self._finish(j, None, e))
        self._live[job] = (worker, bridge)
        job.status = RUNNING
        log.info("job started: %s", name)
        worker.start()
        return job

    def _finish(self, job: Job, result, error) -> None:
        QCoreApplication.sendPostedEvents(self._live[job][1])  # deliver the last progress first
        self._live.pop(job, None)
        if error is not None:
            msg = error.message if isinstance(error, BioLLMError) else (
                f"{type(error).__name__}: {error}")
            log.error("job failed: %s: %s", job.name, msg)
            job.finish(FAILED, error=msg)
        elif result is _STOPPED:
            log.info("job cancelled: %s", job.name)
            job.finish(CANCELLED)
        else:
            log.info("job done: %s", job.name)
            job.finish(DONE, result=result)

    def cancel_all(self) -> None:
        for job in self.jobs.active():
            job.cancel()

    def wait(self, timeout_s: float = 30.0) -> bool:
        """Keep the event loop turning until every job has finished; returns whether they did."""
        end = time.monotonic() + timeout_s
        while self.jobs.active() and time.monotonic() < end:
            QCoreApplication.processEvents()
            time.sleep(0.01)
        return not self.jobs.active()
