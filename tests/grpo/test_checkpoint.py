"""GRPO checkpoints: kept two deep, a damaged newest one falls back, none usable is one
clear error."""

import keras
import numpy as np
import pytest

from pipelines.common.checkpoints import CheckpointFallbackWarning
from pipelines.common.errors import CorruptCheckpointError
from pipelines.grpo.checkpoint import (
    checkpoints,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from pipelines.grpo.models import tiny_causal_lm


@pytest.fixture
def saved_run(tmp_path):
    """A run dir with checkpoints of steps 1, 2 and 3 (weights differ from step to step)."""
    causal_lm = tiny_causal_lm("qwen", num_layers=1, hidden_dim=32, seed=0, sequence_length=16)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(causal_lm.trainable_variables)
    weights = {}
    for step in (1, 2, 3):
        first = causal_lm.trainable_variables[0]
        first.assign(first + 1.0)
        weights[step] = np.asarray(first).copy()
        save_checkpoint(tmp_path, step, causal_lm, optimizer, {"history": [{"step": step}]})
    return tmp_path, weights


def _first_weight(checkpoint):
    return np.asarray(checkpoint.causal_lm.trainable_variables[0])


def test_only_the_newest_two_checkpoints_are_kept(saved_run):
    run_dir, _ = saved_run
    assert [p.name for p in checkpoints(run_dir)] == ["step-0000003", "step-0000002"]
    assert latest_checkpoint(run_dir).name == "step-0000003"


def test_restore_returns_the_newest_checkpoint_with_its_weights_and_state(saved_run):
    run_dir, weights = saved_run
    restored = restore_checkpoint(run_dir)
    assert restored.step == 3 and restored.state["history"] == [{"step": 3}]
    np.testing.assert_array_equal(_first_weight(restored), weights[3])
    assert restored.optimizer_variables  # Adam's moments and iteration count


def test_truncated_newest_weights_fall_back_to_the_previous_checkpoint_with_a_warning(saved_run):
    run_dir, weights = saved_run
    damaged = latest_checkpoint(run_dir) / "preset" / "model.weights.h5"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.warns(CheckpointFallbackWarning, match=r"step-0000003.*cannot be loaded"):
        restored = restore_checkpoint(run_dir)
    assert restored.step == 2
    np.testing.assert_array_equal(_first_weight(restored), weights[2])


def test_empty_state_files_everywhere_raise_one_error_naming_the_file_and_the_way_out(saved_run):
    run_dir, _ = saved_run
    for checkpoint in checkpoints(run_dir):
        (checkpoint / "state.json").write_text("")
    with pytest.warns(CheckpointFallbackWarning), pytest.raises(CorruptCheckpointError) as caught:
        restore_checkpoint(run_dir)
    message = str(caught.value)
    assert "step-0000003/state.json" in message and "it is empty" in message
    assert "another --run-dir" in message and "\n" not in message


def test_a_half_written_checkpoint_is_never_restored(saved_run):
    run_dir, _ = saved_run
    (run_dir / "checkpoints" / "step-0000004.partial").mkdir()
    assert restore_checkpoint(run_dir).step == 3


def test_a_run_dir_without_checkpoints_restores_nothing(tmp_path):
    assert restore_checkpoint(tmp_path) is None
