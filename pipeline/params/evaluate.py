"""The ``evaluate`` section of params.yaml: two budgets (:class:`~models.evaluation.EvalSettings`) and the stage's keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.evaluation import EvalSettings


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
    workers: int = 1
    device: str = "auto"
    full: EvalSettings = field(default_factory=EvalSettings)
    quick: EvalSettings = field(default_factory=lambda: EvalSettings(
        protocols=["grouped_cv", "family_out"], n_folds=2, max_measurements=300, max_dft=3000, epochs=3,
        patience=2, pretrain_epochs=1, rf_trees=20, shift_sample=100))

    def outputs(self, prop: str, *, quick: bool = False) -> tuple[Path, Path]:
        """Return the metrics file and the plots directory of ``prop``'s evaluation.

        A quick (smoke) run writes under ``quick/`` in both directories, so it never overwrites
        the full evaluation's files, which DVC tracks and the README's results table is made of.
        """
        sub = Path("quick") if quick else Path()
        return self.metrics_dir / sub / f"{prop}.json", self.plots_dir / sub / prop

    def __post_init__(self) -> None:
        if not 0 < self.ad_threshold < 100:
            raise ValueError(f"ad_threshold must be in (0, 100), got {self.ad_threshold}")
        if self.ad_k < 1 or self.threads < 1 or self.workers < 1:
            raise ValueError("ad_k, threads and workers must be >= 1")


__all__ = ["EvaluateParams"]
