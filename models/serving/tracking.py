"""MLflow logging of a training run: parameters, per-epoch metrics, artifacts, registered model.

The tracking URI is an argument (the stage decides it). With a SQLite store the schema is
created once, up front (:func:`ensure_store`), because several processes creating it at the
same time can fail with "database is locked".
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from models.serving.ensemble import EnsemblePredictor
from models.serving.metal import MetalPredictor

log = logging.getLogger(__name__)

__all__ = ["TrackingError", "ensure_store", "log_metal_run", "log_run"]

# the checkout (or site-packages) that holds the models/ and featurizers/ packages
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or created; the message says what to do."""


_FALLBACK = ("unset MLFLOW_TRACKING_URI to use the local store (train.tracking_uri, sqlite:///mlflow.db by "
             "default), or run `matshift train --no-mlflow`")


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


def log_run(*, tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any], result, model_dir: Path,
            registered_name: str | None, example: pd.DataFrame) -> str:
    """Log one :class:`models.learners.FitResult`; returns the run id."""
    # MLflow: seconds to import; only when tracking or resolving a registered model
    import mlflow
    from mlflow.models import infer_signature


    ensure_store(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        for variant, members in (("gnn_ot", result.members), ("gnn_no_ot", result.members_no_ot)):
            for k, m in enumerate(members):
                for h in m.history:
                    mlflow.log_metrics({f"{variant}.m{k}.loss": h.loss, f"{variant}.m{k}.val_mae": h.val_mae,
                                        f"{variant}.m{k}.loss_ot": h.loss_ot}, step=h.epoch)
                mlflow.log_metric(f"{variant}.m{k}.best_epoch", m.best_epoch)
        mlflow.log_metrics(result.metrics)
        mlflow.log_metric("train_seconds", result.seconds)
        if result.intervals is not None:  # the interval method's calibration scores (method: ensemble.json)
            mlflow.log_metrics({f"intervals.{k}": float(v) for k, v in result.intervals.calibration_summary().items()})
        for name in ("metrics.json", "history.csv", "learning_curves.png", "selection_predictions.csv", "ensemble.json"):
            mlflow.log_artifact(str(model_dir / name))
        predictor = EnsemblePredictor(model_dir)
        signature = infer_signature(example, predictor.predict(example))
        mlflow.pyfunc.log_model(
            # model from code: MLflow stores models/serving/pyfunc_code.py, not a pickled object
            name="model", python_model=str(Path(__file__).with_name("pyfunc_code.py")),
            artifacts={"model_dir": str(model_dir)},
            signature=signature, input_example=example, registered_model_name=registered_name,
            # ship the project's packages with the model so it loads outside this checkout
            # (models/ and featurizers/: serving needs nothing of pipeline/)
            code_paths=[str(_PACKAGE_ROOT / name) for name in ("models", "featurizers")],
        )
        log.info("MLflow run %s logged to %s%s", run.info.run_id, tracking_uri,
                 f", registered as {registered_name}" if registered_name else "")
        return run.info.run_id


def log_metal_run(*, tracking_uri: str, experiment: str, params: dict[str, Any], metrics: dict[str, Any],
                  model_dir: Path, registered_name: str | None, example: pd.DataFrame) -> str:
    """Log the metal stage: parameters, the grouped-CV and per-protocol scores, the card, the classifier."""
    # MLflow: seconds to import; only when tracking or resolving a registered model
    import mlflow
    from mlflow.models import infer_signature

    ensure_store(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="metal") as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        flat = {f"cv.{k}": v["mean"] for k, v in metrics["grouped_cv"].items()}
        flat |= {f"cv.{k}_std": v["std"] for k, v in metrics["grouped_cv"].items()}
        flat |= {f"{proto}.{k}": v for proto, m in metrics["per_protocol"].items() for k, v in m.items()
                 if isinstance(v, float) and not proto.startswith("grouped_cv")}
        flat |= {f"served.{k}": v for k, v in metrics["served"].items()}
        mlflow.log_metrics({k: float(v) for k, v in flat.items() if v == v})  # NaN (a one-class fold) is left out
        mlflow.log_artifact(str(model_dir / "card.md"))
        predictor = MetalPredictor(model_dir)
        signature = infer_signature(example, predictor.predict(example["formula"].tolist()))
        mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_metal_code.py")),
            artifacts={"model_dir": str(model_dir)}, signature=signature, input_example=example,
            registered_model_name=registered_name,
            code_paths=[str(_PACKAGE_ROOT / name) for name in ("models", "featurizers")],
        )
        log.info("MLflow run %s logged to %s%s", run.info.run_id, tracking_uri,
                 f", registered as {registered_name}" if registered_name else "")
        return run.info.run_id
