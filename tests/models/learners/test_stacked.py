from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from models.learners import DFTSurrogate, StackConfig, StackedModel, mae

FAST = StackConfig(surrogate_trees=150, surrogate_leaves=15, surrogate_lr=0.1, trees=300, leaves=7, lr=0.05,
                   min_child_samples=5, n_jobs=1, bags=2,
                   correction_alpha=None)


def _world(seed: int = 0, *, chemical: bool = False):
    """DFT value d = 2a + sin(3b) known for 800 'DFT' formulas; measurement y = 1.5 d + 0.5 (+ noise).

    ``chemical``: formulas Na{i}Cl that the elemental correction can parse (else placeholders X{i}).
    """
    rng = np.random.default_rng(seed)
    n = 1100
    formulas = [f"Na{i + 1}Cl" if chemical else f"X{i}" for i in range(n)]
    desc = pd.DataFrame({"formula": formulas, "a": rng.uniform(-1, 1, n), "b": rng.uniform(-1, 1, n),
                         "c": rng.normal(size=n)})
    d = 2 * desc["a"].to_numpy() + np.sin(3 * desc["b"].to_numpy())
    y = 1.5 * d + 0.5 + rng.normal(0, 0.02, n)
    ref = pd.Series(d[:800], index=formulas[:800])  # formulas 800.. have no DFT entry
    return formulas, desc, d, y, ref


def test_surrogate_is_cross_fitted_and_predicts_unseen_formulas():
    formulas, desc, d, _, ref = _world()
    sur = DFTSurrogate(FAST).fit(desc, ref)
    # DFT training formulas get their out-of-fold estimate (not a copy of the label) ...
    on_train = sur.predict(desc, formulas[:800])
    assert np.array_equal(on_train, sur.out_of_fold_.loc[formulas[:800]].to_numpy())
    assert not np.allclose(on_train, d[:800], atol=1e-3)
    assert mae(d[:800], on_train) == pytest.approx(sur.mae_)
    # ... and new formulas the full model's: both close to the planted function
    assert sur.mae_ < 0.25 * np.mean(np.abs(d - d.mean()))
    assert mae(d[800:], sur.predict(desc, formulas[800:])) < 0.25 * np.mean(np.abs(d - d.mean()))


def test_surrogate_on_a_dask_cluster_learns_what_the_local_fit_learns():
    """LightGBM's Dask interface on 2 worker processes: local models back, as accurate as the local fit."""
    distributed = pytest.importorskip("distributed")
    formulas, desc, d, _, ref = _world()
    local = DFTSurrogate(FAST).fit(desc, ref)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        spread = DFTSurrogate(FAST).fit(desc, ref, client=client)
    import lightgbm as lgb

    assert isinstance(spread.model_, lgb.LGBMRegressor)  # an ordinary local model: saved and served as before
    assert spread.mae_ < 0.25 * np.mean(np.abs(d - d.mean()))
    assert spread.mae_ == pytest.approx(local.mae_, rel=0.3)
    new = formulas[800:]
    # bins and bagging draws are per worker, so the trees differ; what they learned does not
    assert mae(d[800:], spread.predict(desc, new)) == pytest.approx(mae(d[800:], local.predict(desc, new)), rel=0.3)
    assert np.corrcoef(spread.predict(desc, new), local.predict(desc, new))[0, 1] > 0.99


def test_surrogate_fits_in_forked_workers_are_the_one_process_fits():
    """``workers=2``: the six fits (and the bonding columns) in two forked processes, one LightGBM thread each, give
    the models a one-thread fit here gives, bit for bit; those then predict on the config's threads."""
    from models.parallel import can_fork

    if not can_fork():
        pytest.skip("no fork on this platform")
    rng = np.random.default_rng(4)
    formulas = [f"Na{i}Cl{j}" for i in range(1, 30) for j in range(1, 20)]
    desc = pd.DataFrame({"formula": formulas, "a": rng.normal(size=len(formulas)), "b": rng.normal(size=len(formulas))})
    ref = pd.Series(2.0 * desc["a"].to_numpy() + np.array([j / (i + j) for i in range(1, 30) for j in range(1, 20)]),
                    index=formulas).iloc[::2]
    config = replace(FAST, surrogate_bonding=True, n_jobs=2)
    here = DFTSurrogate(replace(config, n_jobs=1)).fit(desc, ref)
    forked = DFTSurrogate(config).fit(desc, ref, workers=2)
    np.testing.assert_array_equal(forked.out_of_fold_.to_numpy(), here.out_of_fold_.to_numpy())
    new = formulas[1::2]
    np.testing.assert_array_equal(forked.predict(desc, new), here.predict(desc, new))
    assert forked.mae_ == here.mae_ and forked.config.n_jobs == 2 and forked.model_.get_params()["n_jobs"] == 2


def test_stacked_boosters_and_out_of_fold_models_in_forked_workers_are_the_one_process_ones():
    """``StackedModel.fit(workers=2)`` and ``out_of_fold(workers=2)``: the boosters and predictions a one-thread run here gives."""
    from models.learners.intervals import out_of_fold
    from models.parallel import can_fork

    if not can_fork():
        pytest.skip("no fork on this platform")
    formulas, desc, _, y, ref = _world()
    config = replace(FAST, bags=3, n_jobs=2)
    sur = DFTSurrogate(replace(config, n_jobs=1)).fit(desc, ref)
    here = StackedModel(replace(config, n_jobs=1), dft_reference=ref, surrogate=sur).fit(desc, formulas[:900], y[:900])
    forked = StackedModel(config, dft_reference=ref, surrogate=sur).fit(desc, formulas[:900], y[:900], workers=2)
    np.testing.assert_array_equal(forked.predict(desc, formulas[900:]), here.predict(desc, formulas[900:]))
    assert [m.get_params()["n_jobs"] for m in forked.models_] == [2, 2, 2]

    def fit_predict(train, target, test):
        model = StackedModel(replace(config, n_jobs=1, bags=1), dft_reference=ref, surrogate=sur)
        return model.fit(desc, train, target).predict(desc, test)

    one = out_of_fold(fit_predict, formulas[:900], y[:900], folds=3, seed=1)
    np.testing.assert_array_equal(out_of_fold(fit_predict, formulas[:900], y[:900], folds=3, seed=1, workers=2), one)


