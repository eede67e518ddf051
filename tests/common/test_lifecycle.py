"""The shared run lifecycle: run-dir locks, checkpoint rotation, the tracking store, metrics
logged once per step."""

import contextlib
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from pipelines.common.checkpoints import CheckpointFallbackWarning, CheckpointRotation
from pipelines.common.errors import CorruptCheckpointError, UserError
from pipelines.common.lifecycle import IntervalTrigger, RunLifecycle
from pipelines.common.run_dir import RunDir
from pipelines.common.tracking import MetricLog, check_store, store_failures, tracked_run

REPO = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Settings:
    run_dir: str = "run"
    lr: float = 0.1
    steps: int = 10


# --- the run-dir lock ----------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pipelines.common.run_dir import RunDir
    RunDir(sys.argv[1]).lock()
    print("locked", flush=True)
    time.sleep(60)
""")


@contextlib.contextmanager
def process_holding_lock(path):
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_second_process_is_refused_naming_the_owner_pid(tmp_path):
    with process_holding_lock(tmp_path / "run") as owner:
        with pytest.raises(UserError) as error:
            RunDir(tmp_path / "run").lock()
        assert f"pid {owner.pid}" in str(error.value)
        assert "in use by another run" in str(error.value)


def test_kill_9_releases_the_lock_with_nothing_to_clean(tmp_path):
    with process_holding_lock(tmp_path / "run") as owner:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        run = RunDir(tmp_path / "run").lock()  # the stale .lock file is no obstacle
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
        run.unlock()


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a directory"):
        RunDir(tmp_path / "file").lock()
    with pytest.raises(UserError, match="is not a directory"):
        RunDir(tmp_path / "file" / "run").lock()


@contextlib.contextmanager
def read_only_directory(tmp_path):
    """A read-only tmpfs when this process may mount one, else a mode-0555 directory (which
    only binds a non-root user)."""
    target = tmp_path / "read-only"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                             capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("needs mount (root) or a non-root user for a read-only directory")
        target.chmod(0o555)
    try:
        yield target
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], check=False)
        else:
            target.chmod(0o755)


def test_a_run_dir_on_a_read_only_file_system_is_one_line(tmp_path):
    with read_only_directory(tmp_path) as read_only:
        with pytest.raises(UserError, match="cannot be written") as error:
            RunDir(read_only / "run").lock()
        assert "\n" not in str(error.value)


def test_a_moved_run_dir_resumes_from_its_new_path(tmp_path):
    RunDir(tmp_path / "a").claim(Settings(run_dir=str(tmp_path / "a")))
    os.rename(tmp_path / "a", tmp_path / "b")
    assert RunDir(tmp_path / "b").claim(Settings(run_dir=str(tmp_path / "b"))) is True


# --- checkpoint rotation -------------------------------------------------------------------

def write_step(step):
    def write(directory):
        (directory / "state.txt").write_text(str(step))
    return write


def read_state(directory):
    text = (directory / "state.txt").read_text()
    if not text:
        raise CorruptCheckpointError(f"state {directory / 'state.txt'} is empty")
    return int(text)


def test_rotation_keeps_the_newest_two_whole_checkpoints(tmp_path):
    rotation = CheckpointRotation(tmp_path / "checkpoints")
    for step in (1, 2, 3):
        rotation.save(step, write_step(step))
    assert [step for step, _ in rotation.saved()] == [3, 2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-0000002", "step-0000003"]
    restored = rotation.restore(read_state)
    assert (restored.step, restored.value) == (3, 3)


def test_a_partial_checkpoint_is_never_restored(tmp_path):
    rotation = CheckpointRotation(tmp_path / "checkpoints")
    rotation.save(1, write_step(1))

    def killed_midway(directory):
        (directory / "state.txt").write_text("2")
        raise KeyboardInterrupt  # what a kill leaves: a .partial directory

    with pytest.raises(KeyboardInterrupt):
        rotation.save(2, killed_midway)
    assert rotation.restore(read_state).step == 1


def test_a_damaged_newest_checkpoint_falls_back_with_one_warning(tmp_path):
    rotation = CheckpointRotation(tmp_path / "checkpoints")
    rotation.save(1, write_step(1))
    newest = rotation.save(2, write_step(2))
    (newest / "state.txt").write_text("")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = rotation.restore(read_state)
    assert restored.step == 1
    fallbacks = [w for w in caught if issubclass(w.category, CheckpointFallbackWarning)]
    assert len(fallbacks) == 1 and "state.txt is empty" in str(fallbacks[0].message)


def test_no_readable_checkpoint_names_the_file_and_the_way_out(tmp_path):
    rotation = CheckpointRotation(tmp_path / "checkpoints")
    (rotation.save(1, write_step(1)) / "state.txt").write_text("")
    with pytest.raises(CorruptCheckpointError) as error:
        rotation.restore(read_state, what="test checkpoint")
    assert "state.txt is empty" in str(error.value) and "--run-dir" in str(error.value)


def test_interval_trigger_fires_once_per_multiple_passed_and_at_the_end():
    trigger = IntervalTrigger(every=200, last_step=1000)
    assert trigger(0, 150) is False
    assert trigger(150, 350) is True      # passed 200 in one chunk
    assert trigger(350, 399) is False
    assert trigger(390, 400) is True
    assert trigger(900, 950) is False
    assert trigger(950, 1000) is True
    assert IntervalTrigger(every=300, last_step=1000)(950, 1000) is True  # the end


# --- the tracking store --------------------------------------------------------------------

def test_an_unreachable_http_store_fails_within_seconds():
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        check_store("http://127.0.0.1:9")
    assert time.monotonic() - started < 10
    assert "cannot be reached" in str(error.value) and "--tracking-uri" in str(error.value)


def test_a_sqlite_store_must_be_a_database_in_a_usable_directory(tmp_path):
    check_store(f"sqlite:///{tmp_path}/new.db")  # a new store in an existing directory
    with pytest.raises(UserError, match="does not exist"):
        check_store(f"sqlite:///{tmp_path}/deeper/new.db")  # SQLite makes no directories
    with pytest.raises(UserError, match="does not exist"):
        check_store(f"sqlite:///{tmp_path}/missing.db", must_exist=True)
    (tmp_path / "junk.db").write_text("not a database")
    with pytest.raises(UserError, match="not a usable SQLite database"):
        check_store(f"sqlite:///{tmp_path}/junk.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        check_store(f"sqlite:///{tmp_path}/file/new.db")


def lifecycle(tmp_path, uri, **settings):
    config = Settings(run_dir=str(tmp_path / "run"), **settings)
    return RunLifecycle(config, experiment="lifecycle-test", run_name="test",
                        tracking_uri=uri, may_change=("steps",))


def test_metrics_are_logged_once_per_step_over_any_number_of_resumes(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Three attempts: each resumes from "checkpoint" step 2 and logs steps 3-6 again, with
    # other values, as a run redoing the steps after its last checkpoint would.
    for attempt in range(3):
        run = lifecycle(tmp_path, uri)
        assert run.start() is (attempt > 0)
        with run.tracking():
            first = 0 if attempt == 0 else 3
            for step in range(first, 7):
                run.log_metrics({"train/loss": 10 * attempt + step, "eval/x": None}, step)
        run.close()
    history = mlflow.tracking.MlflowClient(uri).get_metric_history(run.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(7))
    assert {m.step: m.value for m in history} == {step: step for step in range(7)}


def test_a_resume_whose_mlflow_run_was_deleted_continues_into_a_new_run(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = lifecycle(tmp_path, uri)
    run.start()
    with run.tracking():
        run.log_metrics({"train/loss": 1.0}, 1)
    run.close()
    first = run.run_id
    client = mlflow.tracking.MlflowClient(uri)
    client.delete_run(first)
    client._tracking_client.store._hard_delete_run(first)  # gone, not just in the bin
    again = lifecycle(tmp_path, uri)
    assert again.start() is True
    with again.tracking():
        again.log_metrics({"train/loss": 2.0}, 2)
    again.close()
    assert again.run_id != first
    assert "no longer exists" in capsys.readouterr().err
    assert client.get_run(again.run_id).data.tags["continues_lost_run"] == first


def test_a_store_deleted_mid_run_stops_the_run_with_one_line(tmp_path):
    import mlflow

    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    with pytest.raises(UserError) as error:
        with store_failures(uri, tmp_path / "run"):
            with tracked_run("store-test", Settings(), run_dir=tmp_path / "run",
                             tracking_uri=uri):
                log = MetricLog()
                log.log({"train/loss": 1.0}, 1)
                database.unlink()
                mlflow.log_metric("train/loss", 2.0, step=2)
                # A fresh connection may have recreated an empty file; reading it fails.
                mlflow.tracking.MlflowClient(uri).get_run(log.run_id)
    message = str(error.value)
    assert "failed during the run" in message and "rerun the same command" in message


def test_a_bug_inside_a_healthy_store_keeps_its_traceback(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with store_failures(f"sqlite:///{tmp_path}/mlflow.db", tmp_path):
            raise ZeroDivisionError("a bug, not the store")


def test_a_refused_claim_leaves_the_run_dir_unlocked(tmp_path):
    """In a process that goes on (a test, a notebook), a claim refused for other settings
    does not keep the lock: the same process may then use the run dir."""
    first = RunLifecycle(Settings(lr=0.1), "lifecycle", "run", run_dir=tmp_path / "run",
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first.start()
    first.close()
    other = RunLifecycle(Settings(lr=0.2), "lifecycle", "run", run_dir=tmp_path / "run",
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(UserError, match="other settings"):
        other.start()
    RunDir(tmp_path / "run").lock().unlock()  # free again
