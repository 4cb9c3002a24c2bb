"""The evaluate stage's library: leak-freedom, metrics, shift distance and the summary."""

import numpy as np
import pandas as pd
import pytest

from models.evaluation import (
    BASELINES,
    CALIBRATIONS,
    GNN_VARIANTS,
    EvaluationResult,
    Fold,
    grouped_kfold,
    regression_metrics,
    summarise,
)
from models.evaluation import folds as ev
from models.evaluation import summary as ev_summary
from models.learners import DFTSurrogate, EntryTable, ModelConfig, StackConfig, TrainConfig, pretrain_members
from models.properties import reference_per_formula
from models.transport import (
    AlignConfig,
    CostWeights,
    Domain,
    DualConfig,
    NeuralAlignConfig,
    SolverOptions,
    fraction_matrix,
)
from tests.data import EVALUATE_FORMULAS

FORMULAS = list(EVALUATE_FORMULAS)
CFG = TrainConfig(epochs=3, batch_size=8, dft_batch_size=8, patience=3, val_fraction=0.2, w_calibrated=1.0,
                  freeze_encoder=True, clamp_min=0.0,
                  model=ModelConfig(comp_hidden=8, comp_layers=1, emb_dim=8, head_hidden=8, use_graphs=False))


def _domain(frame, prefix, features):
    fr, elements = fraction_matrix(list(frame["formula"]))
    return Domain(features=features.loc[frame["formula"]].to_numpy(float), values=frame["value"].to_numpy(float),
                  formulas=frame["formula"].to_numpy(), ids=np.array([f"{prefix}{i}" for i in range(len(frame))]),
                  fractions=fr, elements=elements, crystal_system=np.array([""] * len(frame)))


@pytest.fixture(scope="module")
def problem():
    """24 formulas, 2 DFT polymorphs and 2 measurements each (measured = 1.2 * DFT + 0.4 + noise)."""
    rng = np.random.default_rng(0)
    gap = {f: float(rng.uniform(0.5, 5)) for f in FORMULAS}
    desc = pd.DataFrame(rng.normal(size=(len(FORMULAS), 3)), columns=["d0", "d1", "d2"]).assign(formula=FORMULAS)
    feats = desc.set_index("formula")
    dft = pd.DataFrame({"formula": [f for f in FORMULAS for _ in range(2)]})
    dft["value"] = dft["formula"].map(gap) + rng.normal(0, 0.1, len(dft))
    dft["material_id"] = [f"mp-{i}" for i in range(len(dft))]
    exp = pd.DataFrame({"formula": [f for f in FORMULAS for _ in range(2)]})
    exp["value"] = 1.2 * exp["formula"].map(gap) + 0.4 + rng.normal(0, 0.05, len(exp))
    source, target = _domain(dft, "mp-", feats), _domain(exp, "x:", feats)
    ref = reference_per_formula(dft.rename(columns={"value": "dft_value"}), value="dft_value")
    table = EntryTable.build(dft=dft.rename(columns={"value": "dft_value"}), experiment=exp, descriptors=desc,
                             dft_reference=ref)
    pretrained = pretrain_members(table, CFG, n_members=1, epochs=1, batch_size=8, seed=0)
    stack_cfg = StackConfig(bags=2, trees=30, leaves=4, surrogate_trees=20, surrogate_leaves=4, n_jobs=1,
                            min_child_samples=3, correction_alpha=1.0)
    stack = ev.StackInputs(config=stack_cfg, dft_reference=ref, surrogate=DFTSurrogate(stack_cfg).fit(desc, ref))
    return {"source": source, "target": target, "table": table, "desc": desc, "exp": exp,
            "ref": exp["formula"].map(ref).to_numpy(float), "pretrained": pretrained, "stack": stack}


SETTINGS = AlignConfig(method="unbalanced", cost=CostWeights(), options=SolverOptions(reg=0.05),
                       energy_additivity=False)


NEURAL = NeuralAlignConfig(pca_components=2, dual=DualConfig(hidden=(8,), cond_hidden=8, iterations=30,
                                                            inner_steps=2, batch_size=32))