def test_stacked_model_uses_the_dft_surrogate_where_no_dft_value_is_known():
    formulas, desc, _, y, ref = _world()
    # few measurements (the realistic regime): 60 for training, all test formulas without DFT entries
    train = list(range(740, 800)) + list(range(800, 860))
    test = list(range(900, 1100))
    f_tr, f_te = [formulas[i] for i in train], [formulas[i] for i in test]
    stacked = StackedModel(FAST, dft_reference=ref).fit(desc, f_tr, y[train])
    err = mae(y[test], stacked.predict(desc, f_te))
    # the same booster on the descriptors alone (no DFT information) is clearly worse
    import lightgbm as lgb

    plain = lgb.LGBMRegressor(n_estimators=300, num_leaves=7, learning_rate=0.05, min_child_samples=5, n_jobs=1,
                              verbose=-1).fit(desc.set_index("formula").loc[f_tr].to_numpy(), y[train])
    err_plain = mae(y[test], plain.predict(desc.set_index("formula").loc[f_te].to_numpy()))
    assert err < 0.75 * err_plain
    assert err < 0.35  # spread of y is ~1.7


def test_stacked_model_takes_caller_dft_values_and_clamps():
    formulas, desc, d, y, ref = _world(1)
    model = StackedModel(FAST, dft_reference=ref).fit(desc, formulas[:300], y[:300])
    x_lookup = model.features(desc, formulas[:3])
    assert np.array_equal(x_lookup[:, -3], d[:3].astype(np.float32))  # known DFT value column
    assert x_lookup[:, -2].tolist() == [1.0, 1.0, 1.0]  # has-DFT flag
    x_none = model.features(desc, formulas[:3], dft_value=np.full(3, np.nan))
    assert np.isnan(x_none[:, -3]).all() and x_none[:, -2].tolist() == [0.0, 0.0, 0.0]
    assert np.array_equal(x_none[:, -1], x_none[:, -4])  # best estimate falls back to the surrogate
    # other fidelities are looked up by formula (NaN where unknown) and appended
    extra = StackedModel(FAST, dft_reference=ref, surrogate=model.surrogate,
                         extra_reference={"hse": pd.Series([7.0], index=[formulas[1]])})
    x_extra = extra.features(desc, formulas[:3])
    assert x_extra.shape[1] == x_lookup.shape[1] + 1
    assert np.isnan(x_extra[[0, 2], -1]).all() and x_extra[1, -1] == 7.0
    # per-row values (a chosen polymorph's own) replace the lookup, NaN meaning unknown, not "look it up"
    x_given = extra.features(desc, formulas[:3], extra_value={"hse": np.array([1.5, np.nan, 2.5])})
    assert x_given[0, -1] == 1.5 and np.isnan(x_given[1, -1]) and x_given[2, -1] == 2.5
    assert np.array_equal(x_given[:, :-1], x_extra[:, :-1], equal_nan=True)
    with pytest.raises(ValueError, match=r"extra_value names \['gllb'\]"):
        extra.features(desc, formulas[:3], extra_value={"gllb": np.zeros(3)})
    with pytest.raises(ValueError, match=r"extra_value\['hse'\] of shape \(2,\)"):
        extra.features(desc, formulas[:3], extra_value={"hse": np.zeros(2)})
    clamped = StackedModel(FAST.__class__(**{**FAST.__dict__, "clamp_min": 0.0}), dft_reference=ref,
                           surrogate=model.surrogate).fit(desc, formulas[:300], y[:300])
    assert clamped.predict(desc, formulas[300:500]).min() >= 0.0
    assert model.predict(desc, formulas[300:500]).min() < 0.0  # the planted targets go negative


def test_rearranged_prediction_rises_with_the_dft_value():
    formulas, desc, d, _, ref = _world(2)
    # a planted dip: measurements fall by 1.5 where the DFT value is in (0.5, 1.0)
    y = 1.5 * d + 0.5 - 1.5 * ((d > 0.5) & (d < 1.0))
    model = StackedModel(FAST, dft_reference=ref).fit(desc, formulas[:800], y[:800])
    sweep = np.linspace(-4.0, 5.0, 181)  # beyond the DFT reference's range at both ends
    one = [formulas[3]] * len(sweep)
    plain = model.predict(desc, one, dft_value=sweep)
    assert np.diff(plain).min() < -0.3  # the boosters learned the dip: the plain response falls
    mono = model.rearranged(desc, one, sweep)
    assert np.diff(mono).min() >= 0.0
    above = (sweep > 1.5) & (sweep < ref.max())  # past the dip the rearranged response is the model's own
    assert np.abs(mono[above] - plain[above]).mean() < 0.1
    # several formulas in one call: each gets its own curve, as alone
    mixed = model.rearranged(desc, [formulas[3], formulas[4], formulas[3]], np.array([0.2, 0.2, 2.0]))
    alone = model.rearranged(desc, [formulas[4]], np.array([0.2]))
    assert mixed[0] == pytest.approx(mono[np.argmin(np.abs(sweep - 0.2))]) and mixed[1] == pytest.approx(alone[0])
    with pytest.raises(ValueError, match="finite DFT values"):
        model.rearranged(desc, one[:2], np.array([0.1, np.nan]))


def test_histogram_bins_reach_every_booster_and_coarse_bins_learn_the_same_function():
    """``max_bin`` / ``surrogate_max_bin``: LightGBM's bins per feature (the speed setting of params.yaml)."""
    formulas, desc, _, y, ref = _world()
    coarse = replace(FAST, max_bin=63, surrogate_max_bin=31)
    fine = StackedModel(FAST, dft_reference=ref).fit(desc, formulas[:900], y[:900])
    fast = StackedModel(coarse, dft_reference=ref).fit(desc, formulas[:900], y[:900])
    assert {m.get_params()["max_bin"] for m in fast.models_} == {63}
    assert fast.surrogate.model_.get_params()["max_bin"] == 31
    assert {m.get_params()["max_bin"] for m in fine.models_} == {255}  # LightGBM's own default
    new = formulas[900:]
    p_fine, p_fast = fine.predict(desc, new), fast.predict(desc, new)
    assert not np.allclose(p_fine, p_fast)  # other split points: other trees
    assert mae(y[900:], p_fast) < 0.1 * np.mean(np.abs(y - y.mean()))
    assert mae(y[900:], p_fast) == pytest.approx(mae(y[900:], p_fine), rel=0.5)
    for key in ("max_bin", "surrogate_max_bin"):
        with pytest.raises(ValueError, match=f"StackConfig.{key} must be >= 2, got 1"):
            StackConfig(**{key: 1})


def test_stacked_model_rejects_bad_input():
    formulas, desc, _, y, ref = _world()
    model = StackedModel(FAST, dft_reference=ref)
    with pytest.raises(ValueError, match="non-finite"):
        model.fit(desc, formulas[:100], np.where(np.arange(100) == 3, np.nan, y[:100]))
    model.fit(desc, formulas[:100], y[:100])
    with pytest.raises(ValueError, match=r"no descriptors for 1 formulas, e\.g\. 'Nope'"):
        model.predict(desc, ["Nope"])
    with pytest.raises(ValueError, match="dft_value of shape"):
        model.predict(desc, formulas[:3], dft_value=np.zeros(2))
    with pytest.raises(ValueError, match="objective"):
        StackConfig(objective="poisson")
    with pytest.raises(ValueError, match="need >= 10 DFT formulas"):
        DFTSurrogate(FAST).fit(desc, ref.iloc[:5])


