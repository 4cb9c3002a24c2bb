"""The ``featurize`` section of params.yaml: the crystal graph's settings and how the work is spread."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from featurizers.settings import DESCRIPTOR_SETS, GraphSettings
from models import PARAM_INLINE
from pipeline.config import check_engine


@dataclass(frozen=True)
class FeaturizeParams:
    """The ``featurize`` section: the crystal graph's settings (inline) and how the work is spread."""

    raw_dir: Path = Path("data/raw")
    out_dir: Path = Path("data/features")
    graph: GraphSettings = field(default_factory=GraphSettings, metadata=PARAM_INLINE)
    descriptor_sets: list[str] = field(default_factory=lambda: list(DESCRIPTOR_SETS))
    n_workers: int = 0  # 0 = all CPU cores (dask without scheduler_address: LocalCluster workers)
    chunk_size: int = 128
    engine: Literal["local", "dask"] = "local"
    scheduler_address: str | None = None  # dask only; None = start a LocalCluster

    def __post_init__(self) -> None:
        bad = [s for s in self.descriptor_sets if s not in DESCRIPTOR_SETS]
        if bad or not self.descriptor_sets:
            raise ValueError(f"descriptor_sets must be a non-empty subset of {list(DESCRIPTOR_SETS)}, "
                             f"got {self.descriptor_sets}")
        if self.n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {self.n_workers}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        check_engine(self.engine, self.scheduler_address)


__all__ = ["FeaturizeParams"]
