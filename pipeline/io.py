"""Atomic output writing shared by every stage.

A stage killed half-way must leave either the old file or the new one, never a truncated
file: everything is written to a temporary file in the destination directory and moved
into place with :func:`os.replace` (atomic on POSIX within one file system). A temporary
left by a killed run (``.<name>.<pid>.*.tmp``, hidden) is removed by the next write of the
same output once its process is gone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(OSError):
    """An output that could not be written; names the path."""


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; outputs should get the permissions a plain open() would give.
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_with(path: Path | str, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    return write_with(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path | str, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    return write_text(path, text + "\n")


def write_parquet(path: Path | str, frame: pd.DataFrame) -> Path:
    return write_with(path, lambda p: frame.to_parquet(p, index=False))


def write_csv(path: Path | str, frame: pd.DataFrame) -> Path:
    return write_with(path, lambda p: frame.to_csv(p, index=False))


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Build a whole output directory beside ``path`` and swap it in on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tmp_prefix(path: Path) -> str:
    # the writer's pid is in the name, so a later run can tell a dead run's leftovers from a live one's
    return f".{path.name}.{os.getpid()}."


def _remove_stale(path: Path) -> None:
    """Delete temporaries beside ``path`` left by a run that was killed (SIGKILL skips every cleanup)."""
    head = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(head)}*.tmp"):
        pid = tmp.name[len(head):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
