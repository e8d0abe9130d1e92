"""The Features panel: per-feature statistics of the activations stored with the cells.

Click a feature to colour the cells by its activation; labels typed here are saved in the
workspace. The table sorts and filters through a permutation index (views/table.py), so 16k
features stay instant.
"Analyse" runs the engine's feature analysis of a workspace dictionary as a job and caches it in
the workspace folder; the detail and heatmap tabs then show the chosen feature.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit,
                               QScrollArea, QSplitter, QTableView, QTabWidget, QToolButton,
                               QVBoxLayout, QWidget)

from ..state import features as feat
from ..state.session import Session
from .export import copy_table
from .icons import icon_later
from .table import FrameModel

log = logging.getLogger("workbench")
ACTIVATION_UNIT = "max activation over the cell's tokens"
NO_ACTIVATIONS = ("No feature activations in this data set yet. Open an .h5ad written back by "
                  "<code>biollm features --write-h5ad</code> (obsm X_&lt;dictionary&gt;), or "
                  "choose a matrix above.")

COLUMN_TIPS = {
    "feature": "the feature's index in the dictionary",
    "label": "your name for the feature (double-click to edit; saved in the workspace)",
    "frequency": "share of the cells' tokens on which the feature fires (activation > 0)",
    "mean": "mean activation over all tokens",
    "mean_firing": "mean activation over the tokens on which it fires",
    "max": "largest activation on any token",
    "top_genes": "genes with the highest mean activation per token of the gene",
    "top_gene": "the gene with the highest mean activation per token of the gene",
    "top_context": "its strongest token among its neighbours, [marked]",
    "promoted": "logit lens: tokens the decoder direction raises most",
    "suppressed": "logit lens: tokens the decoder direction lowers most",
    "promoted_gene": "logit lens: the gene it raises most",
    "promoted_cell_type": "logit lens: the cell type it raises most",
    "suppressed_gene": "logit lens: the gene it lowers most",
    "suppressed_cell_type": "logit lens: the cell type it lowers most",
}
GROUP_TIPS = {
    "best_": "the {} category with the highest AUROC (blank where the feature never fires)",
    "auroc_": "AUROC (one category against the rest) of the cells' max activation for the best "
              "{} category; – where the feature never fires",
    "specificity_": "share of the per-category means in the best {} category (1 = only that "
                    "category)",
}


def column_tip(name: str) -> str:
    """What a column of the feature table means: the header's tooltip."""
    for prefix, tip in GROUP_TIPS.items():
        if name.startswith(prefix):
            return tip.format(name[len(prefix):])
    return COLUMN_TIPS.get(name, "")


