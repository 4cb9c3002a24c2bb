"""The served metal classifier: P(metal) for compositions and the call at the stored threshold.

:class:`MetalPredictor` loads a directory written by ``matshift metal``
(:func:`models.learners.save_metal`: sha256-checked, no pickle). It is used by
:class:`~models.serving.Predictor` for band-gap rows and by the MLflow wrapper of the
registered ``matshift-metal`` model. Descriptors come from the caller (the band-gap model's
table, extended for new formulas) or, without one, are computed for the formulas asked for.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from featurizers.chemistry import reduced_formula
from featurizers.settings import DESCRIPTOR_SETS
from models.learners import load_metal

__all__ = ["MetalPredictor", "check_metal_threshold"]


def check_metal_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float; ``ValueError`` naming it when it is no probability in [0, 1] (NaN included).

    Any real number is taken (NumPy's float32 too); a bool is not a probability.
    """
    if isinstance(threshold, bool) or not (isinstance(threshold, numbers.Real) and 0 <= threshold <= 1):
        raise ValueError(f"metal threshold {threshold!r}: give a probability between 0 and 1, e.g. 0.5")
    return float(threshold)


class MetalPredictor:
    """P(metal) and the metal call for formulas (``directory``: a ``matshift metal`` output).

    ``threshold``: call a formula metal when P(metal) >= this instead of the stored threshold (chosen on
    training folds; the model card lists the errors of other thresholds). ``ValueError`` outside [0, 1].
    """

    def __init__(self, directory: Path | str, *, threshold: float | None = None):
        threshold = None if threshold is None else check_metal_threshold(threshold)
        self.directory = Path(directory)
        self.model, extra = load_metal(self.directory)
        self.stored_threshold = float(extra["threshold"])
        self.threshold = self.stored_threshold if threshold is None else threshold

    def predict(self, formulas: Sequence[str], descriptors: pd.DataFrame | None = None) -> pd.DataFrame:
        """``metal_probability`` and ``metal`` (probability >= the threshold) per formula, in order.

        ``descriptors`` (keyed by ``formula``): used when it has the classifier's columns for
        every formula; otherwise (or without it) the descriptors are computed here.
        """
        formulas = [reduced_formula(str(f)) for f in formulas]
        columns = self.model.gap_surrogate.columns_
        if descriptors is not None and not (set(columns) <= set(descriptors.columns)
                                            and set(formulas) <= set(descriptors["formula"])):
            descriptors = None
        if descriptors is None:
            # pymatgen and matminer only when no descriptor table is given
            from featurizers.composition import composition_descriptors

            result = composition_descriptors(sorted(set(formulas)), sets=DESCRIPTOR_SETS)
            if result.failures:
                bad = result.failures[0]
                raise ValueError(f"no descriptors for formula {bad.formula!r}: {bad.reason}")
            descriptors = result.frame
        p = self.model.predict_proba(descriptors, formulas)
        return pd.DataFrame({"metal_probability": p, "metal": np.asarray(p) >= self.threshold})
