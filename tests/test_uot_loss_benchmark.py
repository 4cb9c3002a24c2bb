"""benchmarks/uot_loss.py: the three solvers are timed on the same batches and agree with the log domain."""

import json

from benchmarks.uot_loss import main


def test_the_solvers_agree_and_the_table_says_so(tmp_path, capsys):
    assert main(["--batches", "8", "--rows", "24", "--dim", "8", "--iters", "10", "--out", str(tmp_path / "r")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["batches"] == 3  # the first five are warm-up
    assert set(result["median_ms"]) == {"log", "scaling", "pot"}
    assert result["speedup_vs_log"]["log"] == 1.0
    for kind in ("scaling", "pot"):  # the same problem: float rounding apart
        assert result["max_rel_loss_diff_vs_log"][kind] < 1e-10
        assert result["max_rel_grad_diff_vs_log"][kind] < 1e-5  # gradients back in float32
    assert "| scaling |" in (tmp_path / "r.md").read_text() and "| scaling |" in capsys.readouterr().out
