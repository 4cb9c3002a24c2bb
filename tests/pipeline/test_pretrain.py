"""`matshift pretrain`: the train stage's DFT pretraining as its own output, and what train does with it."""

import argparse
import json
import logging

import pytest

from pipeline import pretrain as stage
from pipeline import train
from pipeline.cli import main
from pipeline.config import ConfigError
from pipeline.errors import MissingInputError
from tests.data import train_inputs, train_params


def _args(params):
    return argparse.Namespace(params=params, property="band_gap")


def test_train_takes_the_stage_s_encoders_and_pretrains_itself_when_they_are_not_its_own(tmp_path, caplog):
    train_inputs(tmp_path)
    params = train_params(tmp_path)
    assert stage.run(_args(params)) == 0
    header = json.loads((tmp_path / "pretrained/band_gap/pretrained.json").read_text())
    assert list(header["files"]) == ["encoder_0.pt"] and header["settings"]["pretrain_epochs"] == 1
    with caplog.at_level(logging.INFO):
        assert train.run(argparse.Namespace(params=params, property="band_gap", no_mlflow=True)) == 0
    assert "1 DFT-pretrained encoder(s) from the pretrain stage" in caplog.text
    caplog.clear()
    # a pretraining setting changed after the stage ran: train says why and pretrains its own (no stale number)
    changed = train_params(tmp_path)
    changed.write_text(changed.read_text().replace("pretrain_epochs: 1", "pretrain_epochs: 2"))
    with caplog.at_level(logging.INFO):
        assert train.run(argparse.Namespace(params=changed, property="band_gap", no_mlflow=True)) == 0
    assert "not this run's (settings differ: pretrain_epochs 1 != 2); pretraining here" in caplog.text


def test_an_altered_encoder_file_is_named_and_nothing_is_trained(tmp_path):
    train_inputs(tmp_path)
    params = train_params(tmp_path)
    assert stage.run(_args(params)) == 0
    (tmp_path / "pretrained/band_gap/encoder_0.pt").write_bytes(b"\0" * 10)
    with pytest.raises(MissingInputError, match=r"pretrained/band_gap.*encoder_0\.pt.*matshift pretrain --property "
                                                r"band_gap"):
        train.run(argparse.Namespace(params=params, property="band_gap", no_mlflow=True))
    assert not (tmp_path / "models").exists()


def test_missing_inputs_are_named_without_a_traceback(tmp_path, capsys):
    train_inputs(tmp_path)
    params = train_params(tmp_path)
    (tmp_path / "features/descriptors.parquet").unlink()
    assert main(["pretrain", "--params", str(params), "--property", "band_gap"]) != 0
    err = capsys.readouterr().err
    assert "descriptors.parquet does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "pretrained").exists()


def test_without_pretraining_the_stage_writes_no_encoder_and_train_reads_none(tmp_path, caplog):
    train_inputs(tmp_path)
    params = train_params(tmp_path)
    params.write_text(params.read_text().replace("pretrain_epochs: 1", "pretrain_epochs: 0"))
    # the train recipe keeps the pretrained encoders fixed: without pretraining that is refused before any fitting
    with pytest.raises(ConfigError, match=r"freeze_encoder .* needs optim\.pretrain_epochs >= 1"):
        train.run(argparse.Namespace(params=params, property="band_gap", no_mlflow=True))
    params.write_text(params.read_text().replace("pretrain_epochs: 0", "pretrain_epochs: 0, freeze_encoder: false, freeze_graph: false"))
    assert stage.run(_args(params)) == 0
    header = json.loads((tmp_path / "pretrained/band_gap/pretrained.json").read_text())
    assert header["files"] == {} and header["settings"]["pretrain_epochs"] == 0
    with caplog.at_level(logging.INFO):
        assert train.run(argparse.Namespace(params=params, property="band_gap", no_mlflow=True)) == 0
    assert "pretrain stage" not in caplog.text and "no pretrained encoders" not in caplog.text


def test_evaluate_folds_start_from_the_stage_s_encoders_or_the_same_ones_computed_there(tmp_path, caplog):
    """evaluate's `pretraining: train`: the folds' GNNs start from the train stage's encoders; with or without the
    pretrain stage's output, the same states and so the same predictions."""
    import pandas as pd

    from pipeline import evaluate
    from tests.pipeline.test_evaluate import _inputs, _params

    _inputs(tmp_path)
    params = _params(tmp_path)
    text = params.read_text().replace("train:\n", f"train:\n  raw_dir: {tmp_path}/raw\n  features_dir: {tmp_path}/"
                                      f"features\n  pretrained_dir: {tmp_path}/pretrained\n  encoders: 2\n", 1)
    text = text.replace("    pretrain_epochs: 1\n", "    pretrain_epochs: 1\n    pretraining: train\n")
    params.write_text(text.replace("optim: {", "optim: {pretrain_epochs: 1, "))
    args = argparse.Namespace(params=params, property="band_gap", quick=True, no_mlflow=True)
    with caplog.at_level(logging.INFO):
        assert evaluate.run(args) == 0
    assert "they are pretrained here instead" in caplog.text  # no stage output: computed in the evaluate stage
    own = pd.read_csv(tmp_path / "plots/quick/band_gap/predictions.csv")
    caplog.clear()
    assert stage.run(_args(params)) == 0
    with caplog.at_level(logging.INFO):
        assert evaluate.run(args) == 0
    assert "evaluate band_gap: 2 DFT-pretrained encoder(s) from the pretrain stage" in caplog.text
    shared = pd.read_csv(tmp_path / "plots/quick/band_gap/predictions.csv")
    assert own["gnn_ot"].notna().all() and own[["gnn_ot", "gnn_no_ot"]].equals(shared[["gnn_ot", "gnn_no_ot"]])
