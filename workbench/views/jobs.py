"""The Jobs panel: a row per job (progress, ETA, status, Cancel) and live plots of its metrics."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QHeaderView, QLabel, QProgressBar, QSplitter, QTableWidget,
                               QTableWidgetItem, QToolButton, QVBoxLayout, QWidget)

from ..state.jobs import DONE, Job, JobList
from .icons import icon

METRICS = ("loss", "fvu", "l0", "dead_frac")
TITLES = {"loss": "loss", "fvu": "FVU", "l0": "L0 (latents per token)",
          "dead_frac": "dead latents"}
METRICS_TIP = ("Training metrics, step by step. loss: what the optimiser minimises; FVU: "
               "fraction of the activations' variance the dictionary does not explain (0 = "
               "perfect); L0: latents active per token (k for TopK); dead latents: share of "
               "latents that have not fired for the dead-feature threshold of tokens.")
COLUMNS = ("Job", "Progress", "ETA", "Status", "")


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class JobsPanel(QWidget):
    def __init__(self, jobs: JobList, parent=None):
        super().__init__(parent)
        self.jobs = jobs
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.plots = None  # made with the first job (pyqtgraph loads after start-up)
        self.curves: dict = {}
        self.hint = QLabel("No jobs yet. UMAP, training and analysis jobs appear here with their "
                           "progress, time left, live loss / FVU / L0 / dead-fraction plots and "
                           "a Cancel button.")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #666; padding: 6px;")
        self.splitter = splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.hint)
        self.table.setMinimumHeight(70)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(splitter)
        self.rows: list[Job] = []
        self.shown: Job | None = None
        # progress can arrive many times a second: rows redraw at most 4 times a second and the
        # plots once a second (painting them is the costliest thing the GUI thread does here)
        self._dirty: set[Job] = set()
        self._flush_timer = QTimer(self, singleShot=True, interval=250)
        self._flush_timer.timeout.connect(self._flush)
        self._plot_timer = QTimer(self, singleShot=True, interval=1000)
        self._plot_timer.timeout.connect(lambda: self._draw(self.shown))
        self.table.currentCellChanged.connect(lambda r, *_: self.show_metrics(
            self.rows[r] if 0 <= r < len(self.rows) else None))
        jobs.added.connect(self._add)
        for j in jobs.jobs:
            self._add(j)

    def _make_plots(self) -> None:
        import pyqtgraph as pg

        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground("w")
        self.plots.setMinimumHeight(120)
        self.plots.setToolTip(METRICS_TIP)
        self.splitter.addWidget(self.plots)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(2, 3)  # the plots get most of the room once a job runs
        for i, name in enumerate(METRICS):
            p = self.plots.addPlot(row=0, col=i, title=TITLES[name])
            p.titleLabel.setText(TITLES[name], color="#333", size="9pt")
            p.setLabel("bottom", "step", color="#333")
            p.getAxis("left").setPen("#333")
            p.getAxis("left").setTextPen("#333")
            p.getAxis("left").setWidth(42)
            p.getAxis("bottom").setStyle(showValues=False)  # steps: in the row; axes cost paint
            p.setMouseEnabled(x=False, y=False)
            self.curves[name] = p.plot(pen=pg.mkPen("#1f77b4", width=2))

    def _add(self, job: Job) -> None:
        if not self.curves:
            self._make_plots()
            self.hint.hide()
        r = self.table.rowCount()
        self.table.insertRow(r)
        self.rows.append(job)
        self.table.setItem(r, 0, QTableWidgetItem(job.name))
        bar = QProgressBar(minimum=0, maximum=1000)
        bar.setTextVisible(True)
        self.table.setCellWidget(r, 1, bar)
        self.table.setItem(r, 2, QTableWidgetItem(""))
        self.table.setItem(r, 3, QTableWidgetItem(job.status))
        cancel = QToolButton(toolTip="Cancel this job")
        cancel.setIcon(icon("fa5s.stop-circle", "#b03030"))
        cancel.clicked.connect(job.cancel)
        self.table.setCellWidget(r, 4, cancel)
        job.changed.connect(lambda j=job: self._changed(j))
        self.show_metrics(job)
        self._update(job)

    def _changed(self, job: Job) -> None:
        self._dirty.add(job)
        if not job.active:
            self._flush()
        elif not self._flush_timer.isActive():
            self._flush_timer.start()

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for job in dirty:
            self._update(job)

    def row_of(self, job: Job) -> int:
        return self.rows.index(job)

    def _update(self, job: Job) -> None:
        r = self.row_of(job)
        bar: QProgressBar = self.table.cellWidget(r, 1)
        p = job.progress
        if p is not None and p.fraction is not None:
            bar.setValue(int(p.fraction * 1000))
            bar.setFormat(f"{p.step:,} / {p.total:,}")
        elif p is not None:
            bar.setMaximum(0)  # unknown total: a busy bar
        if not job.active:
            bar.setMaximum(1000)
            if job.status == DONE:
                bar.setValue(1000)
        self.table.item(r, 2).setText(eta_text(p.eta_s) if p is not None and job.active else "")
        status = job.status + (": cancelling…" if job.active and job.cancel_token.cancelled
                               else "") + (f": {job.error}" if job.error else "")
        self.table.item(r, 3).setText(status)
        self.table.item(r, 3).setToolTip(status)
        self.table.cellWidget(r, 4).setEnabled(job.active and not job.cancel_token.cancelled)
        if job is self.shown and not job.active:
            self._draw(job)
        elif job is self.shown and not self._plot_timer.isActive():
            self._plot_timer.start()

    def show_metrics(self, job: Job | None) -> None:
        self.shown = job
        self._draw(job)

    def _draw(self, job: Job | None) -> None:
        if job is None and not self.curves:
            return
        # only jobs that report metrics (training) get the plots; the others the room
        self.plots.setVisible(bool(job is not None and job.history))
        for name, curve in self.curves.items():
            steps, values = job.history.get(name, ([], [])) if job else ([], [])
            curve.setData(steps, values)
            last = "" if not values else (f": {values[-1]:.1%}" if name == "dead_frac" else
                                          f": {values[-1]:.3g}")
            curve.getViewBox().parentItem().titleLabel.setText(f"{TITLES[name]}{last}",
                                                               color="#333", size="9pt")
