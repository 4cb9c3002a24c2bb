"""Names and settings of the featurizers, importable without pymatgen or matminer.

The single source of the descriptor-set names, the element-embedding names and the crystal
graph's settings (:class:`GraphSettings`): the featurizers read them from here, and so does
the featurize stage's params schema, so ``matshift --help`` and config validation need no
materials library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Composition descriptor sets (:func:`featurizers.composition.composition_descriptors`).
DESCRIPTOR_SETS: tuple[str, ...] = ("magpie", "stoichiometry", "valence_orbital")

#: Element embeddings matminer bundles (no download needed), with their references.
EMBEDDINGS: dict[str, str] = {
    "megnet16": "MEGNet 16-d element embedding (Chen et al., Chem. Mater. 2019), matminer MEGNetElementData",
    "matscholar200": "Matscholar 200-d element embedding (Tshitoyan et al., Nature 2019), matminer MatscholarElementData",
}


@dataclass(frozen=True)
class GraphSettings:
    """Settings of :class:`featurizers.crystal_graph.CrystalGraphFeaturizer` (``featurize`` in params.yaml).

    Neighbours within ``cutoff`` Å under periodic boundary conditions, on the spglib primitive
    standardised cell found with tolerances ``symprec`` (Å) / ``angle_tolerance`` (degrees,
    -1 = spglib's default); distances expanded on ``n_gaussians`` Gaussians of width
    ``gaussian_width`` Å (None: the spacing ``cutoff / (n_gaussians - 1)``).
    """

    cutoff: float = 5.0
    embedding: str = "megnet16"
    n_gaussians: int = 40
    gaussian_width: float | None = None
    symprec: float = 0.01
    angle_tolerance: float = 5.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cutoff) and 0 < self.cutoff <= 12):
            raise ValueError(f"cutoff must be in (0, 12] Å, got {self.cutoff}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {self.embedding!r}; choose one of {sorted(EMBEDDINGS)}")
        if self.n_gaussians < 2:
            raise ValueError(f"n_gaussians must be at least 2, got {self.n_gaussians}")
        if self.gaussian_width is not None and not self.gaussian_width > 0:
            raise ValueError(f"gaussian_width must be positive, got {self.gaussian_width}")
        if not 0 < self.symprec <= 1:
            raise ValueError(f"symprec must be in (0, 1] Å, got {self.symprec}")
        if not (self.angle_tolerance == -1 or 0 < self.angle_tolerance <= 30):
            raise ValueError(f"angle_tolerance must be -1 or in (0, 30] degrees, got {self.angle_tolerance}")


__all__ = ["DESCRIPTOR_SETS", "EMBEDDINGS", "GraphSettings"]
