"""The ``fetch`` section of params.yaml: sources in merge order, conflict tolerances, the mirror's place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
    metal_gap_conflict_tol: float = 0.1
    mp_api: MPApiParams = field(default_factory=MPApiParams)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources must name at least one source")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources has duplicates: {self.sources}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        for name in ("gap_conflict_tol", "energy_conflict_tol", "exp_gap_spread_tol", "exp_enthalpy_spread_tol",
                     "metal_gap_conflict_tol"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def spread_tolerances(self) -> dict[str, float]:
        """Largest spread of repeated measurements of one formula before it is reported, per property."""
        return {"band_gap": self.exp_gap_spread_tol, "formation_enthalpy": self.exp_enthalpy_spread_tol}


__all__ = ["FetchParams", "MPApiParams"]