def _run(problem, fold, *, target=None, table=None, variants=("gnn_ot",), neural=None, stack=True):
    data = ev.FoldData(source=problem["source"], target=target or problem["target"], table=table or problem["table"],
                       descriptors=problem["desc"], dft_reference=problem["ref"])
    fitted = ev.FoldModels(train_config=CFG, align_config=SETTINGS, pretrained=problem["pretrained"], variants=variants,
                           rf_trees=5, stack=problem["stack"] if stack else None, neural=neural)
    return ev.evaluate_folds(data, [fold], fitted, shift_sample=50, ad_k=3, seed=0)


def _perturbed(problem, test_rows):
    """The same problem with the test measurements' values changed (everywhere they appear)."""
    import copy

    target = problem["target"]
    values = target.values.copy()
    values[test_rows] = values[test_rows] + 3.0
    new_target = Domain(features=target.features, values=values, formulas=target.formulas, ids=target.ids,
                        fractions=target.fractions, elements=target.elements, crystal_system=target.crystal_system)
    table = copy.copy(problem["table"])
    table.y_exp = table.y_exp.copy()
    table.y_exp[problem["source"].size + test_rows] += 3.0
    return new_target, table


def test_test_fold_targets_do_not_change_any_prediction(problem, monkeypatch):
    fold = grouped_kfold(problem["exp"]["formula"].tolist(), n_folds=4, seed=0)[0]
    variants = ("gnn_ot", "gnn_no_ot", "stacked", "stacked_ot")
    models = [*BASELINES, *variants, *CALIBRATIONS]
    base = _run(problem, fold, variants=variants, neural=NEURAL).predictions
    target, table = _perturbed(problem, fold.test)
    moved = _run(problem, fold, target=target, table=table, variants=variants, neural=NEURAL).predictions
    np.testing.assert_array_equal(moved["value"], base["value"] + 3.0)  # the perturbation did reach the test rows
    for m in models:
        # equal up to summation order (the forest averages its trees in parallel: 1 ulp apart);
        # a leak moves predictions by orders of magnitude more (below: > 1e-3)
        np.testing.assert_allclose(moved[m].to_numpy(), base[m].to_numpy(), rtol=1e-12, atol=1e-12, err_msg=m)

    # the test can fail: an alignment that also sees the test measurements leaks them into
    # the calibrated targets, and the OT model's predictions move
    monkeypatch.setattr(ev, "training_targets", lambda f: np.concatenate([f.train, f.test]))
    leaky = _run(problem, fold, variants=("gnn_ot", "stacked_ot")).predictions
    leaky_moved = _run(problem, fold, target=target, table=table, variants=("gnn_ot", "stacked_ot")).predictions
    for m in ("gnn_ot", "stacked_ot", "calib_ot_knn"):
        assert np.abs(leaky_moved[m].to_numpy() - leaky[m].to_numpy()).max() > 1e-3, m


def test_fold_outputs_cover_every_model_and_test_row(problem):
    fold = grouped_kfold(problem["exp"]["formula"].tolist(), n_folds=4, seed=1)[1]
    res = _run(problem, fold, variants=tuple(GNN_VARIANTS))
    p = res.predictions
    assert len(p) == len(fold.test)
    assert list(p["exp_id"]) == list(problem["target"].ids[fold.test])
    for m in res.models:
        assert np.isfinite(p[m]).all(), m
    row = res.folds.iloc[0]
    assert row["n_test"] == len(fold.test)
    assert row["mae_gnn_ot"] == pytest.approx(np.mean(np.abs(p["gnn_ot"] - p["value"])))
    assert 0 <= row["mass_moved_fraction_unbalanced"] <= 1
    assert ((p["ad_score"] >= 0) & (p["ad_score"] <= 100)).all()