def test_elemental_correction_learns_additive_per_element_errors():
    """Measurement = DFT + a fixed shift per element (weighted by fraction): the ridge correction recovers it."""
    from dataclasses import replace

    rng = np.random.default_rng(3)
    metals = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Ba", "Zn", "Cd", "Al", "Ga", "In", "Ti", "Zr", "Fe", "Co", "Ni", "Cu"]
    anions = ["O", "S", "Se", "F", "Cl", "Br", "N", "P"]
    formulas = sorted({f"{m}{a}{n}" if n > 1 else f"{m}{a}" for m in metals for a in anions for n in (1, 2, 3)})
    from featurizers.chemistry import element_fractions, reduced_formula

    formulas = sorted({reduced_formula(f) for f in formulas})
    shift = {e: rng.normal(0, 0.3) for e in metals + anions}
    n = len(formulas)
    desc = pd.DataFrame({"formula": formulas, "a": rng.normal(size=n), "b": rng.normal(size=n)})
    dft = rng.uniform(-3, 0, n)
    y = dft + np.array([sum(v * shift[e] for e, v in element_fractions(f).items()) for f in formulas])
    ref = pd.Series(dft, index=formulas)  # every formula has a DFT value here
    idx = rng.permutation(n)
    tr, te = idx[: int(0.7 * n)], idx[int(0.7 * n):]
    f_tr, f_te = [formulas[i] for i in tr], [formulas[i] for i in te]
    with_corr = StackedModel(replace(FAST, correction_alpha=0.01), dft_reference=ref).fit(desc, f_tr, y[tr])
    without = StackedModel(FAST, dft_reference=ref, surrogate=with_corr.surrogate).fit(desc, f_tr, y[tr])
    err_with = mae(y[te], with_corr.predict(desc, f_te))
    err_without = mae(y[te], without.predict(desc, f_te))
    assert err_with < 0.5 * err_without
    assert err_with < 0.03  # the planted shifts are ~0.3 eV/atom


def test_spread_over_bags_and_prediction_agree():
    import numpy as np
    import pandas as pd

    from models.learners import StackConfig, StackedModel

    rng = np.random.default_rng(0)
    formulas = [f"Na{i}Cl" if i > 1 else "NaCl" for i in range(1, 61)]
    desc = pd.DataFrame({"formula": formulas, **{f"d{k}": rng.normal(size=60) for k in range(4)}})
    y = desc["d0"].to_numpy() * 2 + rng.normal(scale=0.1, size=60)
    ref = pd.Series(y[::2] - 0.5, index=formulas[::2])
    cfg = StackConfig(bags=3, trees=30, surrogate_trees=20, n_jobs=1)
    model = StackedModel(cfg, dft_reference=ref).fit(desc, formulas, y)
    value, spread = model.predict_with_spread(desc, formulas)
    np.testing.assert_array_equal(value, model.predict(desc, formulas))
    assert spread.shape == (60,) and (spread >= 0).all() and spread.max() > 0  # bags differ by their seeds
    one = StackedModel(StackConfig(bags=1, trees=30, surrogate_trees=20, n_jobs=1), dft_reference=ref).fit(desc, formulas, y)
    assert (one.predict_with_spread(desc, formulas)[1] == 0).all()


def test_save_and_load_without_pickle_give_the_same_predictions(tmp_path):
    import numpy as np
    import pandas as pd

    from models.learners import StackConfig, StackedModel, load_stacked, save_stacked

    rng = np.random.default_rng(1)
    formulas = [f"Na{i}Cl" if i > 1 else "NaCl" for i in range(1, 61)]
    desc = pd.DataFrame({"formula": formulas, **{f"d{k}": rng.normal(size=60) for k in range(4)}})
    y = desc["d1"].to_numpy() + rng.normal(scale=0.1, size=60)
    ref = pd.Series(y[::3] + 0.3, index=formulas[::3])
    extra = {"band_gap_hse": pd.Series(y[::5], index=formulas[::5])}
    model = StackedModel(StackConfig(bags=2, trees=25, surrogate_trees=15, n_jobs=1, clamp_min=0.0),
                         dft_reference=ref, extra_reference=extra).fit(desc, formulas, y)
    save_stacked(model, tmp_path / "stacked")
    files = sorted(p.name for p in (tmp_path / "stacked").iterdir())
    assert files == ["booster_0.txt", "booster_1.txt", "stacked.json", "surrogate.txt"]
    for p in (tmp_path / "stacked").iterdir():
        assert not p.read_bytes().startswith(b"\x80")  # no pickle protocol header anywhere
    loaded = load_stacked(tmp_path / "stacked")
    new = [f"K{i}Br" for i in range(1, 6)]  # formulas the surrogate never saw
    new_desc = pd.DataFrame({"formula": new, **{f"d{k}": rng.normal(size=5) for k in range(4)}})
    both = pd.concat([desc, new_desc], ignore_index=True)
    for fs in (formulas, new):
        a, sa = model.predict_with_spread(both, fs)
        b, sb = loaded.predict_with_spread(both, fs)
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sb, sa, rtol=1e-12, atol=1e-12)


def test_shift_field_adds_two_ot_columns_and_survives_save_load(tmp_path):
    from models.learners import ShiftField, load_stacked, save_stacked

    rng = np.random.default_rng(2)
    formulas = [f"Na{i}Cl" if i > 1 else "NaCl" for i in range(1, 81)]
    desc = pd.DataFrame({"formula": formulas, **{f"d{k}": rng.normal(size=80) for k in range(4)}})
    shift = 0.5 * desc["d0"].to_numpy()
    dft_value = desc["d1"].to_numpy()
    y = dft_value + shift + rng.normal(scale=0.05, size=80)
    ref = pd.Series(dft_value, index=formulas)
    # aligned entries: the first 60 formulas (their calibrated target = their measurement)
    field = ShiftField.fit(formulas[:60], dft_value[:60], y[:60], np.ones(60), desc, k=3)
    cfg = StackConfig(bags=2, trees=40, surrogate_trees=15, n_jobs=1, correction_alpha=1.0)
    plain = StackedModel(cfg, dft_reference=ref).fit(desc, formulas[:60], y[:60])
    with_ot = StackedModel(cfg, dft_reference=ref, surrogate=plain.surrogate, shift_field=field).fit(
        desc, formulas[:60], y[:60])
    x_plain, x_ot = plain.features(desc, formulas), with_ot.features(desc, formulas)
    assert x_ot.shape[1] == x_plain.shape[1] + 2
    np.testing.assert_array_equal(x_ot[:, :-2], x_plain)
    np.testing.assert_allclose(x_ot[:, -2], field.predict(desc, formulas), rtol=1e-6)
    np.testing.assert_allclose(x_ot[:, -1], x_ot[:, -2] + x_plain[:, -1], rtol=1e-5, atol=1e-6)
    save_stacked(with_ot, tmp_path / "stacked")
    loaded = load_stacked(tmp_path / "stacked")
    assert loaded.shift_field is not None
    np.testing.assert_allclose(loaded.predict(desc, formulas), with_ot.predict(desc, formulas), rtol=1e-12, atol=1e-12)


