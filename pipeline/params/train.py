"""The ``train`` section of params.yaml: what is fitted (:class:`~models.learners.FitConfig`), where it goes, MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models import PARAM_INLINE
from models.learners import FitConfig


@dataclass(frozen=True)
class TrainParams:
    """The ``train`` section: what is fitted (inline :class:`~models.learners.FitConfig`), where it goes, MLflow."""

    fit: FitConfig = field(default_factory=FitConfig, metadata=PARAM_INLINE)
    raw_dir: Path = Path("data/raw")
    features_dir: Path = Path("data/features")
    aligned_dir: Path = Path("data/aligned")
    out_dir: Path = Path("data/models")
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides it
    experiment: str = "matshift"
    register: bool = True


__all__ = ["TrainParams"]
