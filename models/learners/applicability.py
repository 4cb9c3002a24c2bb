"""Applicability domain: how far an input lies from what a model was trained on.

:class:`ApplicabilityDomain` scores an input by the mean distance to its ``k`` nearest
training compositions in standardised descriptor space, as a percentile of the same quantity
over the training compositions themselves (leave-one-out). Used by serving (the ``ad_score``
of ``matshift predict``) and by evaluation (the in-domain / flagged split), so both score it
the same way. NumPy only: no scikit-learn import at ``matshift predict``'s start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ApplicabilityDomain:
    """kNN distance in standardised descriptor space, scored as a percentile of training.

    Neighbours are found by brute force (float32 matrix products in blocks): exact, and at a
    few tens of thousands of training compositions faster to set up than a tree, which also
    keeps scikit-learn's import (seconds) out of ``matshift predict``'s start-up.
    """

    mean_: np.ndarray
    scale_: np.ndarray
    reference_: np.ndarray  # sorted leave-one-out kNN distances of (a sample of) training points
    points_: np.ndarray  # standardised training points, float32
    k: int = 5

    @classmethod
    def fit(cls, x: np.ndarray, *, k: int = 5, sample: int = 3000, seed: int = 0) -> ApplicabilityDomain:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < k + 1:
            raise ValueError(f"applicability domain needs at least {k + 1} training rows, got {len(x)}")
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0] = 1.0
        z = ((x - mean) / scale).astype(np.float32)
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(z), size=min(sample, len(z)), replace=False)
        # k + 1 nearest of a training point include the point itself (distance 0): drop it
        ref = np.sort(_knn_distances(z, z[pick], k + 1)[:, 1:].mean(axis=1))
        return cls(mean, scale, ref, z, k)

    def distances(self, x: np.ndarray) -> np.ndarray:
        """Mean distance of each row to its ``k`` nearest training points (standardised units)."""
        z = ((np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_).astype(np.float32)
        return _knn_distances(self.points_, z, self.k).mean(axis=1)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Percentile (0-100) of each row's kNN distance among the training points' own."""
        d = self.distances(x)
        return 100.0 * np.searchsorted(self.reference_, d, side="right") / len(self.reference_)


def _knn_distances(points: np.ndarray, queries: np.ndarray, k: int, *, block: int = 512) -> np.ndarray:
    """Sorted Euclidean distances [Q, k] from each query to its ``k`` nearest ``points``."""
    p2 = np.einsum("ij,ij->i", points, points)
    out = np.empty((len(queries), k), dtype=np.float64)
    for s in range(0, len(queries), block):
        q = queries[s : s + block]
        d2 = p2[None, :] - 2.0 * (q @ points.T) + np.einsum("ij,ij->i", q, q)[:, None]
        part = np.partition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else d2
        out[s : s + block] = np.sqrt(np.clip(np.sort(part, axis=1), 0.0, None))
    return out


__all__ = ["ApplicabilityDomain"]
