"""MLflow tracking shared by every stage that logs a run: the store check and the evaluation run.

The tracking URI is an argument (the stage decides it). With a SQLite store the schema is
created once, up front (:func:`ensure_store`), because several processes creating it at the
same time can fail with "database is locked". MLflow is imported inside the functions: a
stage that does not track never pays its start-up time.

Runs are linked: the train stage records its run in ``<model dir>/mlflow_run.json``
(:func:`write_run_record`); the evaluate stage's run names that train run as its parent
(``mlflow.parentRunId``) and in ``matshift.train_run_id``, and the train run gets
``matshift.evaluate_run_id`` back, so ``mlflow ui`` shows each evaluation under the run whose
settings it judged.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from models._io import write_json

log = logging.getLogger(__name__)

RUN_RECORD = "mlflow_run.json"


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or created; the message says what to do."""


_FALLBACK = ("unset MLFLOW_TRACKING_URI to use the local store (train.tracking_uri, sqlite:///mlflow.db by "
             "default), or run the stage with --no-mlflow")


def _shown(uri: str) -> str:
    """Return the URI without user:password@ (never put credentials in a message)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    return uri


def _check_reachable(uri: str, timeout: float) -> None:
    """Fail in seconds when a remote server does not answer (MLflow's own retries take minutes)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            pass
    except OSError as exc:
        raise TrackingError(f"MLflow tracking server {_shown(uri)} is unreachable "
                            f"({exc.strerror or type(exc).__name__}); {_FALLBACK}") from None


def ensure_store(tracking_uri: str, *, attempts: int = 5, timeout: float = 5.0) -> None:
    """Check the tracking store answers and create its schema (retrying while a SQLite lock is held).

    Called before training, so an unreachable store fails in seconds, not after the run.
    Raises :class:`TrackingError` naming the store (without credentials) and the fallback.
    """
    # MLflow: seconds to import; only when tracking or resolving a registered model
    import mlflow

    _check_reachable(tracking_uri, timeout)
    mlflow.set_tracking_uri(tracking_uri)
    for k in range(attempts):
        try:
            mlflow.MlflowClient(tracking_uri).search_experiments(max_results=1)
            return
        except Exception as exc:  # MLflow, SQLAlchemy and the OS raise many types; re-raised, chained
            if "locked" in str(exc) and k < attempts - 1:
                time.sleep(1.0 + k)
                continue
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"MLflow tracking store {_shown(tracking_uri)} cannot be used ({first}); "
                                f"{_FALLBACK}") from exc


def write_run_record(model_dir: Path, *, run_id: str, tracking_uri: str, experiment: str,
                     registered: str | None, version: str | None) -> None:
    """Record the run that logged ``model_dir`` (read back by :func:`read_run_record`)."""
    write_json(Path(model_dir) / RUN_RECORD, {"run_id": run_id, "tracking_uri": _shown(tracking_uri),
                                              "experiment": experiment, "registered_model": registered,
                                              "version": version})


def read_run_record(model_dir: Path) -> dict[str, Any] | None:
    """Return the train run that logged ``model_dir``, or None (trained with ``--no-mlflow``, or an unreadable record)."""
    path = Path(model_dir) / RUN_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run_id"), str) else None


def flat_metrics(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of a nested metrics dict as ``a.b.c`` keys (MLflow's metric names)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flat_metrics(value, prefix=f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[_metric_name(name)] = float(value)
    return out


def _metric_name(name: str) -> str:
    """MLflow allows letters, digits and ``_-. /``; anything else (``±``, ``^``) becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)[:250]


def log_evaluation_run(*, tracking_uri: str, experiment: str, prop: str, params: dict[str, Any],
                       metrics: Mapping[str, Any], artifacts: list[Path], train_run: dict[str, Any] | None) -> str:
    """Log one evaluate stage run, linked to ``train_run`` (a :func:`read_run_record`); returns its run id.

    Params: the evaluate settings; metrics: every number of the stage's metrics JSON under its
    path (``grouped_cv.mae.stacked_ot``); artifacts: the metrics file and the plots. With a
    ``train_run`` in the same store, the evaluate run is its child and each names the other.
    """
    # MLflow: seconds to import; only when tracking
    import mlflow

    ensure_store(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.set_experiment(experiment)
    tags = {"matshift.stage": "evaluate", "matshift.property": prop}
    parent = None
    if train_run is not None:
        try:
            parent = client.get_run(train_run["run_id"])
        except Exception as exc:  # noqa: BLE001 - MLflow raises several types for an unknown run id
            log.warning("evaluate %s: train run %s is not in %s (%s): the evaluate run is not linked", prop,
                        train_run["run_id"], _shown(tracking_uri), type(exc).__name__)
    if parent is not None:
        tags |= {"matshift.train_run_id": parent.info.run_id}
        if parent.info.experiment_id == exp.experiment_id:
            tags["mlflow.parentRunId"] = parent.info.run_id
    with mlflow.start_run(run_name=f"evaluate-{prop}", tags=tags) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        flat = flat_metrics(metrics)
        names = list(flat)
        for start in range(0, len(names), 500):  # MLflow's batch limit is 1000 metrics
            mlflow.log_metrics({k: flat[k] for k in names[start:start + 500]})
        for path in artifacts:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.is_file():
                mlflow.log_artifact(str(path))
        run_id = run.info.run_id
    if parent is not None:
        client.set_tag(parent.info.run_id, "matshift.evaluate_run_id", run_id)
    log.info("MLflow run %s (evaluate %s) logged to %s%s", run_id, prop, _shown(tracking_uri),
             f", linked to train run {parent.info.run_id}" if parent is not None else "")
    return run_id


__all__ = ["RUN_RECORD", "TrackingError", "ensure_store", "flat_metrics", "log_evaluation_run", "read_run_record",
           "write_run_record"]
