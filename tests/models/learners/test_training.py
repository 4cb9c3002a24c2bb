from dataclasses import replace

import numpy as np
import ot
import pandas as pd
import pytest
import torch

from models.learners import (
    EntryTable,
    ModelConfig,
    TrainConfig,
    determine_device,
    grouped_split,
    predict,
    scaling_unbalanced_sinkhorn,
    train_ensemble,
    train_model,
    unbalanced_sinkhorn,
    uot_embedding_loss,
)
from tests.data import synthetic_table

SMALL = ModelConfig(comp_hidden=16, comp_layers=1, emb_dim=8, head_hidden=16)


def test_unbalanced_sinkhorn_matches_pot():
    rng = np.random.default_rng(0)
    cost = rng.uniform(size=(6, 5))
    a = rng.uniform(0.5, 1.5, 6)
    b = rng.uniform(0.5, 1.5, 5)
    a, b = a / a.sum(), b / b.sum() * 1.3
    ref = ot.unbalanced.sinkhorn_unbalanced(a, b, cost, 0.1, 0.7, numItermax=5000, stopThr=1e-14)
    ref_loss = ot.unbalanced.sinkhorn_unbalanced2(
        torch.tensor(a), torch.tensor(b), torch.tensor(cost), 0.1, 0.7, numItermax=5000, stopThr=1e-14)
    plan = unbalanced_sinkhorn(torch.tensor(cost), torch.tensor(a), torch.tensor(b), reg=0.1, reg_m=0.7, n_iter=2000)
    np.testing.assert_allclose(plan.numpy(), ref, rtol=1e-6, atol=1e-12)
    assert float((plan * torch.tensor(cost)).sum()) == pytest.approx(float(ref_loss), rel=1e-6)
    # unbalanced: the marginals are relaxed, not imposed
    assert float(plan.sum()) != pytest.approx(1.0, abs=1e-3)


def test_uot_embedding_loss_has_gradients_and_prefers_aligned_clouds():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=g, requires_grad=True)
    y = torch.randn(15, 4, generator=g)
    loss = uot_embedding_loss(x, y + 3.0)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    near = uot_embedding_loss(y[:10].detach(), y[5:].detach())
    assert float(near) < float(uot_embedding_loss(x.detach(), y + 3.0))


def test_scaling_domain_sinkhorn_is_the_log_domain_one_and_steps_aside_where_its_kernel_underflows():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(30, 6, generator=g, dtype=torch.float64) + 0.5
    cost = torch.cdist(x, y).pow(2)
    cost = cost / cost.detach().mean()
    a, b = torch.full((40,), 1 / 40, dtype=torch.float64), torch.full((30,), 1 / 30, dtype=torch.float64)
    log_plan = unbalanced_sinkhorn(cost, a, b, reg=0.1, reg_m=1.0, n_iter=30)
    (log_grad,) = torch.autograd.grad((log_plan * cost).sum(), x, retain_graph=True)
    plan = scaling_unbalanced_sinkhorn(cost, a, b, reg=0.1, reg_m=1.0, n_iter=30)
    (grad,) = torch.autograd.grad((plan * cost).sum(), x)
    torch.testing.assert_close(plan, log_plan, rtol=1e-10, atol=1e-18)
    torch.testing.assert_close(grad, log_grad, rtol=1e-9, atol=1e-15)
    # one point far from every other: its row of exp(-C/eps) underflows, the log domain takes over
    far = torch.cat([y.detach(), torch.full((1, 6), 60.0, dtype=torch.float64)])
    far_cost = torch.cdist(x.detach(), far).pow(2)
    far_cost = far_cost / far_cost.mean()
    b31 = torch.full((31,), 1 / 31, dtype=torch.float64)
    assert scaling_unbalanced_sinkhorn(far_cost, a, b31, reg=0.01, reg_m=1.0, n_iter=30) is None
    loss = uot_embedding_loss(x.detach().float(), far.float(), reg=0.01, n_iter=30)
    assert torch.isfinite(loss)


def test_grouped_split_keeps_groups_apart():
    groups = ["a", "a", "b", "c", "c", "c", "d", "e", "f", "g"]
    tr, va = grouped_split(groups, fraction=0.3, seed=1)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(10))
    assert not {groups[i] for i in tr} & {groups[i] for i in va}
    assert len({groups[i] for i in va}) == 2


