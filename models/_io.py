"""The bottom layer: atomic writes, sha256, JSON, and the one on-disk format of every model file.

Everything in ``models/`` and ``pipeline/`` may import this module; it imports nothing of
the project (``pipeline`` reaches it through ``models``' re-exports).

* **Atomic writes.** A stage killed half-way must leave either the old file or the new one,
  never a truncated file: everything is written to a temporary file in the destination
  directory and moved into place with :func:`os.replace` (atomic on POSIX within one file
  system). A temporary left by a killed run (``.<name>.<pid>.*.tmp``, hidden) is removed by
  the next write of the same output once its process is gone.
* **Hashes.** :func:`sha256_file` / :func:`sha256_bytes`, used for source checksums, model
  files and the model directory's manifest.
* **Model files.** Every saved model (a GNN member, the neural OT map, the stacked model, its
  shift field, the descriptor forest) is one format: a header JSON (``format_version``,
  ``class``, ``files``: the sha256 of each file beside it, then the model's own fields) written
  and read by :func:`write_header` / :func:`read_header`; loaders refuse a header of another
  format or class and a file whose hash differs before they deserialise anything. A trained
  model *directory* ends with ``files.sha256.json``, the sha256 of every other file
  (:func:`write_manifest` / :func:`verify_manifest`).

What the hashes guard against: accidental corruption, and a model file swapped on its own.
They are not a signature: someone who can rewrite the whole directory can rewrite the
manifest too. This module never reads params.yaml or environment variables.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(OSError):
    """An output that could not be written; names the path."""


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success."""
    path = Path(path)
    fd, tmp = _temporary_beside(path, tempfile.mkstemp)
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


def write_json(path: Path | str, obj: Any, *, sort_keys: bool = True) -> Path:
    """Write ``obj`` as indented JSON; NaN/inf become null (JSON has no NaN)."""
    text = json.dumps(finite(obj), indent=2, sort_keys=sort_keys, allow_nan=False, default=json_default)
    return write_text(path, text + "\n")


def finite(obj: Any) -> Any:
    """Replace non-finite floats (NaN, inf) by None in nested dicts and lists: JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if type(obj).__module__ == "numpy" and hasattr(obj, "dtype") and obj.dtype.kind == "f" and obj.ndim == 0:
        return finite(float(obj))
    return obj


def write_parquet(path: Path | str, frame: pd.DataFrame) -> Path:
    return write_with(path, lambda p: frame.to_parquet(p, index=False))


def write_csv(path: Path | str, frame: pd.DataFrame) -> Path:
    return write_with(path, lambda p: frame.to_csv(p, index=False))


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Build a whole output directory beside ``path`` and swap it in on success."""
    path = Path(path)
    tmp = Path(_temporary_beside(path, tempfile.mkdtemp))
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


def _temporary_beside(path: Path, make: Callable[..., Any]) -> Any:
    """``make`` (``tempfile.mkstemp`` or ``mkdtemp``) a hidden temporary in ``path``'s directory, after clearing dead ones."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        return make(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


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


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy scalars and arrays and paths."""
    import numpy as np  # numpy only when a NumPy value is written (this module stays import-light)

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


# ----------------------------------------------------------------------------- hashes


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- model files


class ModelFormatError(ValueError):
    """A model file that is missing, of another format or class, or whose hash does not match."""


#: Version of the model-file header (a header records the sha256 of every file it lists).
HEADER_VERSION = 2


def write_header(path: Path | str, *, cls: str, files: Sequence[str], indent: int | None = 2, **fields: Any) -> Path:
    """Write a model's header JSON: its class, the sha256 of each of its ``files`` (same directory), ``fields``.

    Call after the files are written. ``fields`` (``init_args``, ``config``, ``extra``...) go into
    the header as they are; ``indent`` None writes it on one line.
    """
    path = Path(path)
    meta = {"format_version": HEADER_VERSION, "class": cls,
            "files": {name: sha256_file(path.parent / name) for name in files}, **fields}
    return write_text(path, json.dumps(meta, indent=indent, sort_keys=True) + "\n")


