from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pipeline.config import ConfigError, flatten, from_mapping, load_section


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
