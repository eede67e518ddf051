import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A private MLflow store for one test.

    MLflow keeps process-wide state: the tracking URI set by `mlflow.set_tracking_uri`,
    and the experiment id left by `mlflow.set_experiment` (a module global and the
    MLFLOW_EXPERIMENT_ID variable, which subprocesses inherit). All three point at this
    test's store, or nowhere, so no test looks into another test's store.
    """
    import mlflow
    import mlflow.tracking.fluent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    mlflow.set_tracking_uri(uri)
    return uri
