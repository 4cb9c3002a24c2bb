"""Fault injection between and inside stages: every fault ends in a message naming the file and the fix.

Faults: truncated, corrupt or missing intermediate files; NaN and infinite values in the
descriptors, DFT values and measurements; an alignment that did not converge; a stage
killed (SIGKILL) while writing; an output path that cannot be written; an MLflow tracking
server that does not answer. Each goes through ``matshift`` (``pipeline.cli.main``) where
the user would meet it, and checks the exit code, the message and that no traceback and no
output were produced. The changed-mirror-file fault is tested in
``tests/pipeline/sources/test_mirror.py::test_changed_file_names_file_and_both_hashes``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import align as align_stage
from pipeline import readers
from pipeline.cli import main
from pipeline.errors import MatshiftError
from tests.data import ROOT, align_inputs, train_inputs, train_params


def _align_params(root: Path, **extra) -> Path:
    sec = {"raw_dir": str(root / "raw"), "features_dir": str(root / "features"), "out_dir": str(root / "aligned"),
           "reg": 0.02, **extra}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({"align": sec}))
    return path


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected error" not in err, err
    return code, err


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def aligned_root(tmp_path):
    align_inputs(tmp_path, n_formulas=20)
    return tmp_path


@pytest.fixture
def train_root(tmp_path):
    train_inputs(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- intermediate files


@pytest.mark.parametrize("name", ["raw/dft.parquet", "raw/experiment.parquet", "features/descriptors.parquet",
                                  "features/index.parquet"])
def test_align_names_a_truncated_input(aligned_root, capsys, name):
    _truncate(aligned_root / name)
    code, err = _run(["align", "--params", str(_align_params(aligned_root)), "--property", "band_gap"], capsys)
    assert code == 1
    assert f"cannot read {aligned_root / name}" in err and "run the upstream stage first" in err
    assert not (aligned_root / "aligned" / "band_gap").exists()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("truncate aligned/band_gap/dft.parquet", r"cannot read .*aligned/band_gap/dft\.parquet"),
        ("delete aligned/band_gap/align.json", r"aligned/band_gap/align\.json is missing; run `matshift align`"),
        ("garble aligned/band_gap/align.json", r"cannot read .*aligned/band_gap/align\.json"),
        ("truncate features/descriptors.parquet", r"cannot read .*features/descriptors\.parquet"),
        ("truncate raw/experiment.parquet", r"cannot read .*raw/experiment\.parquet"),
        ("garble features/graphs.pt", r"cannot read .*features/graphs\.pt .*rerun the featurize stage"),
        ("delete features/graphs.pt", r"features/graphs\.pt is missing; run the featurize stage"),
    ],
)
def test_train_names_a_broken_input(train_root, capsys, fault, message):
    import re

    action, name = fault.split()
    path = train_root / name
    if name.endswith("graphs.pt"):
        path.write_bytes(b"\x80\x02not a torch file" * 10)  # present and corrupt, or deleted below
    if action == "truncate":
        _truncate(path)
    elif action == "delete":
        path.unlink()
    else:
        path.write_bytes(b"\x00\x01{not json" * 10)
    use_graphs = "true" if name.endswith("graphs.pt") else "false"
    params = train_params(train_root)
    params.write_text(params.read_text().replace("use_graphs: false", f"use_graphs: {use_graphs}"))
    code, err = _run(["train", "--params", str(params), "--property", "band_gap", "--no-mlflow"], capsys)
    assert code == 1
    assert re.search(message, err), err
    assert not (train_root / "models").exists()


# ---------------------------------------------------------------- NaN and infinity


def test_align_refuses_non_finite_descriptors(aligned_root, capsys):
    path = aligned_root / "features" / "descriptors.parquet"
    desc = pd.read_parquet(path)
    desc.loc[3, "d2"] = np.nan
    desc.loc[5, "d0"] = np.inf
    desc.to_parquet(path)
    code, err = _run(["align", "--params", str(_align_params(aligned_root)), "--property", "band_gap"], capsys)
    assert code == 1
    assert "descriptors.parquet holds non-finite descriptors for 2 formula(s)" in err
    assert repr(desc.loc[3, "formula"]) in err


def test_align_drops_and_counts_non_finite_values(aligned_root):
    """Unknown (NaN) and impossible (inf) DFT values, and NaN/inf measurements, are dropped and counted."""
    dft = pd.read_parquet(aligned_root / "raw" / "dft.parquet")
    exp = pd.read_parquet(aligned_root / "raw" / "experiment.parquet")
    gap_dft = dft.index[dft["band_gap_pbe"].notna()]
    gap_exp = exp.index[exp["property"] == "band_gap"]
    n_src, n_tgt = len(gap_dft), len(gap_exp)
    dft.loc[gap_dft[0], "band_gap_pbe"] = np.inf
    dft.loc[gap_dft[1], "band_gap_pbe"] = -np.inf
    exp.loc[gap_exp[0], "value"] = np.nan
    exp.loc[gap_exp[1], "value"] = np.inf
    dft.to_parquet(aligned_root / "raw" / "dft.parquet")
    exp.to_parquet(aligned_root / "raw" / "experiment.parquet")
    params = _align_params(aligned_root)
    assert align_stage.run(argparse.Namespace(params=params, property="band_gap")) == 0
    diag = json.loads((aligned_root / "aligned" / "band_gap" / "align.json").read_text())
    assert diag["dropped"]["dft_non_finite"] == 2
    assert diag["dropped"]["experiment_non_finite"] == 2
    assert diag["n_source"] == n_src - 2 and diag["n_target"] == n_tgt - 2
    out = pd.read_parquet(aligned_root / "aligned" / "band_gap" / "dft.parquet")
    assert np.isfinite(out[["dft_value", "calibrated_target", "confidence"]].to_numpy()).all()
    assert dft.loc[gap_dft[0], "material_id"] not in set(out["material_id"])


@pytest.mark.parametrize(
    ("table", "column", "value", "message"),
    [
        ("raw/experiment.parquet", "value", np.nan, r"experiment\.parquet: column 'value' holds 1 non-finite"),
        ("raw/experiment.parquet", "value", np.inf, r"experiment\.parquet: column 'value' holds 1 non-finite"),
        ("raw/dft.parquet", "band_gap_pbe", np.inf, r"dft\.parquet: column 'band_gap_pbe' holds 1 non-finite"),
        ("features/descriptors.parquet", "d1", np.nan, r"descriptors\.parquet holds non-finite descriptors for 1 formula"),
        ("aligned/band_gap/dft.parquet", "calibrated_target", np.inf, r"column 'calibrated_target' holds 1"),
    ],
)
def test_train_refuses_non_finite_inputs(train_root, capsys, table, column, value, message):
    import re

    path = train_root / table
    frame = pd.read_parquet(path)
    frame.loc[2, column] = value
    frame.to_parquet(path)
    code, err = _run(["train", "--params", str(train_params(train_root)), "--property", "band_gap", "--no-mlflow"],
                     capsys)
    assert code == 1 and re.search(message, err), err
    assert not (train_root / "models").exists()


def test_train_keeps_unknown_dft_values():
    """NaN in a DFT column means 'not computed' (a legitimate value), not a fault: not refused."""
    frame = pd.DataFrame({"formula": ["NaCl", "KCl"], "band_gap_pbe": [np.nan, 5.0]})
    readers.refuse_non_finite(frame, ["band_gap_pbe"], Path("dft.parquet"), allow_nan=True)
    with pytest.raises(MatshiftError, match="'NaCl'"):
        readers.refuse_non_finite(frame, ["band_gap_pbe"], Path("dft.parquet"))


# ---------------------------------------------------------------- an OT solve that does not converge


def test_unconverged_alignment_is_reported_and_refused_downstream(aligned_root, capsys, caplog):
    params = _align_params(aligned_root, max_iter=2, reg=0.001)
    code, err = _run(["align", "--params", str(params), "--property", "band_gap"], capsys)
    assert code == 1 and "did not converge in" in err and "align.allow_unconverged" in err
    assert not (aligned_root / "aligned" / "band_gap").exists()  # nothing written

    params = _align_params(aligned_root, max_iter=2, reg=0.001, allow_unconverged=True)
    assert main(["align", "--params", str(params), "--property", "band_gap"]) == 0
    out = aligned_root / "aligned" / "band_gap"
    diag = json.loads((out / "align.json").read_text())
    assert diag["converged"] is False and diag["params"]["allow_unconverged"] is True
    with caplog.at_level("WARNING", logger="pipeline.train"):
        assert readers.read_alignment(out)["converged"] is False
    assert "did NOT converge" in caplog.text

    # the same unconverged plan without the explicit permission (a stale or hand-made file): refused
    diag["params"]["allow_unconverged"] = False
    (out / "align.json").write_text(json.dumps(diag))
    with pytest.raises(MatshiftError, match=r"did not converge .* align\.allow_unconverged is not set"):
        readers.read_alignment(out)
    diag["converged"] = True
    (out / "align.json").write_text(json.dumps(diag))
    assert readers.read_alignment(out)["converged"] is True


# ---------------------------------------------------------------- killed mid-write

_KILLABLE = """
import argparse, sys, time
from pathlib import Path
from pipeline import align as stage
from pipeline import figures

