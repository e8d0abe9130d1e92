"""The Model & dictionaries panel: the model folder and the dictionaries of this workspace."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from ..state.library import describe_dictionaries, describe_model
from ..state.session import Session

HEADER_TIPS = (
    "folder name (hover a row for its path)",
    "model: architecture; dictionary: sae, transcoder or crosscoder",
    "hidden size: the model's, or the activations a dictionary reads",
    "dictionary: number of latents (features); model: number of layers",
    "dictionary: active latents per token (TopK)",
    "dictionary: file layout (ours, sparsify, SAELens); model: vocabulary size",
)


class ModelsPanel(QWidget):
    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.hint = QLabel("Drop a model folder (config.json + tokenizer) or a dictionary folder "
                           "(cfg.json + sae.safetensors; ours, sparsify's or SAELens') here.")
        self.hint.setWordWrap(True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Name", "Kind", "Width", "Latents", "k", "Format"])
        # the model's row uses the columns for its own numbers: the tooltips say both
        for i, tip in enumerate(HEADER_TIPS):
            self.tree.headerItem().setToolTip(i, tip)
        self.tree.setRootIsDecorated(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.hint)
        lay.addWidget(self.tree, 1)
        session.workspace_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        ws = self.session.workspace
        self.tree.clear()
        model = QTreeWidgetItem(self.tree, ["Model"])
        if ws.model:
            m = describe_model(ws.model)
            item = QTreeWidgetItem(model, [m["name"], m["arch"], str(m["width"]),
                                           f"{m['layers']} layers", "", f"vocab {m['vocab']}"])
            item.setToolTip(0, m["path"])
        dicts = QTreeWidgetItem(self.tree, ["Dictionaries"])
        for folder in ws.dictionaries:
            for d in describe_dictionaries(folder):
                item = QTreeWidgetItem(dicts, [d["name"], str(d["kind"]), str(d["d_in"]),
                                               str(d["latents"]), str(d["k"]), d["format"]])
                item.setToolTip(0, d["path"])
        self.tree.expandAll()
        for i in range(self.tree.columnCount()):
            self.tree.resizeColumnToContents(i)
        self.hint.setVisible(not (ws.model or ws.dictionaries))

    def dictionary_names(self) -> list[str]:
        top = self.tree.topLevelItem(1)
        return [top.child(i).text(0) for i in range(top.childCount())]
