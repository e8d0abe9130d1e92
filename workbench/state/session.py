"""Everything the window shows, without Qt: the workspace, the cells, models, dictionaries, jobs."""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal

from .cells import CellsState
from .jobs import JobList
from .workspace import Workspace, open_workspace, save_workspace


class Session:
    workspace_changed = Signal()

    def __init__(self) -> None:
        self.workspace = Workspace()
        self.cells = CellsState()
        self.jobs = JobList()

    def record(self, list_name: str, path: str | Path) -> None:
        if self.workspace.add(list_name, path):
            self.workspace_changed.emit()

    def set_model(self, path: str | Path) -> None:
        self.workspace.model = str(Path(path).resolve())
        self.workspace_changed.emit()

    def open_workspace(self, folder: str | Path) -> Workspace:
        self.workspace = open_workspace(folder)
        self.workspace_changed.emit()
        return self.workspace

    def save_workspace(self, folder: str | Path | None = None) -> Path:
        c = self.cells
        if c.adata is not None:
            self.workspace.settings.update({"embedding": c.obsm_key, "colour_by": c.colour_by,
                                            "type_key": c.type_key})
        return save_workspace(self.workspace, folder or self.workspace.folder)
