"""MLflow logging of a training run: parameters, per-epoch metrics, artifacts, registered model.

The tracking URI is an argument (the stage decides it); the store check and the evaluation
run live in :mod:`models.tracking`. The registered model is the *whole predictor*
(:mod:`models.serving.bundle`: ensemble, DFT lookup, graphs, neural map, metal classifier),
so ``mlflow models serve`` answers as ``matshift predict`` does.
"""

from __future__ import annotations

import logging
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from featurizers.inputs import parse_formula_input
from models.properties import get_property
from models.serving.bundle import load_bundle, write_bundle
from models.serving.metal import MetalPredictor
from models.serving.output import predict_items
from models.tracking import TrackingError, ensure_store

log = logging.getLogger(__name__)

__all__ = ["TrackingError", "ensure_store", "log_metal_run", "log_run", "served_signature", "serving_requirements"]

# the checkout (or site-packages) that holds the models/ and featurizers/ packages
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# matshift's dependencies that the logged models do not need: the pipeline's own tools
_NOT_FOR_SERVING = {"dvc"}


def serving_requirements() -> list[str] | None:
    """Pinned pip requirements of a logged model: matshift's own dependencies, at the versions installed here.

    The model ships ``models/`` and ``featurizers/`` as code (``code_paths``), so it needs what they
    import. MLflow's inference of requirements loads the model in a subprocess (about 5 s per
    logged model) and saw only what loading imports: it listed ``matshift`` itself, which no index
    serves, and missed LightGBM, pymatgen and matminer, which predicting needs. None (MLflow
    infers them after all) when matshift is not installed as a distribution.
    """
    try:
        declared = metadata.requires("matshift") or []
    except metadata.PackageNotFoundError:
        return None
    out = []
    for spec in declared:
        if re.search(r"extra\s*==", spec):
            continue  # an optional extra (dev tools)
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec).group(0)
        if name in _NOT_FOR_SERVING:
            continue
        try:
            # the public version: "2.13.0", not the local build "2.13.0+cpu" that no index serves
            out.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(spec.split(";")[0].strip())
    return out


def served_signature(output: pd.DataFrame):
    """Return the request, the answer (:data:`~models.serving.COLUMNS`) and the params.

    Request: ``formula``, a string per row, and an optional ``dft_value``, the caller's own DFT
    value. Params: ``coverage`` (optional, the intervals' nominal coverage; the model's own, 0.9 by
    default, when absent). Without it in the signature, MLflow would drop the param silently.
    """
    # MLflow: seconds to import; only when tracking or resolving a registered model
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    strings = {"input", "formula", "unit", "view", "structure_used", "error"}
    flags = {"metal", "ad_warning"}
    cols = [ColSpec("string" if c in strings else "boolean" if c in flags else "double", c,
                    required=c in {"input", "unit"}) for c in output.columns]
    request = Schema([ColSpec("string", "formula"), ColSpec("double", "dft_value", required=False)])
    return ModelSignature(inputs=request, outputs=Schema(cols),
                          params=ParamSchema([ParamSpec("coverage", "double", None)]))


def log_run(*, tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any], result, model_dir: Path,
            registered_name: str | None, example: pd.DataFrame, bundle: dict[str, Any]) -> tuple[str, str | None]:
    """Log one :class:`models.learners.FitResult` and the served predictor; returns the run id and model version.

    ``bundle``: the keyword arguments of :func:`models.serving.bundle.write_bundle` beside
    ``model_dir`` and ``property`` (the DFT table, index, features and neural-map directories,
    the metal classifier): the registered model packages them, so it needs no pipeline directory.
    """
    # MLflow: seconds to import; only when tracking or resolving a registered model
    import mlflow

    ensure_store(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags={"matshift.stage": "train",
                                                   "matshift.property": params.get("property", "")}) as run:
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
        with tempfile.TemporaryDirectory(prefix="matshift-bundle-") as tmp:
            path = write_bundle(Path(tmp) / "predictor", model_dir=model_dir, property=params["property"], **bundle)
            predictor = load_bundle(path)
            answer = predict_items([parse_formula_input(f) for f in example["formula"]], predictor,
                                   unit=get_property(params["property"]).unit)
            info = mlflow.pyfunc.log_model(
                # model from code: MLflow stores models/serving/pyfunc_code.py, not a pickled object
                name="model", python_model=str(Path(__file__).with_name("pyfunc_code.py")),
                artifacts={"bundle": str(path)},
                signature=served_signature(answer), input_example=example[["formula"]],
                registered_model_name=registered_name,
                # ship the project's packages with the model so it loads outside this checkout
                # (models/ and featurizers/: serving needs nothing of pipeline/)
                code_paths=[str(_PACKAGE_ROOT / name) for name in ("models", "featurizers")],
                pip_requirements=serving_requirements(),
            )
        version = str(info.registered_model_version) if registered_name and info.registered_model_version else None
        log.info("MLflow run %s logged to %s%s", run.info.run_id, tracking_uri,
                 f", registered as {registered_name} version {version}" if registered_name else "")
        return run.info.run_id, version


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
            pip_requirements=serving_requirements(),
        )
        log.info("MLflow run %s logged to %s%s", run.info.run_id, tracking_uri,
                 f", registered as {registered_name}" if registered_name else "")
        return run.info.run_id
