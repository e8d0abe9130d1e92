"""Atomic writes: nothing the engine writes is ever left half-written.

Everything goes to a temporary name beside the destination and is renamed into place once
complete, so an interrupted run leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 for safety; the finished file gets what a plain open() would
# (or the mode of the file it replaces), so exports stay readable by the lab's group.
_UMASK = _read_umask()


def _final_mode(dest: Path, default: int) -> int:
    try:
        return dest.stat().st_mode & 0o7777
    except FileNotFoundError:
        return default & ~_UMASK


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path beside `dest`; rename it onto `dest` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or dest.suffix + ".tmp",
                               dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _final_mode(dest, 0o666))
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; swap it in for `dest` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, _final_mode(dest, 0o777))
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(dest: str | os.PathLike, obj, indent: int = 2) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=str) + "\n")


def read_json(path: str | os.PathLike, what: str = "file"):
    from .errors import BioLLMError

    path = Path(path)
    if not path.exists():
        raise BioLLMError(f"{what} {path} does not exist; check the path.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BioLLMError(f"{what} {path} is not valid JSON ({e}); re-create it.") from None
