"""benchmarks/stack_options.py: the nested folds never hold a test row of the evaluate stage's folds."""

import numpy as np

from benchmarks.stack_options import inner_folds
from models.evaluation.splits import family_folds, grouped_kfold, range_extrapolation


def test_inner_folds_stay_inside_the_outer_training_parts():
    cations, anions = ["Na", "K", "Mg", "Ca", "Ga", "In", "Zn", "Cu"], ["F", "Cl", "Br", "I", "O", "S", "Se", "N", "P", "As"]
    formulas = [f"{c}{k}{a}" for c in cations for a in anions for k in (1, 2, 3)] + ["Cu3Au", "Fe", "NiAl"]
    formulas = formulas + formulas[::4]  # some formulas measured twice
    values = np.random.default_rng(0).uniform(0, 8, len(formulas))
    outer = grouped_kfold(formulas, n_folds=3, seed=1) + family_folds(formulas) + [range_extrapolation(values, formulas)]
    inner = inner_folds(outer, values, formulas, seed=1)
    kinds = {f.protocol for f in inner}
    assert kinds == {"grouped_cv", "family_out", "range_extrapolation"}
    assert sum(f.protocol == "grouped_cv" for f in inner) == 9  # 3 inside each of 3
    by_name = {f.name: f for f in outer}
    for f in inner:
        parent = by_name[f.name.removeprefix("in-").split("/")[0]]
        assert set(f.train) <= set(parent.train) and set(f.test) <= set(parent.train)
        assert not set(f.test) & set(parent.test) and not set(f.train) & set(f.test)
        # a formula's rows stay together
        assert not {formulas[i] for i in f.train} & {formulas[i] for i in f.test}