def test_gnn_variants_alone_need_no_stack_inputs(problem):
    """`evaluate.full.models` without a stacked model: the evaluate stage builds no stack inputs (it crashed once)."""
    fold = grouped_kfold(problem["exp"]["formula"].tolist(), n_folds=4, seed=1)[1]
    alone = _run(problem, fold, variants=("gnn_no_ot", "gnn_ot"), stack=False).predictions
    assert "stacked" not in alone and np.isfinite(alone["gnn_ot"]).all()
    with_stack = _run(problem, fold, variants=("gnn_no_ot", "gnn_ot")).predictions
    np.testing.assert_array_equal(alone["gnn_ot"].to_numpy(), with_stack["gnn_ot"].to_numpy())


def test_unknown_variant_is_rejected(problem):
    fold = grouped_kfold(problem["exp"]["formula"].tolist(), n_folds=4, seed=0)[0]
    with pytest.raises(ValueError, match="unknown model variant 'gnn_magic'"):
        _run(problem, fold, variants=("gnn_magic",))


def test_regression_metrics_by_hand():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert m["mae"] == pytest.approx(1 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(1 / 3))
    assert m["r2"] == pytest.approx(0.5)  # SSE 1, SST 2
    with pytest.raises(ValueError, match="non-finite"):
        regression_metrics(np.array([1.0]), np.array([np.nan]))


def test_shift_distance_stays_finite_for_a_column_constant_in_training():
    rng = np.random.default_rng(5)
    train = np.column_stack([rng.normal(size=200), np.full(200, 0.3) + 1e-12 * rng.normal(size=200)])
    test = np.column_stack([rng.normal(size=50), rng.uniform(0.0, 1.0, size=50)])
    d = ev.shift_distance(train, test, sample=100)
    assert np.isfinite(d) and d < 1e3  # ~270 (a real shift: values never seen in training); ~1e22 with the raw std


def test_shift_distance_zero_for_same_cloud_and_squared_z_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)) * [1.0, 2.0, 4.0]
    assert ev.shift_distance(x, x, sample=40) == pytest.approx(0.0, abs=1e-12)
    # translating by one training std in every feature moves each point by z = 1 per dimension
    std = x.std(axis=0)
    assert ev.shift_distance(x, x + std, sample=40) == pytest.approx(1.0, rel=1e-9)
    with pytest.raises(ValueError, match="at least one row"):
        ev.shift_distance(x, x[:0])


def test_summary_pools_protocols_and_computes_gain():
    preds = pd.DataFrame({
        "protocol": ["loco", "loco", "family_out", "grouped_cv"], "fold": ["a", "a", "b", "0"],
        "value": [1.0, 2.0, 3.0, 4.0],
        "raw_dft": [2.0, 3.0, 4.0, 5.0], "linear_dft": [1.5, 2.5, 3.5, 4.0], "rf_descriptors": [1.2, 2.2, 3.2, 4.0],
        "gnn_no_ot": [1.3, 2.3, 3.3, 4.0], "gnn_ot": [1.1, 2.1, 3.1, 4.0],
        "ad_flag": [False, True, False, False], "ad_flag_measured": [False, False, False, True],
    })
    folds = pd.DataFrame({"protocol": ["loco", "family_out", "grouped_cv"], "fold": ["a", "b", "0"],
                          "shift_ot": [1.0, 2.0, 0.5]})
    res = EvaluationResult(predictions=preds, folds=folds,
                              models=["raw_dft", "linear_dft", "rf_descriptors", "gnn_no_ot", "gnn_ot"])
    s = summarise(res, ood_protocols=["loco", "family_out"])
    ood = s["pooled_ood"]
    assert ood["n_test_rows"] == 3
    assert ood["best_non_ot_model"] == "rf_descriptors"
    assert ood["mae"]["gnn_ot"] == pytest.approx(0.1)
    assert ood["gain_vs_best_non_ot"] == pytest.approx(1 - 0.1 / 0.2)
    assert s["protocols"]["loco"]["ad"]["n_flagged"] == 1
    assert s["protocols"]["loco"]["ad"]["mae_flagged"] == pytest.approx(0.1)
    assert s["protocols"]["grouped_cv"]["gnn_ot"]["mae"] == pytest.approx(0.0)
    assert s["protocols"]["family_out"]["shift_ot_mean"] == pytest.approx(2.0)
    # each named fold's own MAE (a family, a cluster); none for the random grouped-CV folds
    assert s["protocols"]["loco"]["per_fold"]["a"]["n_test_rows"] == 2
    assert s["protocols"]["loco"]["per_fold"]["a"]["raw_dft"] == pytest.approx(1.0)
    assert s["protocols"]["family_out"]["per_fold"]["b"]["gnn_ot"] == pytest.approx(0.1)
    assert "per_fold" not in s["protocols"]["grouped_cv"]