def test_trainer_lowers_loss_and_selects_best_epoch():
    table = synthetic_table()
    cfg = TrainConfig(epochs=25, batch_size=16, dft_batch_size=16, lr=5e-3, patience=25, model=SMALL)
    res = train_model(table, cfg, seed=0)
    vals = [h.val_mae for h in res.history]
    assert res.best_epoch == int(np.argmin(vals))
    assert res.best_val_mae == pytest.approx(min(vals))
    assert res.history[-1].loss_exp < 0.5 * res.history[0].loss_exp
    assert min(vals) < 0.5 * vals[0]
    assert all(h.loss_ot > 0 and h.loss_calibrated > 0 for h in res.history)
    no_ot = train_model(table, replace(cfg, use_ot=False, epochs=2), seed=0)
    assert all(h.loss_ot == 0 and h.loss_calibrated == 0 for h in no_ot.history)


def test_training_is_seeded_and_ignores_rows_outside_training():
    table = synthetic_table()
    exp_rows = np.flatnonzero(table.is_experiment)
    held_out = exp_rows[-6:]  # two formulas' worth of measurements as a test set
    train_rows = np.setdiff1d(np.arange(len(table)), held_out)
    cfg = TrainConfig(epochs=6, batch_size=16, dft_batch_size=16, patience=2, model=SMALL)
    r1 = train_model(table, cfg, seed=3, train_rows=train_rows)
    r2 = train_model(table, cfg, seed=3, train_rows=train_rows)
    p1, p2 = predict(r1.model, table).experiment, predict(r2.model, table).experiment
    np.testing.assert_array_equal(p1, p2)
    # validation comes from the training measurements only
    assert set(r1.val_rows) <= set(exp_rows) - set(held_out)
    # the held-out labels cannot influence training, early stopping or selection
    poisoned = synthetic_table()
    poisoned.y_exp[held_out] = 1e6
    r3 = train_model(poisoned, cfg, seed=3, train_rows=train_rows)
    np.testing.assert_array_equal(predict(r3.model, table).experiment, p1)
    assert [h.val_mae for h in r3.history] == [h.val_mae for h in r1.history]
    assert r3.best_epoch == r1.best_epoch


def test_resume_from_checkpoint_gives_the_same_model(tmp_path):
    table = synthetic_table()
    cfg = TrainConfig(epochs=5, batch_size=16, dft_batch_size=16, patience=10, model=SMALL)
    full = train_model(table, cfg, seed=1)
    ckpt = tmp_path / "ckpt.pt"
    part = train_model(table, cfg, seed=1, checkpoint=ckpt, stop_after=2)
    assert len(part.history) == 2 and ckpt.exists()
    resumed = train_model(table, cfg, seed=1, checkpoint=ckpt)
    assert len(resumed.history) == 5
    np.testing.assert_allclose(predict(resumed.model, table).experiment, predict(full.model, table).experiment,
                               rtol=1e-5, atol=1e-6)


def test_ensemble_mean_and_spread():
    table = synthetic_table()
    cfg = TrainConfig(epochs=2, batch_size=16, dft_batch_size=16, model=SMALL)
    ens = train_ensemble(table, cfg, n_members=2, seed=0, device=determine_device("cpu"))
    pred = ens.predict(table)
    members = [predict(m.model, table).experiment for m in ens.members]
    np.testing.assert_allclose(pred.experiment, np.mean(members, axis=0), rtol=1e-6)
    assert (pred.experiment_std > 0).all()
    assert [m.seed for m in ens.members] == [0, 1]


def test_config_validation():
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ValueError, match="descriptors missing for 1 formulas"):
        EntryTable.build(experiment=pd.DataFrame({"formula": ["NaCl"], "value": [1.0]}),
                         descriptors=pd.DataFrame({"formula": ["KCl"], "a": [1.0]}))


def test_entries_with_crystal_graphs_use_the_crystal_encoder():
    from torch_geometric.data import Data

    g = torch.Generator().manual_seed(0)

    def graph(n):
        ei = torch.tensor([[i, j] for i in range(n) for j in range(n) if i != j]).T
        return Data(x=torch.randn(n, 4, generator=g), edge_index=ei, edge_attr=torch.rand(ei.shape[1], 6, generator=g))

    dft = pd.DataFrame({"material_id": ["mp-1", "mp-2", "mp-3"], "formula": ["NaCl", "Si", "GaN"], "dft_value": [5.0, 0.6, 1.8]})
    exp = pd.DataFrame({"formula": ["NaCl", "Si", "GaN", "ZnO"], "value": [8.5, 1.1, 3.4, 3.4],
                        "material_id": ["mp-1", "mp-2", None, None]})
    table = EntryTable.build(dft=dft, experiment=exp, graphs={"mp-1": graph(2), "mp-2": graph(2)})
    assert table.graph_dims() == (4, 6)
    assert [x is not None for x in table.graphs] == [True, True, False, True, True, False, False]
    res = train_model(table, TrainConfig(epochs=2, batch_size=2, dft_batch_size=2, val_fraction=0.3, model=SMALL), seed=0)
    assert res.model.crystal is not None and res.model.crystal.node_dim == 4
    batch = table.batch(np.arange(len(table)), torch.device("cpu"))
    assert batch["graph_rows"].tolist() == [0, 1, 3, 4]
    assert np.isfinite(predict(res.model, table).experiment).all()


