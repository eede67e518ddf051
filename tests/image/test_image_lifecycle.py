"""Where an image run meets the world outside its config: a second process on its run dir,
a run dir that is a file, read-only or moved, a tracking store that cannot be reached, a
strategy whose hardware is missing. Each is one `error:` line and exit status 2, before
anything is claimed."""

import os
import pathlib
import subprocess
import sys
import time

import mlflow
import pytest

from pipelines.common.errors import run_cli
from pipelines.image import __main__ as cli
from tests.common.test_lifecycle import process_holding_lock, read_only_directory

REPO = pathlib.Path(__file__).resolve().parents[2]


def _args(run_dir, data_dir, *more):
    return ["--dataset", "sklearn_digits", "--data-dir", data_dir, "--run-dir", str(run_dir),
            "--backbone", "resnet8", "--width", "4", "--batch-size", "32", "--no-log-model",
            "--verbose", "0", *more]


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_run_dir_held_by_another_process_is_one_line_naming_its_pid(
    tracking_uri, tmp_path, offline_data_dir, capsys
):
    run_dir = tmp_path / "run"
    with process_holding_lock(run_dir) as owner:
        assert run_cli(cli.main, _args(run_dir, offline_data_dir, "--epochs", "1")) == 2
    line = _one_error_line(capsys)
    assert f"{run_dir} is in use by another run (pid {owner.pid})" in line
    assert not (run_dir / "config.json").exists()  # nothing claimed
    assert mlflow.search_runs(search_all_experiments=True).empty  # nothing tracked


@pytest.mark.slow
def test_two_cli_processes_on_one_run_dir_the_second_exits_2_naming_the_first(
    tracking_uri, tmp_path, offline_data_dir
):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "pipelines.image",
            *_args(run_dir, offline_data_dir, "--epochs", "50", "--steps-per-epoch", "20")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        lock = run_dir / ".lock"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1][-3000:]
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr[-3000:]
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"error: {run_dir} is in use by another run (pid {first.pid}); wait "
                         "for it to end, or give another --run-dir")
    assert "Traceback" not in second.stderr


def test_a_run_dir_that_is_a_file_is_one_line(tracking_uri, tmp_path, offline_data_dir, capsys):
    path = tmp_path / "file"
    path.write_text("not a directory")
    assert run_cli(cli.main, _args(path, offline_data_dir, "--epochs", "1")) == 2
    assert "is not a directory" in _one_error_line(capsys)
    assert path.read_text() == "not a directory"


def test_a_read_only_run_dir_is_one_line(tracking_uri, tmp_path, offline_data_dir, capsys):
    with read_only_directory(tmp_path) as read_only:
        code = run_cli(cli.main, _args(read_only / "run", offline_data_dir, "--epochs", "1"))
    assert code == 2
    assert "cannot be written" in _one_error_line(capsys)


def test_an_unreachable_tracking_store_fails_in_seconds_before_the_run_dir_is_claimed(
    tmp_path, offline_data_dir, capsys
):
    run_dir = tmp_path / "run"
    started = time.monotonic()
    code = run_cli(cli.main, _args(run_dir, offline_data_dir, "--epochs", "1",
                                   "--tracking-uri", "http://127.0.0.1:9"))
    elapsed = time.monotonic() - started
    assert code == 2
    line = _one_error_line(capsys)
    assert "http://127.0.0.1:9" in line and "cannot be reached" in line
    assert not run_dir.exists()
    # MLflow's own retries take minutes; the store check connects once, with a 5 s timeout.
    assert elapsed < 60, elapsed


def test_strategy_tpu_without_a_tpu_is_one_line(tmp_path, offline_data_dir, capsys,
                                                 monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    run_dir = tmp_path / "run"
    assert run_cli(cli.main, _args(run_dir, offline_data_dir, "--strategy", "tpu")) == 2
    line = _one_error_line(capsys)
    assert "--strategy tpu found no TPU" in line and "--strategy default or mirrored" in line
    assert not run_dir.exists()