def read_header(path: Path | str, *, classes: Sequence[str], required: Sequence[str] = (), what: str = "model",
                error: type[Exception] = ModelFormatError) -> dict[str, Any]:
    """Read and check a header written by :func:`write_header`; returns it.

    Refuses (raising ``error``, a message naming the file) a missing or invalid header, another
    format version or class, a ``required`` file the header does not list, and a listed file
    that is missing, outside the header's directory or whose sha256 differs: all before the
    caller deserialises anything.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"no {what} config at {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} config {path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != HEADER_VERSION:
        got = meta.get("format_version") if isinstance(meta, dict) else None
        raise error(f"{path}: unsupported format_version {got!r} (expected {HEADER_VERSION})")
    if meta.get("class") not in classes:
        raise error(f"{path}: unknown {what} class {meta.get('class')!r} (known: {', '.join(classes)})")
    files = meta.get("files")
    if not isinstance(files, dict) or any(name not in files for name in required):
        raise error(f"{path} does not list the {what}'s files {list(required)}")
    for name, digest in files.items():
        file = path.parent / str(name)
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise error(f"{path}: refuses file {name!r} outside its directory")
        if not file.is_file():
            raise error(f"{what} file {file} is missing")
        if sha256_file(file) != digest:
            raise error(f"{what} file {file} does not match the sha256 recorded in {path}")
    return meta


# ----------------------------------------------------------------------------- model directories

MANIFEST = "files.sha256.json"
MANIFEST_VERSION = 1


class IntegrityError(ValueError):
    """A model file that is missing, unlisted, or whose sha256 differs from the manifest."""


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path | str) -> dict[str, str]:
    """Record the sha256 of every file under ``directory`` (call last, after all files are written)."""
    directory = Path(directory)
    digests = {p.relative_to(directory).as_posix(): sha256_file(p) for p in _files(directory)}
    write_json(directory / MANIFEST, {"format_version": MANIFEST_VERSION, "sha256": digests})
    return digests


def verify_manifest(directory: Path | str) -> dict[str, str]:
    """Check every file listed in the manifest; returns ``{relative path: sha256}``.

    Raises :class:`IntegrityError` when the manifest is missing or unreadable, when a listed
    file is missing, or when a file's sha256 differs. Files not listed (e.g. written by
    MLflow beside the model) are ignored: nothing reads them.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IntegrityError(f"{directory} has no {MANIFEST}: not written by this version of `matshift train`; "
                             "retrain (dvc repro) to get a verifiable model") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != MANIFEST_VERSION or not isinstance(
            meta.get("sha256"), dict):
        raise IntegrityError(f"{path}: unsupported manifest format")
    digests: dict[str, str] = meta["sha256"]
    for name, expected in digests.items():
        file = directory / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise IntegrityError(f"{path}: refuses entry {name!r} outside the model directory")
        if not file.is_file():
            raise IntegrityError(f"model file {file} listed in {MANIFEST} is missing")
        if sha256_file(file) != expected:
            raise IntegrityError(f"model file {file} does not match the sha256 recorded in {path}; "
                                 "it changed after training: retrain or restore it")
    return digests



# ----------------------------------------------------------------------------- configs and packages

#: Field metadata of configuration dataclasses, read by the params loader (pipeline/config.py):
#: an ``inline`` nested dataclass has its keys at the parent's level of params.yaml; a
#: ``derived`` field is set by the caller from other facts and is not a params key.
PARAM_INLINE = {"param": "inline"}
PARAM_DERIVED = {"param": "derived"}



def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """Return a module ``__getattr__`` that imports ``table[name]`` (a submodule of ``package``) on first use.

    Lets a package re-export the names of its heavy submodules (torch, scikit-learn, MLflow)
    without importing them until they are used: serving and ``matshift --help`` stay free of them.
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__


__all__ = [
    "HEADER_VERSION",
    "MANIFEST",
    "PARAM_DERIVED",
    "PARAM_INLINE",
    "IntegrityError",
    "ModelFormatError",
    "OutputError",
    "atomic_dir",
    "atomic_path",
    "finite",
    "json_default",
    "lazy_exports",
    "read_header",
    "sha256_bytes",
    "sha256_file",
    "verify_manifest",
    "write_csv",
    "write_header",
    "write_json",
    "write_manifest",
    "write_parquet",
    "write_text",
    "write_with",
]
