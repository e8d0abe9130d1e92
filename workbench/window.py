"""The main window: the embedding in the middle, docked panels, menus, drops, status bar."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from PySide6.QtCore import QMimeData, QProcess, QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox
from biollm_engine.errors import BioLLMError

from .state import files
from .state.session import Session
from .views.data import DataPanel
from .views.drops import FileDrops
from .views.embedding import EmbeddingView
from .views.export import ask_figure_path
from .views.features import FeaturesPanel
from .views.icons import load_pending_icons
from .views.jobs import JobsPanel
from .views.log import LogView
from .views.models import ModelsPanel

log = logging.getLogger("workbench")
TITLE = "BioLLM Workbench"
MAX_RECENT = 10


def error_text(e: BaseException) -> str:
    return e.message if isinstance(e, BioLLMError) else f"{type(e).__name__}: {e}"


class MainWindow(FileDrops, QMainWindow):
    def __init__(self, session: Session | None = None, settings: QSettings | None = None):
        super().__init__()
        self.setWindowTitle(TITLE)
        self.setAcceptDrops(True)
        self.session = session or Session()
        self.settings = settings or QSettings("BioLLM", "Workbench")
        self._runner = None
        self._workers: set = set()  # loaders in flight, kept alive until they report
        self._painted = False
        self.open_after_paint: Path | None = None  # set by app.create: a path or the demo

        self.log_view = LogView()  # first, so that everything below is logged
        self.embedding = EmbeddingView(self.session.cells)
        self.setCentralWidget(self.embedding)
        self.data_panel = DataPanel(self.session)
        self.data_panel.compute_umap_requested.connect(self.compute_umap)
        self.models_panel = ModelsPanel(self.session)
        self.features_panel = FeaturesPanel(self.session, lambda: self.runner)
        self.jobs_panel = JobsPanel(self.session.jobs)
        self.docks: dict[str, QDockWidget] = {}
        left, right, bottom = (Qt.DockWidgetArea.LeftDockWidgetArea,
                               Qt.DockWidgetArea.RightDockWidgetArea,
                               Qt.DockWidgetArea.BottomDockWidgetArea)
        for name, widget, area in (("Data", self.data_panel, left),
                                   ("Model & dictionaries", self.models_panel, left),
                                   ("Features", self.features_panel, right),
                                   ("Jobs", self.jobs_panel, bottom),
                                   ("Log", self.log_view, bottom)):
            dock = QDockWidget(name.replace("&", "&&"), self)  # "&" would mark a shortcut
            dock.setObjectName(f"dock-{name}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[name] = dock
        self.tabifyDockWidget(self.docks["Jobs"], self.docks["Log"])
        self.docks["Jobs"].raise_()
        self.resizeDocks([self.docks["Data"], self.docks["Features"]], [340, 380],
                         Qt.Orientation.Horizontal)
        self.resizeDocks([self.docks[n] for n in ("Jobs", "Data", "Model & dictionaries")],
                         [170, 620, 220], Qt.Orientation.Vertical)
        self._build_menus()

        self.device = "…"
        self.machine_label = QLabel("")  # "Device: … · Memory: … MiB", one label: no overlap
        self.statusBar().addPermanentWidget(self.machine_label)
        self._memory_timer = QTimer(self, interval=2000)
        self._memory_timer.timeout.connect(self._show_memory)
        self._memory_timer.start()
        self._show_memory()
        self.session.cells.loaded.connect(self._on_cells_loaded)

        if self.settings.value("geometry") is not None:
            self.restoreGeometry(self.settings.value("geometry"))
        if self.settings.value("state") is not None:
            self.restoreState(self.settings.value("state"))

    @property
    def runner(self):
        """Starts jobs in worker threads; made on first use (superqt loads after start-up)."""
        if self._runner is None:
            from .jobs import JobRunner

            self._runner = JobRunner(self.session.jobs)
        return self._runner

    # -- menus --------------------------------------------------------------------------------
    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        a = menu.addAction(text)
        a.triggered.connect(lambda *_: slot())
        if shortcut is not None:
            a.setShortcut(shortcut)
        return a

    def _build_menus(self) -> None:
        m = self.menuBar().addMenu("&File")
        self._action(m, "Open data…", self.ask_open_data, QKeySequence.StandardKey.Open)
        self._action(m, "Open workspace…", self.ask_open_workspace)
        self._action(m, "Save workspace", self.save_workspace, QKeySequence.StandardKey.Save)
        self.recent_menu = m.addMenu("Recent files")
        self._fill_recent()
        m.addSeparator()
        self._action(m, "Export figure…", self.ask_export_figure)
        m.addSeparator()
        self._action(m, "Quit", self.close, QKeySequence.StandardKey.Quit)
        v = self.menuBar().addMenu("&View")
        for dock in self.docks.values():
            v.addAction(dock.toggleViewAction())
        a = self.menuBar().addMenu("&Analyse")
        self._action(a, "Harvest activations…", self.ask_harvest)
        self._action(a, "Train dictionaries…", self.ask_train)
        self._action(a, "Analyse features", self.features_panel.analyse)
        self._action(a, "Analyse features with options…", self.ask_analyse)
        a.addSeparator()
        self._action(a, "Circuit explorer", lambda: self.open_panel("Circuit"))
        self._action(a, "Model diffing (crosscoder)…", self.ask_diffing)
        self._action(a, "Evaluate annotation", lambda: self.open_panel("Evaluate"))
        h = self.menuBar().addMenu("&Help")
        self._action(h, "About", self._about)

    def _make_panel(self, name: str):
        if name == "Circuit":
            from .views.circuit import CircuitPanel

            panel = CircuitPanel(self.session, lambda: self.runner)
            panel.feature_clicked.connect(self.show_dictionary_feature)
            return panel
        if name == "Diffing":
            from .views.diffing import DiffingView

            return DiffingView()
        if name == "Tracks":
            from .views.tracks import TracksPanel

            return TracksPanel(self.session, lambda: self.runner)
        from .views.evaluate import EvaluatePanel

        return EvaluatePanel(self.session, lambda: self.runner)

    def open_panel(self, name: str) -> QDockWidget:
        """Dock an analysis panel (Circuit, Evaluate, Diffing, Tracks) on first use: they load
        pyqtgraph and the engine."""
        if name not in self.docks:
            dock = QDockWidget(name, self)
            dock.setObjectName(f"dock-{name}")
            dock.setWidget(self._make_panel(name))
            self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
            self.tabifyDockWidget(self.docks["Features"], dock)
            self.docks[name] = dock
        self.docks[name].show()
        self.docks[name].raise_()
        return self.docks[name]

    def show_dictionary_feature(self, path: str, feature: int):
        """A feature clicked elsewhere (a circuit node) in the Features panel's detail, beside
        the circuit rather than in a tab behind it."""
        features, circuit = self.docks["Features"], self.docks.get("Circuit")
        if circuit is not None and circuit in self.tabifiedDockWidgets(features):
            self.splitDockWidget(circuit, features, Qt.Orientation.Horizontal)
            self.resizeDocks([features], [460], Qt.Orientation.Horizontal)
        features.show()
        features.raise_()
        return self.features_panel.show_dictionary_feature(path, feature)

    def ask_train(self) -> None:
        """The train dialog (magicgui over TrainConfig); the run goes to a child process."""
        from .views.dialogs import ask_and_train

        ask_and_train(self)

    def ask_harvest(self):
        from .views.dialogs import ask_and_harvest

        return ask_and_harvest(self)

    def ask_analyse(self):
        from .views.dialogs import ask_and_analyse

        return ask_and_analyse(self)

    def ask_diffing(self) -> None:
        ws = self.session.workspace
        folder = QFileDialog.getExistingDirectory(self, "Crosscoder folder",
                                                  str(ws.folder or ""))
        if folder:
            self.diff_crosscoder(folder)

    def diff_crosscoder(self, path: str | Path, n_cells: int = 100):
        """Run a crosscoder's sources over the open cells (a job), then show the Diffing view."""
        from functools import partial

        from .state.diffing import crosscoder_inputs

        c = self.session.cells
        if c.path is None:
            self.show_info("Open the cells to compare the models on first.")
            return None
        job = self.runner.submit(f"Model diffing with {Path(path).name}",
                                 partial(crosscoder_inputs, path, c.path, n_cells))

        def done(_status: str) -> None:
            if job.result is None:
                if job.error:
                    self.show_error(job.error)
                return
            self.session.record("dictionaries", path)
            try:
                self.open_panel("Diffing").widget().set_crosscoder(*job.result)
            except BioLLMError as e:
                self.show_error(e.message)

        job.finished.connect(done)
        self.docks["Jobs"].raise_()
        return job

    def _about(self) -> None:
        QMessageBox.about(self, f"About {TITLE}",
                          f"<b>{TITLE}</b><p>Mechanistic interpretability of biological language "
                          "models: cell-sentence and DNA models, sparse dictionaries, features "
                          "and circuits.</p>")

    # -- messages -----------------------------------------------------------------------------
    def show_error(self, text: str) -> None:
        log.error(text)
        QMessageBox.critical(self, TITLE, text)

    def show_info(self, text: str) -> None:
        log.warning(text)
        QMessageBox.information(self, TITLE, text)

    # -- recent files -------------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        value = self.settings.value("recent") or []
        return [value] if isinstance(value, str) else list(value)

    def _remember(self, path: Path) -> None:
        p = str(Path(path).resolve())
        recent = [p] + [r for r in self.recent_files() if r != p]
        self.settings.setValue("recent", recent[:MAX_RECENT])
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for p in self.recent_files():
            self._action(self.recent_menu, p, lambda p=p: self.open_path(p))
        self.recent_menu.setEnabled(bool(self.recent_files()))

    # -- opening things -----------------------------------------------------------------------
    def handle_drop(self, mime: QMimeData) -> None:
        paths = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]
        if not paths:
            self.show_info("Only files and folders can be dropped here.")
        for p in paths:
            self.open_path(p)

    def open_path(self, path: str | Path) -> None:
        r = files.recognise(path)
        if r.kind == files.UNKNOWN:
            self.show_info(r.reason)
            return
        log.info("opening %s (%s)", r.path, r.reason)
        if r.kind == files.H5AD:
            self.load_h5ad(r.path)
        elif r.kind == files.SEQUENCE:
            self.session.record("sequences", r.path)
            try:
                self.open_panel("Tracks").widget().open_sequence(r.path)
            except BioLLMError as e:
                self.show_error(e.message)
        elif r.kind == files.DICTIONARY:
            self.session.record("dictionaries", r.path)
            self.docks["Model & dictionaries"].raise_()
        elif r.kind == files.MODEL:
            self.session.set_model(r.path)
            self.docks["Model & dictionaries"].raise_()
        elif r.kind == files.WORKSPACE:
            self.open_workspace(r.path)
        self._remember(r.path)

    def _start(self, fn, *args, on_done) -> None:
        from superqt.utils import create_worker

        worker = create_worker(fn, *args, _start_thread=False, _ignore_errors=True)
        self._workers.add(worker)
        worker.returned.connect(on_done)
        worker.errored.connect(lambda e: self.show_error(error_text(e)))
        worker.finished.connect(lambda: self._workers.discard(worker))
        worker.start()

    def load_h5ad(self, path: str | Path, settings: dict | None = None) -> None:
        """Read the file in a worker; a bad file ends in an error dialog, nothing else changes."""
        from .state.expression import read_cells

        self.statusBar().showMessage(f"Reading {Path(path).name}…")

        def done(adata) -> None:
            self.statusBar().clearMessage()
            self.session.cells.set_data(adata, path)
            self.session.record("data", path)
            self._apply_settings(settings or {})

        self._start(read_cells, path, on_done=done)

    def _apply_settings(self, s: dict) -> None:
        c = self.session.cells
        try:
            if s.get("embedding") in c.embedding_keys():
                c.set_embedding(s["embedding"])
            if s.get("type_key") in c.categorical_columns():
                c.set_type_key(s["type_key"])
            if s.get("colour_by") in c.colour_options():
                c.set_colour(s["colour_by"])
        except BioLLMError as e:
            log.warning("workspace settings not applied: %s", e.message)

    def _on_cells_loaded(self) -> None:
        c = self.session.cells
        log.info("%s: %d cells, embedding %s", c.path.name if c.path else "cells", c.n_cells,
                 c.obsm_key or "none")
        if c.adata is not None and not c.has_2d_embedding():
            log.info("no 2-D embedding in obsm: computing a UMAP (shown when done)")
            self.compute_umap()

    def compute_umap(self):
        """UMAP of the open cells with scanpy, in a worker; returns the job."""
        from .state.expression import compute_umap
        from .state.jobs import DONE

        c = self.session.cells
        adata = c.adata
        if adata is None:
            return None
        job = self.runner.submit(f"UMAP of {c.path.name if c.path else 'cells'}",
                                 lambda progress, cancel: compute_umap(adata))

        def done(status: str) -> None:
            if status == DONE and c.adata is adata:
                c.add_embedding("X_umap", job.result)
            elif job.error:
                self.show_error(job.error)

        job.finished.connect(done)
        self.docks["Jobs"].raise_()
        return job

    def open_workspace(self, folder: str | Path) -> None:
        try:
            ws = self.session.open_workspace(folder)
        except BioLLMError as e:
            self.show_error(e.message)
            return
        self.setWindowTitle(f"{TITLE} — {Path(folder).name}")
        if ws.data:
            self.load_h5ad(ws.data[0], ws.settings)

    def ask_open_data(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open data", "", "Cells and sequences (*.h5ad *.fa *.fasta *.fna *.gb *.gbk "
            "*.gz);;All files (*)")
        if path:
            self.open_path(path)

    def ask_open_workspace(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open workspace")
        if folder:
            self.open_path(folder)

    def save_workspace(self, folder: str | Path | None = None) -> Path | None:
        from .state.workspace import is_read_only

        folder = folder or self.session.workspace.folder
        if folder is None or is_read_only(folder):  # the bundled demo is saved as a copy
            folder = QFileDialog.getExistingDirectory(self, "Save workspace in folder")
            if not folder:
                return None
        try:
            out = self.session.save_workspace(folder)
        except (BioLLMError, OSError) as e:
            self.show_error(error_text(e))
            return None
        log.info("workspace saved: %s", out)
        self._remember(out)
        return out

    def ask_export_figure(self) -> None:
        if self.session.cells.coords is None:
            self.show_info("Nothing to export yet: open an .h5ad first.")
            return
        answer = ask_figure_path(self)
        if answer is not None:
            path, w, h, dpi = answer
            try:
                self.embedding.export(path, w, h, dpi)
                self.session.record("figures", path)
                log.info("figure written: %s", path)
            except (BioLLMError, OSError) as e:
                self.show_error(error_text(e))

    # -- status bar ---------------------------------------------------------------------------
    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if not self._painted:
            self._painted = True
            QTimer.singleShot(0, self.finish_start_up)

    def finish_start_up(self) -> None:
        """What waits until the window has been painted: the first file, icons, the device."""
        if self.open_after_paint is not None:
            self.open_path(self.open_after_paint)
        load_pending_icons()
        self.detect_device()

    def detect_device(self) -> None:
        """Name the compute device from a child process: importing torch here, even in a
        worker thread, would hold the GIL and freeze the window for a second."""
        proc = QProcess(self)
        self._device_process = proc

        def done(*_) -> None:
            try:
                out = bytes(proc.readAllStandardOutput()).decode(errors="replace").strip()
                self.device = out.splitlines()[-1] if out else "unknown"
                self._show_memory()
            except RuntimeError:  # the window closed first
                pass

        proc.finished.connect(done)
        proc.start(sys.executable, ["-c", "from workbench.state.system import detect_device; "
                                          "print(detect_device())"])

    def _show_memory(self) -> None:
        from .state.system import process_memory_mb

        mb = process_memory_mb()
        self.machine_label.setText(f"Device: {self.device}"
                                   + ("" if mb is None else f"   ·   Memory: {mb:,.0f} MiB"))
        # the status bar does not re-lay out permanent widgets when their text grows
        self.machine_label.setMinimumWidth(self.machine_label.sizeHint().width())

    # -- closing ------------------------------------------------------------------------------
    def closeEvent(self, event) -> None:
        running = self.session.jobs.active()
        if running:
            answer = QMessageBox.question(
                self, TITLE, f"{len(running)} job(s) still running. Cancel them and quit?\n\n"
                "Yes: cancel and quit (training keeps its last checkpoint). "
                "No: keep the window open and the jobs running.")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            self.runner.cancel_all()
            self.runner.wait(30.0)
        if getattr(self, "_device_process", None) is not None:
            self._device_process.kill()
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("state", self.saveState())
        event.accept()