def test_descriptor_matrix_selects_the_rows_of_the_whole_table():
    """Selecting the wanted rows first gives the matrix of indexing the whole de-duplicated table (first row wins)."""
    from models.learners.stacked import descriptor_matrix

    rng = np.random.default_rng(0)
    names = [f"F{k}" for k in range(300)]
    table = pd.DataFrame({"formula": rng.choice(names, 900), "a": rng.normal(size=900), "b": rng.normal(size=900),
                          "label": "x", "c": rng.integers(0, 5, 900)})
    whole = table.drop_duplicates("formula").set_index("formula")
    for k in range(20):
        wanted = list(rng.choice(table["formula"].unique(), int(rng.integers(0, 40))))
        for columns in (None, ["b", "a"]):
            cols = columns or ["a", "b", "c"]
            expected = whole.loc[wanted, cols].to_numpy(np.float32)
            assert np.array_equal(descriptor_matrix(table, wanted, columns), expected), (k, columns)
    with pytest.raises(ValueError, match="no descriptors for 1 formulas"):
        descriptor_matrix(table, ["F1", "nope"])


EXTRAPOLATING = StackConfig(**{**FAST.__dict__, "correction_alpha": 1.0, "extrapolate": True})


def _truncated_world():
    """The planted world measured only below its 80th percentile; the top 10% are the test rows."""
    formulas, desc, _, y, ref = _world(2, chemical=True)
    dft_rows = np.arange(800)  # formulas with a DFT value
    cut, top = np.quantile(y[dft_rows], [0.8, 0.9])
    train = dft_rows[y[dft_rows] < cut]
    test = dft_rows[y[dft_rows] >= top]
    return formulas, desc, y, ref, train, test, cut


def test_extrapolating_calibration_follows_the_dft_trend_beyond_the_measured_range():
    formulas, desc, y, ref, train, test, cut = _truncated_world()
    f_tr, f_te = [formulas[i] for i in train], [formulas[i] for i in test]
    plain = StackedModel(StackConfig(**{**FAST.__dict__, "correction_alpha": 1.0}), dft_reference=ref)
    plain.fit(desc, f_tr, y[train])
    extrapolating = StackedModel(EXTRAPOLATING, dft_reference=ref).fit(desc, f_tr, y[train])
    p_plain, p_extra = plain.predict(desc, f_te), extrapolating.predict(desc, f_te)
    # the plain model's slope-1 correction falls short of the planted slope 1.5 beyond the cut (MAE
    # about 0.55 here); the calibrated trend carries on (about 0.02)
    assert mae(y[test], p_extra) < 0.2 * mae(y[test], p_plain)
    assert np.median(p_extra) > cut + 1.0
    assert abs(np.median(p_extra) - np.median(y[test])) < 0.2 < abs(np.median(p_plain) - np.median(y[test]))
    # the reduced-major-axis slope is steeper than the least-squares one on the cut data
    base = plain._corrected(f_tr, plain.features(desc, f_tr))
    assert extrapolating.calibration_[1] > np.polyfit(base, y[train], 1)[0]
    # inside the measured range the boosters still correct the trend (the fade does not act there)
    inside = [formulas[i] for i in train[:100]]
    assert mae(y[train[:100]], extrapolating.predict(desc, inside)) < 0.2


def test_extrapolating_model_survives_save_load_and_old_files_load_without_it(tmp_path):
    import json

    from models._io import read_header, write_header
    from models.learners import load_stacked, save_stacked

    formulas, desc, y, ref, train, test, _ = _truncated_world()
    f_tr, f_te = [formulas[i] for i in train], [formulas[i] for i in test]
    model = StackedModel(EXTRAPOLATING, dft_reference=ref).fit(desc, f_tr, y[train])
    save_stacked(model, tmp_path / "m")
    loaded = load_stacked(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict(desc, f_te), model.predict(desc, f_te), rtol=1e-12, atol=1e-12)
    assert loaded.calibration_ == model.calibration_ and loaded.target_range_ == model.target_range_
    # a file written before the extrapolating calibration: no such keys, loads as a plain model
    state = read_header(tmp_path / "m" / "stacked.json", classes=("StackedModel",), what="stacked model", error=ValueError)
    files = state.pop("files")
    for key in ("calibration", "target_range"):
        state.pop(key)
    state["config"] = {k: v for k, v in state["config"].items() if k not in ("extrapolate", "monotone")}
    state.pop("cls", None)
    write_header(tmp_path / "m" / "stacked.json", cls="StackedModel", files=files, indent=1, **json.loads(json.dumps(state)))
    old = load_stacked(tmp_path / "m")
    assert old.calibration_ is None and old.target_range_ is None and not old.config.extrapolate


def test_monotone_constraints_make_the_prediction_rise_with_the_dft_value():
    formulas, desc, _, y, ref = _world(3, chemical=True)
    config = StackConfig(**{**FAST.__dict__, "correction_alpha": 1.0, "monotone": True})
    model = StackedModel(config, dft_reference=ref).fit(desc, formulas[:400], y[:400])
    sweep = np.linspace(-4.0, 6.0, 101)
    for f in formulas[900:910]:
        p = model.predict(desc, [f] * len(sweep), dft_value=sweep)
        assert np.all(np.diff(p) >= -1e-12), f
        assert p[-1] - p[0] > 5.0  # and it does move with it


def test_extrapolate_is_chosen_per_property_and_needs_the_correction():
    from models.learners import FitConfig
    from models.properties import get_property

    fit = FitConfig()
    assert fit.stack_config(get_property("band_gap")).extrapolate
    assert not fit.stack_config(get_property("formation_enthalpy")).extrapolate
    with pytest.raises(ValueError, match="correction_alpha"):
        StackConfig(correction_alpha=None, extrapolate=True)


