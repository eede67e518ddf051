"""Checkpoints that survive damage, resume messages, and the floor under mixed precision."""

import json
import pathlib
import warnings

import keras
import numpy as np
import pytest

from pipelines.common.checkpoints import CheckpointFallbackWarning
from pipelines.common.errors import CorruptCheckpointError, run_cli
from pipelines.common.run_dir import FINISHED_FILE, write_json_atomic
from pipelines.image import __main__ as cli
from pipelines.image import training
from pipelines.image.checkpoint import METADATA_FILE, WEIGHTS_FILE, ImageCheckpoints
from tests.image.conftest import tiny_config


def _model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), epochs=1, verbose=0)  # builds the optimizer
    return model


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _names(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_the_newest_two_checkpoints_are_kept(tmp_path):
    checkpoints = ImageCheckpoints(tmp_path)
    model = _model(0)
    for epoch in (1, 2, 3):
        checkpoints.save(model, epoch)
    assert _names(tmp_path) == ["epoch-0000002", "epoch-0000003"]


def test_checkpoints_of_older_runs_are_read_and_rotated(tmp_path):
    """Runs before the shared rotation wrote `epoch-<N>` without zero padding."""
    model = _model(1)
    old = tmp_path / "checkpoints" / "epoch-4"
    old.mkdir(parents=True)
    model.save_weights(old / WEIGHTS_FILE)
    write_json_atomic(old / METADATA_FILE, {"epoch": 4})
    checkpoints = ImageCheckpoints(tmp_path)
    restored = _model(2)
    assert checkpoints.restore(restored) == 4
    for got, want in zip(_weights(restored), _weights(model)):
        np.testing.assert_array_equal(got, want)
    checkpoints.save(restored, 4)  # the same epoch again: one directory for it
    assert _names(tmp_path) == ["epoch-0000004"]
    checkpoints.save(restored, 5)
    checkpoints.save(restored, 6)
    assert _names(tmp_path) == ["epoch-0000005", "epoch-0000006"]


@pytest.mark.parametrize("damage", ["truncated weights", "empty metadata", "other epoch"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    checkpoints = ImageCheckpoints(tmp_path)
    first, second = _model(1), _model(2)
    checkpoints.save(first, 1)
    newest = checkpoints.save(second, 2)
    if damage == "truncated weights":
        damaged = newest / WEIGHTS_FILE
        damaged.write_bytes(damaged.read_bytes()[:200])
    else:
        damaged = newest / METADATA_FILE
        damaged.write_text("" if damage == "empty metadata" else '{"epoch": 7}')
    restored = _model(3)
    with pytest.warns(CheckpointFallbackWarning) as caught:
        assert checkpoints.restore(restored) == 1
    for got, want in zip(_weights(restored), _weights(first)):
        np.testing.assert_array_equal(got, want)
    (warning,) = caught
    what = "weights" if "weights" in damage else "metadata"
    assert str(warning.message).startswith(f"checkpoint {what} {damaged}")
    assert "falling back to the checkpoint before it" in str(warning.message)


def test_no_readable_checkpoint_names_the_file_and_the_way_out(tmp_path):
    checkpoints = ImageCheckpoints(tmp_path)
    only = checkpoints.save(_model(1), 1)
    (only / METADATA_FILE).write_text("")
    with pytest.raises(CorruptCheckpointError) as info:
        checkpoints.restore(_model(2))
    message = str(info.value)
    assert str(only / METADATA_FILE) in message
    assert "it is empty" in message and f"delete {tmp_path / 'checkpoints'}" in message


def _unfinish(run_dir):
    """The state a run is left in when it is killed after its last checkpoint."""
    (run_dir / FINISHED_FILE).unlink()


def test_a_run_resumes_past_a_damaged_checkpoint_and_says_from_which_epoch(
    tracking_uri, tmp_path, offline_data_dir, capsys
):
    run_dir = tmp_path / "run"
    config = tiny_config(run_dir, offline_data_dir, epochs=2, steps_per_epoch=1)
    first = training.train(config)
    _unfinish(run_dir)
    weights = run_dir / "checkpoints" / "epoch-0000002" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = training.train(tiny_config(run_dir, offline_data_dir, epochs=2,
                                            steps_per_epoch=1))
    fallbacks = [w for w in caught if issubclass(w.category, CheckpointFallbackWarning)]
    assert len(fallbacks) == 1  # one warning, from the shared rotation
    assert str(fallbacks[0].message).startswith(f"checkpoint weights {weights} cannot be read")
    err = capsys.readouterr().err
    assert f"Resuming the run in {run_dir} from epoch 1." in err
    assert second["run_id"] == first["run_id"]
    assert json.loads((run_dir / FINISHED_FILE).read_text())["run_id"] == first["run_id"]
    assert _names(run_dir) == ["epoch-0000001", "epoch-0000002"]


def test_a_run_whose_only_checkpoint_is_damaged_stops_with_one_line(
    tracking_uri, tmp_path, offline_data_dir, capsys
):
    run_dir = tmp_path / "run"
    args = ["--dataset", "sklearn_digits", "--data-dir", offline_data_dir,
            "--run-dir", str(run_dir), "--backbone", "resnet8", "--width", "4",
            "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "32", "--no-log-model", "--verbose", "0"]
    assert run_cli(cli.main, args) == 0
    _unfinish(run_dir)
    metadata = run_dir / "checkpoints" / "epoch-0000001" / METADATA_FILE
    metadata.write_text("")
    capsys.readouterr()
    assert run_cli(cli.main, args) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert err.strip().endswith(line) and "Traceback" not in err
    assert str(metadata) in line
    assert "delete" in line


def test_the_floor_holds_under_mixed_precision(tracking_uri, tmp_path, offline_data_dir):
    """bfloat16 compute in the backbone, the ERA head in float32: the tight floor (H0 nats)
    holds on every test image the run evaluates and on what the export serves."""
    from serving.signature_runner import SignatureRunner

    config = tiny_config(tmp_path / "run", offline_data_dir, epochs=1, steps_per_epoch=2,
                         mixed_precision="bfloat16")
    summary = training.train(config)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    floor = config.target_entropy - 1e-4
    assert summary["metrics"]["entropy/test_min"] >= floor
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    served = SignatureRunner(pathlib.Path(summary["exports"][training.EXPORT_NAME]))
    p = served({"images": images})["probabilities"]
    assert (-(p.astype(np.float64) * np.log(p)).sum(axis=-1) >= floor).all()
