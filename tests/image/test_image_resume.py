"""Checkpoints that survive damage, resume messages, and the floor under mixed precision."""

import json
import pathlib

import keras
import numpy as np
import pytest

from pipelines.common.errors import CorruptCheckpointError, run_cli
from pipelines.common.run_dir import FINISHED_FILE
from pipelines.image import __main__ as cli
from pipelines.image import training
from pipelines.image.checkpoint import METADATA_FILE, WEIGHTS_FILE, EpochCheckpoints
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


def test_the_newest_two_checkpoints_are_kept(tmp_path):
    checkpoints = EpochCheckpoints(tmp_path)
    model = _model(0)
    for epoch in (1, 2, 3):
        checkpoints.save(model, epoch)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-2", "epoch-3"]


@pytest.mark.parametrize("damage", ["truncated weights", "empty metadata"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, damage):
    checkpoints = EpochCheckpoints(tmp_path)
    first, second = _model(1), _model(2)
    checkpoints.save(first, 1)
    checkpoints.save(second, 2)
    newest = tmp_path / "checkpoints" / "epoch-2"
    if damage == "truncated weights":
        damaged = newest / WEIGHTS_FILE
        damaged.write_bytes(damaged.read_bytes()[:200])
    else:
        damaged = newest / METADATA_FILE
        damaged.write_text("")
    restored = _model(3)
    assert checkpoints.restore(restored) == 1
    for got, want in zip(_weights(restored), _weights(first)):
        np.testing.assert_array_equal(got, want)
    err = capsys.readouterr().err
    what = "weights" if "weights" in damage else "metadata"
    assert f"warning: checkpoint {what} {damaged}" in err
    assert "falling back to the previous checkpoint" in err


def test_no_readable_checkpoint_names_the_file_and_the_way_out(tmp_path):
    checkpoints = EpochCheckpoints(tmp_path)
    checkpoints.save(_model(1), 1)
    (tmp_path / "checkpoints" / "epoch-1" / METADATA_FILE).write_text("")
    with pytest.raises(CorruptCheckpointError) as info:
        checkpoints.restore(_model(2))
    message = str(info.value)
    assert str(tmp_path / "checkpoints" / "epoch-1" / METADATA_FILE) in message
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
    weights = run_dir / "checkpoints" / "epoch-2" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    second = training.train(tiny_config(run_dir, offline_data_dir, epochs=2, steps_per_epoch=1))
    err = capsys.readouterr().err
    assert f"warning: checkpoint weights {weights} cannot be read" in err
    assert f"Resuming the run in {run_dir} from epoch 1." in err
    assert second["run_id"] == first["run_id"]
    assert json.loads((run_dir / FINISHED_FILE).read_text())["run_id"] == first["run_id"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch-1", "epoch-2"]


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
    (run_dir / "checkpoints" / "epoch-1" / METADATA_FILE).write_text("")
    capsys.readouterr()
    assert run_cli(cli.main, args) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert err.strip().endswith(line) and "Traceback" not in err
    assert str(run_dir / "checkpoints" / "epoch-1" / METADATA_FILE) in line
    assert "delete" in line


def test_the_floor_holds_under_mixed_precision(tracking_uri, tmp_path, offline_data_dir):
    """bfloat16 compute in the backbone, the ERA head in float32: the tight floor (0.6 nats)
    holds on every test image the run evaluates and on what the export serves."""
    from serving.signature_runner import SignatureRunner

    config = tiny_config(tmp_path / "run", offline_data_dir, epochs=1, steps_per_epoch=2,
                         mixed_precision="bfloat16")
    summary = training.train(config)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    assert summary["entropy/test_min"] >= 0.6 - 1e-4
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    p = SignatureRunner(pathlib.Path(summary["export_dir"]))({"images": images})["probabilities"]
    assert (-(p.astype(np.float64) * np.log(p)).sum(axis=-1) >= 0.6 - 1e-4).all()
