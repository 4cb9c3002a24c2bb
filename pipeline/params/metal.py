"""The ``metal`` section of params.yaml: the classifier, its cross-validation, where it goes, MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models import PARAM_INLINE
from models.evaluation import MetalCVSettings
from models.learners import MetalConfig


@dataclass(frozen=True)
class MetalParams:
    """The ``metal`` section: ``classifier`` (:class:`~models.learners.MetalConfig`), the CV keys inline."""

    classifier: MetalConfig = field(default_factory=MetalConfig)
    cv: MetalCVSettings = field(default_factory=MetalCVSettings, metadata=PARAM_INLINE)
    raw_dir: Path = Path("data/raw")
    features_dir: Path = Path("data/features")
    out_dir: Path = Path("data/models/metal")
    metrics_dir: Path = Path("metrics")
    plots_dir: Path = Path("plots")
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides it
    experiment: str = "matshift"
    register: bool = True


__all__ = ["MetalParams"]
