"""The ``train`` section of params.yaml: what is fitted (:class:`~models.learners.FitConfig`), where it goes, MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models import PARAM_INLINE
from models.learners import FitConfig
from pipeline.config import check_engine


@dataclass(frozen=True)
class TrainParams:
    """The ``train`` section: what is fitted (inline :class:`~models.learners.FitConfig`), where it goes, MLflow."""

    fit: FitConfig = field(default_factory=FitConfig, metadata=PARAM_INLINE)
    raw_dir: Path = Path("data/raw")
    features_dir: Path = Path("data/features")
    aligned_dir: Path = Path("data/aligned")
    out_dir: Path = Path("data/models")
    # the surrogate stage's DFT surrogates (one directory per property), shared by train and evaluate
    surrogate_dir: Path = Path("data/surrogates")
    # the pretrain stage's DFT-pretrained GNN encoders (one directory per property), reused by train
    pretrained_dir: Path = Path("data/pretrained")
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides it
    experiment: str = "matshift"
    register: bool = True
    # dask: the stacked model's DFT surrogate on a Dask cluster (LightGBM's Dask interface); a
    # LocalCluster of `workers` processes when scheduler_address is null
    engine: Literal["local", "dask"] = "local"
    scheduler_address: str | None = None

    def __post_init__(self) -> None:
        check_engine(self.engine, self.scheduler_address)
        if self.fit.optim.freeze_encoder and not self.fit.optim.pretrain_epochs:
            # refused here, not after minutes of fitting (the evaluate stage always pretrains its own encoders)
            raise ValueError("optim.freeze_encoder keeps the DFT-pretrained encoders fixed and needs "
                             "optim.pretrain_epochs >= 1; set optim.freeze_encoder: false to train without pretraining")


__all__ = ["TrainParams"]
