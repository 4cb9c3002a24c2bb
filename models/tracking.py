"""MLflow logging of a training run: parameters, per-epoch metrics, artifacts, registered model.

The tracking URI is an argument (the stage decides it). With a SQLite store the schema is
created once, up front (:func:`ensure_store`), because several processes creating it at the
same time can fail with "database is locked".
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["ensure_store", "log_run"]


def ensure_store(tracking_uri: str, *, attempts: int = 5) -> None:
    """Create the tracking store's schema (retrying while another process holds the lock)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    for k in range(attempts):
        try:
            mlflow.MlflowClient(tracking_uri).search_experiments(max_results=1)
            return
        except MlflowException as exc:
            if "locked" not in str(exc) or k == attempts - 1:
                raise
            time.sleep(1.0 + k)


def log_run(*, tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any], result, model_dir: Path,
            registered_name: str | None, example: pd.DataFrame) -> str:
    """Log one :class:`models.fit.FitResult`; returns the run id."""
    import mlflow
    from mlflow.models import infer_signature

    import featurizers
    import models
    import pipeline
    from models.serving import EnsemblePredictor

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
        for name in ("metrics.json", "history.csv", "learning_curves.png", "selection_predictions.csv", "ensemble.json"):
            mlflow.log_artifact(str(model_dir / name))
        predictor = EnsemblePredictor(model_dir)
        signature = infer_signature(example, predictor.predict(example))
        mlflow.pyfunc.log_model(
            # model from code: MLflow stores models/pyfunc_code.py, not a pickled object
            name="model", python_model=str(Path(models.__file__).parent / "pyfunc_code.py"), artifacts={"model_dir": str(model_dir)},
            signature=signature, input_example=example, registered_model_name=registered_name,
            # ship the project's packages with the model so it loads outside this checkout
            code_paths=[str(Path(p).parent) for p in (models.__file__, featurizers.__file__, pipeline.__file__)],
        )
        log.info("MLflow run %s logged to %s%s", run.info.run_id, tracking_uri,
                 f", registered as {registered_name}" if registered_name else "")
        return run.info.run_id
