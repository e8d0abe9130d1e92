"""What a cached result was computed from, as one SHA-256, so that a stale cache is recomputed and
never read: the options, the input files' contents (not their dates, which a checkout or a copy
changes) and the engine code that computes it.

Files up to LARGE bytes are read whole. A larger one (a real model's weights: gigabytes, which
the workbench would read on its GUI thread) gives its size, modification time and three 1 MiB
samples (start, middle, end) instead: any rewrite changes its time, so a retrained model is
still caught, and a copied one is analysed once more. A digest is remembered for as long as the
file's size and modification time stay the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

ENGINE = Path(__file__).resolve().parent
# The code whose change can change an analysis' numbers: the analysis itself and what it reads
# cells, models and dictionaries with.
ANALYSIS_CODE = ("analysis", "inputs", "models", "dictionaries", "harvest.py")
_DNA_ONLY = ("dna", "evo2")  # modules of those packages that cells never reach

LARGE = 64 << 20
_SAMPLE = 1 << 20
_digests: dict[tuple[str, int, int], bytes] = {}


def file_digest(path: Path) -> bytes:
    st = os.stat(path)
    memo = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if st.st_size <= LARGE:
                for block in iter(lambda: f.read(_SAMPLE), b""):
                    h.update(block)
            else:
                h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
                for at in (0, st.st_size // 2, st.st_size - _SAMPLE):
                    f.seek(at)
                    h.update(f.read(_SAMPLE))
        _digests[memo] = h.digest()
    return _digests[memo]


def add_file(h, name: str, path: Path) -> None:
    h.update(f"\0{name}\0{os.stat(path).st_size}\0".encode())
    h.update(file_digest(path))


def add_code(h, names: Iterable[str] = ANALYSIS_CODE, skip: tuple[str, ...] = _DNA_ONLY) -> None:
    for name in names:
        root = ENGINE / name
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            if not path.name.startswith(skip):
                add_file(h, path.relative_to(ENGINE).as_posix(), path)


def cache_key(options: dict, files: Iterable[tuple[str, Path]],
              code: Iterable[str] = ANALYSIS_CODE) -> str:
    """SHA-256 of `options` (JSON), each (name, path) file's content, and the engine's `code`."""
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    for name, path in files:
        add_file(h, name, Path(path))
    add_code(h, code)
    return h.hexdigest()


KEY_FILE = "key.json"


def write_key(folder: Path, key: str) -> None:
    """Record in a cache `folder` (being written) the key of what it was computed from."""
    from .fileio import write_json

    write_json(Path(folder) / KEY_FILE, {
        "sha256": key, "of": "the analysis options, the model, dictionary and data files, and "
                             f"the engine's {', '.join(ANALYSIS_CODE)} code"})


def key_matches(folder: Path, key: str) -> bool:
    """Whether the cache in `folder` was computed from what `key` says (False: missing or
    unreadable too)."""
    try:
        return json.loads((Path(folder) / KEY_FILE).read_text()).get("sha256") == key
    except (OSError, ValueError, AttributeError):
        return False


# FeaturesConfig options that name where things are (or run), not what is computed
_PLACES = ("model", "data", "dict", "out", "write_h5ad", "cache", "device")


def features_key(cfg) -> str:
    """The key of a feature analysis (an `analysis.pipeline.FeaturesConfig`): its options, the
    model's and the dictionary's files (a hub id: its name), the data file, the analysis code.
    Files are named by role, so a copied or moved workspace keeps its key."""
    from .config import to_dict

    options = {k: v for k, v in to_dict(cfg).items() if k not in _PLACES}
    files = []
    for role, place in (("model", cfg.model), ("dict", cfg.dict), ("data", cfg.data)):
        path = Path(place)
        if path.is_dir():
            files += [(f"{role}/{p.name}", p) for p in sorted(path.iterdir()) if p.is_file()]
        elif path.is_file():
            files.append((f"{role}/{path.name}", path))
        else:
            options[role] = place  # a hub id
    return cache_key(options, files)
