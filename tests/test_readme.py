"""The README's Python API example and the ``matshift`` package's docstring examples run as doctests.

The README example loads the pipeline's band-gap model by name: here that is the tiny test
pipeline's (run from its directory, whose params.yaml says where its model and tables are).
"""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path

import pytest

import matshift
import matshift.api
import matshift.featurizers
from tests.tiny_pipeline import tiny_run

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_examples() -> str:
    """Return the text of the README's ``pycon`` blocks (the interactive examples)."""
    blocks = re.findall(r"```pycon\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert blocks, "the README has no ```pycon example"
    return "\n".join(blocks)


def _run(test: doctest.DocTest) -> doctest.TestResults:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    return runner.summarize(verbose=False)


def test_readme_api_example_runs(monkeypatch):
    run = tiny_run()
    assert run.codes["train"] == 0
    monkeypatch.chdir(run.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    test = doctest.DocTestParser().get_doctest(readme_examples(), {}, "README.md", str(README), 0)
    assert len(test.examples) >= 8
    result = _run(test)
    assert result.failed == 0 and result.attempted == len(test.examples)


@pytest.mark.parametrize("module", [matshift.api, matshift.featurizers], ids=lambda m: m.__name__)
def test_package_docstring_examples_run(module):
    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(module) if t.examples]
    old = os.getcwd()
    try:
        results = [_run(t) for t in tests]
    finally:
        os.chdir(old)
    assert sum(r.failed for r in results) == 0 and sum(r.attempted for r in results) > 0
