"""benchmarks/residual_shrink.py: base + residual is the model's prediction; distances and the oracle's scoring."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd

from benchmarks.residual_shrink import (
    base_and_residual,
    by_distance,
    fold_parts,
    relative_distance,
    score,
    shrunk,
)
from models.evaluation.splits import Fold
from models.learners import StackedModel
from tests.models.learners.test_stacked import FAST, _world


def test_base_plus_residual_is_the_prediction_and_shrinking_moves_it_toward_the_base():
    formulas, desc, _, y, ref = _world()
    config = replace(FAST, clamp_min=0.0)
    model = StackedModel(config, dft_reference=ref).fit(desc, formulas[:900], y[:900])
    base, residual = base_and_residual(model, desc, formulas[900:])
    assert np.allclose(model.apply_bounds(formulas[900:], base + residual), model.predict(desc, formulas[900:]))
    assert np.abs(residual).max() > 0  # the boosters add something to the base

    stack = SimpleNamespace(dft_reference=ref, surrogate=model.surrogate, extra_reference={})
    fold = Fold("family_out", "x", np.arange(900), np.arange(900, 1100))
    tab = fold_parts(config, stack, desc, formulas, y, [fold])
    assert np.allclose(shrunk(tab, 1.0, 0.0), model.predict(desc, formulas[900:]))  # lam 1: the served prediction
    assert np.allclose(shrunk(tab, 0.0, 0.0), np.maximum(base, 0.0))               # lam 0: the calibrated base
    assert tab["pinned"].isna().all()  # no pure element here

    res = score([tab], 0.0)
    ood = res["pooled_ood"]
    assert ood["rows"] == 200 and res["family_out"]["mae"] == ood["mae"]
    best = ood["best_lambda"]
    # the oracle's lam is the grid's least MAE, and its difference to lam 1 is that MAE's difference
    assert ood["mae"][str(best)]["mean"] == min(v["mean"] for v in ood["mae"].values())
    assert np.isclose(ood["best_minus_served"]["mean"], ood["mae"][str(best)]["mean"] - ood["mae"]["1.0"]["mean"])
    quintiles = by_distance([tab], 0.0)
    assert sum(q["rows"] for q in quintiles[:-1]) == 200
    oracle = quintiles[-1]["oracle_per_quintile"]
    assert oracle["oracle"] <= oracle["served"] + 1e-12 and np.isclose(oracle["served"], ood["mae"]["1.0"]["mean"])


def test_pinned_values_stay_whatever_lam():
    tab = pd.DataFrame({"base": [1.0, -2.0, 3.0], "residual": [1.0, 1.0, -5.0], "pinned": [np.nan, 0.0, np.nan]})
    assert np.allclose(shrunk(tab, 0.5, None), [1.5, 0.0, 0.5])
    assert np.allclose(shrunk(tab, 1.0, 0.0), [2.0, 0.0, 0.0])


def test_relative_distance_is_one_for_a_typical_training_row_and_grows_away_from_them():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 4))
    d = relative_distance(train, np.vstack([train[:100] + 1e-9, train[:100] + 8.0]))
    assert np.median(d[:100]) < 1.0  # a training row's own neighbours, itself among them
    assert (d[100:] > 3.0).all()
