"""The run-directory contract every pipeline follows.

A run directory holds one run: its settings (`config.json`), its checkpoints, the MLflow
run id and, once done, `finished.json`. The life of one:

1. The pipeline checks the whole config first (the environment exists, the dataset is
   known, ...). Only then does it `lock` and `claim` the directory, so a typo never blocks
   a run dir.
2. `lock` takes an OS lock on `<run dir>/.lock` for as long as the process lives: a second
   process on the same directory is refused, naming the owner's pid, and a killed process
   (even `kill -9`) leaves nothing to clean up, because the kernel drops its lock.
3. `claim` writes the config on first use. Later it resumes only a run with the same
   settings (except the fields the pipeline says may change, such as the step budget),
   and refuses another one, naming the fields that differ.
   The directory's own path is not a setting: a run dir copied or moved elsewhere
   resumes from its new place.
4. A resumed run says so (`announce_resume`).
5. `finish` writes `finished.json`; a finished run is not trained again unless a field
   that may change (the budget) now asks for more.

Files are written whole or not at all (a temporary file renamed into place), and a file
that cannot be read gives a `CorruptCheckpointError` naming it and the way out.
"""

import errno
import fcntl
import json
import os
import pathlib
import sys

from pipelines.common.errors import CorruptCheckpointError, UserError

CONFIG_FILE = "config.json"
FINISHED_FILE = "finished.json"
LOCK_FILE = ".lock"
# Where a run lives, not what it is: never compared when a run dir is resumed.
LOCATION_FIELDS = ("run_dir",)


def write_text_atomic(path, text):
    """Write `text` to `path` via a temporary file, so a kill never leaves half a file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)


def write_json_atomic(path, payload):
    """Write JSON to `path` whole or not at all (the one JSON writer of the project)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json(path, what="file", remedy=None):
    """Parse a JSON file the project wrote; a damaged one raises CorruptCheckpointError."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = "it is empty" if path.exists() and path.stat().st_size == 0 else str(error)
        raise CorruptCheckpointError(
            f"{what} {path} cannot be read ({reason}); "
            + (remedy or f"delete {path}, or start a new run with another --run-dir")
        ) from None


def _jsonable(config):
    """The config as plain JSON values (tuples become lists), as it is stored."""
    import dataclasses

    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return json.loads(json.dumps(values, default=str))


def _in_current_terms(saved, config):
    """A saved config as this version of its class would have written it: renamed fields
    (`RENAMED_FIELDS`) under their new names, and fields added since at their defaults,
    so that upgrading era-keras does not stop a run from resuming."""
    import dataclasses

    from pipelines.common.config import field_default, renamed_values

    saved = renamed_values(type(config), saved, "the run's config.json")
    if dataclasses.is_dataclass(config):
        for field in dataclasses.fields(config):
            default = field_default(field)
            if field.name not in saved and default is not dataclasses.MISSING:
                saved[field.name] = json.loads(json.dumps(default, default=str))
    return saved


class RunDir:
    """One run's directory: claim it for a config, resume it, mark it finished."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.resumed = False

    def __truediv__(self, name):
        return self.path / name

    def __fspath__(self):
        return str(self.path)

    def __str__(self):
        return str(self.path)

    @property
    def config_file(self):
        return self.path / CONFIG_FILE

    @property
    def finished_file(self):
        return self.path / FINISHED_FILE

    def saved_config(self):
        """The config this directory was claimed with, or None for a new directory."""
        if not self.config_file.exists():
            return None
        return read_json(
            self.config_file, "run config",
            f"restore it, or start over with another --run-dir (or delete {self.path})",
        )

    def differences(self, config, may_change=()):
        """{field: (saved, now)} for every field that differs and may not change."""
        saved = self.saved_config()
        if saved is None:
            return {}
        current = _jsonable(config)
        saved = _in_current_terms(saved, config)
        return {
            key: (saved.get(key), current.get(key))
            for key in sorted(set(saved) | set(current))
            if key not in may_change and key not in LOCATION_FIELDS
            and saved.get(key) != current.get(key)
        }

    def claim(self, config, may_change=()):
        """Take this directory for `config` (already checked); True when it resumes a run.

        Refuses a directory holding a run with other settings (naming the fields), or a
        finished run whose `may_change` fields (e.g. the step budget) ask for nothing new.
        """
        saved = self.saved_config()
        current = _jsonable(config)
        if saved is not None:
            changed = self.differences(config, may_change)
            if changed:
                details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
                allowed = ""
                if may_change:
                    allowed = f" (only {', '.join(sorted(may_change))} may change)"
                raise UserError(
                    f"{self.path} holds a run with other settings ({details}); resume it with "
                    f"the same settings{allowed}, or give another --run-dir"
                )
            if self.finished_file.exists():
                extended = any(saved.get(k) != current.get(k) for k in may_change
                               if k not in LOCATION_FIELDS)
                if not extended:
                    raise UserError(
                        f"the run in {self.path} has already finished (see "
                        f"{self.finished_file}); give another --run-dir to train again"
                    )
                self.finished_file.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.config_file, current)
        self.resumed = saved is not None
        return self.resumed

    def lock(self):
        """Hold this directory for the life of the process (see the module docstring).

        Creates the directory. Raises UserError when it cannot be made or written (a file
        in the way, a read-only file system) or when another process holds it.
        """
        if getattr(self, "_lock_fd", None) is not None:
            return self
        lock_file = self.path / LOCK_FILE
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileExistsError, NotADirectoryError):
            raise UserError(
                f"--run-dir {self.path} is not a directory (a file is in the way); give a "
                "directory path") from None
        except OSError as error:
            raise UserError(
                f"--run-dir {self.path} cannot be written ({_reason(error)}); give a "
                "directory on a writable file system") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise UserError(
                    f"--run-dir {self.path} cannot be locked ({_reason(error)}); give a "
                    "directory on a local or lock-capable file system") from None
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{self.path} is in use by another run (pid {owner}); wait for it to end, or "
                "give another --run-dir") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            os.close(fd)
            raise UserError(
                f"--run-dir {self.path} cannot be written ({_reason(error)}); give a "
                "directory on a writable file system") from None
        self._lock_fd = fd
        return self

    def unlock(self):
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            self._lock_fd = None
            os.close(fd)  # closing the descriptor releases the lock

    def announce_resume(self, position):
        """Tell the user where a resumed run picks up, e.g. `announce_resume("epoch 3")`."""
        print(f"Resuming the run in {self.path} from {position}.", file=sys.stderr, flush=True)

    def finish(self, summary):
        """Mark the run finished; `summary` (run id, export paths, ...) goes in finished.json."""
        write_json_atomic(self.finished_file, summary)

    def summary(self):
        return read_json(self.finished_file, "run summary") if self.finished_file.exists() else None


def _reason(error):
    return error.strerror or str(error)
