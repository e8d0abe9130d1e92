"""The Tracks panel: a genome browser for DNA models' features.

One record at a time: a ruler, the sequence (letters once zoomed to a few hundred bases), the
annotations (GenBank features, GFF3 or BED; + strand above, - below) and one track per chosen
feature (each base's value, the max over the windows and tokens covering it). Wheel / drag to
zoom from the whole record down to single bases; click a peak to open that feature. Tracks are
computed by the engine (`analysis.dna_tracks.record_tracks`) in a job with progress.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFileDialog, QGridLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QSpinBox, QSplitter, QToolButton,
                               QVBoxLayout, QWidget)

from biollm_engine.errors import BioLLMError

from ..state.session import Session
from .dna_feature import DnaFeatureDetail
from .drops import FileDrops
from .errors import guarded, show_error
from .export import ask_figure_path, export_figure, export_table

log = logging.getLogger("workbench")
LETTERS_MAX = 160  # bases in view below which the letters are drawn
BASE_COLOURS = {"A": "#109648", "C": "#255C99", "G": "#C7921B", "T": "#D62839"}
STRAND_BRUSH = {"+": "#2a6fbb", "-": "#c4572a", ".": "#777777"}
TRACK_PEN = "#333333"
CLICK_PIXELS = 4  # how far from the pointer a click still finds a peak


class TracksPanel(FileDrops, QWidget):
    feature_clicked = Signal(int)
    """a feature's track was clicked on a base where it fires: the feature index"""

    def __init__(self, session: Session, runner, parent=None):
        """`runner`: a callable giving the window's JobRunner (made on first use)."""
        super().__init__(parent)
        self.session, self._runner = session, runner
        self.path: Path | None = None
        self.records = None
        self.record = 0
        self.seq = ""
        self.annotations = None
        self.tracks = None
        self.job = None
        self.setAcceptDrops(True)

        self.record_box = QComboBox(toolTip="Record of the sequence file")
        self.dictionary_box = QComboBox(toolTip="Dictionary whose features are tracked")
        self.features = QLineEdit(placeholderText="features, e.g. 3,17 (empty: the top N)")
        self.top = QSpinBox(minimum=1, maximum=64, value=6, prefix="top ")
        self.window = QSpinBox(minimum=8, maximum=1 << 20, value=256, suffix=" bp window")
        self.compute_button = QPushButton("Compute tracks")
        self.status = QLabel("Open a FASTA or GenBank file (File › Open, or drop it here).")
        self.status.setWordWrap(True)
        self.glw = pg.GraphicsLayoutWidget()
        self.glw.setBackground("w")
        self.seq_plot = self._plot(0, height=62)
        self.seq_plot.showAxis("top")
        self.seq_plot.getAxis("top").setLabel("position (bp)")
        self.seq_plot.hideAxis("bottom")
        self.ann_plot = self._plot(1, height=44)
        self.ann_plot.hideAxis("bottom")
        self.ann_plot.getAxis("left").setLabel("strand")
        self.ann_plot.setYRange(-1, 1, padding=0.05)
        self.view = self.seq_plot.getViewBox()
        self.feature_plots: list[pg.PlotItem] = []
        self._letters: list[pg.TextItem] = []
        self.zoom_hint = pg.TextItem(f"zoom in to {LETTERS_MAX} bp or less to read the bases",
                                     color="#888888", anchor=(0.5, 0.5))

        top = QGridLayout()
        top.addWidget(QLabel("Record"), 0, 0)
        top.addWidget(self.record_box, 0, 1)
        top.addWidget(QLabel("Dictionary"), 0, 2)
        top.addWidget(self.dictionary_box, 0, 3)
        top.addWidget(self.features, 1, 0, 1, 2)
        top.addWidget(self.top, 1, 2)
        top.addWidget(self.window, 1, 3)
        top.addWidget(self.compute_button, 1, 4)
        buttons = QHBoxLayout()
        for text, tip, slot in (("Whole record", "zoom out to the whole record", self.zoom_all),
                                ("Annotations…", "GenBank, GFF3 or BED for this sequence",
                                 self.ask_annotations),
                                ("Figure…", "PNG, SVG or PDF", self.ask_export_figure),
                                ("Table…", "per-base values: CSV, TSV or Parquet",
                                 self.ask_export_table)):
            b = QToolButton(text=text, toolTip=tip)
            b.clicked.connect(lambda *_, f=slot: f())
            buttons.addWidget(b)
        buttons.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.status)
        self.detail = DnaFeatureDetail(BASE_COLOURS)
        self.detail.hide()  # until a peak is clicked
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.glw)
        split.addWidget(self.detail)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay.addWidget(split, 1)
        lay.addLayout(buttons)

        self.compute_button.clicked.connect(lambda: self.compute())
        self.record_box.currentIndexChanged.connect(self._record_chosen)
        self.view.sigXRangeChanged.connect(lambda *_: self._update_letters())
        self.glw.scene().sigMouseClicked.connect(self._clicked)
        self.feature_clicked.connect(self.show_feature)
        self.detail.go_to.connect(lambda p: self.zoom_to(max(0, p - 40), p + 41))
        self.session.workspace_changed.connect(self._fill_dictionaries)
        self._fill_dictionaries()

    # -- opening ------------------------------------------------------------------------------
    def _plot(self, row: int, height: int | None = None) -> pg.PlotItem:
        p = self.glw.addPlot(row=row, col=0)
        p.setMouseEnabled(x=True, y=False)
        p.hideButtons()
        p.getAxis("left").setWidth(70)
        if height:
            p.setFixedHeight(height)
        if row:
            p.setXLink(self.seq_plot)
        return p

    def _fill_dictionaries(self) -> None:
        """Named as in the Features panel (the folder's name); the whole path as a tooltip."""
        self.dictionary_box.clear()
        for i, d in enumerate(self.session.workspace.dictionaries):
            self.dictionary_box.addItem(Path(d).name or d, d)
            self.dictionary_box.setItemData(i, d, Qt.ItemDataRole.ToolTipRole)

    def open_sequence(self, path: str | Path, record: int = 0):
        """Show a FASTA / FASTA.gz / GenBank file's record; compute its tracks when the workspace
        is a DNA one (returns that job, else None)."""
        from biollm_engine.inputs.dna import DnaDataset

        path = Path(path)
        self.records = DnaDataset(path).records
        self.path = path
        self.annotations = self._find_annotations(path)
        self.session.record("sequences", path)
        self.record_box.blockSignals(True)
        self.record_box.clear()
        self.record_box.addItems([f"{n} ({int(k):,} bp)" for n, k in
                                  zip(self.records["name"], self.records["length"])])
        self.record_box.setCurrentIndex(record)
        self.record_box.blockSignals(False)
        self.show_record(record)
        return self.compute() if self._dna_workspace() else None

    def _dna_workspace(self) -> bool:
        """Whether tracks start by themselves: a model and a dictionary, and no cells (a cell
        workspace's model reads gene names, not bases; there Compute tracks starts them)."""
        ws = self.session.workspace
        return bool(ws.model and ws.dictionaries and not ws.data)

    def _find_annotations(self, path: Path):
        """GenBank features of the file itself, else the workspace's annotation file."""
        from biollm_engine.inputs.annotations import read_annotations, read_genbank_annotations
        from biollm_engine.inputs.dna import sequence_format

        if sequence_format(path) == "genbank":
            return read_genbank_annotations(path)
        ws = self.session.workspace
        name = ws.settings.get("annotations")
        if name and ws.folder is not None and (Path(ws.folder) / name).is_file():
            return read_annotations(Path(ws.folder) / name)
        return None

    def open_annotations(self, path: str | Path) -> None:
        from biollm_engine.inputs.annotations import check_records, read_annotations

        table = read_annotations(path)
        if self.records is not None:
            check_records(table, list(self.records["name"]), path)
        self.annotations = table
        self._draw_annotations()

    def ask_annotations(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open annotations", "",
                                              "Annotations (*.gb *.gbk *.gff *.gff3 *.bed *.gz)")
        if path:
            guarded(lambda: self.open_annotations(path), self._error)

    def _record_chosen(self, index: int) -> None:
        if index >= 0 and self.path is not None:
            self.show_record(index)
            if self._dna_workspace():
                self.compute()

    def show_record(self, record: int) -> None:
        from biollm_engine.inputs.dna import read_sequences

        self.record = record
        self.seq = "".join(chunk for r, _, _, chunk in read_sequences(self.path) if r == record)
        self.tracks = None
        self._set_feature_plots([])
        n = len(self.seq)
        for p in (self.seq_plot, self.ann_plot):
            p.getViewBox().setLimits(xMin=0, xMax=max(n, 1), minXRange=min(10, max(n, 1)))
        self.seq_plot.clear()
        self.seq_plot.addItem(self.zoom_hint)
        self.seq_plot.setYRange(0, 1, padding=0)
        self.seq_plot.getAxis("left").setLabel("bases")
        self.seq_plot.getAxis("left").setTicks([[]])
        self._letters = []
        self._draw_annotations()
        self.zoom_all()

    def _draw_annotations(self) -> None:
        self.ann_plot.clear()
        self.ann_plot.getAxis("left").setTicks([[(0.5, "+"), (-0.5, "−")]])
        if self.annotations is None or self.records is None:
            return
        name = self.records["name"][self.record]
        a = self.annotations[(self.annotations["record_name"] == name)
                             & (self.annotations["type"] != "gene")]
        for strand, y in (("+", 0.1), ("-", -0.9), (".", -0.4)):
            rows = a[a["strand"] == strand]
            if len(rows):
                self.ann_plot.addItem(pg.BarGraphItem(
                    x0=rows["start"].to_numpy(), x1=rows["end"].to_numpy(), y0=y, height=0.8,
                    brush=STRAND_BRUSH[strand], pen=None))

    # -- computing ----------------------------------------------------------------------------
    def chosen_features(self) -> list[int] | None:
        text = self.features.text().strip()
        if not text:
            return None
        if not re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
            raise BioLLMError(f"features {text!r} must be comma-separated indices, e.g. 3,17.")
        return [int(x) for x in text.split(",")]

    def compute(self):
        """Compute the current record's tracks in a job; returns the job."""
        from biollm_engine.analysis.dna_tracks import record_tracks

        ws = self.session.workspace
        try:
            if self.path is None:
                raise BioLLMError("open a FASTA or GenBank file first.")
            if not ws.model or not ws.dictionaries:
                raise BioLLMError("the workspace needs a model and a dictionary for tracks.")
            kwargs = dict(model=ws.model, data=str(self.path),
                          dictionary=self.dictionary_box.currentData() or ws.dictionaries[0],
                          record=self.record, features=self.chosen_features(),
                          top=self.top.value(), window=self.window.value(),
                          stride=max(1, self.window.value() // 2), device="cpu")
        except BioLLMError as e:
            self._error(e.message)
            return None
        record = self.record
        job = self._runner().submit(f"tracks of {self.records['name'][record]}",
                                    lambda progress, cancel: record_tracks(
                                        progress=progress, cancel=cancel, **kwargs))
        self.job = job
        self.status.setText(f"Computing the tracks of {self.records['name'][record]}…")

        def done(status: str) -> None:
            if job.result is not None and record == self.record:
                self.set_tracks(job.result)
            elif job.error:
                self._error(job.error)

        job.finished.connect(done)
        return job

    def set_tracks(self, tracks) -> None:
        if tracks.values.shape[1] != len(self.seq):
            raise BioLLMError(f"tracks of {tracks.values.shape[1]} bases do not fit record "
                              f"{tracks.name} of {len(self.seq)} bases.")
        self.tracks = tracks
        self._set_feature_plots(tracks.features)
        # base i spans [i, i + 1) on the ruler; its value is drawn at its centre (a line, not
        # steps: pyqtgraph's clipping and peak downsampling, which keep megabases fast, need it)
        x = np.arange(len(self.seq)) + 0.5
        for p, f, v in zip(self.feature_plots, tracks.features, tracks.values):
            p.plot(x, v, pen=pg.mkPen(TRACK_PEN, width=1), fillLevel=0, brush="#9aa4b1")
            p.setYRange(0, max(float(v.max()), 1e-6), padding=0.05)
        self.status.setText(f"{tracks.name}: {len(tracks.features)} feature tracks, each the "
                            f"feature's activation at every base; click a peak to open its "
                            f"feature.")

    def _set_feature_plots(self, features: list[int]) -> None:
        for p in self.feature_plots:
            self.glw.removeItem(p)
        self.feature_plots = []
        for i, f in enumerate(features):
            p = self._plot(2 + i, height=None)
            p.setMinimumHeight(50)
            p.getAxis("left").setLabel(f"feature {f}")  # as the detail beside names it
            p.setClipToView(True)
            p.setDownsampling(auto=True, mode="peak")
            p.hideAxis("bottom")
            self.feature_plots.append(p)
        last = self.feature_plots[-1] if self.feature_plots else self.ann_plot
        last.showAxis("bottom")

    # -- zoom, letters, clicks ----------------------------------------------------------------
    def zoom_all(self) -> None:
        self.zoom_to(0, max(len(self.seq), 1))

    def zoom_to(self, start: float, end: float) -> None:
        self.view.setXRange(start, end, padding=0)

    def visible_letters(self) -> str:
        """The letters drawn now, in order (empty when zoomed out)."""
        return "".join(t.textItem.toPlainText() for t in self._letters if t.isVisible())

    def _update_letters(self) -> None:
        lo, hi = self.view.viewRange()[0]
        a, b = max(0, int(np.ceil(lo - 0.5))), min(len(self.seq), int(np.floor(hi - 0.5)) + 1)
        show = b - a <= LETTERS_MAX
        self.zoom_hint.setVisible(bool(self.seq) and not show)
        self.zoom_hint.setPos((lo + hi) / 2, 0.5)
        while show and len(self._letters) < b - a:
            t = pg.TextItem(anchor=(0.5, 0.5))
            self.seq_plot.addItem(t)
            self._letters.append(t)
        for i, t in enumerate(self._letters):
            if show and i < b - a:
                base = self.seq[a + i]
                t.setText(base, color=BASE_COLOURS.get(base, "#444444"))
                t.setPos(a + i + 0.5, 0.5)
                t.setVisible(True)
            else:
                t.setVisible(False)

    def _clicked(self, ev) -> None:
        if self.tracks is None:
            return
        pos = ev.scenePos()
        for p, f, v in zip(self.feature_plots, self.tracks.features, self.tracks.values):
            vb = p.getViewBox()
            if not vb.sceneBoundingRect().contains(pos):
                continue
            x = vb.mapSceneToView(pos).x()
            reach = max(1, int(CLICK_PIXELS * vb.viewPixelSize()[0]))
            a, b = max(0, int(x) - reach), min(len(v), int(x) + reach + 1)
            if a < b and v[a:b].max() > 0:
                log.info("feature %d clicked at base %d", f, a + int(np.argmax(v[a:b])))
                self.feature_clicked.emit(int(f))
            return

    def show_feature(self, feature: int) -> None:
        """Open a tracked feature's detail beside the tracks."""
        row = self.tracks.features.index(feature)
        self.detail.show_feature(feature, self.tracks.values[row], self.seq, self.tracks.name)
        self.detail.show()

    # -- drag and drop, exports ---------------------------------------------------------------
    def handle_drop(self, mime) -> None:
        """Open dropped FASTA / GenBank files (the last one stays shown); errors go to the
        status line."""
        for url in mime.urls():
            if url.isLocalFile():
                guarded(lambda p=url.toLocalFile(): self.open_sequence(p), self._error)

    def table(self):
        """Per-base values of the shown record: position (0-based), base, one column per
        feature."""
        import pandas as pd

        if self.tracks is None:
            raise BioLLMError("no tracks to export yet; compute them first.")
        df = pd.DataFrame({"record": self.tracks.name, "position": np.arange(len(self.seq)),
                           "base": list(self.seq)})
        for f, v in zip(self.tracks.features, self.tracks.values):
            df[f"feature_{f}"] = v
        return df

    def export_figure(self, path, width_px: int = 1800, height_px: int | None = None,
                      dpi: int = 300):
        if self.path is None:
            raise BioLLMError("nothing to export yet; open a sequence first.")
        return export_figure(self.glw.ci, path, width_px, height_px, dpi)

    def ask_export_figure(self) -> None:
        answer = ask_figure_path(self, "tracks.png")
        if answer:
            guarded(lambda: self.export_figure(*answer), self._error)

    def ask_export_table(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export per-base values", "tracks.csv",
                                              "CSV (*.csv);;TSV (*.tsv);;Parquet (*.parquet)")
        if path:
            guarded(lambda: export_table(self.table(), path), self._error)

    def _error(self, text: str) -> None:
        show_error(self.status, text)
