"""Cross-validation of the metal classifier: labels, leak-free folds, the combined band-gap scores."""

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from models.evaluation import (
    MetalCVSettings,
    MetalData,
    grouped_kfold,
    metal_cv,
    metal_cv_groups,
    metal_labels,
    metal_metrics,
    paired_bootstrap,
    prepare_metal,
)
from models.learners import DFTSurrogate, MetalClassifier, MetalConfig, StackConfig, dft_metal_table
from models.properties import reference_per_formula
from tests.models.learners.test_metal import SMALL, synthetic


def test_labels_add_measured_gaps_as_non_metals_and_drop_conflicts():
    classes = pd.DataFrame({"formula": ["Cu", "NaCl", "CoPbO3", "Fe", "Fe"], "is_metal": [1, 0, 1, 1, 0]})
    gaps = pd.DataFrame({"formula": ["NaCl", "GaAs", "GaAs", "CoPbO3", "Cu"], "value": [8.5, 1.4, 1.5, 1.2, 0.05]})
    labels, left = metal_labels(classes, gaps, gap_tol=0.1)
    assert labels.to_dict() == {"Cu": 1, "GaAs": 0, "NaCl": 0}  # Cu's 0.05 eV is within the tolerance
    assert left == {"labelled_both_ways": ["Fe"], "labelled_metal_with_measured_gap": ["CoPbO3"]}


def test_paired_bootstrap_interval_covers_the_mean_difference():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.3, 400)
    diff, low, high = paired_bootstrap(a + 0.2, a)
    assert abs(diff - 0.2) < 1e-12
    assert high - low < 1e-9  # a constant difference has no spread
    diff, low, high = paired_bootstrap(a + rng.normal(0, 0.1, 400), a)
    assert low < diff < high and low < 0 < high


def _metal_data():
    formulas, desc, metal, dft = synthetic(240, seed=1)
    rng = np.random.default_rng(2)
    nonmetals = [f for f, m in zip(formulas, metal, strict=True) if m == 0]
    gap_of = dict(zip(formulas, 1.0 + np.abs(desc["d2"]) + 0.5 * desc["d1"].clip(lower=0), strict=True))
    gaps = pd.DataFrame({"formula": nonmetals, "value": [gap_of[f] + rng.normal(0, 0.05) for f in nonmetals]})
    classes = pd.DataFrame({"formula": formulas, "is_metal": metal})
    labels, _ = metal_labels(classes, gaps, gap_tol=0.1)
    table = dft_metal_table(dft)
    clf = MetalClassifier(SMALL, dft_table=table).fit_surrogates(desc)
    ref = table["dft_gap"]
    data = MetalData(labels=labels, gaps=gaps, descriptors=desc, classifier=clf,
                     stack=StackConfig(trees=40, leaves=7, bags=1, n_jobs=1, surrogate_trees=20, clamp_min=0.0),
                     dft_reference=ref, extra_reference={}, gap_surrogate=clf.gap_surrogate)
    return data, labels, gaps, metal


def test_cross_validation_is_leak_free_and_the_classifier_helps_the_all_compositions_error():
    data, labels, gaps, metal = _metal_data()
    folds = grouped_kfold(list(labels.index), n_folds=3, seed=0)
    per_formula, per_row = metal_cv(data, folds, inner_folds=3)
    # every labelled formula is tested exactly once, by a fold that did not train on it
    assert sorted(per_formula["formula"]) == sorted(labels.index)
    for fold in folds:
        tested = set(per_formula.loc[per_formula["fold"] == fold.name, "formula"])
        assert tested == set(labels.index[fold.test]) and not tested & set(labels.index[fold.train])
    called = per_row["formula"].map(per_formula.set_index("formula")["called_metal"])
    assert (per_row.loc[called, "combined"] == 0).all()
    assert (per_row.loc[~called, "combined"] == per_row.loc[~called, "regressor"]).all()
    m = metal_metrics(per_formula, per_row)
    assert m["roc_auc"] > 0.85 and m["rows_all_compositions"] == len(gaps) + int(metal.sum())
    assert m["mae_all"] < m["mae_all_regressor_only"]
    assert 0 < m["threshold_mean"] < 1
    low, high = m["nonmetal_mae_difference_ci95"]
    assert low <= m["nonmetal_mae_difference"] <= high
    assert m["nonmetal_mae_difference"] == m["mae_nonmetal"] - m["mae_nonmetal_regressor_only"] or abs(
        m["nonmetal_mae_difference"] - (m["mae_nonmetal"] - m["mae_nonmetal_regressor_only"])) < 1e-12


