"""What an image checkpoint holds, kept by the shared `CheckpointRotation`.

`<run_dir>/checkpoints/epoch-<N>/` holds `weights.weights.h5` (the model's weights and the
optimizer's state, so the learning-rate schedule continues where it stopped) and
`training_metadata.json` (`{"epoch": N}`). New checkpoints are named `epoch-0000003`;
those of older runs, `epoch-3`, are read the same way. Writing whole, keeping the newest
two and falling back past a damaged one is `pipelines.common.checkpoints`'.
"""

import threading

import keras

from pipelines.common.checkpoints import CheckpointRotation
from pipelines.common.errors import CorruptCheckpointError
from pipelines.common.run_dir import read_json, write_json_atomic

CHECKPOINT_DIR = "checkpoints"
PREFIX = "epoch"
WEIGHTS_FILE = "weights.weights.h5"
METADATA_FILE = "training_metadata.json"


class ImageCheckpoints:
    """The model's per-epoch checkpoints in a run dir: `save`, `restore`, `callback`."""

    def __init__(self, run_dir):
        self.rotation = CheckpointRotation(f"{run_dir}/{CHECKPOINT_DIR}", prefix=PREFIX)

    def save(self, model, epoch):
        def write(directory):
            model.save_weights(directory / WEIGHTS_FILE)
            write_json_atomic(directory / METADATA_FILE, {"epoch": epoch})

        return self.rotation.save(epoch, write)

    def restore(self, model):
        """Load the newest readable checkpoint into `model`; returns its epoch (0: none)."""

        def read(directory):
            metadata = read_json(directory / METADATA_FILE, "checkpoint metadata",
                                 "the checkpoint is damaged")
            epoch = self.rotation.step_of(directory)
            if metadata.get("epoch") != epoch:
                raise CorruptCheckpointError(
                    f"checkpoint metadata {directory / METADATA_FILE} says epoch "
                    f"{metadata.get('epoch')!r}, expected {epoch}")
            _load_weights(model, directory / WEIGHTS_FILE)

        restored = self.rotation.restore(read, what="image checkpoint")
        return restored.step if restored else 0

    def callback(self, trigger):
        """A Keras callback that saves the model at the epochs `trigger` fires on."""
        return _SaveOnTrigger(self, trigger)


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


class _SaveOnTrigger(keras.callbacks.Callback):
    def __init__(self, checkpoints, trigger):
        super().__init__()
        self.checkpoints = checkpoints
        self.trigger = trigger

    def on_epoch_end(self, epoch, logs=None):
        if not self.trigger(epoch, epoch + 1):
            return
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
