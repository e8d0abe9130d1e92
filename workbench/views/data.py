"""The Data panel: what file is open, how cells are drawn and coloured, the clicked cell."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QFormLayout, QGroupBox, QLabel, QListWidget,
                               QMessageBox, QPushButton, QVBoxLayout, QWidget)

from biollm_engine.errors import BioLLMError

from ..state.session import Session
from .sentence import SentenceView


class DataPanel(QWidget):
    compute_umap_requested = Signal()

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.cells = session.cells
        self.summary = QLabel("No data open. Drop an .h5ad file on the window.")
        self.summary.setWordWrap(True)
        self.embedding = QComboBox()
        self.colour = QComboBox()
        self.type_key = QComboBox()
        self.umap_button = QPushButton("Compute UMAP")
        self.umap_button.setToolTip("No 2-D embedding in this file: compute one with scanpy")
        self.umap_button.clicked.connect(self.compute_umap_requested)
        self.selected = QLabel("")
        form = QFormLayout()
        form.addRow("Embedding", self.embedding)
        form.addRow("", self.umap_button)
        form.addRow("Colour by", self.colour)
        form.addRow("Cell type", self.type_key)
        form.addRow("Selection", self.selected)
        self.sentence = SentenceView()
        cell_box = QGroupBox("Cell")
        QVBoxLayout(cell_box).addWidget(self.sentence)
        self.sequences = QListWidget()
        self.seq_box = QGroupBox("Sequence files")
        QVBoxLayout(self.seq_box).addWidget(self.sequences)

        lay = QVBoxLayout(self)
        lay.addWidget(self.summary)
        lay.addLayout(form)
        lay.addWidget(cell_box, 1)
        lay.addWidget(self.seq_box)

        self.embedding.textActivated.connect(self.cells.set_embedding)
        self.colour.textActivated.connect(self._colour_chosen)
        self.type_key.textActivated.connect(self.cells.set_type_key)
        self.cells.loaded.connect(self._on_loaded)
        self.cells.embedding_changed.connect(self._on_loaded)
        self.cells.values_added.connect(lambda _: self._fill_colour())
        self.cells.colour_changed.connect(self._fill_colour)
        self.cells.selection_changed.connect(self._on_selection)
        self.cells.current_changed.connect(self._on_current)
        session.workspace_changed.connect(self._on_workspace)
        self._on_loaded()
        self._on_workspace()

    def _on_loaded(self) -> None:
        c = self.cells
        if c.adata is None:
            self.umap_button.hide()
            return
        s = c.summary()
        obs = ", ".join(s["obs"][:12]) + (" …" if len(s["obs"]) > 12 else "")
        self.summary.setText(f"<b>{Path(s['path']).name or 'cells'}</b><br>{s['n_cells']:,} cells "
                             f"× {s['n_genes']:,} genes ({s['matrix']})<br>obs: {obs}")
        _fill(self.embedding, c.embedding_keys(), c.obsm_key)
        self.umap_button.setVisible(not c.has_2d_embedding())
        self._fill_colour()
        _fill(self.type_key, c.categorical_columns(), c.type_key)
        self._on_selection()

    def _colour_chosen(self, name: str) -> None:
        try:
            self.cells.set_colour(name)
        except BioLLMError as e:
            self._fill_colour()
            QMessageBox.information(self, "Colour by", e.message)

    def _fill_colour(self) -> None:
        _fill(self.colour, self.cells.colour_options(), self.cells.colour_by)

    def _on_selection(self) -> None:
        n = len(self.cells.selection)
        self.selected.setText(f"{n:,} of {self.cells.n_cells:,} cells" if n else "none")

    def _on_current(self) -> None:
        c = self.cells
        if c.current is None or c.adata is None:
            return
        i = c.current
        title = f"<b>{c.cell_id(i)}</b>" + (f" ({c.cell_type(i)})" if c.type_key else "")
        try:
            sentence = c.sentence(i)
        except BioLLMError as e:
            self.sentence.show_message(f"{title}: {e.message}")
            return
        self.sentence.show_sentence(title, sentence, c.gene_values)

    def _on_workspace(self) -> None:
        seqs = self.session.workspace.sequences
        self.sequences.clear()
        self.sequences.addItems([Path(p).name for p in seqs])
        for i, p in enumerate(seqs):
            self.sequences.item(i).setToolTip(p)
        self.seq_box.setVisible(bool(seqs))


def _fill(combo: QComboBox, items: list[str], current: str | None) -> None:
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if current in items:
        combo.setCurrentText(current)
    combo.blockSignals(False)
