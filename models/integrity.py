"""Integrity of a trained model directory: sha256 manifest, and a random forest stored without pickle.

A model directory written by ``matshift train`` ends with ``files.sha256.json``, the sha256
of every other file in it. Loaders call :func:`verify_manifest` before they read anything,
so a file changed after training (a tampered model, a half-copied artifact) is refused with
an error naming the file, instead of being loaded.

The descriptor random forest is not pickled: its scikit-learn estimator is written with
``skops.io`` (a format that can only rebuild an allow-list of types and never executes code
from the file) and its wrapper settings as JSON. The only type loaded beyond skops' default
allow-list is scikit-learn's tree node storage, which cannot run code but indexes without
bounds checks, so it is loaded only after the file's hash matched the manifest.

What this guards against: accidental corruption, and a model file swapped on its own. It
is not a signature: someone who can rewrite the whole directory can rewrite the manifest
too. The GNN weights stay ``torch.load(weights_only=True)`` with their own hash in
``model.json`` (:func:`models.gnn.load_model`).

Never reads params.yaml or environment variables; paths are arguments.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = [
    "FOREST_ESTIMATOR",
    "FOREST_META",
    "MANIFEST",
    "IntegrityError",
    "load_forest",
    "save_forest",
    "sha256_file",
    "verify_manifest",
    "write_manifest",
]

MANIFEST = "files.sha256.json"
FOREST_ESTIMATOR = "rf_descriptors.skops"
FOREST_META = "rf_descriptors.json"
MANIFEST_VERSION = 1
# reviewed: sklearn's Tree holds node arrays only (no code); trusted once the hash matched
_FOREST_TRUSTED = ["sklearn.tree._tree.Tree"]


class IntegrityError(ValueError):
    """A model file that is missing, unlisted, or whose sha256 differs from the manifest."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path | str) -> dict[str, str]:
    """Record the sha256 of every file under ``directory`` (call last, after all files are written)."""
    from pipeline.io import write_json

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


def save_forest(forest, directory: Path | str) -> None:
    """Write a fitted :class:`models.baselines.DescriptorForest` as skops + JSON (no pickle)."""
    import skops.io as sio

    from pipeline.io import write_json, write_with

    directory = Path(directory)
    settings: dict[str, Any] = {
        "class": "DescriptorForest",
        "columns": list(forest.columns_),
        "options": {"n_estimators": forest.n_estimators, "min_samples_leaf": forest.min_samples_leaf,
                    "max_features": forest.max_features, "n_jobs": forest.n_jobs, "seed": forest.seed},
    }
    write_with(directory / FOREST_ESTIMATOR, lambda p: sio.dump(forest.forest_, p))
    write_json(directory / FOREST_META, settings)


def load_forest(directory: Path | str, *, digests: dict[str, str] | None = None):
    """Rebuild the descriptor forest saved by :func:`save_forest`, checking its hashes first.

    ``digests`` is the result of :func:`verify_manifest` when the caller verified the
    directory already; otherwise the manifest is verified here.
    """
    import skops.io as sio
    from sklearn.ensemble import RandomForestRegressor

    from models.baselines import DescriptorForest

    directory = Path(directory)
    digests = verify_manifest(directory) if digests is None else digests
    for name in (FOREST_ESTIMATOR, FOREST_META):
        if name not in digests:
            raise IntegrityError(f"{directory / name} is not listed in {MANIFEST}; refusing to load it")
        if sha256_file(directory / name) != digests[name]:
            raise IntegrityError(f"model file {directory / name} does not match the sha256 recorded in {MANIFEST}")
    settings = json.loads((directory / FOREST_META).read_text(encoding="utf-8"))
    try:
        estimator = sio.load(directory / FOREST_ESTIMATOR, trusted=_FOREST_TRUSTED)
    except Exception as exc:  # skops raises many types for a bad file (re-raised, chained)
        raise IntegrityError(f"cannot load {directory / FOREST_ESTIMATOR}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(estimator, RandomForestRegressor):
        raise IntegrityError(f"{directory / FOREST_ESTIMATOR} holds a {type(estimator).__name__}, "
                             "not a RandomForestRegressor")
    forest = DescriptorForest(**settings["options"])
    forest.columns_ = list(settings["columns"])
    forest.forest_ = estimator
    return forest
