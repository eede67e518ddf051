"""GRPO where a run meets the world outside its config: a second process on the run dir, an
unreachable store, settings with several problems, a reward that is not a number, and an
update that stops being finite."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from pipelines.common.config import layered_values, make_config
from pipelines.common.errors import ConfigError, UserError
from pipelines.grpo import rewards
from pipelines.grpo.checkpoint import latest_checkpoint, restore_checkpoint
from pipelines.grpo.config import GRPOConfig
from pipelines.grpo.train import run

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(model="tiny:qwen", task="arithmetic", tiny_layers=1, tiny_hidden_dim=32,
            warm_start_steps=0, prompts_per_step=2, group_size=4, num_eval_prompts=2,
            eval_samples=2, max_new_tokens=8, eval_every=10, checkpoint_every=1)


def _cli(run_dir, tracking_uri, *extra):
    args = [sys.executable, "-m", "pipelines.grpo", "--run-dir", str(run_dir),
            "--tracking-uri", tracking_uri, "--no-progress", "--no-export"]
    for key, value in TINY.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args + list(extra)


def _env():
    return {**os.environ, "KERAS_BACKEND": "tensorflow"}


@pytest.mark.slow
def test_a_second_process_on_the_same_run_dir_exits_2_naming_the_first(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = subprocess.Popen(_cli(tmp_path / "run", uri, "--steps", "400"), cwd=ROOT,
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while latest_checkpoint(tmp_path / "run") is None and time.time() < deadline:
            time.sleep(0.2)  # the first owns the run dir once it has checkpointed
        second = subprocess.run(_cli(tmp_path / "run", uri, "--steps", "400"), cwd=ROOT,
                                env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'run'} is in use by another run (pid {first.pid}); wait for it "
        "to end, or give another --run-dir")


def test_an_unreachable_tracking_store_fails_in_seconds_before_the_run_dir_is_made(tmp_path):
    started = time.monotonic()
    result = subprocess.run(_cli(tmp_path / "run", "http://127.0.0.1:9", "--steps", "1"),
                            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert time.monotonic() - started < 60  # the import of TensorFlow is most of it
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: the MLflow tracking store http://127.0.0.1:9 cannot be reached")
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, tracking_uri):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(UserError, match="is not a directory"):
        run(GRPOConfig(steps=1, run_dir=str(tmp_path / "run"), **TINY),
            tracking_uri=tracking_uri, export=False, progress=False)


def test_every_problem_of_a_config_file_is_reported_at_once(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"group_size": 1, "steps": "ten", "omega_low": -1,
                                "learing_rate": 0.1, "task": str(tmp_path / "missing.jsonl")}))
    with pytest.raises(ConfigError) as caught:
        make_config(GRPOConfig, layered_values(GRPOConfig, config_json=path))
    problems = caught.value.problems
    assert len(problems) == 5, problems
    message = str(caught.value)
    for part in ("steps must be int, got 'ten'", "unknown field 'learing_rate'",
                 "group_size must be >= 2", "omega_low must be >= 0 (got -1)",
                 f"task file {tmp_path / 'missing.jsonl'} does not exist"):
        assert part in message
    # A data file's run has no warm start unless asked for: nothing to complain about there.
    assert "warm_start_steps must be 0" not in message


def test_a_reward_that_is_not_a_number_is_one_line_naming_it(tmp_path, tracking_uri):
    def shouting(completion, reference):
        return "yes"

    rewards.register_reward("shouting", shouting)
    try:
        with pytest.raises(UserError, match=r"reward .*shouting.* returned 'yes' \(str\).*finite "
                                            r"number"):
            run(GRPOConfig(steps=1, run_dir=str(tmp_path / "run"), reward="shouting", **TINY),
                tracking_uri=tracking_uri, export=False, progress=False)
    finally:
        rewards.REWARDS.pop("shouting")


def test_a_diverging_update_stops_the_run_and_keeps_the_last_good_checkpoint(
        tmp_path, tracking_uri):
    """At lr 1e38 Adam's first step with a gradient moves every weight by ~1e38: the norm of
    the updated weights overflows float32 (any later forward pass would too), so that step
    stops the run and the checkpoint of the step before stays the newest. (A step whose
    groups all lack signal has a zero gradient and moves nothing.)"""
    config = GRPOConfig(steps=4, run_dir=str(tmp_path / "run"), learning_rate=1e38,
                        reward="parity_lifecycle", **TINY)
    rewards.register_reward("parity_lifecycle",
                            lambda completion, reference: 1.0 if len(completion) % 2 else -1.0)
    try:
        with pytest.raises(UserError, match=r"GRPO step \d: the weight norm is not finite.*last "
                                            r"good checkpoint") as caught:
            run(config, tracking_uri=tracking_uri, export=False, progress=False)
    finally:
        rewards.REWARDS.pop("parity_lifecycle")
    failed_step = int(str(caught.value).split()[2].rstrip(":"))
    assert restore_checkpoint(config.run_dir).step == failed_step - 1
    assert not (pathlib.Path(config.run_dir) / "finished.json").exists()
