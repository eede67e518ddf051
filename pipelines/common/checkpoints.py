"""Numbered checkpoints in a run dir: written whole, kept two deep, read back newest first.

Every pipeline keeps its checkpoints the same way; each says only what goes in one
(`write(directory)`) and how to read one back (`read(directory)`):

    rotation = CheckpointRotation(run_dir / "checkpoints", prefix="step")
    rotation.save(120, lambda directory: model.save_weights(directory / "weights.h5"))
    restored = rotation.restore(read_weights, what="GRPO checkpoint")  # None: none saved

- `save(step, write)` writes into `<prefix>-<step>.partial/` and renames it to
  `<prefix>-<step>/` once `write` returned, so a kill at any moment leaves whole
  checkpoints only; then all but the newest `keep` are deleted.
- `restore(read)` tries the newest first. A checkpoint that cannot be read (`read` raises
  `CorruptCheckpointError`, naming the file) is reported with one warning and the one
  before it is tried; when none can be read, `CorruptCheckpointError` names the first
  failure and the way out.
"""

import os
import pathlib
import re
import shutil
import warnings

from pipelines.common.errors import CorruptCheckpointError

KEEP = 2


class Restored:
    """What `CheckpointRotation.restore` found: the step, the directory and what `read` gave."""

    def __init__(self, step, path, value):
        self.step = step
        self.path = path
        self.value = value


class CheckpointRotation:
    """The checkpoints `<root>/<prefix>-<step>/` of one run (see the module docstring)."""

    def __init__(self, root, prefix="step", keep=KEEP):
        self.root = pathlib.Path(root)
        self.prefix = prefix
        self.keep = keep
        self._name = re.compile(rf"{re.escape(prefix)}-(\d+)")

    def path(self, step):
        return self.root / f"{self.prefix}-{step:07d}"

    def step_of(self, path):
        """The step of checkpoint directory `path` (`<prefix>-<step>`), or None."""
        match = self._name.fullmatch(pathlib.Path(path).name)
        return int(match.group(1)) if match else None

    def saved(self):
        """[(step, directory)] of the complete checkpoints, newest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            step = self.step_of(path)
            if step is not None and path.is_dir():
                found.append((step, path))
        return sorted(found, reverse=True)

    def latest(self):
        """The newest complete checkpoint directory, or None."""
        saved = self.saved()
        return saved[0][1] if saved else None

    def save(self, step, write):
        """Write the checkpoint of `step` with `write(directory)`; returns its directory."""
        target = self.path(step)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write(partial)
        # Any checkpoint of this step goes, also one named without the zero padding (as
        # older runs wrote them): one directory per step.
        for saved_step, old in self.saved():
            if saved_step == step and old != target:
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
        for _, old in self.saved()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def restore(self, read, what="checkpoint"):
        """`Restored` for the newest readable checkpoint (see the module docstring), or None."""
        saved = self.saved()
        failures = []
        for index, (step, path) in enumerate(saved):
            try:
                value = read(path)
            except CorruptCheckpointError as error:
                failures.append(error)
                if index + 1 < len(saved):
                    warn_fallback(error, saved[index + 1][1])
                continue
            return Restored(step, path, value)
        if failures:
            raise CorruptCheckpointError(
                f"no readable {what} is left in {self.root}: {failures[0]}; delete {self.root} "
                "to start the run over, or give another --run-dir")
        return None


class CheckpointFallbackWarning(RuntimeWarning):
    """A checkpoint could not be read and an older one is used instead."""


def warn_fallback(error, older):
    """The one warning every pipeline gives when it falls back past a damaged checkpoint."""
    warnings.warn(f"{error}; falling back to the checkpoint before it, {older}",
                  CheckpointFallbackWarning, stacklevel=3)
