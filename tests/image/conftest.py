"""Helpers for the image pipeline tests: tiny configs and a shared TFDS data dir."""

import pytest

from pipelines.image.config import ImageConfig


@pytest.fixture(autouse=True)
def _work_in_tmp_dir(tmp_path, monkeypatch):
    """Run every test from its tmp dir: MLflow puts a SQLite store's artifacts in ./mlruns
    relative to the working directory, which must not be the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def offline_data_dir(tmp_path_factory):
    """One TFDS data_dir per test session: the offline datasets are prepared once."""
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(run_dir, data_dir, **overrides):
    """A config that trains a very small ResNet for a few steps."""
    values = dict(
        dataset="sklearn_digits",
        data_dir=data_dir,
        crop_padding=1,
        backbone="resnet8",
        width=4,
        epochs=2,
        steps_per_epoch=3,
        batch_size=32,
        run_dir=str(run_dir),
        log_model=False,
        verbose="0",
    )
    values.update(overrides)
    return ImageConfig(**values)
