"""GRPO checkpoints: the policy, its optimizer and the loop's bookkeeping, kept two deep.

A checkpoint is a directory `<run_dir>/checkpoints/step-NNNNNNN/` holding

- `preset/`: the policy as a keras-hub preset (`CausalLM.save_to_preset`), or, in a
  LoRA run (`--lora-rank`), `lora.lora.h5`: the LoRA pairs alone
  (`Backbone.save_lora_weights`), applied on restore to the frozen base model that
  `save_lora_base` wrote once to `checkpoints/lora_base/`;
- `optimizer.npz`: the optimizer's variables (`save_own_variables`);
- `state.json`: the step, the metric history so far and the entropy bonus's coefficient
  (`entropy_control`: TRL's adaptive controller's state, which a resume continues from).

With a KL penalty, the frozen reference policy is kept once, in `<run_dir>/reference/`
(a keras-hub preset), and reloaded on resume (`save_reference`, `load_reference`).

Checkpoints are kept by the shared `pipelines.common.checkpoints.CheckpointRotation`:
written whole or not at all, the newest two kept, a damaged newest one (a truncated weights
file, an empty `state.json`) reported with one warning and the one before it used; when
none can be read, `CorruptCheckpointError` names the file and what to do.
"""

import pathlib
import shutil

import numpy as np

from pipelines.common.checkpoints import CheckpointRotation
from pipelines.common.errors import CorruptCheckpointError
from pipelines.common.run_dir import read_json, write_json_atomic

CHECKPOINTS = "checkpoints"
LORA_BASE = "lora_base"
LORA_FILE = "lora.lora.h5"
REFERENCE = "reference"


class Checkpoint:
    """A restored checkpoint: its directory, the policy, the optimizer variables, the state."""

    def __init__(self, path, causal_lm, optimizer_variables, state):
        self.path = path
        self.causal_lm = causal_lm
        self.optimizer_variables = optimizer_variables
        self.state = state

    @property
    def step(self):
        return self.state["step"]


def rotation(run_dir):
    return CheckpointRotation(pathlib.Path(run_dir) / CHECKPOINTS, prefix="step")


def checkpoints(run_dir):
    """The complete checkpoint directories of a run, newest first."""
    return [path for _, path in rotation(run_dir).saved()]


def latest_checkpoint(run_dir):
    """The newest complete checkpoint directory, or None."""
    return rotation(run_dir).latest()


def save_checkpoint(run_dir, step, causal_lm, optimizer, state):
    """Write the checkpoint of `step` (the newest two are kept); returns its directory."""

    def write(directory):
        if getattr(causal_lm.backbone, "_lora_enabled_layers", []):
            causal_lm.backbone.save_lora_weights(str(directory / LORA_FILE))
        else:
            causal_lm.save_to_preset(str(directory / "preset"))
        store = {}
        optimizer.save_own_variables(store)
        np.savez(directory / "optimizer.npz", **{str(k): v for k, v in store.items()})
        write_json_atomic(directory / "state.json", {**state, "step": step})

    return rotation(run_dir).save(step, write)


def save_preset_whole(causal_lm, target):
    """Save a keras-hub preset to `target` via a `.partial` directory renamed into place,
    so a kill never leaves half a preset where a resume would look for one."""
    target = pathlib.Path(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    causal_lm.save_to_preset(str(partial))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def save_lora_base(run_dir, causal_lm):
    """Keep the frozen base model of a LoRA run, once (before LoRA is enabled)."""
    return save_preset_whole(causal_lm, pathlib.Path(run_dir) / CHECKPOINTS / LORA_BASE)


def _load(path):
    """Read one checkpoint; any damage raises CorruptCheckpointError naming the file."""
    import keras_hub

    from pipelines.grpo.models import freeze_all_but_lora

    state = read_json(path / "state.json", "GRPO checkpoint state")
    optimizer_file = path / "optimizer.npz"
    try:
        with np.load(optimizer_file) as stored:
            optimizer_variables = {key: stored[key] for key in stored.files}
    except Exception as error:  # numpy raises OSError, ValueError or zipfile errors
        raise CorruptCheckpointError(
            f"GRPO checkpoint file {optimizer_file} cannot be read ({error})") from None
    lora_file = path / LORA_FILE
    preset = path.parent / LORA_BASE if lora_file.exists() else path / "preset"
    try:
        causal_lm = keras_hub.models.CausalLM.from_preset(str(preset))
        if lora_file.exists():
            causal_lm.backbone.load_lora_weights(str(lora_file))
            freeze_all_but_lora(causal_lm)
    except Exception as error:  # h5py (OSError), JSON (ValueError), keras-hub's own errors
        raise CorruptCheckpointError(
            f"GRPO checkpoint preset {preset} cannot be loaded ({type(error).__name__}: "
            f"{error})") from None
    return Checkpoint(path, causal_lm, optimizer_variables, state)


def restore_checkpoint(run_dir):
    """The newest readable checkpoint of a run (falling back past damaged ones), or None."""
    restored = rotation(run_dir).restore(_load, what="GRPO checkpoint")
    return restored.value if restored is not None else None


def copy_policy(causal_lm):
    """A frozen copy of a CausalLM's network (no preprocessor), with the same weights."""
    backbone = causal_lm.backbone
    copy = backbone.__class__.from_config(backbone.get_config())
    # With LoRA on, the copy is the frozen base: every weight but the LoRA pairs.
    copy.set_weights([w.numpy() for w in backbone.weights if "lora_kernel" not in w.path])
    return causal_lm.__class__(backbone=copy, preprocessor=None)


def save_reference(run_dir, reference):
    """Keep the KL reference policy in `<run_dir>/reference/` (written whole or not at all)."""
    return save_preset_whole(reference, pathlib.Path(run_dir) / REFERENCE)


def load_reference(run_dir):
    """The KL reference policy kept in the run dir, or None when there is none."""
    import keras_hub

    path = pathlib.Path(run_dir) / REFERENCE
    if not path.is_dir():
        return None
    try:
        return keras_hub.models.CausalLM.from_preset(str(path))
    except Exception as error:  # h5py (OSError), JSON (ValueError), keras-hub's own errors
        raise CorruptCheckpointError(
            f"the KL reference policy {path} cannot be loaded ({type(error).__name__}: "
            f"{error}); it cannot be rebuilt from later weights: start the run over with "
            "another --run-dir") from None
