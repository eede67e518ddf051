"""The clients against a live `mlflow models serve` of a logged SavedModel (loopback)."""

import os
import pathlib
import re
import shutil
import subprocess
import time

import mlflow
import numpy as np
import pytest

from serving.client import (
    BadRequestError,
    MlflowServingClient,
    ModelNotFoundError,
    TFServingRestClient,
)
from serving.mlflow_model import log_saved_model, serve_command


def _free_port():
    """A port the OS has just given out and released. `mlflow models serve -p 0` would not
    do: MLflow drops a port of 0 and uvicorn then takes its default, 8000."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(log_file, process, timeout=180):
    """The port uvicorn reports once it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log_file.read_text())
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited: {log_file.read_text()[-3000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"mlflow models serve did not start: {log_file.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(era_classifier, tmp_path_factory):
    """Log the ERA classifier's SavedModel to a tmp store and serve it on a free port with
    the command `pipelines.export` prints, from a shell whose PATH lacks the virtualenv (as
    for a user who did not activate it)."""
    workdir = tmp_path_factory.mktemp("mlflow_serving")
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.create_experiment("serving", artifact_location=str(workdir / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        model_uri = log_saved_model(era_classifier.path).model_uri
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and not any((pathlib.Path(p) / name).exists() for name in ("mlflow", "uvicorn")))
    assert shutil.which("uvicorn", path=path) is None and shutil.which("mlflow", path=path) is None
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, PATH=path)
    log = open(workdir / "server.log", "w")
    # exec: the shell becomes the server, so terminate() below reaches it.
    server = subprocess.Popen(
        ["/bin/sh", "-c", "exec " + serve_command(model_uri, port=_free_port())],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        port = _wait_for_port(workdir / "server.log", server)
        client = MlflowServingClient(f"http://127.0.0.1:{port}", timeout=60)
        client.wait_until_ready(timeout=180, process=server)
        yield client
    except Exception:
        print((workdir / "server.log").read_text()[-3000:])
        raise
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.parametrize("request_format", ["inputs", "instances"])
def test_predictions_match_keras(served, era_classifier, request_format):
    outputs = served.predict({"images": era_classifier.images}, request_format=request_format)
    np.testing.assert_allclose(outputs["probabilities"], era_classifier.probabilities, atol=1e-6)
    np.testing.assert_array_equal(outputs["class_ids"], era_classifier.probabilities.argmax(-1))


def test_single_unnamed_input_is_accepted(served, era_classifier):
    outputs = served.predict(era_classifier.images)
    np.testing.assert_allclose(outputs["probabilities"], era_classifier.probabilities, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3), (3, 8, 8), (3, 8, 8, 3), (3, 28, 28, 1)])
def test_wrong_shape_or_rank_is_refused_naming_the_spec_and_server_stays_up(served, shape):
    expected = (r"input 'images' must be float32 \[-1, 8, 8, 1\], got float64 "
                + re.escape(str(list(shape))))
    with pytest.raises(BadRequestError, match=expected):
        served.predict({"images": np.zeros(shape, np.float32)})
    assert served.ping()


def test_wrong_dtype_is_refused_naming_the_spec_and_server_stays_up(served):
    with pytest.raises(BadRequestError, match=r"must be float32 \[-1, 8, 8, 1\], got str"):
        served.predict({"images": np.full((1, 8, 8, 1), "pixel")})
    assert served.ping()


def test_a_refusal_of_a_large_request_gives_the_reason_first(served):
    """MLflow echoes the whole input before the reason; the client puts the reason first and
    keeps a short piece of the input."""
    with pytest.raises(BadRequestError) as refused:
        served.predict({"images": np.zeros((200, 8, 8, 3), np.float32)})
    message = str(refused.value)
    assert re.match(r"predict at \S+: the server refused the request \(HTTP 400\): input "
                    r"'images' must be float32 \[-1, 8, 8, 1\], got float64 \[200, 8, 8, 3\]"
                    r" \(-1: any size\) \(input: \{'images': array", message), message
    assert len(message) < 500


def test_unknown_input_name_is_refused_and_server_stays_up(served):
    with pytest.raises(BadRequestError, match=r"missing \['images'\], unknown \['pixels'\]"):
        served.predict({"pixels": np.zeros((1, 8, 8, 1), np.float32)})
    assert served.ping()


def test_unknown_model_is_reported_and_server_stays_up(served):
    # MLflow serves one model at /invocations; a TF Serving style request for a model
    # name it does not serve gets a real 404, which the REST client names.
    rest = TFServingRestClient(served.url, timeout=30)
    with pytest.raises(ModelNotFoundError, match="serves no model 'no_such_model'"):
        rest.predict("no_such_model", np.zeros((1, 8, 8, 1), np.float32))
    assert served.ping()
