"""A workspace is a folder holding workspace.json: what the user was working with.

Paths inside the folder are stored relative to it, so a workspace can be moved or shipped (the
embedded demo is one); paths outside are stored absolute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from biollm_engine.errors import BioLLMError
from biollm_engine.fileio import read_json, write_json

FILENAME = "workspace.json"
VERSION = 1
_PATH_LISTS = ("dictionaries", "data", "sequences", "caches", "analyses", "figures")
BUNDLED = Path(__file__).resolve().parents[2] / "resources" / "demo"


def is_read_only(folder: str | Path) -> bool:
    """The bundled demo workspaces stay as shipped (in an installed package they may not even be
    writable), as does any folder the user cannot write."""
    folder = Path(folder).resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # a new one is made there
    return folder.is_relative_to(BUNDLED) or not os.access(existing, os.W_OK)


def scratch_folder(folder: str | Path) -> Path:
    """Where what is computed on a read-only workspace goes: the user's cache, one folder per
    workspace path."""
    import platformdirs

    folder = Path(folder).resolve()
    key = hashlib.sha1(str(folder).encode()).hexdigest()[:12]
    return Path(platformdirs.user_cache_dir("biollm-workbench", "BioLLM")) / f"{folder.name}-{key}"


@dataclass
class Workspace:
    model: str | None = None
    """Model folder or hub name."""
    dictionaries: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    """.h5ad files; the first is opened in the embedding view."""
    sequences: list[str] = field(default_factory=list)
    caches: list[str] = field(default_factory=list)
    analyses: list[str] = field(default_factory=list)
    feature_labels: dict[str, str] = field(default_factory=dict)
    """`"<dictionary>:<feature>"` -> the user's label."""
    figures: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    """View settings: embedding key, colour-by column, ..."""
    folder: Path | None = field(default=None, compare=False)

    def add(self, list_name: str, path: str | Path) -> bool:
        """Record a path once; returns whether it was new."""
        items = getattr(self, list_name)
        p = str(Path(path).resolve())
        if p in items:
            return False
        items.append(p)
        return True


def _to_stored(p: str, folder: Path) -> str:
    path = Path(p)
    if not path.is_absolute():
        return p
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path)


def _from_stored(p: str, folder: Path) -> str:
    path = Path(p)
    return p if path.is_absolute() else str((folder / path).resolve())


def save_workspace(ws: Workspace, folder: str | Path) -> Path:
    folder = Path(folder)
    d = {k: v for k, v in dataclasses.asdict(ws).items() if k != "folder"}
    for name in _PATH_LISTS:
        d[name] = [_to_stored(p, folder) for p in d[name]]
    if ws.model and Path(ws.model).exists():
        d["model"] = _to_stored(str(Path(ws.model).resolve()), folder)
    d["version"] = VERSION
    write_json(folder / FILENAME, d)
    ws.folder = folder
    return folder


def open_workspace(folder: str | Path) -> Workspace:
    folder = Path(folder)
    if folder.is_file() and folder.name == FILENAME:
        folder = folder.parent
    d = read_json(folder / FILENAME, "workspace file")
    if not isinstance(d, dict):
        raise BioLLMError(f"{folder / FILENAME} is not a workspace (expected a JSON object); "
                          "re-create it with File > Save workspace.")
    known = {f.name for f in dataclasses.fields(Workspace)} - {"folder"}
    ws = Workspace(**{k: v for k, v in d.items() if k in known})
    for name in _PATH_LISTS:
        value = getattr(ws, name)
        if not isinstance(value, list):
            raise BioLLMError(f"{folder / FILENAME}: '{name}' must be a list of paths.")
        setattr(ws, name, [_from_stored(str(p), folder) for p in value])
    if ws.model and (folder / ws.model).exists():
        ws.model = str((folder / ws.model).resolve())
    ws.folder = folder
    return ws