def _graph_table() -> EntryTable:
    """Eight DFT entries (six with a crystal graph) and five measurements (three with one)."""
    from torch_geometric.data import Data

    g = torch.Generator().manual_seed(1)

    def graph(n):
        ei = torch.tensor([[i, j] for i in range(n) for j in range(n) if i != j]).T
        return Data(x=torch.randn(n, 4, generator=g), edge_index=ei, edge_attr=torch.rand(ei.shape[1], 6, generator=g))

    formulas = ["NaCl", "Si", "GaN", "ZnO", "MgO", "GaAs", "KCl", "AlN"]
    ids = [f"mp-{k}" for k in range(len(formulas))]
    dft = pd.DataFrame({"material_id": ids, "formula": formulas, "dft_value": [5.0, 0.6, 1.8, 0.8, 4.5, 0.5, 5.1, 4.2]})
    exp = pd.DataFrame({"formula": formulas[:5], "value": [8.5, 1.1, 3.4, 3.4, 7.8],
                        "material_id": [ids[0], ids[1], None, ids[3], None]})
    return EntryTable.build(dft=dft, experiment=exp, graphs={m: graph(2 + k % 2) for k, m in enumerate(ids[:6])})


def test_frozen_crystal_graph_encoder_joins_the_cached_embeddings():
    """freeze_graph: the crystal encoder keeps its pretrained weights and its output is in the cached embeddings."""
    from models.learners import build_model, frozen_embeddings, pretrain_members

    table = _graph_table()
    cfg = TrainConfig(epochs=3, batch_size=2, dft_batch_size=4, val_fraction=0.3, model=SMALL, freeze_encoder=True)
    frozen = replace(cfg, freeze_graph=True)
    state = pretrain_members(table, frozen, n_members=1, epochs=1, batch_size=4)[0]  # pretraining trains both encoders
    emb = frozen_embeddings(table, frozen, state)
    model = build_model(cfg, table)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():  # the embedding without the descriptor part: composition plus, where one exists, graph
        b = table.batch(np.arange(len(table)), torch.device("cpu"))
        full = model.embed(**{k: v for k, v in b.items() if k != "dft_value"})[:, : SMALL.emb_dim]
        comp = model.composition(b["z"], b["weight"], b["batch"], num_graphs=len(table))
    assert torch.allclose(emb, full, atol=1e-6)
    has_graph = np.array([x is not None for x in table.graphs])
    assert not torch.allclose(emb[has_graph], comp[has_graph]) and torch.equal(emb[~has_graph], comp[~has_graph])
    assert not torch.allclose(emb, frozen_embeddings(table, cfg, state))  # without freeze_graph: composition only

    res = train_model(table, frozen, seed=0, init_state=state)
    new = res.model.state_dict()
    assert all(torch.equal(new[k], state[k]) for k in state if k.startswith(("composition.", "crystal.")))
    assert not torch.equal(new["exp_head.0.weight"], state["exp_head.0.weight"])
    # the member sees what it trained on: its prediction (graphs convolved again) equals the heads on the cache
    with torch.no_grad():
        cached = res.model(**table.batch(np.arange(len(table)), torch.device("cpu"), graphs=False),
                           composition_embedding=emb).experiment.numpy()
    assert np.allclose(predict(res.model, table).experiment, cached, atol=1e-5)
    # without freeze_graph the crystal encoder trains
    moving = train_model(table, cfg, seed=0, init_state=state).model.state_dict()
    assert any(not torch.equal(moving[k], state[k]) for k in state if k.startswith("crystal."))
    with pytest.raises(ValueError, match="freeze_graph needs freeze_encoder"):
        TrainConfig(freeze_graph=True)