class FeaturesPanel(QWidget):
    def __init__(self, session: Session, runner=None, parent=None):
        """`runner`: a callable returning the window's JobRunner (made on first use)."""
        super().__init__(parent)
        self.session = session
        self.runner = runner
        self.results = None  # FeatureResults of the analysed dictionary
        self.detail = self.heatmap = None  # made with the first analysis (they load pyqtgraph)
        self.analysis_job = None
        self.analysis_cfg = None  # FeaturesConfig of the analysis shown (its model, dictionary)
        self.feature: int | None = None
        self.encoder = None  # the analysis' model and dictionary, loaded by the first cell job
        self.cell_tokens = None  # the clicked cell's token activations (CellTokens)
        self.cell_job = self.cell_job_for = None
        self.cells = session.cells
        self.key: str | None = None
        self.top_of_selection: list[int] = []
        self.source = QComboBox()
        self.source.setToolTip("obsm matrix holding the feature activations (cells × features)")
        self.filter = QLineEdit(placeholderText="Filter (label, cell type, number)…")
        self.model = FrameModel(editable=("label",), header_tips=column_tip)
        self.model.on_edit = self._label_edited
        self.table = QTableView(sortingEnabled=True)
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.empty = QLabel(NO_ACTIVATIONS)
        self.empty.setWordWrap(True)
        save = QToolButton(text="Export", toolTip="Export the table (CSV, TSV, Parquet)")
        icon_later(save, "fa5s.file-export")
        save.clicked.connect(self._export)
        copy = QToolButton(text="Copy", toolTip="Copy the table to the clipboard")
        icon_later(copy, "fa5s.copy")
        copy.clicked.connect(lambda: self.model.df is not None and copy_table(self.model.df))
        self.dictionary = QComboBox(toolTip="Workspace dictionary to analyse")
        self.analyse_button = QToolButton(text="Analyse", toolTip=(
            "Run the feature analysis of this dictionary on the cells (a job; the result is "
            "cached in the workspace folder)"))
        self.analyse_button.clicked.connect(self.analyse)
        row = QHBoxLayout()
        top = QHBoxLayout()
        for layout, text, combo in ((row, "&Dictionary", self.dictionary),
                                    (top, "A&ctivations", self.source)):
            label = QLabel(text)
            label.setBuddy(combo)  # alt + the underlined letter chooses
            label.setMinimumWidth(label.fontMetrics().horizontalAdvance("Activations") + 4)
            layout.addWidget(label)
            layout.addWidget(combo, 1)
        row.addWidget(self.analyse_button)
        top.addWidget(save)
        top.addWidget(copy)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addLayout(top)
        lay.addWidget(self.filter)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignTop)
        lay.addWidget(self.empty, 1)
        self.tabs = QTabWidget()
        self.split = QSplitter(Qt.Orientation.Vertical)
        self.split.addWidget(self.table)
        self.split.addWidget(self.tabs)
        self.tabs.hide()
        self.split.setSizes([260, 520])
        lay.addWidget(self.split, 1)
        self.selection_top = QLabel("")
        self.selection_top.setWordWrap(True)
        lay.addWidget(self.selection_top)
        session.workspace_changed.connect(self._on_workspace)
        self._on_workspace()

        self.filter.textChanged.connect(self.model.set_filter)
        self.source.textActivated.connect(self.show_matrix)
        self.dictionary.activated.connect(self._dictionary_chosen)
        self.table.selectionModel().currentRowChanged.connect(self._row_chosen)
        self.cells.loaded.connect(self._on_loaded)
        self.cells.current_changed.connect(self._colour_sentence)
        self.cells.selection_changed.connect(self._on_selection)
        self._on_loaded()

    # -- the engine's analysis ------------------------------------------------------------------
    def _on_workspace(self) -> None:
        ws = self.session.workspace
        chosen = self.dictionary.currentData()
        self.dictionary.blockSignals(True)
        self.dictionary.clear()
        for d in ws.dictionaries:
            self.dictionary.addItem(Path(d).name if Path(d).name != d else d, d)
        folders = {i: feat.analysis_folder(ws.folder, d) for i, d in enumerate(ws.dictionaries)
                   if ws.folder is not None}
        # the workspace's own analyses first: the user's cache may hold another, older one
        cached = sorted((i for i, f in folders.items() if (f / "table.parquet").exists()),
                        key=lambda i: not folders[i].is_relative_to(ws.folder))
        if chosen in ws.dictionaries:  # a workspace change (an analysis recorded) keeps it
            self.dictionary.setCurrentIndex(ws.dictionaries.index(chosen))
        elif cached:
            self.dictionary.setCurrentIndex(cached[0])
        self.dictionary.blockSignals(False)
        self.analyse_button.setEnabled(self.dictionary.count() > 0)

    def analysis_folder(self) -> Path | None:
        ws, d = self.session.workspace, self.dictionary.currentData()
        return None if ws.folder is None or d is None else feat.analysis_folder(ws.folder, d)

    def load_cached(self) -> bool:
        """Show the cached analysis of the chosen dictionary; returns whether there was one."""
        folder, cfg = self.analysis_folder(), self.default_config()
        results = (feat.cached(self.session.workspace.folder, cfg.dict, cfg)
                   if folder is not None and cfg else None)
        if results is not None and results.cell_max.shape[0] == self.cells.n_cells:
            self.show_results(results, folder.name)
            return True
        return False

    def default_config(self):
        """The analysis the Analyse button runs: the chosen dictionary on the open cells."""
        ws, c = self.session.workspace, self.cells
        d = self.dictionary.currentData()
        if ws.folder is None or not ws.model or d is None or c.path is None:
            return None
        return feat.features_config(ws.folder, ws.model, str(c.path), d, c.type_key)

    def analyse(self, cfg=None):
        """Run the analysis as a job (progress, cancel). Without `cfg`: the chosen dictionary
        with default options, and its cached result when there is one."""
        if cfg is None:
            if self.load_cached():
                return None
            cfg = self.default_config()
        if cfg is None or self.runner is None:
            text = ("Analyse needs a model, a dictionary and open cells: open a workspace "
                    "(File › Open workspace…) or drop them on the window.")
            log.warning(text)
            if self.results is None:  # said where the user looks, not only in the Log
                self.empty.setText(text)
            return None
        ws = self.session.workspace
        folder = feat.write_folder(ws.folder, cfg.dict)
        cfg = dataclasses.replace(cfg, out=str(folder.parent / f"{folder.name}.features.parquet"))
        self.session.record("dictionaries", cfg.dict)
        self.choose_dictionary(cfg.dict)
        from ..state.jobs import DONE

        job = self.runner().submit(f"Analyse {folder.name}", partial(feat.analyse, cfg, folder))
        self.analysis_job = job

        def done(status: str) -> None:
            if status == DONE:
                self.session.record("analyses", folder)
                self.show_results(job.result, folder.name, cfg)

        job.finished.connect(done)
        return job

    def choose_dictionary(self, path: str) -> bool:
        """Make a workspace dictionary the chosen one; returns whether it is in the list."""
        target = str(Path(path).resolve())
        for i in range(self.dictionary.count()):
            if str(Path(self.dictionary.itemData(i)).resolve()) == target:
                self.dictionary.setCurrentIndex(i)
                return True
        return False

    def show_dictionary_feature(self, path: str, j: int):
        """Feature j of the dictionary at `path` in the table and detail: from its cached
        analysis at once, else after analysing it (returns that job)."""
        self.session.record("dictionaries", path)
        self.choose_dictionary(path)
        if self.load_cached():
            self.select_feature(j)
            return None
        job = self.analyse()
        if job is not None:
            job.finished.connect(lambda status: job.result is not None and self.select_feature(j))
        return job

    def select_feature(self, j: int) -> None:
        """Show feature j: its row chosen in the table (filter cleared if it hid the row)."""
        rows = np.flatnonzero(self.model.df["feature"].to_numpy() == j)
        if not len(rows):
            return
        where = np.flatnonzero(self.model.rows == rows[0])
        if not len(where):
            self.filter.clear()
            where = np.flatnonzero(self.model.rows == rows[0])
        index = self.model.index(int(where[0]), 0)
        self.table.scrollTo(index)
        if self.table.currentIndex().row() == index.row():
            self.show_feature(j)
        else:
            self.table.setCurrentIndex(index)  # _row_chosen shows it

    def show_results(self, results, name: str, cfg=None) -> None:
        """Show an analysis; `cfg` (its FeaturesConfig, default: the Analyse button's) says
        which model and dictionary colour a clicked cell's sentence."""
        from .feature_detail import FeatureDetail
        from .heatmap import HeatmapView

        if self.detail is None:
            self.detail, self.heatmap = FeatureDetail(self.cells), HeatmapView()
            scroll = QScrollArea(widgetResizable=True, frameShape=QScrollArea.Shape.NoFrame)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            scroll.setWidget(self.detail)  # stacked in one column when the dock is narrow
            self.tabs.addTab(scroll, "Detail")
            self.tabs.addTab(self.heatmap, "Heatmap")
        self.results = results
        self.analysis_cfg = cfg or self.default_config()
        self.cell_tokens, self.feature = None, None
        # where the engine's write-back puts them, so hover and selection read them too
        self.key = self.cells.activation_key = f"X_{name}"
        self.cells.adata.obsm[self.key] = results.cell_max
        self.detail.set_results(results)
        self.empty.hide()
        self.table.show()
        self.tabs.show()
        labels = self.session.workspace.feature_labels
        df = results.table.copy()
        df["label"] = [labels.get(f"{self.key}:{j}", v) for j, v in zip(df["feature"], df["label"])]
        first = [c for c in ("feature", "label", "frequency", "max") if c in df]
        first += [c for c in df if c.startswith(("best_", "auroc_"))] + (
            ["top_genes"] if "top_genes" in df else [])
        self.model.set_frame(df[first + [c for c in df if c not in first]])
        self.table.resizeColumnsToContents()
        c = self.cells
        if c.type_key and c.adata is not None:
            self.heatmap.show_results(results, c.adata.obs[c.type_key].values)

    def show_feature(self, j: int) -> None:
        """Colour the cells and the clicked cell's sentence by feature j; fill the detail."""
        label = self.session.workspace.feature_labels.get(f"{self.key}:{j}", "")
        name = f"{self.key}:{j}" + (f" {label}" if label else "")
        self.feature = j
        if self.results is not None:
            self.cells.set_values(self.results.cell_values(j), name, ACTIVATION_UNIT)
            self.detail.show_feature(j, label)
            self._colour_sentence()
        else:
            self.cells.set_values(feat.column(self.cells.adata.obsm[self.key], j), name,
                                  "activation")

    def _colour_sentence(self) -> None:
        """The clicked cell's genes coloured by its own activation of the chosen feature: the
        cell is run through the model and dictionary in a job (loaded once, then reused)."""
        c, j = self.cells, self.feature
        if self.results is None or j is None or c.current is None:
            return
        tokens = self.cell_tokens
        if tokens is not None and tokens.cell == c.current:
            values = tokens.gene_values(j)
            if values != c.gene_values:
                c.gene_values = values
                c.current_changed.emit()  # the sentence chips take them; here they are equal
            return
        cfg = self.analysis_cfg
        if cfg is None or self.runner is None or self.cell_job_for == c.current:
            return
        cell, encoder = c.current, self.encoder
        job = self.runner().submit(f"Feature activations of cell {c.cell_id(cell)}",
                                   partial(feat.encode_cell, cfg, cell, encoder))
        self.cell_job, self.cell_job_for = job, cell

        def done(_status: str) -> None:
            if self.cell_job_for == cell:
                self.cell_job_for = None
            if job.result is None:
                if job.error:
                    log.error("activations of cell %s: %s", cell, job.error)
                return
            self.encoder, tokens = job.result
            if c.current == cell:
                self.cell_tokens = tokens
                self._colour_sentence()

        job.finished.connect(done)

    def _on_loaded(self) -> None:
        if self.load_cached():
            return
        keys = feat.activation_keys(self.cells.adata)
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItems(["(none)"] + keys)
        self.source.blockSignals(False)
        self.show_matrix(feat.default_activation_key(self.cells.adata))

    def show_matrix(self, key: str | None) -> None:
        """Compute the table for obsm[key] in a worker; None or "(none)" clears it."""
        key = None if key in (None, "(none)") else key
        self.results = self.feature = None
        self.tabs.hide()
        self.key = self.cells.activation_key = key
        self._on_selection()
        self.source.setCurrentText(key or "(none)")
        self.empty.setVisible(key is None)
        self.empty.setText(self._empty_text())
        self.table.setVisible(key is not None)
        if key is None:
            self.model.set_frame(None)
            return
        a = self.cells.adata
        types = a.obs[self.cells.type_key].values if self.cells.type_key else None
        labels = {int(k.rsplit(":", 1)[1]): v for k, v in
                  self.session.workspace.feature_labels.items() if k.startswith(f"{key}:")}
        from superqt.utils import create_worker

        self.worker = create_worker(feat.feature_stats, a.obsm[key], types, labels,
                                    _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(lambda df, k=key: self._show(k, df))
        self.worker.errored.connect(lambda e: log.error("feature table of %s failed: %s", key, e))
        self.worker.start()

    def _empty_text(self) -> str:
        """What the panel says with no table: how to get one from here."""
        if self.default_config() is None:
            return NO_ACTIVATIONS
        return (f"No analysis of the dictionary <b>{self.dictionary.currentText()}</b> on these "
                "cells yet: press <b>Analyse</b> to run it (a job in the Jobs panel; the result "
                "is cached in the workspace and shown at once next time).")

    def _dictionary_chosen(self) -> None:
        """Its cached analysis, else the empty state saying how to make one."""
        if not self.load_cached():
            self.show_matrix(None)

    def _on_selection(self) -> None:
        """Top features of the selected cells: what the selection has in common."""
        sel = self.cells.selection
        top = self.cells.top_features(sel) if self.key is not None else []
        labels = self.session.workspace.feature_labels
        self.top_of_selection = [j for j, _ in top]
        names = [f"{j} {labels[f'{self.key}:{j}']}" if f"{self.key}:{j}" in labels else str(j)
                 for j, _ in top]
        self.selection_top.setText(
            "" if not top else f"<b>Top features of {len(sel):,} selected cells</b> (mean): "
            + ", ".join(f"{name} ({v:.3g})" for name, (_, v) in zip(names, top)))

    def _show(self, key: str, df) -> None:
        if key == self.key:
            self.model.set_frame(df)
            self.table.resizeColumnsToContents()

    def _row_chosen(self, current, _previous) -> None:
        if not current.isValid() or self.key is None:
            return
        self.show_feature(int(self.model.df["feature"].iat[self.model.frame_row(current.row())]))

    def _label_edited(self, row: int, _col: str, value: str) -> None:
        j = int(self.model.df["feature"].iat[row])
        labels = self.session.workspace.feature_labels
        if value:
            labels[f"{self.key}:{j}"] = value
        else:
            labels.pop(f"{self.key}:{j}", None)

    def _export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export feature table", "features.csv",
                                              "CSV (*.csv);;TSV (*.tsv);;Parquet (*.parquet)")
        if path and self.model.df is not None:
            self.export(path)

    def export(self, path: str | Path) -> Path:
        """CSV / TSV / Parquet by suffix; labels written in an earlier export of the same file
        are kept where this table has none."""
        from biollm_engine.analysis.table import FeatureTable

        return FeatureTable(self.model.df).save(path)
