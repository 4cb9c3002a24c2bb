"""The registered model served over HTTP by ``mlflow models serve``: good and bad requests, and parity.

The tiny pipeline's registered band-gap model (``models:/matshift-band_gap/1`` in its SQLite
store) is served on a loopback port exactly as the README says. Its answers must equal, to
1e-9, the Python API's (``matshift.load_model``) and ``matshift predict``'s on the same
formulas; a bad request gets a 4xx naming the problem and the server keeps serving.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import matshift
from models.serving import COLUMNS
from models.serving.pyfunc import MAX_ROWS
from pipeline.cli import main
from tests.model_server import formulas_payload, serve
from tests.tiny_pipeline import tiny_run

pytestmark = pytest.mark.server

# in the tiny tables (GaAs, GaN, CdS: DFT-covered); Xx2 and "" do not parse; Fe2O3 is outside the tiny model's
# synthetic descriptor table, which it cannot extend: an error row too
FORMULAS = ["NaCl", "GaN", "CdS", "Xx2", "GaAs", "Fe2O3", ""]
MODEL_URI = "models:/matshift-band_gap/1"


@pytest.fixture(scope="module")
def server():
    run = tiny_run()
    assert run.codes["train"] == 0, run.output[-2000:]
    with serve(MODEL_URI, tracking_uri=f"sqlite:///{run.root / 'mlflow.db'}", cwd=run.root) as live:
        yield live


def _table(reply) -> pd.DataFrame:
    assert reply.status == 200, reply.body
    return pd.DataFrame(reply.body["predictions"])


def test_http_answers_equal_the_api_and_the_cli(server, tmp_path, monkeypatch):
    run = tiny_run()
    http = _table(server.post(formulas_payload(FORMULAS)))
    assert list(http.columns) == COLUMNS and http["formula"].tolist()[:3] == ["NaCl", "GaN", "CdS"]
    # the bad rows are rows with an error, not a failed request
    assert "Xx" in http.loc[3, "error"] and "descriptors" in http.loc[5, "error"] and http.loc[6, "error"]
    assert http.loc[[3, 5, 6], "prediction"].isna().all() and http.loc[[0, 1, 2, 4], "error"].isna().all()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{run.root / 'mlflow.db'}")
    monkeypatch.chdir(run.root)
    api = matshift.load_model(MODEL_URI).predict(FORMULAS)
    out = tmp_path / "cli.json"
    # exit code 1: some inputs were refused (each said on stderr); the table is written with every row
    assert main(["predict", "--params", str(run.params), "--property", "band_gap", "--output", str(out),
                 *[f for f in FORMULAS if f]]) == 1
    cli = pd.DataFrame(json.loads(out.read_text()))
    keep = [i for i, f in enumerate(FORMULAS) if f]
    for column in ("prediction", "lower", "upper", "dft_value"):
        h = pd.to_numeric(http[column], errors="coerce").to_numpy(float)
        a = pd.to_numeric(api[column], errors="coerce").to_numpy(float)
        c = pd.to_numeric(cli[column], errors="coerce").to_numpy(float)
        np.testing.assert_allclose(h, a, rtol=0, atol=1e-9, err_msg=column)
        np.testing.assert_allclose(h[keep], c, rtol=0, atol=1e-9, err_msg=column)
    assert np.isfinite(pd.to_numeric(http.loc[[0, 2, 4], "dft_value"]).to_numpy(float)).all()  # looked up, as the CLI does
    for column in ("formula", "structure_used", "view", "error"):  # the same lookups, polymorph and refusals
        assert http[column].fillna("").tolist() == api[column].fillna("").tolist(), column
        assert http[column].fillna("").iloc[keep].tolist() == cli[column].fillna("").tolist(), column


def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(server):
    missing = server.post({"dataframe_split": {"columns": ["composition"], "data": [["GaN"]]}})
    assert 400 <= missing.status < 500 and "formula" in json.dumps(missing.body)
    broken = server.post(None, raw=b'{"dataframe_split": {"columns": ["formula"], "data": [["GaN"')
    assert 400 <= broken.status < 500
    too_many = server.post(formulas_payload(["GaN"] * (MAX_ROWS + 1)))
    assert 400 <= too_many.status < 500 and str(MAX_ROWS) in json.dumps(too_many.body)
    coverage = server.post(formulas_payload(["GaN"], coverage=2.0))
    assert 400 <= coverage.status < 500 and "coverage" in json.dumps(coverage.body)
    # still serving, with the same answer as before the bad requests
    first, again = (_table(server.post(formulas_payload(["GaN", "NaCl"]))) for _ in range(2))
    assert first["prediction"].tolist() == again["prediction"].tolist()
    assert np.isfinite(first["prediction"].to_numpy(float)).all()


def test_coverage_is_a_request_parameter(server):
    narrow = _table(server.post(formulas_payload(["GaN", "NaCl"], coverage=0.5)))
    wide = _table(server.post(formulas_payload(["GaN", "NaCl"], coverage=0.95)))
    assert narrow["prediction"].tolist() == wide["prediction"].tolist()
    assert ((wide["upper"] - wide["lower"]) >= (narrow["upper"] - narrow["lower"])).all()
    assert os.path.getsize(server.log) > 0


def test_a_request_s_dft_value_column_is_the_caller_s_own(server, monkeypatch):
    """An optional ``dft_value`` column: used per row as ``--input``'s (null: the packaged table's), refused by row."""
    run = tiny_run()
    rows = [["NaCl", 0.5], ["NaCl", None], ["GaN", 3.0], ["GaN", -1.0]]
    http = _table(server.post({"dataframe_split": {"columns": ["formula", "dft_value"], "data": rows}}))
    given = pd.to_numeric(http["dft_value"], errors="coerce").to_numpy(float)
    assert given[0] == 0.5 and given[2] == 3.0 and np.isfinite(given[1]) and given[1] != 0.5
    assert http.loc[0, "structure_used"] == "user DFT value" and http.loc[1, "structure_used"].startswith("mp-")
    assert "below 0" in http.loc[3, "error"] and np.isnan(pd.to_numeric(http["prediction"]).iloc[3])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{run.root / 'mlflow.db'}")
    api = matshift.load_model(MODEL_URI).predict(pd.DataFrame(rows, columns=["formula", "dft_value"]))
    np.testing.assert_allclose(pd.to_numeric(http["prediction"]).to_numpy(float),
                               pd.to_numeric(api["prediction"]).to_numpy(float), rtol=0, atol=1e-9)
