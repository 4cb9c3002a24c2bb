"""benchmarks/cpu_trace.py: samples fall in the stage that was running, idle core-seconds add up."""

import json
import sys

import pytest

from benchmarks.cpu_trace import main, stage_loads, trace


def test_samples_are_attributed_to_the_running_stage_and_idle_time_adds_up():
    # 2 cores; stage a from 0 to 10 s fully busy, stage b from 10 to 20 s with one core idle from 14 to 20 s
    samples = [(float(t), 1.0) for t in range(2, 11, 2)] + [(12.0, 1.0), (14.0, 1.0), (16.0, 0.5), (18.0, 0.5),
                                                             (20.0, 0.5)]
    a, b = stage_loads(samples, [(0.0, "a"), (10.0, "b")], end=20.0, cores=2)
    assert (a.stage, a.seconds, a.busy, a.idle_core_seconds, a.longest_low_seconds) == ("a", 10.0, 1.0, 0.0, 0.0)
    assert (b.stage, b.seconds, b.busy, b.idle_core_seconds, b.longest_low_seconds) == ("b", 10.0, 0.7, 6.0, 6.0)
    (short,) = stage_loads(samples, [(20.5, "short")], end=21.0, cores=2)  # no sample inside: busy unknown, not NaN
    assert short.busy is None and short.idle_core_seconds == 0.0
    with pytest.raises(ValueError, match="no stage started"):
        stage_loads(samples, [], end=20.0, cores=2)


def test_a_run_is_traced_stage_by_stage(tmp_path, capsys):
    script = ("import sys, time; print(\"Running stage 'first':\", flush=True); time.sleep(0.4); "
              "sys.stdout.write(\"progress\\rRunning stage 'second':\\n\"); sys.stdout.flush(); time.sleep(0.4)")
    samples, starts, end, code = trace([sys.executable, "-c", script], interval=0.1)
    assert code == 0 and [name for _, name in starts] == ["first", "second"]
    assert starts[0][0] < starts[1][0] < end and len(samples) >= 4
    assert all(0.0 <= b <= 1.0 for _, b in samples)

    out = tmp_path / "trace"
    assert main(["--interval", "0.1", "--out", str(out), "--", sys.executable, "-c", script]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [s["stage"] for s in summary["stages"]] == ["(start-up)", "first", "second"]
    assert json.loads(out.with_suffix(".json").read_text())["samples"]
    assert "| second |" in out.with_suffix(".md").read_text()


def test_a_failing_command_writes_nothing(tmp_path, capsys):
    out = tmp_path / "trace"
    assert main(["--interval", "0.1", "--out", str(out), "--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert "exited with 3" in capsys.readouterr().err
    assert not out.with_suffix(".json").exists()