def test_fade_drops_only_the_pull_back_toward_the_training_range():
    model = StackedModel(EXTRAPOLATING, dft_reference=pd.Series(dtype=float))
    model.target_range_ = (0.0, 4.0, 2.0)  # central targets 0..4 eV, std 2
    base = np.array([2.0, 4.0, 5.0, 6.0, 7.0, 5.0, -1.0, -1.0])
    residual = np.array([-1.0, -1.0, -1.0, -1.0, -1.0, 0.5, 0.5, -0.5])
    # inside: kept; 1 std beyond: gone, half-way: halved; a push outward (+0.5 above, -0.5 below) kept
    np.testing.assert_allclose(model._faded(base, residual), [-1.0, -1.0, -0.5, 0.0, 0.0, 0.5, 0.25, -0.5])
    model.target_range_ = None
    np.testing.assert_array_equal(model._faded(base, residual), residual)


def test_extrapolate_names_must_be_properties():
    from models.learners.config import StackSettings

    with pytest.raises(ValueError, match="unknown property \\['bandgap'\\]"):
        StackSettings(extrapolate=("bandgap",))


def test_stack_options_are_chosen_per_property():
    from models.learners import FitConfig
    from models.learners.config import StackSettings
    from models.properties import get_property

    fit = FitConfig(stack=StackSettings(bonding=("band_gap",)))
    gap, enthalpy = (fit.stack_config(get_property(n)) for n in ("band_gap", "formation_enthalpy"))
    assert gap.bonding and not enthalpy.bonding
    # an element in its reference state has formation enthalpy 0 by definition; a gap it has not
    assert enthalpy.element_value == 0.0 and gap.element_value is None
    with pytest.raises(ValueError, match=r"stack\.bonding: unknown property \['gap'\]"):
        StackSettings(bonding=("gap",))
    # the boosters' column fraction per property; the surrogate's is one for all (its stage fits it once)
    fit = FitConfig(stack=StackSettings(colsample_for={"formation_enthalpy": 0.3}))
    gap, enthalpy = (fit.stack_config(get_property(n)) for n in ("band_gap", "formation_enthalpy"))
    assert (gap.colsample, enthalpy.colsample) == (fit.stack.config.colsample, 0.3)
    assert gap.surrogate_colsample == enthalpy.surrogate_colsample == fit.stack.config.surrogate_colsample
    with pytest.raises(ValueError, match=r"stack\.colsample_for: unknown property \['enthalpy'\]"):
        StackSettings(colsample_for={"enthalpy": 0.3})
    with pytest.raises(ValueError, match=r"stack\.colsample_for\.band_gap must be in \(0, 1\], got 1\.5"):
        StackSettings(colsample_for={"band_gap": 1.5})
    # the boosters' objective per property; the surrogate keeps its own (L2: not one of SURROGATE_FIELDS)
    fit = FitConfig(stack=StackSettings(objective_for={"formation_enthalpy": "huber"}))
    assert fit.stack_config(get_property("formation_enthalpy")).objective == "huber"
    assert fit.stack_config(get_property("band_gap")).objective == "regression"
    with pytest.raises(ValueError, match=r"stack\.objective_for\.band_gap must be one of regression, regression_l1, huber"):
        StackSettings(objective_for={"band_gap": "l1"})
    with pytest.raises(ValueError, match=r"stack\.objective_for: unknown property \['gap'\]"):
        StackSettings(objective_for={"gap": "huber"})


def test_huber_delta_sets_where_the_boosters_stop_squaring_residuals():
    from models.learners.stacked import _booster

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (400, 1))
    y = x[:, 0].copy()
    y[:40] += np.where(np.arange(40) % 2, 30.0, -30.0)  # a tenth of the rows far off, either way
    kwargs = dict(trees=50, leaves=4, lr=0.1, seed=0, max_bin=63, colsample=1.0)

    def clean_error(delta: float, objective: str = "huber") -> float:
        m = _booster(StackConfig(huber_delta=delta, subsample=1.0, n_jobs=1), objective=objective, **kwargs).fit(x, y)
        return float(np.mean(np.abs(m.predict(x[40:]) - y[40:])))

    # a small transition holds the far rows at a linear pull, a large one squares them like L2
    assert clean_error(0.1) < 0.05 and clean_error(100.0) > 0.5
    assert clean_error(100.0) == pytest.approx(clean_error(0.1, objective="regression"), rel=1e-6)
    # LightGBM's alpha is Huber's transition here; another objective is not given one
    assert _booster(StackConfig(huber_delta=0.2), objective="huber", **kwargs).get_params()["alpha"] == 0.2
    assert "alpha" not in _booster(StackConfig(huber_delta=0.2), objective="regression", **kwargs).get_params()
    with pytest.raises(ValueError, match="huber_delta must be > 0, got 0"):
        StackConfig(huber_delta=0)
    with pytest.raises(ValueError, match=r"objective must be one of regression, regression_l1, huber, got 'l1'"):
        StackConfig(objective="l1")


def _compounds_and_elements(seed: int = 3):
    """240 binary compounds with y = 2a - 0.5 (between -2.5 and -0.3 eV/atom) and a DFT value near it; four pure elements."""
    rng = np.random.default_rng(seed)
    metals, anions = ["Na", "K", "Li", "Mg", "Ca", "Sr", "Ba", "Al"], ["F", "Cl", "Br", "O", "S", "N"]
    compounds = [f"{m}{k}{x}" for m in metals for x in anions for k in range(1, 6)]
    elements = ["Fe", "O2", "Si", "Cu"]
    formulas = compounds + elements
    desc = pd.DataFrame({"formula": formulas, "a": rng.uniform(-1, 0.1, len(formulas)), "b": rng.normal(size=len(formulas))})
    y = 2 * desc["a"].to_numpy()[: len(compounds)] - 0.5
    ref = pd.Series(y + rng.normal(0, 0.05, len(y)), index=compounds)
    return compounds, elements, desc, y, ref


def test_pure_elements_get_the_value_they_have_by_definition():
    compounds, elements, desc, y, ref = _compounds_and_elements()
    fitted = {v: StackedModel(replace(FAST, element_value=v), dft_reference=ref).fit(desc, compounds, y)
              for v in (None, 0.0)}
    free, fixed = (fitted[v].predict_with_spread(desc, elements + compounds[:20]) for v in (None, 0.0))
    # trees fitted on compounds far below 0 put an element far below 0 too; with the value fixed it is exactly 0
    assert np.all(free[0][:4] < -0.2)
    np.testing.assert_array_equal(fixed[0][:4], 0.0)
    np.testing.assert_array_equal(fixed[1][:4], 0.0)
    assert free[1][:4].max() > 0  # the two boosters disagree
    # compounds are untouched: the same boosters
    np.testing.assert_array_equal(fixed[0][4:], free[0][4:])
    # a caller's DFT values (and the monotone rearrangement) do not move an element either
    sweep = fitted[0.0].rearranged(desc, ["Fe"] * 3 + ["Na1F"] * 3, np.array([-2.0, 0.0, 5.0] * 2))
    np.testing.assert_array_equal(sweep[:3], 0.0)
    assert np.all(np.diff(sweep[3:]) >= 0) and sweep[5] > sweep[3]
    # a blend with another model's values (serving with blend_weight < 1) keeps the elements' value
    blend, spread = 0.5 * fixed[0] - 0.5, np.full(len(fixed[0]), 0.1)
    bounded = fitted[0.0].apply_bounds(elements + compounds[:20], blend.copy(), spread)
    np.testing.assert_array_equal(bounded[:4], 0.0)
    np.testing.assert_array_equal(bounded[4:], blend[4:])
    np.testing.assert_array_equal(spread, [0.0] * 4 + [0.1] * 20)


