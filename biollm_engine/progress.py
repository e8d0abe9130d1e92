"""The one progress / cancel protocol.

Long engine work (harvest, training, analysis, circuits) takes a `ProgressCallback` and a
`CancelToken`. The CLI turns progress into a tqdm bar; the GUI turns it into Qt signals from a
worker thread. Engine code never prints.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable


class Cancelled(Exception):
    """Raised inside engine work when its `CancelToken` was cancelled."""


class CancelToken:
    """Thread-safe flag checked by engine loops between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass
class Progress:
    """One progress report: where a job stands and what it measures."""

    task: str
    step: int
    total: int | None = None
    tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    eta_s: float | None = None
    elapsed_s: float = 0.0
    message: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.step / self.total)


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    pass


class ProgressTracker:
    """Counts steps, estimates the time left and reports through a callback.

    Reports are throttled to `min_interval_s` so that a fast loop does not flood a GUI, but the
    last step is always reported.
    """

    def __init__(
        self,
        task: str,
        total: int | None,
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        min_interval_s: float = 0.1,
        start_step: int = 0,
    ):
        self.task = task
        self.total = total
        self.callback = callback or no_progress
        self.cancel = cancel or CancelToken()
        self.min_interval_s = min_interval_s
        self.step = start_step
        self.tokens = 0
        self._start_step = start_step
        self._t0 = time.perf_counter()
        self._last_report = 0.0

    def update(self, steps: int = 1, tokens: int = 0, message: str = "", force: bool = False,
               **metrics: float) -> None:
        self.cancel.raise_if_cancelled()
        self.step += steps
        self.tokens += tokens
        now = time.perf_counter()
        last = self.total is not None and self.step >= self.total
        if not (force or last or now - self._last_report >= self.min_interval_s):
            return
        self._last_report = now
        self.callback(self.snapshot(message, metrics))

    def snapshot(self, message: str = "", metrics: dict | None = None) -> Progress:
        elapsed = time.perf_counter() - self._t0
        done = self.step - self._start_step
        eta = None
        if self.total is not None and done > 0:
            eta = elapsed / done * max(0, self.total - self.step)
        return Progress(self.task, self.step, self.total, self.tokens, dict(metrics or {}), eta,
                        elapsed, message)


class TqdmProgress:
    """A progress callback that drives a tqdm bar, for the command line."""

    def __init__(self, desc: str | None = None, unit: str = "step"):
        self.desc = desc
        self.unit = unit
        self._bar = None

    def __call__(self, p: Progress) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=p.total, desc=self.desc or p.task, unit=self.unit,
                             initial=p.step, dynamic_ncols=True)
        if p.total is not None and self._bar.total != p.total:
            self._bar.total = p.total
        self._bar.update(p.step - self._bar.n)
        if p.metrics:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in p.metrics.items()}, refresh=False)
        if p.message:
            self._bar.set_description_str(f"{self.desc or p.task}: {p.message}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
