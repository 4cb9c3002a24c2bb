"""benchmarks/booster_weights.py: the row weights say what the benchmark's table claims they are."""

import numpy as np
import pandas as pd
import pytest

from benchmarks.booster_weights import row_weights
from models.evaluation.splits import chemical_family


def test_family_weights_give_every_family_the_same_total():
    formulas = ["NaCl", "KBr", "MgO", "CaO", "SrO", "BaO", "ZnS", "CdSe", "GaN", "Cu3Au"]
    w = row_weights(pd.DataFrame(), formulas, "family1")
    totals = pd.Series(w).groupby([chemical_family(f) for f in formulas]).sum()
    assert np.isclose(w.mean(), 1.0)
    assert np.allclose(totals, totals.iloc[0])  # halide, oxide, chalcogenide, pnictide, intermetallic alike
    half = row_weights(pd.DataFrame(), formulas, "family0.5")
    nacl, mgo = formulas.index("NaCl"), formulas.index("MgO")  # a family of 2 against one of 4
    assert np.isclose(w[nacl] / w[mgo], 2.0) and np.isclose(half[nacl] / half[mgo], np.sqrt(2.0))


def test_density_weights_favour_the_isolated_row_and_are_capped():
    rng = np.random.default_rng(0)
    formulas = [f"X{k}" for k in range(40)]
    x = np.vstack([rng.normal(0, 0.1, (39, 3)), [[8.0, 8.0, 8.0]]])  # one row far from a tight cluster
    descriptors = pd.DataFrame(x, columns=["a", "b", "c"]).assign(formula=formulas)
    w = row_weights(descriptors, formulas, "density1")
    assert np.isclose(w.mean(), 1.0) and w.argmax() == 39
    # the cap: the far row's weight over the cluster's is less than the ratio of their neighbour distances
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    dist = np.sort(np.linalg.norm(z[:, None] - z[None], axis=2), axis=1)[:, 1:11].mean(axis=1)
    assert w[39] / w[:39].mean() < 0.5 * dist[39] / dist[:39].mean()
    assert np.allclose(w[:39] / w[:39].mean(), dist[:39] / dist[:39].mean())  # below the cap: proportional
    with pytest.raises(ValueError, match="unknown weighting"):
        row_weights(descriptors, formulas, "uniform")
