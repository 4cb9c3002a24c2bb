"""A tiny end-to-end pipeline run shared by the reliability tests (run once per test process).

fetch (Materials Project API source with a fake client: the one source that reads
``MP_API_KEY``) -> featurize (its two structures) and, on the synthetic raw/features
tables of ``tests.data.align_inputs`` (about 120 DFT entries and 120 measurements per
property), align -> surrogate -> pretrain -> train (two small members, MLflow to a SQLite store in the
run directory). Everything runs through ``pipeline.cli.main`` with a canary ``MP_API_KEY`` set,
and every log line and every byte printed is kept for the secrets test.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.data import FIXTURES, align_inputs

CANARY = "canary-7f3a9c2e5d1b4086-do-not-log"


def params_text(root: Path, *, members: int = 2, epochs: int = 3) -> str:
    """One params.yaml for the whole tiny pipeline, every path inside ``root``."""
    params = {
        "fetch": {"sources": ["mp_api"], "out_dir": str(root / "raw_mp"), "workers": 1},
        "featurize": {"raw_dir": str(root / "raw_mp"), "out_dir": str(root / "features_mp"), "n_workers": 1},
        "align": {"raw_dir": str(root / "raw"), "features_dir": str(root / "features"),
                  "out_dir": str(root / "aligned"), "reg": 0.02, "seed": 0},
        "train": {
            "raw_dir": str(root / "raw"), "features_dir": str(root / "features"),
            "aligned_dir": str(root / "aligned"), "out_dir": str(root / "models"),
            "surrogate_dir": str(root / "surrogates"), "pretrained_dir": str(root / "pretrained"),
            "tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "members": members, "encoders": 1, "rf_trees": 10,
            "seed": 0,
            "model": {"comp_hidden": 8, "comp_layers": 1, "emb_dim": 8, "head_hidden": 8, "use_graphs": False},
            "optim": {"epochs": epochs, "pretrain_epochs": 1, "batch_size": 16, "dft_batch_size": 16},
        },
        # `matshift evaluate --quick` on the same tables (tests/pipeline/test_mlflow_links.py)
        "evaluate": {
            "raw_dir": str(root / "raw"), "features_dir": str(root / "features"), "aligned_dir": str(root / "aligned"),
            "metrics_dir": str(root / "metrics"), "plots_dir": str(root / "plots"), "ad_k": 3,
            "quick": {"protocols": ["grouped_cv"], "models": ["stacked", "stacked_ot"], "neural_iterations": 0,
                      "n_folds": 2, "epochs": 1, "patience": 1, "pretrain_epochs": 1, "rf_trees": 5,
                      "shift_sample": 20},
        },
    }
    return yaml.safe_dump(params)


def make_inputs(root: Path) -> Path:
    """Synthetic raw + features tables (shared with the align stage tests) and params.yaml."""
    align_inputs(root, n_formulas=60)
    path = root / "params.yaml"
    path.write_text(params_text(root))
    return path


@dataclass(frozen=True)
class TinyRun:
    root: Path
    params: Path
    output: str  # everything logged or printed while the stages ran
    codes: dict[str, int]


class _FakeClient:
    """mp-api's MPRester as seen by the source: ``with client as mpr: mpr.materials.summary.search(...)``."""

    def __init__(self, api_key: str) -> None:
        import json

        docs = json.loads((FIXTURES / "mp_api_summary.json").read_text())

        class Summary:
            def search(self, **query):
                return iter(docs)

        self.materials = type("M", (), {"summary": Summary()})()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@functools.lru_cache(maxsize=1)
def tiny_run() -> TinyRun:
    """Run the tiny pipeline once (about 20-40 s on 2 cores) and return where it wrote."""
    from pipeline.cli import main
    from pipeline.sources import mp_api_source

    root = Path(tempfile.mkdtemp(prefix="matshift-tiny-"))
    params = make_inputs(root)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger()
    old_level = root_logger.level
    old_env = {k: os.environ.get(k) for k in ("MP_API_KEY", "MLFLOW_TRACKING_URI")}
    old_cwd = Path.cwd()
    old_factory = mp_api_source._default_client
    codes: dict[str, int] = {}
    try:
        os.environ["MP_API_KEY"] = CANARY
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.chdir(root)  # MLflow puts artifacts under ./mlruns
        mp_api_source._default_client = _FakeClient
        root_logger.addHandler(handler)
        root_logger.setLevel(logging.DEBUG)
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            for name, argv in (
                ("fetch", ["fetch", "--params", str(params)]),
                ("featurize", ["featurize", "--params", str(params)]),
                ("align", ["align", "--params", str(params), "--property", "band_gap"]),
                ("surrogate", ["surrogate", "--params", str(params), "--property", "band_gap"]),
                ("pretrain", ["pretrain", "--params", str(params), "--property", "band_gap"]),
                ("train", ["train", "--params", str(params), "--property", "band_gap"]),
            ):
                codes[name] = main(argv)
    finally:
        mp_api_source._default_client = old_factory
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    import atexit

    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return TinyRun(root=root, params=params, output=buffer.getvalue(), codes=codes)
