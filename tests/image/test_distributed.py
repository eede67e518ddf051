"""tf.distribute for real on one machine: two CPU replicas under `mirrored`, and two worker
processes on localhost under `multi_worker_mirrored`."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import mlflow
import pytest

from pipelines.common.run_dir import FINISHED_FILE
from pipelines.image.checkpoint import ImageCheckpoints

REPO = pathlib.Path(__file__).resolve().parents[2]

# One device, then two logical CPU devices under `mirrored`, on the same seeded data and
# weights; prints the per-step losses and final weights of each.
_SAME_LOSS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from pipelines.image import training
    from tests.image.conftest import tiny_config

    data_dir, out = sys.argv[1:]
    result = {}
    for name in ("default", "mirrored"):
        # No crop, flip or shuffle (tf.data reshuffles per iterator, and a distributed
        # dataset is iterated differently): both runs see the same batches in file order.
        config = tiny_config("unused", data_dir, strategy=name, crop_padding=0, epochs=1,
                             steps_per_epoch=3, batch_size=32, shuffle_buffer=1)
        strategy = training.make_strategy(name)
        inputs = training.prepare_inputs(config)
        keras.utils.set_random_seed(0)
        model, _ = training.compiled_model(config, inputs, strategy)
        initial = [np.array(w) for w in model.get_weights()]
        losses = []
        step_loss = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
        model.fit(inputs.train, epochs=1, steps_per_epoch=3, callbacks=[step_loss],
                  shuffle=False, verbose=0)
        result[name] = dict(
            replicas=strategy.num_replicas_in_sync, losses=losses,
            initial=[w.tolist() for w in initial],
            final=[np.array(w).tolist() for w in model.get_weights()])
    json.dump(result, open(out, "w"))
""")


def test_mirrored_on_two_cpu_devices_trains_like_one_device(tmp_path, offline_data_dir):
    """Two replicas each take half of every global batch of 32; the loss is the mean over
    the whole batch and batch norm is synchronised, so the run is the one-device run up to
    float32 summation order (~1e-7 relative per step). After 3 SGD steps at lr 0.1 we allow
    1e-4 relative on the loss and 1e-4 absolute on the weights: 1000x the rounding, and far
    below what a real difference gives (a gradient summed instead of averaged over the two
    replicas doubles the step and moves the second loss by more than 1e-2)."""
    import numpy as np

    out = tmp_path / "result.json"
    subprocess.run([sys.executable, "-c", _SAME_LOSS, offline_data_dir, str(out)], check=True,
                   cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    result = json.loads(out.read_text())
    one, two = result["default"], result["mirrored"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    for a, b in zip(one["initial"], two["initial"]):
        np.testing.assert_array_equal(a, b)  # the same starting point
    assert len(one["losses"]) == len(two["losses"]) == 3
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    for a, b in zip(one["final"], two["final"]):
        np.testing.assert_allclose(b, a, atol=1e-4)
    assert not np.allclose(one["final"][-1], one["initial"][-1])  # it did train


def _free_ports(count):
    """Ports the OS hands out for port 0. TF_CONFIG needs them before the workers start,
    so they are released again first; a clash would fail the start, not pass a test."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_two_local_workers_and_only_the_chief_writes(
    tmp_path, offline_data_dir
):
    """Two worker processes, each with its own TF_CONFIG, train one epoch together (a step
    needs both: their gradients are all-reduced). Both finish; worker 0, the chief, writes
    the run dir, the checkpoint, the MLflow run and the export; worker 1 writes nothing
    (it gets its own run dir and MLflow store, which must stay absent)."""
    from pipelines.image import data

    data.get_builder("sklearn_digits", offline_data_dir)  # prepared once, not by both workers
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        run_dir = tmp_path / f"run-{index}"
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "TF_CONFIG": json.dumps(
                   {"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / f'mlflow-{index}.db'}"}
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        log = open(tmp_path / f"worker-{index}.log", "w")
        workers.append((subprocess.Popen(
            [sys.executable, "-m", "pipelines.image", "--strategy", "multi_worker_mirrored",
             "--dataset", "sklearn_digits", "--data-dir", offline_data_dir,
             "--run-dir", str(run_dir), "--backbone", "resnet8", "--width", "4",
             "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "32",
             "--no-log-model", "--verbose", "0"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [process.wait(timeout=540) for process, _ in workers]
    finally:
        for process, log in workers:
            if process.poll() is None:
                process.kill()
            log.close()
    logs = [(tmp_path / f"worker-{i}.log").read_text()[-3000:] for i in range(2)]
    assert codes == [0, 0], logs

    chief = tmp_path / "run-0"
    summary = json.loads((chief / FINISHED_FILE).read_text())
    assert [step for step, _ in ImageCheckpoints(chief).rotation.saved()] == [1]
    assert (pathlib.Path(summary["exports"]["classifier"]) / "saved_model.pb").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow-0.db'}")
    run = client.get_run(summary["run_id"])
    assert run.data.params["train.replicas"] == "2"  # one CPU replica per worker
    assert "eval/test_top1" in run.data.metrics
    assert not (tmp_path / "run-1").exists()
    assert not (tmp_path / "mlflow-1.db").exists()
