"""The pipeline end to end: mock TFDS data, real offline data, export, CLI, resume."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipelines.common.errors import ConfigError, UserError, run_cli
from pipelines.common.run_dir import FINISHED_FILE
from pipelines.image import __main__ as cli
from pipelines.image import data, training
from pipelines.image.__main__ import build_parser, config_from_args
from pipelines.image.checkpoint import ImageCheckpoints
from pipelines.image.config import ImageConfig
from tests.image.conftest import tiny_config


def main(argv):
    """The image CLI in this process, as `python -m pipelines.image` ends: its exit status."""
    return run_cli(cli.main, argv)

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
    assert run.info.run_name == "image cifar10 resnet8 era_label_smoothing-h0.6 seed 0"
    for key in ("eval/val_top1", "eval/val_top5", "eval/val_nll", "eval/val_ece",
                "entropy/val_mean", "entropy/val_min", "train/loss", "train/learning_rate",
                "perf/epoch_seconds", "perf/train_images_per_second"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    # Every metric follows the project's scheme.
    assert {key.split("/")[0] for key in run.data.metrics} == {"train", "eval", "entropy", "perf"}
    # The tight floor holds on every validation image.
    assert run.data.metrics["entropy/val_min"] >= 0.6 - 1e-4
    for key in ("eval/test_ece", "eval/test_ece_calibrated", "eval/temperature",
                "eval/test_nll_era_off"):
        assert key in run.data.metrics
    artifacts = _artifact_paths(client, run.info.run_id)
    for expected in ("config.json", "curves.png", "model.keras", "serving_metadata.json",
                     "saved_model/saved_model.pb"):
        assert expected in artifacts, expected
    logged_config = json.loads(
        pathlib.Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path)))
        .read_text()
    )
    assert logged_config["dataset"] == "cifar10" and logged_config["head"] == "era_label_smoothing"
    logged = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert logged.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 32, 32, 3)
    export_dir = pathlib.Path(summary["exports"][training.EXPORT_NAME])
    assert export_dir.name == "1" and (export_dir / "saved_model.pb").exists()
    assert summary["step"] == config.epochs and summary["run_dir"] == str(tmp_path / "run")
    assert summary["metrics"]["eval/test_top1"] == run.data.metrics["eval/test_top1"]
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


@pytest.mark.parametrize(
    "era_at_inference, calibrate",
    [(True, False), pytest.param(False, False, marks=pytest.mark.slow),
     pytest.param(True, True, marks=pytest.mark.slow)],
)
def test_real_data_run_serves_what_keras_predicts(
    tracking_uri, tmp_path, offline_data_dir, era_at_inference, calibrate
):
    """By default the export serves what was trained: the ERA floor's probabilities, with no
    temperature (a fitted T < 1 would push them under the floor). `calibrate` applies the
    fitted temperature, and the metadata says which."""
    import keras

    import era_keras

    config = tiny_config(tmp_path / "run", offline_data_dir, era_at_inference=era_at_inference,
                         calibrate=calibrate)
    summary = training.train(config)
    metrics = summary["metrics"]
    assert summary["served_temperature"] == (metrics["eval/temperature"] if calibrate else 1.0)
    export_dir = summary["exports"][training.EXPORT_NAME]

    builder = data.get_builder("sklearn_digits", offline_data_dir)
    images = np.concatenate([x.numpy() for x, _ in data.read_split(builder, "test").batch(512)])
    model = keras.saving.load_model(pathlib.Path(summary["run_dir"]) / training.MODEL_FILE)
    temperature = summary["served_temperature"]
    logits = model.predict(images.astype("float32") / 255.0, verbose=0)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits / temperature))

    served = _serve_standalone(export_dir, images, tmp_path)
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
        (pathlib.Path(export_dir) / "assets.extra" / "serving_metadata.json").read_text()
    )
    assert metadata["era_at_inference"] == era_at_inference
    assert metadata["calibrated"] is calibrate
    assert metadata["fitted_temperature"] == pytest.approx(metrics["eval/temperature"])
    assert metadata["class_names"] == [str(i) for i in range(10)]
    if era_at_inference and not calibrate:  # the floor holds on what is served
        p = served["probabilities"].astype(np.float64)
        assert (-(p * np.log(p)).sum(axis=-1) >= 0.6 - 1e-4).all()


def test_cli_rejects_a_bad_era_target_before_training(tmp_path, offline_data_dir, capsys):
    run_dir = tmp_path / "run"
    code = main(["--target-entropy", "2.5", "--data-dir", offline_data_dir,
                 "--run-dir", str(run_dir)])
    assert code == 2
    assert "admissible range (0.0000, 2.3026)" in capsys.readouterr().err
    assert not run_dir.exists()


def test_cli_rejects_an_unknown_dataset(capsys):
    assert main(["--dataset", "mnist_5k"]) == 2
    assert "no dataset named 'mnist_5k'" in capsys.readouterr().err


def test_flags_are_checked_before_any_data_is_prepared_or_read(tmp_path, capsys):
    """A typo costs seconds: the offline dataset is not prepared before the flags are
    checked, and an unprepared TFDS dataset is reported together with them."""
    data_dir = tmp_path / "tfds"
    assert main(["--epochs", "0", "--head", "softmx", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "head='softmx' is not one of" in err and "epochs must be >= 1" in err
    assert not data_dir.exists()  # mnist5k was not prepared
    assert main(["--dataset", "cifar10", "--epochs", "0", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Dataset 'cifar10' is not prepared" in err and "epochs must be >= 1" in err
    assert ".;" not in err


def test_config_json_then_flags(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 7, "head": "softmax", "flip": True}))
    config, _ = config_from_args(["--config-json", str(path), "--head", "dropout", "--no-flip"])
    assert (config.epochs, config.head, config.flip) == (7, "dropout", False)
    assert config.batch_size == ImageConfig().batch_size


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"epoch": 7}', "unknown field 'epoch'"),
        ('{"epochs": "two"}', "epochs must be int, got 'two'"),
        ("[1, 2]", "must hold a JSON object of ImageConfig fields, got list"),
        ("{not json", "is not valid JSON"),
        ("", "is not valid JSON"),
    ],
)
def test_a_bad_config_json_is_one_line_naming_the_file(tmp_path, capsys, content, expected):
    path = tmp_path / "settings.json"
    path.write_text(content)
    assert main(["--config-json", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err
    assert expected in err


def test_every_config_problem_is_reported_together(capsys, offline_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    code = main(["--optimizer", "adam", "--epochs", "0", "--head", "era", "--target-entropy", "9",
                 "--backbone", "resnet7", "--data-dir", offline_data_dir,
                 "--run-dir", str(run_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for problem in ("optimizer='adam' is not one of", "epochs must be >= 1",
                    "admissible range", "unknown backbone 'resnet7'"):
        assert problem in err, problem
    assert not run_dir.exists()  # nothing claimed
    with pytest.raises(ConfigError, match="optimizer='adam'"):
        ImageConfig(optimizer="adam").check()


def test_an_unknown_preset_lists_the_presets(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "cifar100-vit", "--print-config"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'cifar100-vit'" in err
    assert "'cifar10-resnet50', 'imagenet-resnet50'" in err


def test_print_config_shows_a_preset_with_json_and_flags_on_top(capsys, tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"epochs": 7, "seed": 3}))
    assert main(["--preset", "cifar10-resnet50", "--config-json", str(path), "--epochs", "3",
                 "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    from pipelines.image.presets import PRESETS

    expected = {**PRESETS["cifar10-resnet50"], "epochs": 3, "seed": 3}
    assert {key: shown[key] for key in expected} == expected
    # The authors' CIFAR-10 command: ResNet-50, cosine over 200 epochs at lr 0.05, batch
    # 4 x 64, AMP, RandAugment, label smoothing 0.1 kept on beside ERA with H0 = 0.6.
    assert (shown["backbone"], shown["learning_rate"], shown["batch_size"]) == (
        "resnet50", 0.05, 256)
    assert (shown["head"], shown["label_smoothing"], shown["target_entropy"]) == (
        "era_label_smoothing", 0.1, 0.6)  # written here as the authors' values to compare
    # A valid config (the ERA target is checked once the data says how many classes).
    assert ImageConfig.from_dict(shown).check() is None


def test_help_lists_every_option():
    text = build_parser().format_help()
    for flag in ("--dataset", "--head", "--target-entropy", "--era-floor", "--era-at-inference",
                 "--strategy", "--mixed-precision", "--run-dir", "--tracking-uri", "--config-json"):
        assert flag in text


def test_a_typo_never_claims_the_run_dir_and_another_config_is_refused(
    tracking_uri, tmp_path, offline_data_dir, capsys
):
    """A run dir is claimed only once the config is valid (a typo in the dataset does not
    block it), and then refuses other settings, naming the fields that differ."""
    run_dir = tmp_path / "run"
    assert main(["--dataset", "sklearn_digit", "--data-dir", offline_data_dir,
                 "--run-dir", str(run_dir)]) == 2
    assert "no dataset named 'sklearn_digit'" in capsys.readouterr().err
    assert not run_dir.exists()
    config = tiny_config(run_dir, offline_data_dir, epochs=1, steps_per_epoch=1)
    training.train(config)
    changed = tiny_config(run_dir, offline_data_dir, epochs=1, steps_per_epoch=1, head="softmax")
    differ = r"holds a run with other settings \(head: 'era' -> 'softmax'\)"
    with pytest.raises(UserError, match=differ):
        training.train(changed)
    again = tiny_config(run_dir, offline_data_dir, epochs=1, steps_per_epoch=1, verbose="2")
    with pytest.raises(UserError, match="has already finished"):
        training.train(again)  # a display setting does not make it a new run


def test_strategy_flag_builds_tf_distribute_strategies():
    import tensorflow as tf

    assert training.make_strategy("default") is tf.distribute.get_strategy()
    mirrored = training.make_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    # One replica per GPU, or the CPU when there is none (two CPU replicas: see
    # test_distributed.py).
    gpus = tf.config.list_logical_devices("GPU")
    assert mirrored.num_replicas_in_sync == max(1, len(gpus))
    expected = [d.name for d in gpus] or ["/job:localhost/replica:0/task:0/device:CPU:0"]
    assert sorted(mirrored.extended.worker_devices) == sorted(expected)
    assert training.is_chief(mirrored)


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


def _assert_one_value_per_epoch(client, run, epochs):
    """Every metric of the run has one value per step: the per-epoch ones at 1..epochs,
    the final test metrics at the last epoch."""
    run_id = run.info.run_id
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        if key.startswith(("eval/test_", "entropy/test_", "eval/temperature")):
            assert steps == [epochs], key
        else:
            assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)


def test_a_killed_run_moved_elsewhere_resumes_with_one_value_per_metric_and_epoch(
    tracking_uri, tmp_path, offline_data_dir, capsys
):
    """The state kill -9 leaves after epoch 2's metrics were logged but before its
    checkpoint was written, then the run dir moved: the run resumes from its new path,
    trains epoch 2 again, and MLflow still holds one value per metric and epoch (the
    first)."""
    run_dir = tmp_path / "run"
    first = training.train(tiny_config(run_dir, offline_data_dir, epochs=2, steps_per_epoch=1))
    client, run = _run(tracking_uri, first["run_id"])
    logged = {key: [m.value for m in client.get_metric_history(run.info.run_id, key)
                    if m.step == 2]
              for key in ("eval/val_nll", "train/loss")}
    (run_dir / FINISHED_FILE).unlink()
    shutil.rmtree(ImageCheckpoints(run_dir).rotation.latest())  # never written
    moved = tmp_path / "moved"
    os.rename(run_dir, moved)
    capsys.readouterr()
    second = training.train(tiny_config(moved, offline_data_dir, epochs=2, steps_per_epoch=1))
    assert f"Resuming the run in {moved} from epoch 1." in capsys.readouterr().err
    assert second["run_id"] == first["run_id"] and second["step"] == 2
    assert second["run_dir"] == str(moved)
    client, run = _run(tracking_uri, first["run_id"])
    _assert_one_value_per_epoch(client, run, epochs=2)
    for key, value in logged.items():
        at_2 = [m.value for m in client.get_metric_history(run.info.run_id, key) if m.step == 2]
        assert at_2 == value, key


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tracking_uri, tmp_path, offline_data_dir):
    run_dir = tmp_path / "run"
    args = ["--dataset", "sklearn_digits", "--data-dir", offline_data_dir,
            "--run-dir", str(run_dir),
            "--backbone", "resnet8", "--width", "8", "--epochs", "4", "--steps-per-epoch", "30",
            "--batch-size", "32", "--no-log-model", "--verbose", "2"]
    first = _cli(args)
    checkpoints = ImageCheckpoints(run_dir).rotation
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if checkpoints.saved():
            break
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[0][-3000:]  # alive when killed
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_epochs = checkpoints.saved()[0][0]
    assert 1 <= done_epochs < 4
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    assert not (run_dir / FINISHED_FILE).exists()

    second = _cli(args)
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output[-3000:]
    # Keras starts at the epoch after the checkpoint, not at epoch 1, and says so.
    assert f"Resuming the run in {run_dir} from epoch {done_epochs}." in output
    assert f"Epoch {done_epochs + 1}/4" in output and "Epoch 1/4" not in output
    summary = json.loads((run_dir / FINISHED_FILE).read_text())
    assert summary["run_id"] == run_id  # the same MLflow run, continued
    client, run = _run(tracking_uri, run_id)
    _assert_one_value_per_epoch(client, run, epochs=4)
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
    metrics = json.loads((run_dir / FINISHED_FILE).read_text())["metrics"]
    assert metrics["eval/test_top1"] > 0.9
    # The tight floor, at inference.
    assert metrics["entropy/test_min"] >= ImageConfig().target_entropy - 1e-4
    assert metrics["eval/test_ece_calibrated"] < metrics["eval/test_ece"]
    assert "shuffle=True" not in output  # Keras' warning about an ignored flag is gone


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mirrored_strategy_and_mixed_precision_train(
    tracking_uri, tmp_path, offline_data_dir, precision
):
    import keras
    import tensorflow as tf

    config = tiny_config(tmp_path / "run", offline_data_dir, strategy="mirrored",
                         mixed_precision=precision)
    summary = training.train(config)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    model = keras.saving.load_model(pathlib.Path(summary["run_dir"]) / training.MODEL_FILE)
    assert model.get_layer("resnet8").get_layer("stem_conv").compute_dtype == precision
    assert model.get_layer("logits").compute_dtype == "float32"
    metrics = summary["metrics"]
    assert np.isfinite(metrics["eval/test_nll"])
    client, run = _run(tracking_uri, summary["run_id"])
    gpus = tf.config.list_logical_devices("GPU")
    assert run.data.params["train.replicas"] == str(max(1, len(gpus)))
    # The floor holds under mixed precision (the ERA layer computes in float32).
    assert metrics["entropy/test_min"] >= config.target_entropy - 1e-4
