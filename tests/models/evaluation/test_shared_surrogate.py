"""The evaluate stage takes the surrogate stage's DFT surrogate only when it is the one it would fit."""

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from models.evaluation import stack_inputs
from models.evaluation.config import EvalSettings
from models.learners import DFTSurrogate, FitConfig, StackConfig
from models.properties import STABILITY, get_property

FAST = StackConfig(surrogate_trees=40, surrogate_leaves=7, surrogate_lr=0.1, trees=20, leaves=7, n_jobs=1, bags=1)


def _inputs():
    rng = np.random.default_rng(3)
    formulas = ["NaCl", *(f"Na{i}Cl" for i in range(2, 201))]
    desc = pd.DataFrame({"formula": formulas, **{f"d{k}": rng.normal(size=200) for k in range(3)}})
    prop = get_property("band_gap")
    dft = pd.DataFrame({"material_id": [f"mp-{i}" for i in range(200)], "formula": formulas,
                        prop.dft_column: np.abs(desc["d0"].to_numpy()) + 0.1 * rng.normal(size=200),
                        STABILITY: rng.normal(size=200)})
    fit = FitConfig(stack=replace(FitConfig().stack, config=FAST))
    return dft, desc, prop, fit


def _with(caplog, surrogate_of):
    """Stack inputs built without a shared surrogate, then with ``surrogate_of(own stack inputs)``; and the log."""
    dft, desc, prop, fit = _inputs()
    own = stack_inputs(dft, desc, EvalSettings(), fit, prop, threads=1)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        got = stack_inputs(dft, desc, EvalSettings(), fit, prop, threads=1, surrogate=surrogate_of(own, desc))
    return own, got, desc, caplog.text


def test_a_matching_shared_surrogate_is_used_with_the_callers_threads(caplog):
    own, got, desc, log = _with(caplog, lambda own, desc: DFTSurrogate(replace(own.config, n_jobs=2)).fit(
        desc, own.dft_reference))
    assert "from the surrogate stage" in log
    assert got.surrogate.config == own.config  # the fold workers' one thread, as if fitted here
    # out of fold for the DFT formulas, the full model for one it never saw
    new = pd.concat([desc, pd.DataFrame({"formula": ["Na999Cl"], "d0": [0.3], "d1": [0.0], "d2": [1.0]})])
    for fs in (desc["formula"].tolist(), ["Na999Cl"]):
        np.testing.assert_array_equal(got.surrogate.predict(new, fs), own.surrogate.predict(new, fs))


def test_a_stale_shared_surrogate_is_refitted_and_the_log_says_why(caplog):
    own, got, _, log = _with(caplog, lambda own, desc: DFTSurrogate(replace(own.config, surrogate_trees=41)).fit(
        desc, own.dft_reference))
    assert "is not this run's (settings differ: surrogate_trees 41 != 40)" in log
    np.testing.assert_array_equal(got.surrogate.out_of_fold_.to_numpy(), own.surrogate.out_of_fold_.to_numpy())
    # fitted on other DFT data (one value changed): refitted as well
    own, got, _, log = _with(caplog, lambda own, desc: DFTSurrogate(own.config).fit(
        desc, own.dft_reference.where(own.dft_reference.index != "Na7Cl", 9.0)))
    assert "fitted on other DFT references or descriptors" in log
    np.testing.assert_array_equal(got.surrogate.out_of_fold_.to_numpy(), own.surrogate.out_of_fold_.to_numpy())


def test_the_folds_take_crystal_graphs_as_their_pretraining_says():
    """pretraining: train uses the train stage's model as it is (its use_graphs); own uses the budget's use_graphs."""
    assert EvalSettings(pretraining="train", use_graphs=False).uses_graphs(True) is True
    assert EvalSettings(pretraining="train", use_graphs=True).uses_graphs(False) is False
    assert EvalSettings(pretraining="own", use_graphs=False).uses_graphs(True) is False
    assert EvalSettings(pretraining="own", use_graphs=True).uses_graphs(False) is True
    with pytest.raises(ValueError, match="pretraining must be 'own' or 'train'"):
        EvalSettings(pretraining="stage")
    # the checks after the method's place in the class still run (a method once cut __post_init__ short)
    with pytest.raises(ValueError, match="max_measurements, max_dft and pretrain_epochs must be >= 0"):
        EvalSettings(max_dft=-1)
