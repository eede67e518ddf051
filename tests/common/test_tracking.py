"""Shared MLflow tracking: resume into the same run, artifacts beside the store, curves."""

import pathlib

import mlflow

from pipelines.common.tracking import flatten, log_curves, tracked_run


def test_a_resumed_run_continues_the_same_mlflow_run(tracking_uri, tmp_path):
    config = {"model": {"depth": 20}, "epochs": 3}
    with tracked_run("unit", config, run_dir=tmp_path / "run") as first:
        mlflow.log_metric("loss", 1.0, step=0)
    with tracked_run("unit", config, run_dir=tmp_path / "run") as second:
        mlflow.log_metric("loss", 0.5, step=1)
    assert second.info.run_id == first.info.run_id
    client = mlflow.MlflowClient(tracking_uri)
    history = client.get_metric_history(first.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]
    assert client.get_run(first.info.run_id).data.params == {"model.depth": "20", "epochs": "3"}


def test_artifacts_live_beside_the_sqlite_store_not_in_the_working_dir(
    tracking_uri, tmp_path, monkeypatch
):
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    with tracked_run("artifacts", {"a": 1}) as run:
        log_curves({"loss/train": ([0, 1, 2], [3.0, 2.0, 1.5]),
                    "acc": ([0, 1, 2], [0.1, 0.5, 0.7])},
                   "curves.png")
    artifact_dir = pathlib.Path(mlflow.MlflowClient(tracking_uri).get_run(
        run.info.run_id).info.artifact_uri.removeprefix("file://"))
    assert artifact_dir.is_relative_to(tmp_path / "mlartifacts")
    assert (artifact_dir / "curves.png").stat().st_size > 1000
    assert (artifact_dir / "config.json").exists()
    assert list(workdir.iterdir()) == []


def test_flatten_nested_configs():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
