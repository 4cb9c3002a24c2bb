"""The pretrain stage's encoders are the train stage's own pretraining, computed once (models/learners/pretrained.py)."""

import dataclasses
import json
import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from models.learners import (
    PRETRAIN_FIELDS,
    EntryTable,
    FitConfig,
    ModelConfig,
    PretrainedEncoders,
    TrainConfig,
    load_pretrained,
    pretrain_members,
    pretraining_table,
    reuse_pretrained,
    save_pretrained,
)
from models.properties import get_property, reference_per_formula
from tests.data import FORMULAS

BAND_GAP = get_property("band_gap")
FIT = FitConfig(seed=3, members=2, encoders=2, workers=1,
                model=ModelConfig(comp_hidden=8, comp_layers=1, emb_dim=8, head_hidden=8, use_graphs=False),
                optim=TrainConfig(epochs=2, pretrain_epochs=2, pretrain_batch_size=8, batch_size=8, dft_batch_size=8))


def _frames(seed: int = 0):
    rng = np.random.default_rng(seed)
    formulas = list(FORMULAS[:20])
    dft = pd.DataFrame({"material_id": [f"mp-{k}" for k in range(40)], "formula": formulas * 2,
                        "dft_value": rng.uniform(0, 4, 40), "calibrated_target": rng.uniform(0, 5, 40),
                        "confidence": 0.8})
    exp = pd.DataFrame({"formula": formulas[:12], "value": rng.uniform(0, 5, 12)})
    desc = pd.DataFrame({"formula": formulas, "d0": rng.normal(size=20), "d1": rng.normal(size=20)})
    ref = dft.groupby("formula")["dft_value"].min()
    return dft, exp, desc, ref


def _table(dft, desc, ref, exp=None) -> EntryTable:
    return EntryTable.build(dft=dft, experiment=exp, descriptors=desc, dft_reference=ref)


def _equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))


def test_pretraining_on_the_dft_rows_alone_is_the_train_stage_s_pretraining_bit_for_bit():
    """The stage builds its table without measurements or calibrated targets: the states are the ones train computes."""
    dft, exp, desc, ref = _frames()
    config = FIT.train_config(BAND_GAP)
    in_train = pretrain_members(_table(dft, desc, ref, exp), config, n_members=2, epochs=2, batch_size=8, seed=3)
    stage = PretrainedEncoders.fit(_table(dft.drop(columns=["calibrated_target", "confidence"]), desc, ref), FIT,
                                   BAND_GAP)
    assert _equal(stage.states, in_train)
    # the fingerprint sees the DFT rows only: the train stage's table (measurements, calibrated targets) matches it
    assert stage.mismatch(_table(dft, desc, ref, exp), FIT, BAND_GAP) is None


def test_the_pretraining_table_is_the_dft_rows_with_a_value_and_matches_the_train_stage_s():
    """pretraining_table (the pretrain stage's, and evaluate's when it pretrains itself): DFT entries with a value only."""
    dft, exp, desc, _ = _frames()
    raw = dft.drop(columns=["calibrated_target", "confidence"]).rename(columns={"dft_value": BAND_GAP.dft_column})
    raw.loc[[3, 7], BAND_GAP.dft_column] = np.nan  # entries without this property's value
    table = pretraining_table(raw, BAND_GAP, descriptors=desc)
    assert len(table) == 38 and not table.is_experiment.any()
    assert np.array_equal(table.y_dft, raw[BAND_GAP.dft_column].dropna().to_numpy())
    kept = dft.drop(index=[3, 7]).reset_index(drop=True)
    stage = PretrainedEncoders.fit(table, FIT, BAND_GAP)
    assert stage.mismatch(_table(kept, desc, reference_per_formula(kept), exp), FIT, BAND_GAP) is None


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrainConfig)
                                  if f.name not in PRETRAIN_FIELDS and f.name != "model"])
