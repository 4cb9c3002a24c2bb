"""The architecture's rules that import-linter does not check (its contracts are in pyproject.toml).

* no module imports a private name (``_x``) from outside its own package;
* every import inside a function says why it is deferred (a comment on it or above its block);
* stage modules stay thin;
* the properties dvc.yaml runs for are the registry's;
* a stage's params schema holds no copy of a library setting (the library's dataclasses are the
  single source of every algorithmic setting and its default).
"""

from __future__ import annotations

import ast
import dataclasses
import typing

import pytest
import yaml

from tests.data import ROOT

PACKAGES = ("featurizers", "matshift", "models", "pipeline")
STAGE_MODULES = ("fetch", "featurize", "align", "surrogate", "pretrain", "train", "metal", "evaluate", "predict", "report")
MAX_STAGE_LINES = 150


def _modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path, path.name == "__init__.py"


def _package(module: str, is_init: bool) -> str:
    return module if is_init else module.rpartition(".")[0]


def test_no_private_name_is_imported_from_another_package():
    crossings = []
    for module, path, is_init in _modules():
        mine = _package(module, is_init)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] not in PACKAGES:
                    continue
                theirs = node.module if (ROOT / node.module.replace(".", "/")).is_dir() else node.module.rpartition(".")[0]
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and theirs != mine and not mine.startswith(theirs + "."):
                    crossings.append(f"{module}:{node.lineno} imports {private} from {node.module}")
    assert not crossings, "\n".join(crossings)


def _reason_given(lines: list[str], lineno: int, import_lines: set[int]) -> bool:
    """A comment on the import's line, or on the line above its block of imports.

    ``import_lines``: every line number an import statement spans (a parenthesised import runs over several).
    """
    if "#" in lines[lineno - 1]:
        return True
    k = lineno - 1  # 1-based number of the line above
    while k >= 1 and k in import_lines:
        k -= 1
    return k >= 1 and lines[k - 1].strip().startswith("#")


def test_every_deferred_import_says_why():
    silent = []
    for module, path, _ in _modules():
        text = path.read_text(encoding="utf-8")
        lines, tree = text.splitlines(), ast.parse(text)
        import_lines = {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                        for n in range(node.lineno, node.end_lineno + 1)}
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and not _reason_given(lines, node.lineno,
                                                                                            import_lines):
                        silent.append(f"{module}:{node.lineno}")
    assert not silent, f"imports inside functions without a comment saying why: {sorted(set(silent))}"


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_stage_modules_are_thin(stage):
    n = len((ROOT / "pipeline" / f"{stage}.py").read_text(encoding="utf-8").splitlines())
    assert n <= MAX_STAGE_LINES, f"pipeline/{stage}.py has {n} lines: move what is not I/O into the library"


def test_dvc_runs_the_registered_properties():
    from models.properties import PROPERTY_NAMES

    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert tuple(params["properties"]) == PROPERTY_NAMES
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert all(stages[s]["foreach"] == "${properties}" for s in ("align", "surrogate", "pretrain", "train", "evaluate"))


def _library_keys(cls: type) -> set[str]:
    """Every field name of the library dataclasses ``cls`` embeds (recursively)."""
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        sub = tp if dataclasses.is_dataclass(tp) else (args[0] if args else None)
        if sub is not None and not sub.__module__.startswith("pipeline"):
            out |= {g.name for g in dataclasses.fields(sub)} | _library_keys(sub)
    return out


@pytest.mark.parametrize("stage", ["fetch", "featurize", "align", "train", "evaluate"])
def test_stage_schemas_copy_no_library_setting(stage):
    import importlib

    module = importlib.import_module(f"pipeline.params.{stage}")
    classes = [c for c in vars(module).values()
               if dataclasses.is_dataclass(c) and c.__module__ == module.__name__]
    assert classes
    for cls in classes:
        own = {f.name for f in dataclasses.fields(cls)
               if not dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name])}
        copied = own & _library_keys(cls)
        assert not copied, f"{cls.__name__} redeclares library settings {sorted(copied)}"
