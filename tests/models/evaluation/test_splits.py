import numpy as np
import pandas as pd
import pytest

from featurizers.chemistry import reduced_formula
from models.evaluation import (
    chemical_family,
    crystal_system_folds,
    family_folds,
    grouped_kfold,
    loco_folds,
    range_extrapolation,
)
from tests.data import MIRROR


@pytest.fixture(scope="module")
def gaps() -> pd.DataFrame:
    frame = pd.read_csv(MIRROR / "experiment" / "expt_gap_zhuo2018.csv")
    frame["formula"] = [reduced_formula(c) for c in frame["composition"]]
    return frame


def _no_shared_formula(folds, formulas):
    formulas = np.asarray(formulas)
    for fold in folds:
        assert not set(formulas[fold.train]) & set(formulas[fold.test]), fold.name


def test_grouped_kfold_partitions_rows_by_formula(gaps):
    folds = grouped_kfold(gaps["formula"], n_folds=5, seed=0)
    assert len(folds) == 5
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(len(gaps)))
    _no_shared_formula(folds, gaps["formula"])
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 0.05 * len(gaps)


def test_grouped_kfold_is_seeded(gaps):
    a = grouped_kfold(gaps["formula"], seed=1)
    b = grouped_kfold(gaps["formula"], seed=1)
    c = grouped_kfold(gaps["formula"], seed=2)
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.test, y.test) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("formula", "family"),
    [
        ("Fe2O3", "oxide"),
        ("NaCl", "halide"),
        ("BiOCl", "oxide"),  # O is more electronegative than Cl
        ("CdTe", "chalcogenide"),
        ("GaAs", "pnictide"),
        ("GaN", "pnictide"),
        ("Si", "intermetallic"),
        ("SiC", "intermetallic"),
        ("Mg2Si", "intermetallic"),
    ],
)
def test_chemical_family_by_anion(formula, family):
    assert chemical_family(formula) == family


def test_family_folds_hold_out_one_family(gaps):
    folds = family_folds(gaps["formula"])
    assert {f.name for f in folds} == {"halide", "oxide", "chalcogenide", "pnictide", "intermetallic"}
    for fold in folds:
        assert {chemical_family(f) for f in gaps["formula"].iloc[fold.test]} == {fold.name}
        assert fold.name not in {chemical_family(f) for f in gaps["formula"].iloc[fold.train]}


def test_loco_clusters_by_formula(gaps):
    rng = np.random.default_rng(0)
    uniq = gaps["formula"].unique()
    desc_of = {f: rng.normal(size=4) + (5.0 if i % 3 == 0 else 0.0) for i, f in enumerate(uniq)}
    x = np.stack([desc_of[f] for f in gaps["formula"]])
    folds = loco_folds(gaps["formula"], x, n_clusters=3, seed=0)
    assert len(folds) == 3
    _no_shared_formula(folds, gaps["formula"])
    assert sum(len(f.test) for f in folds) == len(gaps)


def test_crystal_system_folds_skip_unknown():
    formulas = ["A", "B", "C", "D"]
    systems = ["cubic", "", "hexagonal", "cubic"]
    folds = crystal_system_folds(formulas, systems)
    assert [f.name for f in folds] == ["cubic", "hexagonal"]
    assert folds[0].test.tolist() == [0, 3]
    assert folds[0].train.tolist() == [1, 2]


def test_range_extrapolation_holds_out_the_top(gaps):
    fold = range_extrapolation(gaps["Eg"], gaps["formula"], top_fraction=0.1)
    test_min = gaps["Eg"].iloc[fold.test].groupby(gaps["formula"].iloc[fold.test]).mean().min()
    train_max = gaps["Eg"].iloc[fold.train].groupby(gaps["formula"].iloc[fold.train]).mean().max()
    assert test_min >= train_max
    assert 0.08 * len(gaps) <= len(fold.test) <= 0.13 * len(gaps)
    _no_shared_formula([fold], gaps["formula"])
