from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import pytest

from pipeline.config import ConfigError, flatten, from_mapping, load_section, to_dict


@dataclass(frozen=True)
class Inner:
    reg: float = 0.05
    method: Literal["unbalanced", "balanced"] = "unbalanced"


@dataclass(frozen=True)
class Outer:
    n: int
    inner: Inner = field(default_factory=Inner)
    names: list[str] = field(default_factory=list)
    path: Path = Path("data")


def test_valid_mapping_is_typed():
    cfg = from_mapping(Outer, {"n": 3, "inner": {"reg": 1}, "names": ["a"]}, where="s")
    assert cfg.n == 3
    assert cfg.inner.reg == 1.0 and isinstance(cfg.inner.reg, float)
    assert cfg.path == Path("data")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"n": 3, "typo": 1}, r"s\.typo: unknown key"),
        ({"n": "3"}, r"s\.n: expected an integer, got '3'"),
        ({"n": True}, r"s\.n: expected an integer"),
        ({}, r"s\.n: required key is missing"),
        ({"n": 1, "inner": {"reg": "small"}}, r"s\.inner\.reg: expected a number"),
        ({"n": 1, "inner": {"method": "fast"}}, r"s\.inner\.method: expected one of 'unbalanced', 'balanced'"),
        ({"n": 1, "names": ["a", 2]}, r"s\.names\[1\]: expected a string"),
    ],
)
def test_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(Outer, raw, where="s")


def test_load_section_reads_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("s:\n  n: 2\n  inner:\n    method: balanced\n")
    cfg = load_section(Outer, "s", p)
    assert cfg.inner.method == "balanced"
    assert flatten(cfg)["inner.method"] == "balanced"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_section(Outer, "s", tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("s: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_section(Outer, "s", bad)


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os

    from models import write_json

    path = write_json(tmp_path / "x.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask
    assert path.read_text() == '{\n  "a": 1\n}\n'


# ---------------------------------------------------------------- library configs through the stage schemas


def test_inline_keys_fill_the_library_config_and_round_trip_flat():
    from models.transport import AlignConfig
    from pipeline.params.align import AlignParams

    cfg = from_mapping(AlignParams, {"reg": 0.1, "method": "balanced", "neural": {"lr": 0.01}, "min_pair_mass": 0.0},
                       where="align")
    assert isinstance(cfg.config, AlignConfig) and cfg.config.options.reg == 0.1 and cfg.config.method == "balanced"
    # the neural section keeps the recipe's network (32, 32) where it sets nothing, not DualConfig's class default
    assert cfg.config.options.neural.dual.lr == 0.01 and cfg.config.options.neural.dual.hidden == (32, 32)
    flat = to_dict(cfg)
    assert flat["reg"] == 0.1 and flat["min_pair_mass"] == 0.0 and "config" not in flat and "options" not in flat
    assert from_mapping(AlignParams, {k: v for k, v in flat.items() if k != "neural"}, where="align").config == replace(
        cfg.config, options=replace(cfg.config.options, neural=None))


def test_a_derived_setting_is_not_a_params_key():
    from pipeline.params.train import TrainParams

    with pytest.raises(ConfigError, match=r"train\.optim\.clamp_min: unknown key \(set by the stage, not in params\)"):
        from_mapping(TrainParams, {"optim": {"clamp_min": 0.0}}, where="train")
    with pytest.raises(ConfigError, match=r"train\.stack\.seed: unknown key \(set by the stage, not in params\)"):
        from_mapping(TrainParams, {"stack": {"seed": 3}}, where="train")


def test_a_partial_section_keeps_the_recipe_defaults_not_the_class_defaults():
    from models.learners import TrainConfig
    from models.transport import CostWeights
    from pipeline.params.align import AlignParams
    from pipeline.params.train import TrainParams

    fit = from_mapping(TrainParams, {"optim": {"epochs": 2}}, where="train").fit
    assert fit.optim.epochs == 2 and fit.optim.freeze_encoder and fit.optim.freeze_graph and fit.optim.pretrain_epochs == 4
    # the trainer's own defaults differ: the recipe is the stage's
    assert TrainConfig().freeze_encoder is False and TrainConfig().freeze_graph is False
    cost = from_mapping(AlignParams, {"cost": {"mass": 2.0}}, where="align").config.cost
    assert cost.mass == 2.0 and cost.value_calibration == "linear" and CostWeights().value_calibration == "none"
    with pytest.raises(ConfigError, match=r"train\.optim: batch sizes must be >= 2"):
        from_mapping(TrainParams, {"optim": {"batch_size": 1}}, where="train")
