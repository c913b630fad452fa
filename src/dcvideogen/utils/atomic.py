"""Write files and folders so that a crash or an error never leaves a partial output behind:
everything is written under a temporary name in the destination folder, then renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DCVGError


def check_writable_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DCVGError(f"{path}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise DCVGError(f"{path}: the folder {parent} is not writable; choose another output path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_default_mode(path: Path) -> None:
    """Give a finished temporary file or folder (created 0600 / 0700 by tempfile) the permissions a plain
    `open` / `mkdir` would have given it, recursively for folders."""
    mask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for child in path.rglob("*"):
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`."""
    path = Path(path)
    check_writable_parent(path)
    if path.is_dir():
        raise DCVGError(f"{path}: is a folder; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DCVGError(f"{path}: cannot write there ({e.strerror}); choose another output path") from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        set_default_mode(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (which must not hold files
    unless `overwrite`)."""
    path = Path(path)
    check_writable_parent(path)
    if path.exists() and not path.is_dir():
        raise DCVGError(f"{path}: exists and is a file; give a folder name")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DCVGError(f"{path}: the folder is not empty; remove it or choose another output folder")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise DCVGError(f"{path}: cannot write there ({e.strerror}); choose another output folder") from e
    try:
        yield tmp
        set_default_mode(tmp)
        if path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
