"""Helpers the GUI tests share."""

from __future__ import annotations

import time

from PySide6.QtCore import QCoreApplication


def wait_for(job, timeout: float = 120.0) -> None:
    """Run the event loop until a workbench job ends (its signals arrive through the loop)."""
    end = time.monotonic() + timeout
    while job.active and time.monotonic() < end:
        QCoreApplication.processEvents()
        time.sleep(0.01)
    QCoreApplication.processEvents()
    assert not job.active, "job did not finish"
