"""Checkpoints of a training run: one per epoch, the newest two kept, damaged ones skipped.

`<run_dir>/checkpoints/epoch-<N>/` holds `weights.weights.h5` (the model's weights and the
optimizer's state, so the learning-rate schedule continues where it stopped) and
`training_metadata.json` (`{"epoch": N}`). A checkpoint is written under a hidden name and
renamed into place, so a kill leaves either the whole checkpoint or none of it.

Restoring tries the newest checkpoint first. A damaged one (a truncated weights file, an
empty metadata file) is reported with a warning naming the file, and the previous one is
used. If none can be read, a `CorruptCheckpointError` names the file and what to do.
"""

import os
import pathlib
import shutil
import sys
import threading

import keras

from pipelines.common.errors import CorruptCheckpointError
from pipelines.common.run_dir import read_json, write_json_atomic

CHECKPOINT_DIR = "checkpoints"
WEIGHTS_FILE = "weights.weights.h5"
METADATA_FILE = "training_metadata.json"
KEEP = 2


class EpochCheckpoints:
    """Save after every epoch (`callback()`), restore the newest readable one (`restore`)."""

    def __init__(self, run_dir, keep=KEEP):
        self.directory = pathlib.Path(run_dir) / CHECKPOINT_DIR
        self.keep = keep

    def _saved(self):
        """[(epoch, directory)] of the complete checkpoints, newest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            if path.name.startswith("epoch-") and path.name[6:].isdigit():
                found.append((int(path.name[6:]), path))
        return sorted(found, reverse=True)

    def save(self, model, epoch):
        staging = self.directory / f".epoch-{epoch}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model.save_weights(staging / WEIGHTS_FILE)
        write_json_atomic(staging / METADATA_FILE, {"epoch": epoch})
        target = self.directory / f"epoch-{epoch}"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        for _, old in self._saved()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)

    def restore(self, model):
        """Load the newest readable checkpoint into `model`; returns its epoch (0: none)."""
        saved = self._saved()
        failures = []
        for epoch, path in saved:
            try:
                metadata = read_json(path / METADATA_FILE, "checkpoint metadata",
                                     "the checkpoint is damaged")
                if metadata.get("epoch") != epoch:
                    raise CorruptCheckpointError(
                        f"checkpoint metadata {path / METADATA_FILE} says epoch "
                        f"{metadata.get('epoch')!r}, expected {epoch}"
                    )
                _load_weights(model, path / WEIGHTS_FILE)
            except CorruptCheckpointError as error:
                failures.append(str(error))
                older = [older_path for older_epoch, older_path in saved if older_epoch < epoch]
                if older:
                    print(f"warning: {error}; falling back to the previous checkpoint "
                          f"{older[0]}", file=sys.stderr, flush=True)
                continue
            return epoch
        if failures:
            raise CorruptCheckpointError(
                f"{failures[0]}; no readable checkpoint is left in {self.directory}: delete "
                f"{self.directory} to start the run over (or restore the files)"
            )
        return 0

    def callback(self):
        return _SaveEveryEpoch(self)


def _load_weights(model, path):
    if not path.is_file():
        raise CorruptCheckpointError(f"checkpoint weights {path} are missing")
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)  # so its state is restored too
    try:
        model.load_weights(path)
    except Exception as error:  # h5py reports damage as OSError, KeyError or ValueError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CorruptCheckpointError(
            f"checkpoint weights {path} cannot be read ({reason})"
        ) from None


class _SaveEveryEpoch(keras.callbacks.Callback):
    def __init__(self, checkpoints):
        super().__init__()
        self.checkpoints = checkpoints

    def on_epoch_end(self, epoch, logs=None):
        # Saved from a thread of its own, outside fit's distribution strategy scope (the
        # scope is per thread): Keras' writer creates a throw-away optimizer, which under
        # MultiWorkerMirroredStrategy would broadcast its variables to workers that are
        # not saving (only the chief saves) and wait for them forever.
        failures = []

        def save():
            try:
                self.checkpoints.save(self.model, epoch + 1)
            except BaseException as error:  # re-raised in fit's thread below
                failures.append(error)

        thread = threading.Thread(target=save, name="checkpoint")
        thread.start()
        thread.join()
        if failures:
            raise failures[0]
