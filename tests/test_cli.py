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
