"""SAC checkpoints: one tf.train.Checkpoint of everything a killed run needs, kept two deep.

The checkpoint holds the agent (networks, target networks, optimizers, alpha or delta),
the replay buffer, the env-step counter and the running episode metrics, as
`<run_dir>/checkpoints/ckpt-<env step>.{index,data-*}`. The newest two are kept: when the
newest cannot be read (a truncated data file, a damaged index), `restore` warns, naming
it, and falls back to the one before; the run then redoes the steps in between. When none
can be read it raises `CorruptCheckpointError` naming the file and what to do.
"""

import pathlib
import re
import warnings

import tensorflow as tf

from pipelines.common.errors import CorruptCheckpointError

DIRECTORY = "checkpoints"
KEEP = 2
_INDEX = re.compile(r"ckpt-(\d+)\.index")


def saved_checkpoints(directory):
    """Checkpoint prefixes (`.../ckpt-N`) found on disk, newest first.

    Read from the files themselves, not from TensorFlow's `checkpoint` state file, so a
    damaged state file hides nothing.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / f"ckpt-{m.group(1)}")
             for m in map(_INDEX.fullmatch, (p.name for p in directory.iterdir())) if m]
    return [str(prefix) for _, prefix in sorted(found, reverse=True)]


def _repair_state_file(directory, found):
    """Rewrite TensorFlow's `checkpoint` state file when it cannot be parsed."""
    state_file = pathlib.Path(directory) / "checkpoint"
    if not state_file.exists():
        return
    try:
        tf.train.get_checkpoint_state(str(directory))
        return
    except ValueError:
        pass
    warnings.warn(f"{state_file} cannot be read; rebuilt it from the checkpoint files there.",
                  stacklevel=3)
    state_file.unlink()
    if found:
        tf.compat.v1.train.update_checkpoint_state(
            str(directory), found[0], all_model_checkpoint_paths=list(reversed(found))
        )


def manager(checkpoint, run_dir):
    """A CheckpointManager that keeps the newest KEEP checkpoints of `run_dir`."""
    directory = pathlib.Path(run_dir) / DIRECTORY
    _repair_state_file(directory, saved_checkpoints(directory))
    return tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=KEEP)


def _files(prefix):
    return ", ".join(sorted(str(p) for p in pathlib.Path(prefix).parent.glob(
        pathlib.Path(prefix).name + ".*")))


def restore(checkpoint, run_dir):
    """Restore the newest readable checkpoint; returns its env step, or None if there is none."""
    directory = pathlib.Path(run_dir) / DIRECTORY
    failures = []
    for prefix in saved_checkpoints(directory):
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched().expect_partial()
        # A damaged file surfaces as whatever the reader trips on (OpError, IndexError for a
        # truncated data file, ValueError, ...); the checkpoint was written by this same
        # program, so any failure to read it back means the files are damaged.
        except Exception as error:  # noqa: BLE001
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            failures.append(f"checkpoint {prefix} ({_files(prefix)}) cannot be read "
                            f"({type(error).__name__}: {reason})")
            warnings.warn(f"SAC {failures[-1]}; falling back to the checkpoint before it.",
                          RuntimeWarning, stacklevel=2)
            continue
        return int(prefix.rsplit("-", 1)[1])
    if failures:
        raise CorruptCheckpointError(
            f"no usable SAC checkpoint in {directory}: {failures[0]}; delete {directory} "
            "to start the run over, or give another --run-dir"
        )
    return None