def test_settings_outside_the_pretrain_fields_leave_the_states_unchanged(name):
    """What the DVC stage does not list as a param must not change its output (else a change would not rerun it)."""
    dft, exp, desc, ref = _frames()
    table = _table(dft, desc, ref, exp)
    config = FIT.train_config(BAND_GAP)
    value = getattr(config, name)
    other = {bool: lambda v: not v, int: lambda v: v + 3, float: lambda v: v * 0.5 + 0.01}[type(value)]
    # freeze_graph needs freeze_encoder
    changed = replace(config, **{name: other(value)}, **({"freeze_encoder": True} if name == "freeze_graph" else {}))
    assert getattr(changed, name) != value
    base = pretrain_members(table, config, n_members=1, epochs=2, batch_size=8, seed=3)
    assert _equal(pretrain_members(table, changed, n_members=1, epochs=2, batch_size=8, seed=3), base)


def test_a_listed_setting_changes_the_states_and_the_mismatch_names_it():
    dft, exp, desc, ref = _frames()
    table = _table(dft, desc, ref, exp)
    stage = PretrainedEncoders.fit(table, FIT, BAND_GAP)
    faster = replace(FIT, optim=replace(FIT.optim, lr=1e-2))
    assert not _equal(PretrainedEncoders.fit(table, faster, BAND_GAP).states, stage.states)
    assert "lr 0.002 != 0.01" in stage.mismatch(table, faster, BAND_GAP)
    assert "n_encoders 2 != 1" in stage.mismatch(table, replace(FIT, encoders=1), BAND_GAP)
    assert "model" in stage.mismatch(table, replace(FIT, model=replace(FIT.model, emb_dim=4)), BAND_GAP)
    # fine-tuning settings are not pretraining's: the encoders still fit
    assert stage.mismatch(table, replace(FIT, optim=replace(FIT.optim, epochs=9, w_ot=0.5)), BAND_GAP) is None
    # a DFT label or descriptor that differs is another pretraining; a measurement is not
    relabelled = dft.assign(dft_value=dft["dft_value"].where(dft.index != 5, 9.0))
    assert "other DFT entries" in stage.mismatch(_table(relabelled, desc, ref, exp), FIT, BAND_GAP)
    moved = desc.assign(d0=desc["d0"] + (desc.index == 0))
    assert "other DFT entries" in stage.mismatch(_table(dft, moved, ref, exp), FIT, BAND_GAP)
    assert stage.mismatch(_table(dft, desc, ref, exp.assign(value=-1.0)), FIT, BAND_GAP) is None


def test_saved_encoders_load_as_written_and_an_altered_file_is_refused(tmp_path, caplog):
    dft, exp, desc, ref = _frames()
    table = _table(dft, desc, ref, exp)
    stage = PretrainedEncoders.fit(table, FIT, BAND_GAP)
    save_pretrained(stage, tmp_path / "p")
    back = load_pretrained(tmp_path / "p")
    assert _equal(back.states, stage.states) and back.settings == stage.settings
    assert back.fingerprint == stage.fingerprint
    with caplog.at_level(logging.INFO, logger="models.learners.pretrained"):
        reused = reuse_pretrained(back, table, FIT, BAND_GAP, who="train band_gap")
        assert _equal(reused, stage.states) and "from the pretrain stage" in caplog.text
        assert reuse_pretrained(back, table, replace(FIT, seed=4), BAND_GAP, who="train band_gap") is None
        assert "seed 3 != 4" in caplog.text and "pretraining here" in caplog.text
    assert reuse_pretrained(None, table, FIT, BAND_GAP, who="x") is None
    (tmp_path / "p/encoder_1.pt").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match=r"encoder_1\.pt"):
        load_pretrained(tmp_path / "p")
    header = json.loads((tmp_path / "p/pretrained.json").read_text())
    assert set(header["files"]) == {"encoder_0.pt", "encoder_1.pt"} and header["settings"]["n_encoders"] == 2
