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


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    without_code = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    anchors = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", without_code, flags=re.MULTILINE)}
    links = re.findall(r"\]\(([^)\s]+)\)", without_code)
    assert any(link.startswith("#") for link in links), "the README's contents list links its sections"
    broken = [link for link in links if not link.startswith(("http://", "https://"))
              and not (link[1:] in anchors if link.startswith("#") else (README.parent / link.split("#")[0]).exists())]
    assert not broken, f"README links that lead nowhere: {broken}"


def test_slug_follows_github():
    assert _slug("Results so far (measured, not tuned on test data)") == "results-so-far-measured-not-tuned-on-test-data"
    assert _slug("MLflow: runs, registered models, serving") == "mlflow-runs-registered-models-serving"
