"""benchmarks/stack_options.py: the nested folds never hold a test row of the evaluate stage's folds."""

import numpy as np
import pytest

from benchmarks.stack_options import by_family, inner_folds, main, split_setting
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
    # with descriptors, LOCO inside each grouped-CV training part too: 3 clusters in each of 3
    rng = np.random.default_rng(2)
    centre = {f: rng.normal(size=4) for f in set(formulas)}
    x = np.array([centre[f] for f in formulas])
    inner = inner_folds(outer, values, formulas, seed=1, descriptors=x, clusters=3)
    assert {f.protocol for f in inner} == kinds | {"loco"}
    assert sum(f.protocol == "loco" for f in inner) == 9
    by_name = {f.name: f for f in outer}
    for f in inner:
        parent = by_name[f.name.removeprefix("in-").split("/")[0]]
        assert set(f.train) <= set(parent.train) and set(f.test) <= set(parent.train)
        assert not set(f.test) & set(parent.test) and not set(f.train) & set(f.test)
        # a formula's rows stay together
        assert not {formulas[i] for i in f.train} & {formulas[i] for i in f.test}


def test_fold_errors_gives_each_fold_its_own_shift_field():
    """``--ot``: fold k's model is built with shift field k (its own alignment's), and the counts must agree."""
    from types import SimpleNamespace

    import pandas as pd
    import pytest

    from benchmarks.seeded import fold_errors
    from models.evaluation.splits import Fold

    seen = []

    class Recorder:
        def __init__(self, config, *, dft_reference, surrogate, extra_reference, shift_field):
            seen.append(shift_field)

        def fit(self, descriptors, formulas, y):
            return self

        def predict(self, descriptors, formulas):
            return np.zeros(len(formulas))

    formulas, y = ["NaCl", "KBr", "MgO", "CaO"], np.array([8.5, 7.4, 7.8, 7.0])
    folds = [Fold("grouped_cv", "0", np.array([0, 1]), np.array([2, 3])), Fold("grouped_cv", "1", np.array([2, 3]), np.array([0, 1]))]
    stack = SimpleNamespace(dft_reference=pd.Series(dtype=float), surrogate=None, extra_reference={})
    table = fold_errors(None, stack, pd.DataFrame(), formulas, y, folds, model=Recorder, shift_fields=["field-0", "field-1"])
    assert seen == ["field-0", "field-1"] and table["error"].tolist() == [7.8, 7.0, 8.5, 7.4]
    fold_errors(None, stack, pd.DataFrame(), formulas, y, folds, model=Recorder)
    assert seen[2:] == [None, None]  # without --ot: no OT features
    with pytest.raises(ValueError, match="2 folds but 1 shift fields"):
        fold_errors(None, stack, pd.DataFrame(), formulas, y, folds, model=Recorder, shift_fields=["field-0"])


def test_a_setting_can_drop_the_ot_features_of_ot_runs():
    import pytest

    setting = {"ot_features": False, "leaves": 15}
    assert split_setting(setting) == ({"leaves": 15}, False)
    assert setting == {"ot_features": False, "leaves": 15}  # the caller's setting is left as it was
    assert split_setting({"leaves": 15}) == ({"leaves": 15}, True)
    with pytest.raises(ValueError, match='"ot_features" must be true or false, got \'no\''):
        split_setting({"ot_features": "no"})
    # refused before any data is read: without --ot there are no OT features to drop
    with pytest.raises(SystemExit) as exc:
        main(["--property", "band_gap", "--after", '{"ot_features": false}'])
    assert exc.value.code == 2


def test_family_out_is_broken_down_per_held_out_family():
    import pandas as pd

    def seed(shift: float) -> pd.DataFrame:
        return pd.DataFrame({"fold": ["oxide"] * 3 + ["halide"] * 2, "formula": ["MgO", "CaO", "ZnO", "NaCl", "KF"],
                             "error": [0.3, 0.2, 0.1, 0.1, 0.1 + shift]})

    before = [seed(0.0), seed(0.0)]
    after = [seed(0.2).assign(error=lambda t: t["error"].where(t["fold"] == "halide", t["error"] - 0.1)),
             seed(0.2).assign(error=lambda t: t["error"].where(t["fold"] == "halide", t["error"] - 0.1))]
    got = by_family({("family_out", "before"): before, ("family_out", "after"): after,
                     ("loco", "before"): before, ("loco", "after"): after})
    assert list(got) == ["halide", "oxide"]
    assert got["oxide"]["rows"] == 3
    assert got["oxide"]["before"]["mean"] == pytest.approx(0.2) and got["oxide"]["after"]["mean"] == pytest.approx(0.1)
    assert got["oxide"]["diff"]["mean"] == pytest.approx(-0.1)
    assert got["halide"]["diff"]["mean"] == pytest.approx(0.1)  # KF 0.2 worse, NaCl unchanged
    lo, hi = got["halide"]["diff"]["ci95"]
    assert 0.0 <= lo <= 0.1 <= hi <= 0.2 + 1e-12  # two formulas resampled: 0, 0.1 or 0.2
    assert by_family({("loco", "before"): before, ("loco", "after"): after}) == {}