def test_subset_domain_keeps_rows_aligned(problem):
    rows = np.array([3, 0, 5])
    sub = ev.subset_domain(problem["target"], rows)
    assert list(sub.ids) == list(problem["target"].ids[rows])
    assert sub.fractions.shape == (3, problem["target"].fractions.shape[1])
    np.testing.assert_allclose(sub.features, problem["target"].features[rows])


def test_fold_with_empty_side_is_rejected(problem):
    fold = Fold("x", "empty", np.arange(10), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="fold x/empty has an empty side"):
        _run(problem, fold)


def test_folds_in_worker_processes_give_the_serial_results_in_fold_order(problem):
    """Each fold seeds its own models: two forked workers reproduce the serial run, in fold order."""
    folds = grouped_kfold(problem["exp"]["formula"].tolist(), n_folds=3, seed=0)
    data = ev.FoldData(source=problem["source"], target=problem["target"], table=problem["table"],
                       descriptors=problem["desc"], dft_reference=problem["ref"])
    fitted = ev.FoldModels(train_config=CFG, align_config=SETTINGS, pretrained=problem["pretrained"],
                           variants=("gnn_ot", "stacked_ot"), rf_trees=5, stack=problem["stack"], neural=NEURAL)
    seen = []
    runs = [ev.evaluate_folds(data, folds, fitted, shift_sample=50, ad_k=3, seed=0, workers=w,
                              on_fold=lambda k, n, row: seen.append((k, n, row["fold"]))) for w in (1, 2)]
    assert seen[:3] == seen[3:] == [(k, 3, f.name) for k, f in enumerate(folds)]
    serial, forked = (r.predictions for r in runs)
    numeric = serial.select_dtypes("number").columns
    pd.testing.assert_frame_equal(forked.drop(columns=numeric), serial.drop(columns=numeric))
    # equal up to summation order (the random forest averages its trees on threads: 1 ulp apart)
    np.testing.assert_allclose(forked[numeric].to_numpy(), serial[numeric].to_numpy(), rtol=1e-12, atol=1e-12)
    timing = [c for c in runs[0].folds if "seconds" in c]
    pd.testing.assert_frame_equal(runs[1].folds.drop(columns=timing), runs[0].folds.drop(columns=timing),
                                  check_exact=False, rtol=1e-12, atol=1e-12)


