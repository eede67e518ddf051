import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path, monkeypatch):
    """MLflow's SQLite stores put artifacts in ./mlruns: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)