def test_bonding_columns_follow_the_descriptors_and_survive_save_load(tmp_path):
    from featurizers.bonding import BONDING_COLUMNS, IONIC_COLUMNS
    from models.learners import load_stacked, save_stacked

    compounds, _, desc, y, ref = _compounds_and_elements(4)
    plain = StackedModel(FAST, dft_reference=ref).fit(desc, compounds, y)
    model = StackedModel(replace(FAST, bonding=True), dft_reference=ref).fit(desc, compounds, y)
    x0, x1 = plain.features(desc, compounds), model.features(desc, compounds)
    width = len(BONDING_COLUMNS) + len(IONIC_COLUMNS)
    assert x1.shape[1] == x0.shape[1] + width
    np.testing.assert_array_equal(x1[:, :2], x0[:, :2])  # the descriptors first
    # the best-estimate column still holds the known DFT value (all compounds have one here)
    np.testing.assert_allclose(x1[:, model._best_column], ref.loc[compounds].to_numpy(), rtol=1e-6)
    # charge balance (NaCl-like Na1F balanced, Na2F not) is read from the formula
    balanced = x1[:, 2 + len(BONDING_COLUMNS)]
    assert balanced[compounds.index("Na1F")] == 1.0 and balanced[compounds.index("Na2F")] == 0.0
    save_stacked(model, tmp_path / "m")
    loaded = load_stacked(tmp_path / "m")
    assert loaded.config.bonding
    np.testing.assert_allclose(loaded.predict(desc, compounds[:30]), model.predict(desc, compounds[:30]), atol=1e-12)


def test_a_saved_surrogate_predicts_as_fitted_and_is_reused_only_for_its_own_inputs(tmp_path):
    """The surrogate stage's file: identical predictions after loading; ``mismatch`` names what differs."""
    from models.learners import load_surrogate, save_surrogate

    formulas, desc, _, _, ref = _world()
    sur = DFTSurrogate(FAST).fit(desc, ref)
    save_surrogate(sur, tmp_path / "s")
    loaded = load_surrogate(tmp_path / "s")
    for fs in (formulas[:800], formulas[800:]):  # out of fold, then the full model
        np.testing.assert_array_equal(loaded.predict(desc, fs), sur.predict(desc, fs))
    assert loaded.mismatch(FAST, desc, ref) is None
    # settings of the model of the measurements do not matter (its column fraction too); the surrogate's own do
    assert loaded.mismatch(replace(FAST, trees=5, bags=1, n_jobs=2, colsample=0.3), desc, ref) is None
    assert "surrogate_colsample 0.5 != 0.3" in loaded.mismatch(replace(FAST, surrogate_colsample=0.3), desc, ref)
    assert "surrogate_trees 150 != 151" in loaded.mismatch(replace(FAST, surrogate_trees=151), desc, ref)
    assert "seed" in loaded.mismatch(replace(FAST, seed=1), desc, ref)
    # other DFT references, another value, other descriptor rows or columns: not the same fit
    assert loaded.mismatch(FAST, desc, ref.iloc[:-1]) is not None
    assert loaded.mismatch(FAST, desc, ref.where(ref.index != "X3", 0.0)) is not None
    assert loaded.mismatch(FAST, desc.assign(c=desc["c"] + 1e-3), ref) is not None
    assert loaded.mismatch(FAST, desc.drop(columns="c"), ref) is not None
    # a reused surrogate takes the caller's settings (threads; saved with the caller's model) ...
    caller = replace(FAST, n_jobs=2, trees=5)
    assert loaded.for_config(caller).config == caller and loaded.config == FAST
    # ... and refuses settings it was not fitted with
    with pytest.raises(ValueError, match="surrogate_lr"):
        loaded.for_config(replace(FAST, surrogate_lr=0.2))


def test_column_fractions_of_boosters_and_surrogate_are_apart_and_old_files_keep_theirs(tmp_path):
    """``colsample`` reaches the boosters only, ``surrogate_colsample`` the surrogate; a file saved before the split
    (no ``surrogate_colsample``) drew the surrogate's columns with ``colsample`` and loads saying so."""
    import json

    from models.learners import load_stacked, load_surrogate, save_stacked, save_surrogate

    formulas, desc, _, y, ref = _world()
    model = StackedModel(replace(FAST, colsample=0.3, surrogate_colsample=0.7, bags=2), dft_reference=ref).fit(
        desc, formulas[:900], y[:900])
    assert {m.get_params()["colsample_bytree"] for m in model.models_} == {0.3}
    assert model.surrogate.model_.get_params()["colsample_bytree"] == 0.7
    save_stacked(model, tmp_path / "m")
    assert load_stacked(tmp_path / "m").config.surrogate_colsample == 0.7
    old = replace(FAST, colsample=0.3, surrogate_colsample=0.3)
    save_surrogate(DFTSurrogate(old).fit(desc, ref), tmp_path / "s")
    header = tmp_path / "s" / "surrogate.json"
    state = json.loads(header.read_text())
    del state["config"]["surrogate_colsample"]
    header.write_text(json.dumps(state))
    assert load_surrogate(tmp_path / "s").config == old
    with pytest.raises(ValueError, match=r"StackConfig.surrogate_colsample must be in \(0, 1\], got 0"):
        StackConfig(surrogate_colsample=0)


def test_a_surrogate_file_altered_after_it_was_written_is_refused(tmp_path):
    from models.learners import load_surrogate, save_surrogate

    _, desc, _, _, ref = _world()
    save_surrogate(DFTSurrogate(FAST).fit(desc, ref), tmp_path / "s")
    booster = tmp_path / "s" / "surrogate.txt"
    booster.write_text(booster.read_text().replace("learning_rate", "learning_rat"))
    with pytest.raises(ValueError, match=r"surrogate\.txt"):
        load_surrogate(tmp_path / "s")