def test_stacked_models_on_other_seeds_folds_and_their_summary(problem, monkeypatch):
    """Extra seeds: the stacked models refitted on each seed's folds, leak-free, summarised as mean ± std and a paired CI."""
    formulas = problem["exp"]["formula"].tolist()
    folds = {s: grouped_kfold(formulas, n_folds=3, seed=s) for s in (0, 1, 2)}
    data = ev.FoldData(source=problem["source"], target=problem["target"], table=problem["table"],
                       descriptors=problem["desc"], dft_reference=problem["ref"])
    fitted = ev.FoldModels(train_config=CFG, align_config=SETTINGS, pretrained=problem["pretrained"],
                           variants=("stacked", "stacked_ot"), rf_trees=5, stack=problem["stack"])
    seen = []
    res = ev.evaluate_folds(data, folds[0], fitted, shift_sample=50, ad_k=3, seed=0, workers=2,
                            on_fold=lambda k, n, row: seen.append((k, n)), extra_seeds=[(1, folds[1]), (2, folds[2])])
    assert seen == [(0, 3), (1, 3), (2, 3)]  # the per-fold log covers the first seed's folds only
    sp = res.seed_predictions
    assert sorted(sp["seed"].unique()) == [0, 1, 2]
    n = problem["target"].size
    for s in (0, 1, 2):
        rows = sp[sp["seed"] == s]
        assert len(rows) == n and sorted(rows["exp_id"]) == sorted(problem["target"].ids)  # every row tested once
        assert np.isfinite(rows[["stacked", "stacked_ot"]].to_numpy()).all()
    # the first seed's rows are the main predictions; the other seeds' folds hold other rows out, so they differ
    first = sp[sp["seed"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(first[["exp_id", "stacked", "stacked_ot"]],
                                  res.predictions[["exp_id", "stacked", "stacked_ot"]])
    by_id = sp.pivot_table(index="exp_id", columns="seed", values="stacked")
    assert (by_id[1] != by_id[0]).mean() > 0.5 and (by_id[2] != by_id[1]).mean() > 0.5
    # summary: per seed MAE by hand, mean and std over them; the OT features' difference with an interval around it
    summary = ev_summary.seed_summary(sp.assign(protocol="grouped_cv"), ood_protocols=["grouped_cv"])
    entry = summary["protocols"]["grouped_cv"]
    per_seed = [float(np.mean(np.abs(g["stacked_ot"] - g["value"]))) for _, g in sp.groupby("seed")]
    assert entry["stacked_ot"]["per_seed"] == pytest.approx(per_seed)
    assert entry["stacked_ot"]["mean"] == pytest.approx(np.mean(per_seed))
    assert entry["stacked_ot"]["std"] == pytest.approx(np.std(per_seed))
    diff = entry["ot_features"]
    assert diff["diff"] == pytest.approx(entry["stacked_ot"]["mean"] - entry["stacked"]["mean"])
    assert diff["ci95"][0] <= diff["diff"] <= diff["ci95"][1]
    assert summary["protocols"]["pooled_ood"]["stacked"] == entry["stacked"]
    # leak-free on the extra seeds too: moving the test values of one extra fold moves none of its predictions
    fold = folds[2][0]
    target, table = _perturbed(problem, fold.test)
    moved_data = ev.FoldData(source=problem["source"], target=target, table=table, descriptors=problem["desc"],
                             dft_reference=problem["ref"])
    runner = ev._FoldRunner(data, fitted, ad_k=3, ad_threshold=95.0, seed=0, device=None)
    moved = ev._FoldRunner(moved_data, fitted, ad_k=3, ad_threshold=95.0, seed=0, device=None)
    base, after = runner.run_stacked(fold, 2), moved.run_stacked(fold, 2)
    np.testing.assert_allclose(after[["stacked", "stacked_ot"]], base[["stacked", "stacked_ot"]], rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(ev, "training_targets", lambda f: np.concatenate([f.train, f.test]))
    assert np.abs(moved.run_stacked(fold, 2)["stacked_ot"] - runner.run_stacked(fold, 2)["stacked_ot"]).max() > 1e-3
    with pytest.raises(ValueError, match="extra seeds refit the stacked models"):
        ev.evaluate_folds(data, folds[0], ev.FoldModels(train_config=CFG, align_config=SETTINGS,
                                                        pretrained=problem["pretrained"], variants=("gnn_ot",)),
                          extra_seeds=[(1, folds[1])])


def test_paired_by_formula_resamples_whole_formulas():
    """Rows of one formula move together: one formula with a big difference widens the interval, not the row count."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 400)
    b = a + 0.1
    formulas = np.repeat([f"F{i}" for i in range(100)], 4)
    diff, lo, hi = ev_summary.paired_by_formula(a, b, formulas)
    assert diff == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    b2 = b.copy()
    b2[formulas == "F0"] += 10.0  # one formula, four rows: its draw count decides the mean
    diff2, lo2, hi2 = ev_summary.paired_by_formula(a, b2, formulas)
    assert lo2 < diff2 < hi2 and hi2 - lo2 > 0.1
    with pytest.raises(ValueError, match="no rows"):
        ev_summary.paired_by_formula(np.zeros(0), np.zeros(0), [])