def test_config_defaults_are_valid():
    assert MetalConfig().surrogate_config().surrogate_trees == MetalConfig().surrogate_trees


def test_inner_classifiers_take_their_own_trees_and_rate_and_one_booster():
    classifier = MetalConfig(trees=600, lr=0.03, bags=3, leaves=63)
    assert MetalCVSettings().inner_config(classifier) == replace(classifier, bags=1)
    inner = MetalCVSettings(inner_trees=300, inner_lr=0.06).inner_config(classifier)
    assert (inner.trees, inner.lr, inner.bags, inner.leaves) == (300, 0.06, 1, 63)
    with pytest.raises(ValueError, match="inner_trees"):
        MetalCVSettings(inner_trees=0)
    with pytest.raises(ValueError, match="inner_lr"):
        MetalCVSettings(inner_lr=-0.1)


def test_folds_in_worker_processes_give_the_serial_tables_per_group():
    data, labels, _, _ = _metal_data()
    groups = {"a": grouped_kfold(list(labels.index), n_folds=3, seed=0),
              "b": grouped_kfold(list(labels.index), n_folds=2, seed=1)}
    lines = []
    serial = {name: metal_cv(data, folds, inner_folds=3) for name, folds in groups.items()}
    forked = metal_cv_groups(data, groups, inner_folds=3, workers=2, on_fold=lambda k, n, msg: lines.append((k, n)))
    assert lines == [(k, 5) for k in range(5)]
    for name in groups:
        for got, want in zip(forked[name], serial[name], strict=True):
            pd.testing.assert_frame_equal(got, want)


def test_folds_reading_the_cached_features_give_the_tables_computed_per_fold():
    data, labels, _, _ = _metal_data()
    folds = grouped_kfold(list(labels.index), n_folds=3, seed=0)
    computed = metal_cv(data, folds, inner_folds=3)
    data.classifier.cache_features(data.descriptors, labels.index)
    cached = metal_cv(data, folds, inner_folds=3, workers=2)
    for got, want in zip(cached, computed, strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_the_two_dft_surrogates_fitted_side_by_side_are_the_ones_fitted_in_turn():
    formulas, desc, _, dft = synthetic(240, seed=1)
    table = dft_metal_table(dft)
    one = MetalClassifier(SMALL, dft_table=table).fit_surrogates(desc)  # SMALL: one LightGBM thread
    two = MetalClassifier(SMALL, dft_table=table).fit_surrogates(desc, workers=2)
    for name in ("gap_surrogate", "metal_surrogate"):
        np.testing.assert_array_equal(getattr(one, name).predict(desc, formulas), getattr(two, name).predict(desc, formulas))
        assert getattr(one, name).mae_ == getattr(two, name).mae_


def test_the_surrogate_stages_gap_surrogate_is_shared_only_when_it_is_this_runs(caplog):
    formulas, desc, metal, dft = synthetic(240, seed=1)
    stack = StackConfig(trees=40, leaves=7, bags=1, n_jobs=1, surrogate_trees=20, surrogate_leaves=7)
    inputs = dict(classes=pd.DataFrame({"formula": formulas, "is_metal": metal}),
                  gaps=pd.DataFrame({"formula": ["Na2Cl"], "value": [1.0]}), dft=dft, descriptors=desc,
                  crystal_system=pd.Series("cubic", index=dft["material_id"]), config=SMALL, stack=stack,
                  cv=MetalCVSettings(protocols=[], cv_seeds=[0]))
    ref = reference_per_formula(dft)
    shared = DFTSurrogate(stack).fit(desc, ref)
    with caplog.at_level(logging.INFO):
        plan = prepare_metal(**inputs, gap_surrogate=shared)
    assert "metal: DFT surrogate from the surrogate stage" in caplog.text
    got = plan.data.classifier.gap_surrogate
    assert got.config == stack and plan.data.gap_surrogate is got  # the classifier's column and the regressor's
    np.testing.assert_array_equal(got.predict(desc, formulas), shared.predict(desc, formulas))
    # a surrogate of other settings is not this run's: the classifier fits its own (config.surrogate_*)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        plan = prepare_metal(**inputs, gap_surrogate=DFTSurrogate(replace(stack, surrogate_trees=21)).fit(desc, ref))
    assert "is not this run's (settings differ: surrogate_trees 21 != 20)" in caplog.text
    own = MetalClassifier(SMALL, dft_table=dft_metal_table(dft)).fit_surrogates(desc).gap_surrogate
    np.testing.assert_array_equal(plan.data.gap_surrogate.predict(desc, formulas), own.predict(desc, formulas))
