"""The schema of ``params.yaml``: one frozen dataclass per stage section, built on the library's configs.

Each stage's section is validated by :func:`pipeline.config.load_section` into its class here.
A class holds only what its stage itself needs (paths, engines, MLflow tracking, output
filters) and embeds the library's configuration dataclasses for everything else, marked
``inline`` where their keys stand at the section's top level: the library dataclasses are the
single source of every algorithmic setting and its default. The evaluate stage reads the
``align`` and ``train`` sections through the same classes, so it refits per fold exactly what
those stages run.

Importing this module imports no torch, pymatgen or matminer (the stages' start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from featurizers.settings import DESCRIPTOR_SETS, GraphSettings
from models import PARAM_INLINE
from models.evaluation import EvalSettings
from models.learners import FitConfig
from models.transport import AlignConfig
from pipeline.config import check_engine

DEFAULT_PARAMS = Path("params.yaml")


@dataclass(frozen=True)
class MPApiParams:
    """Query of the Materials Project API (source ``mp_api``)."""

    elements: list[str] = field(default_factory=list)
    max_e_above_hull: float = 0.1
    limit: int = 1000

    def __post_init__(self) -> None:
        if self.max_e_above_hull < 0:
            raise ValueError(f"mp_api.max_e_above_hull must be >= 0, got {self.max_e_above_hull}")
        if self.limit < 1:
            raise ValueError(f"mp_api.limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class FetchParams:
    """The ``fetch`` section: sources in merge order, conflict tolerances, the mirror's place."""

    mirror: Path = Path("../shared/datasets")
    sources: list[str] = field(default_factory=lambda: ["mirror"])
    out_dir: Path = Path("data/raw")
    workers: int = 2
    gap_conflict_tol: float = 0.01
    energy_conflict_tol: float = 0.01
    exp_gap_spread_tol: float = 0.2
    exp_enthalpy_spread_tol: float = 0.05
    mp_api: MPApiParams = field(default_factory=MPApiParams)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources must name at least one source")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources has duplicates: {self.sources}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        for name in ("gap_conflict_tol", "energy_conflict_tol", "exp_gap_spread_tol", "exp_enthalpy_spread_tol"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def spread_tolerances(self) -> dict[str, float]:
        """Largest spread of repeated measurements of one formula before it is reported, per property."""
        return {"band_gap": self.exp_gap_spread_tol, "formation_enthalpy": self.exp_enthalpy_spread_tol}


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


@dataclass(frozen=True)
class EvaluateParams:
    """The ``evaluate`` section: two budgets (:class:`~models.evaluation.EvalSettings`) and the stage's own keys."""

    seed: int = 0
    raw_dir: Path = Path("data/raw")
    features_dir: Path = Path("data/features")
    aligned_dir: Path = Path("data/aligned")
    metrics_dir: Path = Path("metrics")
    plots_dir: Path = Path("plots")
    ad_k: int = 5
    ad_threshold: float = 95.0
    threads: int = 2
    device: str = "auto"
    full: EvalSettings = field(default_factory=EvalSettings)
    quick: EvalSettings = field(default_factory=lambda: EvalSettings(
        protocols=["grouped_cv", "family_out"], n_folds=2, max_measurements=300, max_dft=3000, epochs=3,
        patience=2, pretrain_epochs=1, rf_trees=20, shift_sample=100))

    def __post_init__(self) -> None:
        if not 0 < self.ad_threshold < 100:
            raise ValueError(f"ad_threshold must be in (0, 100), got {self.ad_threshold}")
        if self.ad_k < 1 or self.threads < 1:
            raise ValueError("ad_k and threads must be >= 1")


__all__ = [
    "DEFAULT_PARAMS",
    "AlignParams",
    "EvaluateParams",
    "FeaturizeParams",
    "FetchParams",
    "MPApiParams",
    "TrainParams",
]
