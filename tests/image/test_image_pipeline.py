"""The pipeline end to end: mock TFDS data, real offline data, export, CLI, resume."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipelines.image import data, training
from pipelines.image.__main__ import build_parser, config_from_args, main
from pipelines.image.config import ImageConfig
from tests.image.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(tracking_uri, run_id):
    client = mlflow.tracking.MlflowClient(tracking_uri)
    return client, client.get_run(run_id)


def _artifact_paths(client, run_id, path=None):
    paths = []
    for item in client.list_artifacts(run_id, path):
        paths.extend(_artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return paths


def test_end_to_end_on_mock_cifar10(tracking_uri, tmp_path):
    config = tiny_config(
        tmp_path / "run",
        str(tmp_path / "tfds"),
        dataset="cifar10",
        crop_padding=4,
        flip=True,
        head="era_label_smoothing",
        log_model=True,
    )
    with tfds.testing.mock_data(num_examples=48):
        summary = training.train(config)

    client, run = _run(tracking_uri, summary["run_id"])
    assert run.data.params["dataset"] == "cifar10"
    assert str(tmp_path) in run.info.artifact_uri  # not in the repository
    assert run.data.params["head"] == "era_label_smoothing"
    assert float(run.data.params["era.min_entropy"]) == pytest.approx(0.6, abs=1e-6)
    for key in ("val/top1", "val/top5", "val/nll", "val/ece", "val/entropy_mean", "val/entropy_min", "train/loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    # The tight floor holds on every validation image.
    assert run.data.metrics["val/entropy_min"] >= 0.6 - 1e-4
    for key in ("test/ece", "test/ece_calibrated", "temperature", "test/nll_era_off"):
        assert key in run.data.metrics
    artifacts = _artifact_paths(client, run.info.run_id)
    for expected in ("config.json", "curves.png", "model.keras", "serving_metadata.json",
                     "saved_model/saved_model.pb"):
        assert expected in artifacts, expected
    logged_config = json.loads(
        pathlib.Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read_text()
    )
    assert logged_config["dataset"] == "cifar10" and logged_config["head"] == "era_label_smoothing"
    logged = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert logged.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 32, 32, 3)
    export_dir = pathlib.Path(summary["export_dir"])
    assert export_dir.name == "1" and (export_dir / "saved_model.pb").exists()
    assert (export_dir.parent.parent / "models.config").exists()


SERVE_STANDALONE = r"""
import json, sys
import numpy as np
sys.modules["era_keras"] = None  # the SavedModel must serve without the project
sys.modules["pipelines"] = None
import tensorflow as tf
export_dir, images_file, out_file = sys.argv[1:4]
loaded = tf.saved_model.load(export_dir)
outputs = loaded.signatures["serving_default"](images=tf.constant(np.load(images_file)))
facts = {k: v.numpy() for k, v in loaded.signatures["serving_metadata"]().items()}
np.savez(out_file, probabilities=outputs["probabilities"].numpy(),
         class_ids=outputs["class_ids"].numpy(),
         served=facts["served_probabilities"], temperature=facts["temperature"],
         era_at_inference=facts["era_at_inference"])