def _ionic_world(seed: int = 5):
    """Binary compounds whose DFT error is 1.5 x a descriptor ``ion`` set by the anion (Cl's within the others' range).

    A per-element offset learned without any chloride is 0 for Cl; a linear term in ``ion`` carries over.
    """
    rng = np.random.default_rng(seed)
    ion = {"O": 1.2, "S": 0.35, "N": 0.5, "Se": 0.15, "F": 1.6, "Cl": 0.25}
    metals = ["Na", "K", "Li", "Mg", "Ca", "Sr", "Ba", "Al", "Zn", "Ga"]
    formulas = [f"{m}{k}{x}" for m in metals for x in ion for k in range(1, 6)]
    anion = [f.rstrip("0123456789").split(next(c for c in f[1:] if c.isdigit()))[-1] for f in formulas]
    n = len(formulas)
    desc = pd.DataFrame({"formula": formulas, "a": rng.normal(size=n), "b": rng.normal(size=n),
                         "ion": [ion[x] + rng.normal(0, 0.02) for x in anion]})
    dft = rng.uniform(0, 4, n)
    y = dft + 1.5 * desc["ion"].to_numpy()
    return formulas, np.array(anion), desc, y, pd.Series(dft, index=formulas)


def _anion_held_out(held: str, world: tuple, config: StackConfig, **change):
    """Fit ``config`` and ``config`` with ``change`` (one surrogate) on the compounds without anion ``held``.

    Returns the held-out formulas, their targets and the two models.
    """
    formulas, anion, desc, y, ref = world
    tr, te = np.flatnonzero(anion != held), np.flatnonzero(anion == held)
    f_tr = [formulas[i] for i in tr]
    plain = StackedModel(config, dft_reference=ref).fit(desc, f_tr, y[tr])
    changed = StackedModel(replace(config, **change), dft_reference=ref, surrogate=plain.surrogate).fit(desc, f_tr, y[tr])
    return [formulas[i] for i in te], y[te], plain, changed


def _corrected_mae(model: StackedModel, desc: pd.DataFrame, formulas: list[str], y: np.ndarray) -> float:
    """MAE of the model's corrected DFT estimate (before its boosters) on ``formulas``."""
    return mae(y, model._corrected(formulas, model.features(desc, formulas)))


def test_correction_terms_carry_a_trend_to_an_anion_training_never_saw(tmp_path):
    from models.learners import load_stacked, save_stacked

    world = _ionic_world()
    desc = world[2]
    f_te, y_te, per_element, with_terms = _anion_held_out("Cl", world, replace(FAST, correction_alpha=1.0),
                                                          correction_terms=("ion",))
    # without the term a chloride gets the training compounds' mean offset (about 1.1 eV; its own is 0.4)
    assert _corrected_mae(per_element, desc, f_te, y_te) > 0.5
    assert _corrected_mae(with_terms, desc, f_te, y_te) < 0.15
    assert mae(y_te, with_terms.predict(desc, f_te)) < 0.5 * mae(y_te, per_element.predict(desc, f_te))
    # the term is clipped to its training range: beyond it the correction stays at the range's edge
    def correction(ion: float) -> float:
        moved = desc.assign(ion=np.where(desc["formula"] == f_te[0], ion, desc["ion"]))
        x = with_terms.features(moved, f_te[:1])
        return float(with_terms._corrected(f_te[:1], x)[0] - x[0, with_terms._best_column])

    edge = float(with_terms.terms_.high[0])
    assert correction(5.0) == pytest.approx(correction(edge), abs=1e-9)
    assert correction(edge) - correction(0.5) == pytest.approx(1.5 * (edge - 0.5), rel=0.1)
    # saved and loaded: the same predictions (terms' centre, scale and range are in the JSON)
    save_stacked(with_terms, tmp_path / "m")
    loaded = load_stacked(tmp_path / "m")
    assert loaded.terms_.names == ("ion",)
    np.testing.assert_allclose(loaded.predict(desc, f_te), with_terms.predict(desc, f_te), atol=1e-12)
    # a term pointing at another column than the one it names is refused, not silently misread
    import json

    header = tmp_path / "m" / "stacked.json"
    state = json.loads(header.read_text())
    state["correction"]["terms"]["columns"] = [0]
    header.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"correction terms \['ion'\] are not the model's feature columns \['a'\]"):
        load_stacked(tmp_path / "m")


def test_correction_terms_must_name_feature_columns_and_are_chosen_per_property():
    from models.learners import FitConfig
    from models.learners.config import StackSettings
    from models.properties import get_property

    formulas, _, desc, y, ref = _ionic_world()
    with pytest.raises(ValueError, match=r"correction_terms: no feature column 'avg_ionic_char'.*train\.stack\.bonding"):
        StackedModel(replace(FAST, correction_alpha=1.0, correction_terms=("avg_ionic_char",)),
                     dft_reference=ref).fit(desc, formulas, y)
    with pytest.raises(ValueError, match="need correction_alpha"):
        replace(FAST, correction_terms=("ion",))
    with pytest.raises(ValueError, match="names a column twice"):
        replace(FAST, correction_alpha=1.0, correction_terms=["ion", "ion"])
    fit = FitConfig(stack=StackSettings(correction_terms={"band_gap": ("avg_ionic_char",)}))
    gap, enthalpy = (fit.stack_config(get_property(n)) for n in ("band_gap", "formation_enthalpy"))
    assert (gap.correction_terms, enthalpy.correction_terms) == (("avg_ionic_char",), ())
    with pytest.raises(ValueError, match=r"stack\.correction_terms: unknown property \['gap'\]"):
        StackSettings(correction_terms={"gap": ("x",)})


def _gas_world(seed: int = 7):
    """Binary compounds M_k X whose DFT error is 0.6 per atomic fraction of a diatomic-gas anion (O, F, Cl), -0.3 of another.

    Without any oxide in training a per-element offset for O is 0; the class's shared term carries over.
    """
    rng = np.random.default_rng(seed)
    offset = {"O": 0.6, "F": 0.6, "Cl": 0.6, "S": -0.3, "Se": -0.3, "Br": -0.3}
    metals = ["Na", "K", "Li", "Mg", "Ca", "Sr", "Ba", "Al", "Zn", "Ga"]
    rows = [(f"{m}{k}{x}", x, 1 / (k + 1)) for m in metals for x in offset for k in range(1, 6)]
    formulas = [f for f, _, _ in rows]
    n = len(formulas)
    desc = pd.DataFrame({"formula": formulas, "a": rng.normal(size=n), "b": rng.normal(size=n)})
    dft = rng.uniform(-3, 0, n)
    y = dft + np.array([offset[x] * frac for _, x, frac in rows]) + rng.normal(0, 0.01, n)
    return formulas, np.array([x for _, x, _ in rows]), desc, y, pd.Series(dft, index=formulas)


