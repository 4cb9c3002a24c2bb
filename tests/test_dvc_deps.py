"""dvc.yaml's deps cover what each stage really runs: its import closure, computed by grimp.

A stage runs ``matshift <stage>`` (``pipeline/cli.py``), which imports ``pipeline/<stage>.py``;
importing a module also runs its packages' ``__init__``. The closure of those modules over
``featurizers``, ``models`` and ``pipeline`` (imports inside functions and under
``TYPE_CHECKING`` included, so the lazily re-exported names count) must lie under the stage's
deps, or editing a module the stage runs would not rerun it. Conversely every code path the
stage lists must hold something of the closure (no stale deps).

``python -m tests.test_dvc_deps`` prints the deps each stage needs (whole directories where
every module of a package is in the closure).
"""

from __future__ import annotations

from functools import cache

import grimp
import pytest
import yaml

from tests.data import ROOT

PACKAGES = ("featurizers", "models", "pipeline")
STAGES = ("fetch", "featurize", "align", "surrogate", "pretrain", "train", "metal", "evaluate")
# read as files, not imported: MLflow stores the model-from-code files the train and metal stages log
FILES_READ = {"train": {"models/serving/pyfunc_code.py"}, "metal": {"models/serving/pyfunc_metal_code.py"}}


@cache
def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=False)


def _file(module: str) -> str:
    path = ROOT.joinpath(*module.split("."))
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT).as_posix()


def closure(stage: str) -> set[str]:
    """Files of every project module ``matshift <stage>`` imports, directly or not."""
    graph = _graph()
    todo, seen = {"pipeline.cli", f"pipeline.{stage}"}, set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo |= {".".join(parts[:k]) for k in range(1, len(parts))}  # importing a.b.c runs a and a.b
        todo |= graph.find_modules_directly_imported_by(module)
    return {_file(m) for m in seen} | FILES_READ.get(stage, set())


def _dvc_stage(stage: str) -> dict:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]
    return spec.get("do", spec)


def _code_deps(stage: str) -> list[str]:
    return [d for d in _dvc_stage(stage)["deps"] if d.split("/")[0] in PACKAGES]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_deps_cover_the_import_closure(stage):
    deps = _code_deps(stage)
    missing = sorted(f for f in closure(stage) if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r} runs but does not list: {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_code_deps_are_all_run_by_the_stage(stage):
    files = closure(stage)
    stale = [d for d in _code_deps(stage) if not any(_covered(f, [d]) for f in files)]
    assert not stale, f"dvc.yaml stage {stage!r} lists code it never imports: {stale}"


def test_surrogate_stage_params_are_the_surrogate_fields():
    """The surrogate stage reruns for a setting its fit reads, and for no booster setting (SURROGATE_FIELDS)."""
    from models.learners.stacked import SURROGATE_FIELDS

    params = {p for p in _dvc_stage("surrogate")["params"] if p.startswith("train.stack.") or p == "train.seed"}
    assert params == {"train.seed", *(f"train.stack.{f}" for f in SURROGATE_FIELDS if f != "seed")}


def test_pretrain_stage_params_are_what_pretraining_reads():
    """The pretrain stage reruns for a setting DFT pretraining reads (PRETRAIN_FIELDS), not for fine-tuning settings."""
    from models.learners.pretrained import PRETRAIN_FIELDS

    params = set(_dvc_stage("pretrain")["params"])
    derived = {"clamp_min"}  # the property's, not a params.yaml key
    assert params == {"train.seed", "train.encoders", "train.members", "train.model", "train.raw_dir",
                      "train.features_dir", "train.pretrained_dir",
                      *(f"train.optim.{f}" for f in PRETRAIN_FIELDS if f not in derived)}
    train = _dvc_stage("train")
    assert "data/pretrained/${item}" in train["deps"] and "train" in train["params"]


# where a stage other than train reads the train section's FitConfig (as `fit.<name>` or `train.fit.<name>`)
FIT_READERS = {"evaluate": ("pipeline/evaluate.py", "models/evaluation/run.py"), "metal": ("pipeline/metal.py",)}


def fit_fields_read(paths: tuple[str, ...]) -> set[str]:
    """FitConfig fields (``train.<field>`` in params.yaml) the code in ``paths`` reads, directly or through its methods."""
    import dataclasses
    import inspect
    import re

    from models.learners import FitConfig

    fields = {f.name for f in dataclasses.fields(FitConfig)}
    read: set[str] = set()
    for path in paths:
        for name in re.findall(r"\bfit\.(\w+)", (ROOT / path).read_text(encoding="utf-8")):
            if name in fields:
                read.add(name)
            elif callable(getattr(FitConfig, name, None)):
                read |= set(re.findall(r"\bself\.(\w+)", inspect.getsource(getattr(FitConfig, name)))) & fields
    return read


@pytest.mark.parametrize("stage", sorted(FIT_READERS))
def test_stage_params_cover_the_train_settings_it_reads(stage):
    """Changing a train setting that evaluate or metal reads reruns them (train.intervals was once missing from evaluate)."""
    params = _dvc_stage(stage)["params"]
    read = fit_fields_read(FIT_READERS[stage])
    assert read, f"no FitConfig read found in {FIT_READERS[stage]}: the pattern is stale"
    missing = sorted(f for f in read if "train" not in params and f"train.{f}" not in params)
    assert not missing, f"dvc.yaml stage {stage!r} reads train.{missing} but does not list them under params"


def test_closure_sees_lazily_exported_and_deferred_imports():
    train = closure("train")
    # fit_property is re-exported lazily by models.learners; torch modules load on first use
    assert {"models/learners/fit.py", "models/learners/training.py", "models/nets/gnn.py"} <= train
    # the align stage never runs GNN training, and fetch never runs optimal transport
    assert "models/learners/training.py" not in closure("align")
    assert not any(f.startswith("models/transport/") for f in closure("fetch"))


def suggested_deps(stage: str) -> list[str]:
    """The closure with each package directory whose every module is in it collapsed to the directory."""
    files = closure(stage)
    out: list[str] = []
    for f in sorted(files):
        parts = f.split("/")
        # the shallowest package directory (below the top level) fully in the closure
        for k in range(2, len(parts)):
            d = "/".join(parts[:k])
            if all(p.relative_to(ROOT).as_posix() in files for p in (ROOT / d).rglob("*.py")):
                f = d
                break
        if f not in out:
            out.append(f)
    return out


if __name__ == "__main__":
    for name in STAGES:
        print(f"{name}:")
        for dep in suggested_deps(name):
            print(f"  - {dep}")


def test_bytecode_beside_directory_deps_is_ignored_by_dvc():
    # a directory dep's hash covers every file under it: Python's __pycache__ there would
    # make the stage stale after any run that writes bytecode
    from dvc.repo import Repo

    dirs = {d for s in STAGES for d in _code_deps(s) if (ROOT / d).is_dir()}
    assert dirs, "no directory deps: this test has nothing to check"
    repo = Repo(str(ROOT))
    try:
        for d in sorted(dirs):
            assert repo.dvcignore.is_ignored(repo.fs, f"{repo.root_dir}/{d}/__pycache__/m.cpython-311.pyc"), d
            source = next((ROOT / d).glob("*.py"))
            assert not repo.dvcignore.is_ignored(repo.fs, str(source)), source
    finally:
        repo.close()
