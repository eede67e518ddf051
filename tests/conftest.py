import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
from hypothesis import settings

# Hypothesis: in CI (CI=true) every run draws the same examples (derandomize), so a failure
# reproduces on the next run; elsewhere examples are random and a failure prints the blob
# to replay it with @reproduce_failure. HYPOTHESIS_PROFILE=ci gives the CI behaviour locally.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


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