real = figures.draw_alignment

def plots_then_hang(out, *args, **kwargs):
    real(out, *args, **kwargs)  # every output file is now in the temporary directory
    Path(sys.argv[2]).write_text(str(out))
    time.sleep(300)

figures.draw_alignment = plots_then_hang
stage.run(argparse.Namespace(params=Path(sys.argv[1]), property="band_gap"))
"""


def test_stage_killed_mid_write_leaves_the_previous_output_and_reruns(aligned_root):
    out = aligned_root / "aligned" / "band_gap"
    assert align_stage.run(argparse.Namespace(params=_align_params(aligned_root), property="band_gap")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    params = _align_params(aligned_root, reg=0.05)  # a different result, so a partial swap would show
    marker = aligned_root / "writing"
    script = aligned_root / "killable.py"
    script.write_text(_KILLABLE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(params), str(marker)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the stage never reached its write"
            time.sleep(0.2)
        tmp = Path(marker.read_text())
        assert tmp.parent == out.parent and tmp.name.startswith(f".band_gap.{proc.pid}.")
        assert (tmp / "align.json").exists()  # the new output was complete in the temporary directory...
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # ... but the kill came before the swap: the previous output is intact, byte for byte
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert tmp.exists()  # SIGKILL skips every cleanup; the next run removes it

    assert align_stage.run(argparse.Namespace(params=params, property="band_gap")) == 0
    assert json.loads((out / "align.json").read_text())["params"]["reg"] == 0.05
    assert not tmp.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_killed_single_file_write_keeps_the_old_file(tmp_path):
    """models._io.write_* (used by fetch and featurize): the same guarantee for one file."""
    target = tmp_path / "table.parquet"
    pd.DataFrame({"a": [1, 2, 3]}).to_parquet(target)
    old = target.read_bytes()
    code = (
        "import sys, time\n"
        "from models import write_with\n"
        "def slow(p):\n"
        "    p.write_bytes(b'PAR1 half a file')\n"
        "    open(sys.argv[2], 'w').write(str(p))\n"
        "    time.sleep(300)\n"
        "write_with(sys.argv[1], slow)\n"
    )
    marker = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", code, str(target), str(marker)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert target.read_bytes() == old
    assert Path(marker.read_text()).exists()
    from models import write_parquet

    write_parquet(target, pd.DataFrame({"a": [4]}))
    assert pd.read_parquet(target)["a"].tolist() == [4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet", "writing"]


# ---------------------------------------------------------------- unwritable output


def test_unwritable_output_is_a_message(aligned_root, capsys):
    blocker = aligned_root / "not_a_dir"
    blocker.write_text("a file where the output directory should be\n")
    params = _align_params(aligned_root, out_dir=str(blocker / "aligned"))
    code, err = _run(["align", "--params", str(params), "--property", "band_gap"], capsys)
    assert code == 1 and f"cannot write {blocker / 'aligned' / 'band_gap'}" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_directory_is_a_message(aligned_root, capsys):
    ro = aligned_root / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        params = _align_params(aligned_root, out_dir=str(ro))
        code, err = _run(["align", "--params", str(params), "--property", "band_gap"], capsys)
    finally:
        ro.chmod(0o700)
    assert code == 1 and "cannot write" in err and "Permission denied" in err


def test_predict_output_to_unwritable_path(tmp_path, capsys):
    from models import OutputError, write_csv

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=f"cannot write {blocker / 'out.csv'}"):
        write_csv(blocker / "out.csv", pd.DataFrame({"a": [1]}))


# ---------------------------------------------------------------- MLflow tracking store


def test_unreachable_tracking_server_fails_fast_before_training(train_root, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:9")  # port 9: nothing listens
    t0 = time.perf_counter()
    code, err = _run(["train", "--params", str(train_params(train_root)), "--property", "band_gap"], capsys)
    assert code == 1
    assert time.perf_counter() - t0 < 30
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in err
    assert "unset MLFLOW_TRACKING_URI to use the local store" in err and "--no-mlflow" in err
    assert "s3cret" not in err  # credentials in the URI are never echoed
    assert not (train_root / "models").exists()  # no training was wasted


def test_unusable_tracking_store_is_a_message(tmp_path):
    from models.serving import TrackingError, ensure_store

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrackingError, match=r"cannot be used .*unset MLFLOW_TRACKING_URI"):
        ensure_store(f"sqlite:///{blocker}/mlflow.db")
