"""After align -> train -> evaluate for both properties, the MLflow store holds linked train and evaluate runs.

What ``dvc repro`` does, on the tiny pipeline's synthetic tables (:func:`tests.tiny_pipeline.make_inputs`)
with ``evaluate --quick``, in a directory of its own so the shared tiny run's store stays as it was.
"""

import json
import os

import pytest

from models.properties import PROPERTY_NAMES
from pipeline.cli import main
from tests.tiny_pipeline import make_inputs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Run align, train and evaluate --quick for every property; return the root and the exit codes."""
    root = tmp_path_factory.mktemp("links")
    params = make_inputs(root)
    old_cwd, old_uri = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    codes = {}
    try:
        os.chdir(root)  # MLflow puts artifacts under ./mlruns
        for prop in PROPERTY_NAMES:
            for stage in ("align", "surrogate", "train", "evaluate"):
                argv = [stage, "--params", str(params), "--property", prop] + (["--quick"] if stage == "evaluate"
                                                                                else [])
                codes[(stage, prop)] = main(argv)
    finally:
        os.chdir(old_cwd)
        if old_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return root, codes


def test_train_and_evaluate_runs_are_linked_for_every_property(store):
    import mlflow

    root, codes = store
    assert set(codes.values()) == {0}, codes
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    by_stage: dict[tuple[str, str], list] = {}
    for run in runs:
        key = (run.data.tags.get("matshift.stage", ""), run.data.tags.get("matshift.property", ""))
        by_stage.setdefault(key, []).append(run)
    for prop in PROPERTY_NAMES:
        assert len(by_stage.get(("train", prop), [])) == 1, prop
        assert len(by_stage.get(("evaluate", prop), [])) == 1, prop
        train, evaluate = by_stage[("train", prop)][0], by_stage[("evaluate", prop)][0]
        # the record the train stage wrote names the train run; the evaluate run is its child, and each names the other
        record = json.loads((root / "models" / prop / "mlflow_run.json").read_text())
        assert record["run_id"] == train.info.run_id
        assert evaluate.data.tags["mlflow.parentRunId"] == train.info.run_id
        assert evaluate.data.tags["matshift.train_run_id"] == train.info.run_id
        assert train.data.tags["matshift.evaluate_run_id"] == evaluate.info.run_id
        # the evaluate run carries the stage's metrics JSON: every number, under its path, and the file itself
        metrics = json.loads((root / "metrics" / "quick" / f"{prop}.json").read_text())
        cv = metrics["protocols"]["grouped_cv"]
        for model in ("stacked", "stacked_ot"):
            logged = evaluate.data.metrics[f"protocols.grouped_cv.{model}.mae"]
            assert logged == pytest.approx(cv[model]["mae"])
        assert evaluate.data.params["budget"] == "quick"
        names = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
        assert f"{prop}.json" in names and prop in names
        plots = {a.path for a in client.list_artifacts(evaluate.info.run_id, prop)}
        assert f"{prop}/folds.csv" in plots


def test_evaluate_without_a_train_record_logs_an_unlinked_run(store, tmp_path):
    """A model trained with --no-mlflow has no run record: evaluate still logs, unlinked, and says so."""
    import mlflow

    from models.tracking import log_evaluation_run

    uri = f"sqlite:///{tmp_path / 'other.db'}"
    old_cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        run_id = log_evaluation_run(tracking_uri=uri, experiment="matshift", prop="band_gap", params={"budget": "quick"},
                                    metrics={"grouped_cv": {"mae": {"stacked": 0.5}}}, artifacts=[],
                                    train_run={"run_id": "0" * 32})
    finally:
        os.chdir(old_cwd)
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert "mlflow.parentRunId" not in run.data.tags and "matshift.train_run_id" not in run.data.tags
    assert run.data.metrics == {"grouped_cv.mae.stacked": 0.5}
