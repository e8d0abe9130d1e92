"""The Features panel: per-feature statistics of the activations stored with the cells.

Click a feature to colour the cells by its activation; labels typed here are saved in the
workspace. The table is a model/proxy pair, so sorting and filtering 16k features stays instant.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit,
                               QTableView, QToolButton, QVBoxLayout, QWidget)
from ..state import features as feat
from ..state.session import Session
from .export import copy_table, export_table
from .icons import icon_later
from .table import FrameModel, proxy_for

log = logging.getLogger("workbench")


class FeaturesPanel(QWidget):
    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.cells = session.cells
        self.key: str | None = None
        self.top_of_selection: list[int] = []
        self.source = QComboBox()
        self.source.setToolTip("obsm matrix holding the feature activations (cells × features)")
        self.filter = QLineEdit(placeholderText="Filter (label, cell type, number)…")
        self.model = FrameModel(editable=("label",))
        self.model.on_edit = self._label_edited
        self.proxy = proxy_for(self.model)
        self.table = QTableView(sortingEnabled=True)
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.empty = QLabel("No feature activations in this data set yet. Open an .h5ad written "
                            "back by <code>biollm features --write-h5ad</code> (obsm "
                            "X_&lt;dictionary&gt;), or choose a matrix above.")
        self.empty.setWordWrap(True)
        save = QToolButton(text="Export", toolTip="Export the table (CSV, TSV, Parquet)")
        icon_later(save, "fa5s.file-export")
        save.clicked.connect(self._export)
        copy = QToolButton(text="Copy", toolTip="Copy the table to the clipboard")
        icon_later(copy, "fa5s.copy")
        copy.clicked.connect(lambda: self.model.df is not None and copy_table(self.model.df))
        top = QHBoxLayout()
        top.addWidget(self.source, 1)
        top.addWidget(save)
        top.addWidget(copy)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.filter)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignTop)
        lay.addWidget(self.empty, 1)
        lay.addWidget(self.table, 1)
        self.selection_top = QLabel("")
        self.selection_top.setWordWrap(True)
        lay.addWidget(self.selection_top)

        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.source.textActivated.connect(self.show_matrix)
        self.table.selectionModel().currentRowChanged.connect(self._row_chosen)
        self.cells.loaded.connect(self._on_loaded)
        self.cells.selection_changed.connect(self._on_selection)
        self._on_loaded()

    def _on_loaded(self) -> None:
        keys = feat.activation_keys(self.cells.adata)
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItems(["(none)"] + keys)
        self.source.blockSignals(False)
        self.show_matrix(feat.default_activation_key(self.cells.adata))

    def show_matrix(self, key: str | None) -> None:
        """Compute the table for obsm[key] in a worker; None or "(none)" clears it."""
        key = None if key in (None, "(none)") else key
        self.key = self.cells.activation_key = key
        self._on_selection()
        self.source.setCurrentText(key or "(none)")
        self.empty.setVisible(key is None)
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
        row = self.proxy.mapToSource(current).row()
        j = int(self.model.df["feature"].iat[row])
        label = self.model.df["label"].iat[row]
        values = feat.column(self.cells.adata.obsm[self.key], j)
        self.cells.set_values(values, f"{self.key}:{j}" + (f" {label}" if label else ""))

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
            export_table(self.model.df, path)