def test_predictions_from_the_cached_embeddings_equal_the_encoders_run_again():
    """A frozen member's validation and test rows are scored on the cached encoder output.

    Instead of running the encoders (and convolving every crystal graph) again: the same numbers, graphs or not.
    """
    from models.learners import frozen_embeddings, predict_ensemble, pretrain_members

    table = _graph_table()
    for freeze_graph in (True, False):
        cfg = TrainConfig(epochs=3, batch_size=2, dft_batch_size=4, val_fraction=0.3, model=SMALL, freeze_encoder=True,
                          freeze_graph=freeze_graph)
        state = pretrain_members(table, cfg, n_members=1, epochs=1, batch_size=4)[0]
        emb = frozen_embeddings(table, cfg, state)
        res = train_model(table, cfg, seed=0, init_state=state, embeddings=emb)
        rows = np.array([9, 10, 12, 2])  # measurements with and without a graph, and a DFT entry
        again = predict(res.model, table, rows)
        cached = predict(res.model, table, rows, embeddings=emb, graphs_embedded=freeze_graph)
        assert np.allclose(cached.experiment, again.experiment, atol=1e-5)
        assert np.allclose(cached.dft, again.dft, atol=1e-5)
        both = predict_ensemble([res.model, res.model], table, rows, embeddings=[emb, None], graphs_embedded=freeze_graph)
        assert np.allclose(both.experiment, again.experiment, atol=1e-5)
        # the validation MAE the member selected its epoch on is the cached prediction's
        val = res.val_rows[table.is_experiment[res.val_rows]]
        best = predict(res.model, table, val, embeddings=emb, graphs_embedded=freeze_graph)
        assert np.mean(np.abs(best.experiment - table.y_exp[val])) == pytest.approx(res.best_val_mae, abs=1e-6)
    # a cache with a graph branch missing gives other numbers: graphs_embedded must say what the cache holds
    comp_only = frozen_embeddings(table, replace(cfg, freeze_graph=False), state)
    wrong = predict(res.model, table, rows, embeddings=comp_only, graphs_embedded=True)
    assert not np.allclose(wrong.experiment, again.experiment, atol=1e-3)
    with pytest.raises(ValueError, match="embeddings for 12 rows"):
        predict(res.model, table, rows, embeddings=emb[:-1])
    with pytest.raises(ValueError, match="1 embeddings for 2 members"):
        predict_ensemble([res.model, res.model], table, rows, embeddings=[emb])


def test_pretraining_uses_dft_rows_only():
    from models.learners import pretrain_members

    table = synthetic_table()
    cfg = TrainConfig(epochs=1, model=SMALL)
    s1 = pretrain_members(table, cfg, n_members=1, epochs=2, batch_size=8, seed=0)[0]
    poisoned = synthetic_table()
    poisoned.y_exp[:] = -1e6
    # the DFT entries' calibrated targets are the align stage's, made of measurements: DFT-only pretraining ignores them
    poisoned.calibrated[:] = -1e6
    s2 = pretrain_members(poisoned, cfg, n_members=1, epochs=2, batch_size=8, seed=0)[0]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert np.isfinite(table.calibrated[~table.is_experiment]).all()  # there were targets to ignore


def test_reference_per_formula_prefers_lowest_energy_polymorph():
    from models.properties import reference_per_formula

    frame = pd.DataFrame({"formula": ["TiO2", "TiO2", "ZnO", "ZnO"], "dft_value": [1.8, 2.1, 0.7, 0.9],
                          "e_above_hull": [0.05, 0.0, np.nan, np.nan]})
    ref = reference_per_formula(frame.rename(columns={"e_above_hull": "stability"}), value="dft_value")
    assert ref["TiO2"] == pytest.approx(2.1) and ref["ZnO"] == pytest.approx(0.8)


def test_freeze_encoder_trains_heads_only():
    from models.learners import pretrain_members

    table = synthetic_table()
    cfg = TrainConfig(epochs=3, batch_size=16, dft_batch_size=16, model=SMALL, freeze_encoder=True)
    state = pretrain_members(table, cfg, n_members=1, epochs=1, batch_size=8)[0]
    res = train_model(table, cfg, seed=0, init_state=state)
    new = res.model.state_dict()
    assert all(torch.equal(new[k], state[k]) for k in state if k.startswith("composition."))
    assert not torch.equal(new["exp_head.0.weight"], state["exp_head.0.weight"])
    with pytest.raises(ValueError, match="freeze_encoder needs init_state"):
        train_model(table, cfg, seed=0)


