"""Files dropped on a widget go to its `handle_drop(mime)` (the window and the panels that take
files of their own)."""

from __future__ import annotations


class FileDrops:
    """Mixin for a QWidget with `handle_drop(mime)`; call `setAcceptDrops(True)` in __init__."""

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.handle_drop(event.mimeData())
        event.acceptProposedAction()
