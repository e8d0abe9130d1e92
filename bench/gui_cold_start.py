"""Time from process start to the first painted main window (goal: <= 1.5 s).

Each run starts a fresh Python process with QT_QPA_PLATFORM=offscreen that builds the workbench
window and prints the wall-clock time of the first paint event; beside it, in the same run, a
bare `python -c "import PySide6.QtWidgets"`. Usage: python bench/gui_cold_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import sys, time
from PySide6.QtCore import QEvent, QObject
from workbench.app import create

app, window = create([])


class FirstPaint(QObject):
    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint:
            print(f"PAINTED {time.time():.6f}", flush=True)
            mods = [m for m in ("torch", "transformers", "scanpy", "anndata") if m in sys.modules]
            print("HEAVY", ",".join(mods) or "none", flush=True)
            app.exit(0)
        return False


watcher = FirstPaint()
app.installEventFilter(watcher)
app.exec()
"""


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds to first paint or exit, CPU seconds of the whole child, heavy modules)."""
    c0 = cpu_children()
    t0 = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    cpu = cpu_children() - c0
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr}")
    for line in out.stdout.splitlines():
        if line.startswith("PAINTED"):
            heavy = next(ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY"))
            return float(line.split()[1]) - t0, cpu, heavy.split()[1]
    return time.time() - t0, cpu, ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        # a fresh settings folder, so no saved layout or recent file changes what is timed
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=home)
        bare, app, bare_cpu, app_cpu = [], [], [], []
        heavy = ""
        for _ in range(args.runs):
            t, cpu, _ = run([sys.executable, "-c", "import PySide6.QtWidgets"], env)
            bare.append(t)
            bare_cpu.append(cpu)
            t, cpu, heavy = run([sys.executable, "-c", CHILD], env)
            app.append(t)
            app_cpu.append(cpu)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"bare `import PySide6.QtWidgets` process: median {med(bare):.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in bare)})")
    print(f"workbench start to first paint:          median {med(app):.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in app)})")
    print(f"CPU seconds per process (less sensitive to a busy machine): bare {med(bare_cpu):.2f}, "
          f"workbench {med(app_cpu):.2f}; load average now {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"ratio {med(app) / med(bare):.1f}x the bare import; goal <= 1.5 s: "
          f"{'met' if med(app) <= 1.5 else 'NOT met'}; heavy modules at first paint: {heavy}")


if __name__ == "__main__":
    main()
