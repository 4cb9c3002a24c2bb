"""The ``align`` section of params.yaml: the alignment (:class:`~models.transport.AlignConfig`) and the stage's keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models import PARAM_INLINE
from models.transport import AlignConfig
from pipeline.config import check_engine


@dataclass(frozen=True)
class AlignParams:
    """The ``align`` section: the alignment (inline :class:`~models.transport.AlignConfig`) and the stage's own keys.

    ``min_pair_mass``: plan entries below this fraction of the moved mass are not listed in
    ``pairs.parquet``. ``split_blocks`` solves each connected block of the support as its own
    problem (on ``engine``, with ``n_workers`` processes; 0 = all cores).
    """

    config: AlignConfig = field(default_factory=AlignConfig, metadata=PARAM_INLINE)
    min_pair_mass: float = 1e-12
    allow_unconverged: bool = False
    raw_dir: Path = Path("data/raw")
    features_dir: Path = Path("data/features")
    out_dir: Path = Path("data/aligned")
    split_blocks: bool = False
    engine: Literal["local", "dask"] = "local"
    scheduler_address: str | None = None
    n_workers: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.min_pair_mass < 1:
            raise ValueError(f"min_pair_mass must be in [0, 1), got {self.min_pair_mass}")
        check_engine(self.engine, self.scheduler_address)
        if self.n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {self.n_workers}")
        if self.engine != "local" and not self.split_blocks:
            raise ValueError(f"engine {self.engine!r} distributes blocks: set split_blocks: true")
        if self.split_blocks and self.config.method != "unbalanced":
            raise ValueError(f"split_blocks solves the 'unbalanced' method only, got method {self.config.method!r}")


__all__ = ["AlignParams"]