def test_correction_classes_give_an_unseen_anion_its_class_offset(tmp_path):
    from models.learners import load_stacked, save_stacked

    world = _gas_world()
    desc = world[2]
    f_te, y_te, per_element, with_class = _anion_held_out("O", world, replace(FAST, correction_alpha=0.1),
                                                          correction_classes=("diatomic_gas",))
    # the oxides' own error averages 0.6 x 0.35 = 0.2 eV/atom (raw DFT misses by 0.17); per element they get
    # the others' mean offset (near 0). With the class the ridge shares F's and Cl's 0.6 between the class
    # (0.4, the least-norm split of two elements and their class) and the elements, so O inherits two thirds
    assert _corrected_mae(per_element, desc, f_te, y_te) > 0.12
    assert _corrected_mae(with_class, desc, f_te, y_te) < 0.08
    assert mae(y_te, with_class.predict(desc, f_te)) < 0.5 * mae(y_te, per_element.predict(desc, f_te))
    # saved and loaded: the classes are in the saved config, the predictions the same
    save_stacked(with_class, tmp_path / "m")
    loaded = load_stacked(tmp_path / "m")
    assert loaded.config.correction_classes == ("diatomic_gas",)
    np.testing.assert_allclose(loaded.predict(desc, f_te), with_class.predict(desc, f_te), atol=1e-12)


def test_correction_classes_are_named_classes_chosen_per_property():
    from models.learners import FitConfig
    from models.learners.config import StackSettings
    from models.properties import get_property

    with pytest.raises(ValueError, match=r"correction_classes: no element class 'gases' \(known: diatomic_gas"):
        replace(FAST, correction_alpha=1.0, correction_classes=("gases",))
    with pytest.raises(ValueError, match="need correction_alpha"):
        replace(FAST, correction_classes=("diatomic_gas",))
    with pytest.raises(ValueError, match="names a class twice"):
        replace(FAST, correction_alpha=1.0, correction_classes=["halogen", "halogen"])
    fit = FitConfig(stack=StackSettings(correction_classes={"formation_enthalpy": ("diatomic_gas",)}))
    gap, enthalpy = (fit.stack_config(get_property(n)) for n in ("band_gap", "formation_enthalpy"))
    assert (gap.correction_classes, enthalpy.correction_classes) == ((), ("diatomic_gas",))
    with pytest.raises(ValueError, match=r"stack\.correction_classes: unknown property \['gap'\]"):
        StackSettings(correction_classes={"gap": ("halogen",)})


def test_surrogate_remembers_the_trees_values_and_gives_the_same_numbers(tmp_path):
    """The full model's values are remembered by descriptor row: equal numbers, the trees walked once per row."""
    from models.learners import load_surrogate, save_surrogate

    formulas, desc, _, _, ref = _world()
    sur = DFTSurrogate(FAST).fit(desc, ref)
    save_surrogate(sur, tmp_path / "s")
    fresh = load_surrogate(tmp_path / "s")  # nothing remembered yet
    new = formulas[800:]
    x = desc.set_index("formula").loc[new, sur.columns_].to_numpy(np.float32)
    by_trees = sur.model_.predict(x)

    class Counting:  # the loaded booster, counting the rows it is asked for
        def __init__(self, booster):
            self.booster, self.rows = booster, 0

        def predict(self, x, **kwargs):
            self.rows += len(x)
            return self.booster.predict(x, **kwargs)

    only = load_surrogate(tmp_path / "s")
    only.model_ = asked = Counting(only.model_)
    # only the formulas the work ahead asks for (a repeat once, labelled ones from the out-of-fold values)
    assert only.remember(desc, [new[0], new[1], new[0], formulas[0]]) == 2 and asked.rows == 2
    fresh.model_ = counting = Counting(fresh.model_)
    shared = fresh.for_config(replace(FAST, n_jobs=2))  # a fold's copy, made before anything is remembered
    assert fresh.remember(desc) == 300 and counting.rows == 300  # every formula without a DFT label, once
    mixed = [*new[::-1], *formulas[:5], new[0]]  # other order, out-of-fold rows and a repeat
    got = shared.predict(desc, mixed)
    assert counting.rows == 300  # read, not recomputed, by the copy too
    np.testing.assert_array_equal(got[:300], by_trees[::-1])
    np.testing.assert_array_equal(got[300:305], sur.out_of_fold_.loc[formulas[:5]].to_numpy())
    assert got[305] == by_trees[0]
    # the memory is by descriptor row, not by name: a formula whose descriptors changed is computed again
    moved = desc.assign(c=desc["c"] + 1.0)
    x_moved = moved.set_index("formula").loc[new[:10], sur.columns_].to_numpy(np.float32)
    np.testing.assert_array_equal(shared.predict(moved, new[:10]), sur.model_.predict(x_moved))
    assert counting.rows == 310
    # a full memory starts afresh and still answers right
    fresh.MEMORY_ROWS = 50
    np.testing.assert_array_equal(fresh.predict(moved, new[10:110]), sur.predict(moved, new[10:110]))
    assert len(fresh._memory) <= 100
    # refitting forgets the old trees' values
    refit = DFTSurrogate(replace(FAST, surrogate_trees=20)).fit(desc, ref)
    first = refit.predict(desc, new)
    refit.fit(desc, ref.iloc[::-1] * 2)
    assert not np.allclose(refit.predict(desc, new), first)


def test_surrogate_with_bonding_columns_learns_what_the_descriptors_hide(tmp_path):
    """``surrogate_bonding``: the surrogate also sees featurizers.bonding's columns; a DFT value set by the anion
    fraction, behind descriptors that are noise, is learnt with them and not without; saved and reused as fitted."""
    from models.learners import load_surrogate, save_surrogate

    rng = np.random.default_rng(4)
    formulas = [f"Na{i}Cl{j}" for i in range(1, 40) for j in range(1, 30)]
    desc = pd.DataFrame({"formula": formulas, "a": rng.normal(size=len(formulas)), "b": rng.normal(size=len(formulas))})
    halogen = np.array([j / (i + j) for i in range(1, 40) for j in range(1, 30)])
    ref = pd.Series(4.0 * halogen, index=formulas)
    train, new = ref.iloc[::2], formulas[1::2]  # every other formula without a DFT value
    config = replace(FAST, surrogate_bonding=True)
    plain, bonded = DFTSurrogate(FAST).fit(desc, train), DFTSurrogate(config).fit(desc, train)
    truth = ref.loc[new].to_numpy()
    assert bonded.mae_ < 0.2 * plain.mae_
    assert mae(truth, bonded.predict(desc, new)) < 0.2 * mae(truth, plain.predict(desc, new))
    assert bonded.model_.n_features_ == 2 + 11 and bonded.columns_ == ["a", "b"]  # the stacked model's own columns
    save_surrogate(bonded, tmp_path / "s")
    loaded = load_surrogate(tmp_path / "s")
    np.testing.assert_array_equal(loaded.predict(desc, new), bonded.predict(desc, new))
    assert loaded.mismatch(config, desc, train) is None
    assert "surrogate_bonding True != False" in loaded.mismatch(FAST, desc, train)
