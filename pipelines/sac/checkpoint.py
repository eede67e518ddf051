"""What a SAC checkpoint holds: one tf.train.Checkpoint of everything a killed run needs.

    agent          networks, target networks, optimizers, alpha (SAC) or log delta (ERA)
    replay_buffer  every stored transition and the write position
    env_step       the env-step counter the run resumes from
    train_metrics  the running episode metrics (returns, lengths of the last episodes)

It is written with `tf.train.Checkpoint.write` into `<run_dir>/checkpoints/step-<env step>/`
(files `ckpt.index`, `ckpt.data-*`), one directory per checkpoint, kept and read back by
`pipelines.common.checkpoints.CheckpointRotation`: written whole or not at all, the newest
two kept, a damaged newest one skipped with the one fall-back warning. No TensorFlow
`checkpoint` state file is involved, so nothing in a run dir names its own path and a moved
run dir resumes.

Checkpoints of the layout before this one (`checkpoints/ckpt-<N>.index`, written by
TensorFlow's CheckpointManager) are not read: such a run dir is refused with one line
rather than silently started over.
"""

import pathlib

import tensorflow as tf

from pipelines.common.checkpoints import CheckpointRotation
from pipelines.common.errors import CorruptCheckpointError, UserError

DIRECTORY = "checkpoints"
PREFIX = "step"
FILE = "ckpt"


class SacCheckpoint:
    """The checkpoints of one SAC run dir (see the module docstring)."""

    def __init__(self, run_dir, agent, replay_buffer, env_step, train_metrics):
        self.env_step = env_step
        self.checkpoint = tf.train.Checkpoint(
            agent=agent, replay_buffer=replay_buffer, env_step=env_step,
            train_metrics=train_metrics)
        self.rotation = CheckpointRotation(pathlib.Path(run_dir) / DIRECTORY, prefix=PREFIX)

    def save(self):
        """Checkpoint the current env step; returns its directory."""
        return self.rotation.save(int(self.env_step.numpy()), self._write)

    def restore(self):
        """Restore the newest readable checkpoint; returns its env step, or None if none."""
        self._refuse_old_layout()
        restored = self.rotation.restore(self._read, what="SAC checkpoint")
        return None if restored is None else restored.step

    def _write(self, directory):
        self.checkpoint.write(str(directory / FILE))

    def _read(self, directory):
        prefix = directory / FILE
        try:
            self.checkpoint.read(str(prefix)).assert_existing_objects_matched().expect_partial()
        # A damaged file surfaces as whatever the reader trips on (OpError, IndexError for a
        # truncated data file, ValueError, ...); the checkpoint was written by this same
        # program, so any failure to read it back means its files are damaged.
        except Exception as error:  # noqa: BLE001
            lines = str(error).strip().splitlines()
            reason = f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__
            files = ", ".join(sorted(path.name for path in directory.iterdir()))
            raise CorruptCheckpointError(
                f"SAC checkpoint {directory} ({files}) cannot be read ({reason})") from None

    def _refuse_old_layout(self):
        old = sorted(self.rotation.root.glob("ckpt-*.index"))
        if old:
            raise UserError(
                f"{self.rotation.root} holds checkpoints of an older layout ({old[-1].name}, "
                "written by TensorFlow's CheckpointManager), which this version does not "
                "read; finish that run with the version that started it, or give another "
                "--run-dir")
