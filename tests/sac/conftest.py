"""TF-Agents needs Keras 2: select it before anything reads `tf.keras`.

With TF_USE_LEGACY_KERAS=1, `tf.keras` is tf_keras (Keras 2) while `import keras` stays Keras 3.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

if os.environ["KERAS_BACKEND"] != "tensorflow":
    collect_ignore_glob = ["test_*.py"]  # TF-Agents runs on the TensorFlow backend only


@pytest.fixture(scope="session", autouse=True)
def legacy_keras_selected():
    import tensorflow as tf

    assert "tf_keras" in tf.keras.layers.Dense.__module__, (
        "tf.keras was resolved to Keras 3 before tests/sac/conftest.py set "
        "TF_USE_LEGACY_KERAS=1 (keras-hub/tensorflow_text do that on import); run the SAC "
        "tests in their own pytest process, as scripts/test.sh does."
    )


@pytest.fixture(autouse=True)
def run_in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo writes MUJOCO_LOG.TXT into the working directory: keep it out of the repo."""
    monkeypatch.chdir(tmp_path)