def test_embeddings_computed_once_give_the_member_a_frozen_encoder_computes_itself():
    """The train stage's members sharing an encoder, and every evaluate fold, take the encoder's output once."""
    from models.learners import frozen_embeddings, pretrain_members

    table = synthetic_table()
    cfg = TrainConfig(epochs=3, batch_size=16, dft_batch_size=16, model=SMALL, freeze_encoder=True)
    state = pretrain_members(table, cfg, n_members=1, epochs=1, batch_size=8)[0]
    emb = frozen_embeddings(table, cfg, state)
    assert emb.shape == (len(table), SMALL.emb_dim) and not emb.requires_grad
    own = train_model(table, cfg, seed=0, init_state=state)
    shared = train_model(table, cfg, seed=0, init_state=state, embeddings=emb)
    assert [h.val_mae for h in shared.history] == [h.val_mae for h in own.history]
    a, b = own.model.state_dict(), shared.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # embeddings of another table, or with an encoder that trains, are refused
    with pytest.raises(ValueError, match="embeddings of shape"):
        train_model(table, cfg, seed=0, init_state=state, embeddings=emb[:-1])
    with pytest.raises(ValueError, match="need freeze_encoder"):
        train_model(table, replace(cfg, freeze_encoder=False), seed=0, init_state=state, embeddings=emb)
    with pytest.raises(ValueError, match=r"needs config\.freeze_encoder"):
        frozen_embeddings(table, replace(cfg, freeze_encoder=False), state)
    with pytest.raises(ValueError, match="init_state"):
        frozen_embeddings(table, cfg, None)


def test_selection_formulas_lose_their_calibrated_targets():
    """The GNNs of the train stage never train on a held-out formula's measurement carried onto its DFT entries."""
    from models.learners import FitConfig
    from models.learners.fit import _split

    formulas = [f"Na{k}Cl" if k > 1 else "NaCl" for k in range(1, 21)]
    dft = pd.DataFrame({"material_id": [f"mp-{k}" for k in range(20)], "formula": formulas,
                        "dft_value": np.linspace(0.5, 5.0, 20), "calibrated_target": np.linspace(1.0, 6.0, 20),
                        "confidence": np.full(20, 0.8)})
    exp = pd.DataFrame({"formula": formulas, "value": np.linspace(1.0, 6.0, 20)})
    split = _split(dft, exp, None, pd.Series(dtype=float), None, FitConfig(selection_fraction=0.25))
    held = set(split.sel["formula"])
    assert 0 < len(held) < 20 and not held & set(split.tr["formula"])
    dft_rows = ~split.table.is_experiment
    is_held = np.isin(np.asarray(split.table.formulas)[dft_rows], list(held))
    cal, conf = split.table.calibrated[dft_rows], split.table.confidence[dft_rows]
    assert np.isnan(cal[is_held]).all() and np.isnan(conf[is_held]).all()
    assert np.isfinite(cal[~is_held]).all() and (conf[~is_held] == 0.8).all()


def test_validation_formulas_calibrated_targets_never_reach_the_loss():
    """Early stopping scores the validation formulas: their DFT entries' calibrated targets (their own measurements,
    under the hard block) must not train the model, while every other formula's still does."""
    table = synthetic_table()
    cfg = TrainConfig(epochs=5, batch_size=16, dft_batch_size=16, patience=5, model=SMALL)
    ref = train_model(table, cfg, seed=3)
    formulas = np.asarray(table.formulas, dtype=object)
    dft_rows = np.flatnonzero(~table.is_experiment)
    val_formulas = {formulas[i] for i in ref.val_rows}
    held = dft_rows[np.isin(formulas[dft_rows], list(val_formulas))]
    other = dft_rows[~np.isin(formulas[dft_rows], list(val_formulas))]
    assert len(held) and len(other) and np.isfinite(table.calibrated[held]).all()

    # far below every prediction: with the L1 loss only the sign of the error reaches the gradient
    poisoned = synthetic_table()
    poisoned.calibrated[held] = -1e3
    res = train_model(poisoned, cfg, seed=3)
    np.testing.assert_array_equal(predict(res.model, table).experiment, predict(ref.model, table).experiment)
    assert [h.val_mae for h in res.history] == [h.val_mae for h in ref.history]
    assert [h.loss_calibrated for h in res.history] == [h.loss_calibrated for h in ref.history]

    # the same poison on a training formula's entries does reach the model (the test can fail)
    moved = synthetic_table()
    moved.calibrated[other[:4]] = -1e3
    res = train_model(moved, cfg, seed=3)
    assert not np.array_equal(predict(res.model, table).experiment, predict(ref.model, table).experiment)
