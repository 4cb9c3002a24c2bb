from pipeline.cli import main


def test_doctor_reports_missing_mirror_as_failure(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MP_API_KEY", "canary-doctor-0123456789")
    (tmp_path / "params.yaml").write_text(f"fetch:\n  mirror: {tmp_path / 'nowhere'}\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  fetch:\n    cmd: x\n    outs: [data/raw]\n")
    monkeypatch.chdir(tmp_path)
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  data mirror" in out
    assert "WARN  stage fetch" in out and "run dvc repro fetch" in out
    assert "canary-doctor" not in out
    assert "MP_API_KEY" in out and "value not shown" in out


def test_doctor_passes_on_a_complete_tree(tmp_path, capsys, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.csv").write_text("x\n1\n")
    (tmp_path / "params.yaml").write_text(f"fetch:\n  mirror: {mirror}\nproperties: [band_gap]\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  align:\n    foreach: ${properties}\n    do:\n      cmd: x\n      outs:\n        - data/aligned/${item}\n"
    )
    (tmp_path / "data" / "aligned" / "band_gap").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert main(["doctor"]) == 0
    assert "OK    stage align@band_gap" in capsys.readouterr().out
