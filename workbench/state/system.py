"""The machine, for the status bar: compute device and this process's memory."""

from __future__ import annotations

import os


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def compute_threads() -> int:
    """Threads for jobs: all cores but one, which stays with the GUI thread (torch's and BLAS's
    threads spin while they wait and would otherwise starve the event loop)."""
    return max(1, (os.cpu_count() or 2) - 1)


def limit_compute_threads() -> None:
    """Set the thread pools' sizes before numpy or torch load; the user's settings win."""
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(compute_threads()))


def detect_device() -> str:
    """"CUDA: <name>", "MPS" or "CPU". Imports torch, so call it in a worker after start-up."""
    import torch

    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "MPS"
    return f"CPU ({os.cpu_count()} cores)"


def process_memory_mb() -> float | None:
    """Resident memory of this process in MiB, or None where it cannot be read."""
    try:  # Linux: one small read; psutil (30 ms to import) only where there is no /proc
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None
