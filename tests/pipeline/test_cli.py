import pytest

from pipeline.cli import main


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("fetch", "featurize", "align", "train", "evaluate", "predict", "doctor"):
        assert name in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: matshift" in capsys.readouterr().out


def test_subcommand_help_imports_only_that_stage(capsys):
    import subprocess
    import sys

    # a fresh interpreter: which stage modules does `matshift predict --help` import?
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "try:\n    main(['-q', 'predict', '--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--cif" in out  # predict's own options are declared
    loaded = out.strip().splitlines()[-1]
    assert "'pipeline.predict'" in loaded
    for other in ("pipeline.fetch", "pipeline.featurize", "pipeline.align", "pipeline.train"):
        assert f"'{other}'" not in loaded, other


def test_unknown_option_of_a_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--no-such-option"])
    assert exc.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err


def test_a_dead_worker_process_is_an_error_message_not_a_traceback(capsys, monkeypatch):
    """Any stage whose folds or members run in worker processes (models/parallel.py): one place turns it into a line."""
    import types

    import pipeline.cli as cli
    from models.parallel import WorkerDied

    def run(args):
        raise WorkerDied("a worker process died while running 19 pieces on 2 processes (out of memory?); "
                         "run them in one process (workers: 1)")

    real = cli._import
    monkeypatch.setattr(cli, "_import", lambda module: types.SimpleNamespace(add_arguments=lambda parser: None, run=run)
                        if module == "pipeline.metal"
                        else real(module))
    assert main(["-q", "metal"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("matshift metal: error: a worker process died") and "workers: 1" in err
    assert "Traceback" not in err and "unexpected" not in err
