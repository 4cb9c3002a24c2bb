"""The metal classifier on synthetic compositions: it learns the rule, round-trips on disk, refuses bad input."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from featurizers.bonding import BONDING_COLUMNS, IONIC_COLUMNS, bonding_descriptors, ionic_descriptors
from models.learners import (
    DFT_METAL_COLUMNS,
    MetalClassifier,
    MetalConfig,
    choose_threshold,
    dft_metal_table,
    load_metal,
    save_metal,
)

SMALL = MetalConfig(trees=60, leaves=7, bags=2, surrogate_trees=30, surrogate_leaves=7, min_child_samples=5, n_jobs=1)


def synthetic(n: int = 300, seed: int = 0):
    """Formulas ``X{i}``; metal when d0 + 0.3 d1 > 0; DFT entries (PBE gap, two polymorphs) for a third of them."""
    rng = np.random.default_rng(seed)
    formulas = [f"Na{i + 1}Cl" for i in range(n)]
    d = rng.normal(size=(n, 3))
    metal = (d[:, 0] + 0.3 * d[:, 1] > 0).astype(int)
    desc = pd.DataFrame({"formula": formulas, "d0": d[:, 0], "d1": d[:, 1], "d2": d[:, 2]})
    covered = np.arange(0, n, 3)
    gap = np.where(metal[covered] == 1, 0.0, 1.0 + np.abs(d[covered, 2]))
    dft = pd.DataFrame({"formula": [formulas[i] for i in covered for _ in range(2)],
                        "material_id": [f"mp-{i}-{k}" for i in covered for k in range(2)],
                        "dft_value": np.repeat(gap, 2) + np.tile([0.0, 0.5], len(covered)),
                        "stability": np.tile([-1.0, -0.5], len(covered))})
    return formulas, desc, metal, dft


def test_dft_table_summarises_polymorphs():
    dft = pd.DataFrame({"formula": ["A", "A", "B"], "material_id": ["m1", "m2", "m3"], "dft_value": [0.0, 1.2, 2.0],
                        "stability": [-0.5, -1.0, -1.0]})
    table = dft_metal_table(dft)
    assert list(table.columns) == list(DFT_METAL_COLUMNS)
    assert table.loc["A"].tolist() == [2.0, 0.0, 1.2, 0.5]  # the most stable polymorph (m2) is gapped
    assert table.loc["B"].tolist() == [1.0, 2.0, 2.0, 0.0]


def test_classifier_learns_the_rule_and_round_trips(tmp_path):
    formulas, desc, metal, dft = synthetic()
    train, test = np.arange(200), np.arange(200, 300)
    clf = MetalClassifier(SMALL, dft_table=dft_metal_table(dft)).fit(desc, [formulas[i] for i in train], metal[train])
    p = clf.predict_proba(desc, [formulas[i] for i in test])
    assert ((p >= 0.5) == metal[test]).mean() > 0.85
    save_metal(clf, tmp_path / "m", threshold=0.4)
    loaded, extra = load_metal(tmp_path / "m")
    assert extra["threshold"] == 0.4
    np.testing.assert_allclose(loaded.predict_proba(desc, [formulas[i] for i in test]), p, rtol=1e-6, atol=1e-9)


def test_bonding_descriptors_are_features_and_older_classifiers_load_without_them(tmp_path):
    formulas, desc, metal, dft = synthetic(120)
    with_bonding = MetalClassifier(SMALL, dft_table=dft_metal_table(dft)).fit(desc, formulas, metal)
    without = MetalClassifier(replace(SMALL, bonding=False), dft_table=dft_metal_table(dft)).fit(desc, formulas, metal)
    x, x0 = with_bonding.features(desc, formulas[:5]), without.features(desc, formulas[:5])
    assert x.shape[1] == x0.shape[1] + len(BONDING_COLUMNS)
    np.testing.assert_allclose(x[:, -len(BONDING_COLUMNS):], bonding_descriptors(formulas[:5]).to_numpy(), rtol=1e-6)
    ionic = MetalClassifier(replace(SMALL, ionic=True), dft_table=dft_metal_table(dft)).fit(desc, formulas, metal)
    xi = ionic.features(desc, formulas[:5])
    assert xi.shape[1] == x.shape[1] + len(IONIC_COLUMNS)
    np.testing.assert_allclose(xi[:, -len(IONIC_COLUMNS):], ionic_descriptors(formulas[:5]).to_numpy(), rtol=1e-6)
    # a header written before the options existed has no "bonding" / "ionic" key: fitted without those descriptors
    save_metal(without, tmp_path / "old", threshold=0.5)
    header = tmp_path / "old" / "metal.json"
    state = json.loads(header.read_text())
    del state["config"]["bonding"], state["config"]["ionic"]
    header.write_text(json.dumps(state))
    loaded, _ = load_metal(tmp_path / "old")
    assert loaded.config.bonding is False and loaded.config.ionic is False
    np.testing.assert_allclose(loaded.predict_proba(desc, formulas[:20]), without.predict_proba(desc, formulas[:20]),
                               rtol=1e-6, atol=1e-9)


def test_tampered_file_is_refused(tmp_path):
    formulas, desc, metal, dft = synthetic()
    clf = MetalClassifier(SMALL, dft_table=dft_metal_table(dft)).fit(desc, formulas, metal)
    save_metal(clf, tmp_path / "m", threshold=0.5)
    path = tmp_path / "m" / "classifier_0.txt"
    path.write_text(path.read_text() + "\n")
    with pytest.raises(ValueError, match="sha256"):
        load_metal(tmp_path / "m")


@pytest.mark.parametrize(("classes", "message"), [
    ("two", r"0 \(non-metal\) or 1"),
    ("dup", "one class per formula"),
    ("few", "need >= 5 metals"),
])
def test_bad_training_input_is_refused(classes, message):
    formulas, desc, metal, dft = synthetic(60)
    clf = MetalClassifier(SMALL, dft_table=dft_metal_table(dft))
    y = metal.copy()
    if classes == "two":
        y[0] = 2
    elif classes == "dup":
        formulas = [formulas[0], *formulas[1:-1], formulas[0]]
    else:
        y = np.zeros_like(y)
        y[:3] = 1
    with pytest.raises(ValueError, match=message):
        clf.fit(desc, formulas, y)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"MetalConfig\.bags"):
        MetalConfig(bags=0)
    with pytest.raises(ValueError, match=r"MetalConfig\.lr"):
        MetalConfig(lr=2.0)
    with pytest.raises(ValueError, match=r"MetalConfig\.max_bin must be >= 2, got 1"):
        MetalConfig(max_bin=1)


def test_histogram_bins_reach_the_classifiers_and_the_surrogates():
    formulas, desc, metal, dft = synthetic()
    config = replace(SMALL, max_bin=31, surrogate_max_bin=15)
    clf = MetalClassifier(config, dft_table=dft_metal_table(dft)).fit(desc, formulas[:200], metal[:200])
    assert {m.get_params()["max_bin"] for m in clf.models_} == {31}
    assert {s.model_.get_params()["max_bin"] for s in (clf.gap_surrogate, clf.metal_surrogate)} == {15}
    p = clf.predict_proba(desc, formulas[200:300])
    assert ((p >= 0.5) == metal[200:300]).mean() > 0.85


def test_threshold_minimises_the_added_error():
    p = np.array([0.1, 0.3, 0.6, 0.8, 0.2, 0.7])
    y = np.array([0, 0, 0, 1, 1, 1])
    # a non-metal at p=0.6 with a 3 eV gap must not be called metal; the metal at p=0.2 costs 0.5 eV if missed
    missed = np.array([0, 0, 0, 1.0, 0.5, 1.0])
    false = np.array([1.0, 1.0, 3.0, 0, 0, 0])
    t = choose_threshold(p, y, cost_if_missed=missed, cost_if_false=false, one_se=False)
    assert 0.6 < t <= 0.7
    # with a cheap false call at 0.6 and an expensive missed metal at 0.2, the threshold drops below 0.2
    t = choose_threshold(p, y, cost_if_missed=np.array([0, 0, 0, 1.0, 4.0, 1.0]), cost_if_false=np.array([1, 1, 0.1, 0, 0, 0]),
                         one_se=False)
    assert t <= 0.2


def test_one_standard_error_rule_keeps_one_half_unless_the_data_show_better():
    rng = np.random.default_rng(0)
    n = 2000
    p = rng.uniform(size=n)
    y = rng.uniform(size=n) < p  # calibrated probabilities, equal costs: 0.5 is the optimum
    cost = np.ones(n)
    exact = np.array([choose_threshold(p[k::4], y[k::4], cost[k::4], cost[k::4], one_se=False) for k in range(4)])
    rule = np.array([choose_threshold(p[k::4], y[k::4], cost[k::4], cost[k::4]) for k in range(4)])
    assert np.abs(exact - 0.5).max() > 0.15  # the exact minimum of a subsample wanders (0.68 in one)
    assert (np.abs(rule - 0.5) <= np.abs(exact - 0.5)).all()  # the rule only ever moves toward 0.5
    assert np.abs(rule - 0.5).max() < 0.1
    # a false metal 5x as costly as a missed one moves the optimum to 5/6: far beyond the noise, so it moves
    t = choose_threshold(p, y, cost_if_missed=cost, cost_if_false=5 * cost)
    assert 0.7 < t < 0.9


def test_cached_feature_rows_are_the_computed_ones_and_apply_only_where_they_were_built():
    formulas, desc, _, dft = synthetic(120, seed=3)
    clf = MetalClassifier(SMALL, dft_table=dft_metal_table(dft)).fit_surrogates(desc)
    subset = formulas[70:] + formulas[:5]
    computed = clf.features(desc, subset)
    cache = clf.cache_features(desc, formulas[:100])
    assert cache.matrix.shape[0] == 100
    # a formula outside the cache: every row computed, the same as before
    np.testing.assert_array_equal(clf.features(desc, subset), computed)
    inside = formulas[60:100] + formulas[:5]
    np.testing.assert_array_equal(clf.features(desc, inside),
                                  MetalClassifier(SMALL, dft_table=clf.dft_table, gap_surrogate=clf.gap_surrogate,
                                                  metal_surrogate=clf.metal_surrogate).features(desc, inside))
    cache.matrix[:] = np.nan  # poisoned: shows where the cache is read
    assert np.isnan(clf.features(desc, inside)).all()
    assert not np.isnan(clf.features(desc.copy(), inside)[:, 0]).any()  # another descriptors frame
    other = MetalClassifier(replace(SMALL, bonding=False), dft_table=clf.dft_table, gap_surrogate=clf.gap_surrogate,
                            metal_surrogate=clf.metal_surrogate, feature_cache=cache)
    without_bonding = other.features(desc, inside)  # other feature flags
    assert without_bonding.shape[1] < cache.matrix.shape[1] and not np.isnan(without_bonding[:, 0]).any()
    shifted = MetalClassifier(SMALL, dft_table=clf.dft_table + 1.0, gap_surrogate=clf.gap_surrogate,
                              metal_surrogate=clf.metal_surrogate, feature_cache=cache)
    assert not np.isnan(shifted.features(desc, inside)[:, 0]).any()  # another DFT table
    same = MetalClassifier(SMALL, dft_table=clf.dft_table.copy(), gap_surrogate=clf.gap_surrogate,
                           metal_surrogate=clf.metal_surrogate, feature_cache=cache)
    assert np.isnan(same.features(desc, inside)).all()  # an equal one: the (poisoned) cache
