"""models._io: the one model-file header every saved model uses, and JSON without NaN."""

import json
import math

import numpy as np
import pytest

from models import ModelFormatError, finite, read_header, write_header, write_json


def _model(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"weights")
    (tmp_path / "b.txt").write_text("booster")
    return write_header(tmp_path / "model.json", cls="Thing", files=["a.bin", "b.txt"], init_args={"width": 3})


def test_header_round_trips_and_lists_the_hash_of_each_file(tmp_path):
    path = _model(tmp_path)
    meta = read_header(path, classes=("Thing",), required=["a.bin"])
    assert meta["init_args"] == {"width": 3} and set(meta["files"]) == {"a.bin", "b.txt"}
    assert all(len(d) == 64 for d in meta["files"].values())


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda d: (d / "b.txt").write_text("changed"), r"b\.txt does not match the sha256 recorded in .*model\.json"),
        (lambda d: (d / "a.bin").unlink(), r"model file .*a\.bin is missing"),
        (lambda d: (d / "model.json").write_text("{"), "is not valid JSON"),
        (lambda d: (d / "model.json").write_text(json.dumps({"format_version": 1, "class": "Thing"})),
         "unsupported format_version 1"),
    ],
)
def test_any_change_is_refused_before_loading(tmp_path, tamper, message):
    path = _model(tmp_path)
    tamper(tmp_path)
    with pytest.raises(ModelFormatError, match=message):
        read_header(path, classes=("Thing",))


def test_header_must_list_what_the_loader_reads_and_nothing_outside(tmp_path):
    path = _model(tmp_path)
    with pytest.raises(ModelFormatError, match=r"does not list the model's files \['c\.npy'\]"):
        read_header(path, classes=("Thing",), required=["c.npy"])
    with pytest.raises(ModelFormatError, match="unknown model class 'Thing'"):
        read_header(path, classes=("Other",))
    meta = json.loads(path.read_text())
    meta["files"]["../escape"] = "0" * 64
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="outside its directory"):
        read_header(path, classes=("Thing",))


def test_json_has_no_nan(tmp_path):
    obj = {"a": math.nan, "b": [1.0, np.float32(np.inf), np.float64(2.5)], "c": np.int64(3)}
    assert finite(obj) == {"a": None, "b": [1.0, None, 2.5], "c": 3}
    write_json(tmp_path / "x.json", obj)
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None, 2.5], "c": 3}
