"""`biollm-workbench [PATH]`: the desktop application.

Start-up imports only Qt, pyqtgraph and numpy; anndata, scanpy and torch are imported in
workers after the window has been painted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .state.workspace import BUNDLED as DEMO


def start_target(path: str | None) -> Path | None:
    """What to open first: the path given, else the demo workspace, else nothing."""
    if path:
        return Path(path)
    if (DEMO / "workspace.json").is_file():
        return DEMO
    h5ads = sorted(DEMO.glob("*.h5ad")) if DEMO.is_dir() else []
    return h5ads[0] if h5ads else None


def create(argv: list[str] | None = None):
    """Build the application and its shown main window; returns (app, window)."""
    parser = argparse.ArgumentParser(prog="biollm-workbench")
    parser.add_argument("path", nargs="?", help=".h5ad file, workspace folder, model or "
                        "dictionary folder, or FASTA/GenBank file to open")
    args = parser.parse_args(argv)
    from .state.system import limit_compute_threads

    limit_compute_threads()  # before numpy or torch start their thread pools

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("BioLLM")
    app.setApplicationName("Workbench")
    from .window import MainWindow

    window = MainWindow()
    if window.settings.value("geometry") is None:
        window.resize(1500, 950)
    window.show()
    window.open_after_paint = start_target(args.path)
    return app, window


def main(argv: list[str] | None = None) -> int:
    app, _window = create(argv)
    # Collect cycles on the GUI thread only, on a timer: a collection that runs in a worker can
    # destroy Qt objects there and deadlock against the GUI thread (GIL against a Qt lock).
    from pyqtgraph.util.garbage_collector import GarbageCollector

    app.garbage_collector = GarbageCollector(interval=1.0)  # lives as long as the app
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
