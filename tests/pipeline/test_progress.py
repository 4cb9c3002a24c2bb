"""Progress: bars with an ETA and a log line per finished step while a stage runs; nothing with ``-q``."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models.progress import Steps, bar
from tests.data import train_inputs, train_params

ROOT = Path(__file__).resolve().parents[2]


def test_steps_log_each_finished_step_and_refuse_unplanned_ones(caplog):
    caplog.set_level(logging.INFO)
    steps = Steps("demo", ["a", "b"], logging.getLogger("demo"))
    with steps("a"):
        pass
    assert steps.done == 1
    assert re.search(r"demo: \[1/2\] a in \d+ s", caplog.text)
    with pytest.raises(ValueError, match="not in the plan"), steps("c"):
        pass
    with pytest.raises(RuntimeError), steps("b"):
        raise RuntimeError("a failed step is not counted as done")
    assert steps.done == 1 and "[2/2]" not in caplog.text


def test_bars_follow_the_logging_level():
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.WARNING)
        assert bar(range(3), desc="x").disable
        root.setLevel(logging.INFO)
        assert not bar(range(3), desc="x").disable
    finally:
        root.setLevel(level)


def _train(root: Path, *flags: str, mlflow: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *flags, "train", "--property", "band_gap",
                           "--params", str(root / "params.yaml"), *([] if mlflow else ["--no-mlflow"])],
                          cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_quick_train_run_writes_progress_lines_and_q_keeps_it_quiet(tmp_path):
    train_inputs(tmp_path)
    train_params(tmp_path)
    proc = _train(tmp_path)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    steps = re.findall(r"train band_gap: \[(\d+)/(\d+)\] ([\w ]+) in \d+ s", err)
    assert [(int(k), n) for k, n, _ in steps] == [(k, steps[0][1]) for k in range(1, len(steps) + 1)]
    assert int(steps[-1][1]) == len(steps) >= 5
    assert {"GNN members with and without OT", "stacked model", "prediction intervals"} <= {s for _, _, s in steps}
    for desc in ("epochs", "boosters", "DFT surrogate", "out-of-fold models"):  # the tqdm bars, with an ETA
        assert re.search(rf"{desc}: +\d+%.*<", err), desc
    assert "trained in" in err

    quiet = _train(tmp_path, "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    # logging to MLflow too: its own INFO lines and "Downloading artifacts" bars follow -q
    quiet = _train(tmp_path, "-q", mlflow=True)
    assert quiet.returncode == 0, quiet.stderr
    assert "mlflow" not in quiet.stderr and "artifacts" not in quiet.stderr, quiet.stderr


def test_featurize_shows_its_bars_and_q_hides_them(raw_dir, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("featurize:\n  cutoff: 4.5\n  n_gaussians: 20\n  n_workers: 1\n  chunk_size: 4\n")

    def featurize(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *flags, "featurize", "--params", str(params),
                               "--raw-dir", str(raw_dir), "--out-dir", str(tmp_path / "features")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    loud = featurize()
    assert loud.returncode == 0, loud.stderr
    assert re.search(r"crystal graphs: +\d+%.*<", loud.stderr)
    quiet = featurize("-q")
    assert quiet.returncode == 0, quiet.stderr
    assert "%|" not in quiet.stderr  # no bar; warnings still show (this raw dir lacks the metal classes)
    assert all(" WARNING " in line for line in quiet.stderr.splitlines()), quiet.stderr
