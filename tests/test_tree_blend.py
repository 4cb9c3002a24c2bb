"""benchmarks/tree_blend.py: the extra trees see the boosters' columns and learn the same residual."""

from types import SimpleNamespace

import numpy as np

from benchmarks.tree_blend import fold_predictions, residual_design
from models.evaluation.splits import Fold
from models.learners import StackedModel
from tests.models.learners.test_stacked import FAST, _world


def test_extra_trees_learn_the_boosters_residual_on_their_columns():
    formulas, desc, _, y, ref = _world()
    model = StackedModel(FAST, dft_reference=ref).fit(desc, formulas[:900], y[:900])
    x, base = residual_design(model, desc, formulas[900:])
    # the boosters' own input: the same width, the corrected base last, no NaN (formulas 900.. have no DFT value)
    assert x.shape == (200, model.models_[0].n_features_in_)
    assert np.allclose(x[:, -1], base) and np.isfinite(x).all() and (x[:, model._best_column - 2] == -1).all()

    stack = SimpleNamespace(dft_reference=ref, surrogate=model.surrogate, extra_reference={})
    fold = Fold("grouped_cv", "0", np.arange(900), np.arange(900, 1100))
    tab = fold_predictions(FAST, stack, desc, formulas, y, [fold], trees=50, max_features=0.6)
    assert list(tab["formula"]) == formulas[900:] and np.allclose(tab["value"], y[900:])
    assert np.allclose(tab["stacked"], model.predict(desc, formulas[900:]))  # the same fit (seeded), refitted per fold
    spread = np.mean(np.abs(y - y.mean()))
    # both learners recover the planted measurement well, and they are two different learners
    for column in ("stacked", "trees"):
        assert np.mean(np.abs(tab[column] - tab["value"])) < 0.25 * spread
    assert not np.allclose(tab["stacked"], tab["trees"])