"""


def _serve_standalone(export_dir, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "serve.py"
    script.write_text(SERVE_STANDALONE)
    subprocess.run(
        [sys.executable, str(script), str(export_dir), str(tmp_path / "images.npy"),
         str(tmp_path / "served.npz")],
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    return np.load(tmp_path / "served.npz")


@pytest.mark.parametrize("era_at_inference", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_real_data_run_serves_what_keras_predicts(tracking_uri, tmp_path, offline_data_dir, era_at_inference):
    import keras

    import era_keras

    config = tiny_config(tmp_path / "run", offline_data_dir, era_at_inference=era_at_inference)
    summary = training.train(config)

    builder = data.get_builder("sklearn_digits", offline_data_dir)
    images = np.concatenate([x.numpy() for x, _ in data.read_split(builder, "test").batch(512)])
    model = keras.saving.load_model(pathlib.Path(summary["run_dir"]) / training.MODEL_FILE)
    temperature = summary["temperature"]
    logits = model.predict(images.astype("float32") / 255.0, verbose=0)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits / temperature))

    served = _serve_standalone(summary["export_dir"], images, tmp_path)
    np.testing.assert_allclose(served["probabilities"], expected, atol=2e-6)
    assert np.array_equal(served["class_ids"], expected.argmax(-1))
    assert float(served["temperature"]) == pytest.approx(temperature)
    assert bool(served["era_at_inference"]) == era_at_inference

    # Which probabilities are served is what the floor says: ERA floor on or plain softmax.
    raw = keras.Model(model.inputs, model.get_layer("logits").output).predict(
        images.astype("float32") / 255.0, verbose=0
    )
    if era_at_inference:
        assert served["served"].item().decode().startswith("era_floor(target_entropy=0.6")
        np.testing.assert_allclose(
            logits, keras.ops.convert_to_numpy(era_keras.softmax_era(raw, 0.6)), atol=1e-5
        )
    else:
        assert served["served"].item().decode().startswith("softmax")
        np.testing.assert_allclose(logits, raw, atol=1e-6)
    metadata = json.loads(
        (pathlib.Path(summary["export_dir"]) / "assets.extra" / "serving_metadata.json").read_text()
    )
    assert metadata["era_at_inference"] == era_at_inference
    assert metadata["class_names"] == [str(i) for i in range(10)]


def test_cli_rejects_a_bad_era_target_before_training(tmp_path, offline_data_dir, capsys):
    run_dir = tmp_path / "run"
    code = main(["--target-entropy", "2.5", "--data-dir", offline_data_dir, "--run-dir", str(run_dir)])
    assert code == 2
    assert "admissible range (0.0000, 2.3026)" in capsys.readouterr().err
    assert not run_dir.exists()


def test_cli_rejects_an_unknown_dataset(capsys):
    assert main(["--dataset", "mnist_5k"]) == 2
    assert "no dataset named 'mnist_5k'" in capsys.readouterr().err


def test_config_json_then_flags(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 7, "head": "softmax", "flip": True}))
    config, _ = config_from_args(["--config-json", str(path), "--head", "dropout", "--no-flip"])
    assert (config.epochs, config.head, config.flip) == (7, "dropout", False)
    assert config.batch_size == ImageConfig().batch_size
    path.write_text(json.dumps({"epoch": 7}))
    with pytest.raises(ValueError, match=r"Unknown config field\(s\) \['epoch'\]"):
        config_from_args(["--config-json", str(path)])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        config_from_args(["--optimizer", "adam"])


def test_help_lists_every_option():
    text = build_parser().format_help()
    for flag in ("--dataset", "--head", "--target-entropy", "--era-floor", "--era-at-inference",
                 "--strategy", "--mixed-precision", "--run-dir", "--tracking-uri", "--config-json"):
        assert flag in text


def test_a_run_dir_with_another_config_is_refused(tmp_path, offline_data_dir):
    config = tiny_config(tmp_path / "run", offline_data_dir)
    training.prepare_run_dir(config)
    changed = tiny_config(tmp_path / "run", offline_data_dir, head="softmax")
    with pytest.raises(ValueError, match=r"different config \(head differ\)"):
        training.prepare_run_dir(changed)


def test_strategy_flag_builds_tf_distribute_strategies():
    import tensorflow as tf

    assert training.make_strategy("default") is tf.distribute.get_strategy()
    mirrored = training.make_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync >= 1


def test_schedule_warms_up_then_decays_to_zero():
    config = ImageConfig(epochs=4, learning_rate=0.2, warmup_epochs=1)
    schedule = training.learning_rate_schedule(config, steps_per_epoch=10)
    values = [float(schedule(step)) for step in range(41)]
    assert values[0] == pytest.approx(0.0) and values[10] == pytest.approx(0.2)
    assert all(a <= b + 1e-9 for a, b in zip(values[:10], values[1:11]))
    assert all(a >= b - 1e-9 for a, b in zip(values[10:40], values[11:41]))
    assert values[40] == pytest.approx(0.0, abs=1e-6)


def _cli(args):
    """The CLI in a subprocess, run from the test's tmp dir (see conftest)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.image", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tracking_uri, tmp_path, offline_data_dir):
    run_dir = tmp_path / "run"
    args = ["--dataset", "sklearn_digits", "--data-dir", offline_data_dir, "--run-dir", str(run_dir),
            "--backbone", "resnet8", "--width", "8", "--epochs", "4", "--steps-per-epoch", "30",
            "--batch-size", "32", "--no-log-model", "--verbose", "2"]
    first = _cli(args)
    metadata = run_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 1:
            break
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[0][-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_epochs = json.loads(metadata.read_text())["epoch"]
    assert 1 <= done_epochs < 4
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    assert not (run_dir / training.FINISHED_FILE).exists()

    second = _cli(args)
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output[-3000:]
    # Keras starts at the epoch after the checkpoint, not at epoch 1.
    assert f"Epoch {done_epochs + 1}/4" in output and "Epoch 1/4" not in output
    summary = json.loads((run_dir / training.FINISHED_FILE).read_text())
    assert summary["run_id"] == run_id  # the same MLflow run, continued
    client, run = _run(tracking_uri, run_id)
    steps = {m.step for m in client.get_metric_history(run_id, "val/top1")}
    assert steps == {1, 2, 3, 4}
    # The optimizer state came back too: 4 epochs of 30 steps in total, nothing lost.
    import keras

    model = keras.saving.load_model(run_dir / training.MODEL_FILE)
    assert int(model.optimizer.iterations) == 4 * 30
    # Resuming a finished run is refused rather than retrained.
    third = _cli(args)
    assert third.wait(timeout=120) == 2 and "already finished" in third.communicate()[0]


@pytest.mark.slow
def test_default_run_learns_real_mnist(tmp_path, offline_data_dir, tracking_uri):
    """The README's main command: the embedded default config, on real MNIST digits."""
    run_dir = tmp_path / "run"
    process = _cli(["--data-dir", offline_data_dir, "--run-dir", str(run_dir), "--verbose", "2"])
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / training.FINISHED_FILE).read_text())
    assert summary["test/top1"] > 0.9
    assert summary["test/entropy_min"] >= 0.6 - 1e-4  # the tight floor, at inference
    assert summary["test/ece_calibrated"] < summary["test/ece"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mirrored_strategy_and_mixed_precision_train(tracking_uri, tmp_path, offline_data_dir, precision):
    import keras

    config = tiny_config(tmp_path / "run", offline_data_dir, strategy="mirrored", mixed_precision=precision)
    summary = training.train(config)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    model = keras.saving.load_model(pathlib.Path(summary["run_dir"]) / training.MODEL_FILE)
    assert model.get_layer("resnet8").get_layer("stem_conv").compute_dtype == precision
    assert model.get_layer("logits").compute_dtype == "float32"
    assert np.isfinite(summary["test/nll"])
    client, run = _run(tracking_uri, summary["run_id"])
    assert run.data.params["train.replicas"] == "1"
