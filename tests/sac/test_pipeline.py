import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest

from pipelines.sac import cli
from pipelines.sac.config import SacConfig, from_preset
from pipelines.sac.train import SacRun, train
from serving.export import check_loads_standalone

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(hidden_sizes=(16, 16), batch_size=32, buffer_size=5_000, warmup_steps=100,
            log_every=50, eval_every=150, eval_episodes=1, checkpoint_every=150)


def metric_history(run_id, name):
    client = mlflow.tracking.MlflowClient()
    return {m.step: m.value for m in client.get_metric_history(run_id, name)}


def test_mujoco_end_to_end_tracks_exports_and_keeps_the_floor(tmp_path, tracking_uri):
    config = SacConfig(env="HalfCheetah-v5", total_env_steps=300, run_dir=str(tmp_path / "run"),
                       **TINY)
    result = train(config)
    assert result["env_steps"] == 300 and result["train_steps"] == 2 * 200

    run = mlflow.get_run(result["run_id"])
    assert run.data.params["agent"] == "era" and run.data.params["env"] == "HalfCheetah-v5"
    for name in ("eval/return", "train/return", "entropy/executed", "delta", "loss/critic_loss",
                 "loss/actor_loss", "loss/delta_loss", "perf/grad_steps_per_s"):
        assert name in run.data.metrics, name
    # The floor: the actor's Gaussian never has less entropy than H0 + delta.
    floors = metric_history(result["run_id"], "entropy/floor")
    minima = metric_history(result["run_id"], "entropy/pre_squash_min")
    assert len(floors) >= 5
    for step, floor in floors.items():
        assert minima[step] >= floor - 1e-4
        assert floor >= 0.25 * 6 - 1e-6

    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(result["run_id"])}
    assert {"learning_curves.png", "policy", "config.json"} <= artifacts
    export_dir = pathlib.Path(result["export_dir"])
    assert export_dir.parent.name == "era_sac_policy" and export_dir.name == "1"
    # Run as TF Serving runs it (serving_default = TF-Agents' action signature), in a
    # process that has neither the project, TF-Agents nor tfp.
    actions = np.asarray(check_loads_standalone(export_dir)["action"])
    assert actions.shape[-1] == 6 and np.all(np.abs(actions) <= 1.0)
    assert (export_dir.parent.parent / "models.config").exists()
    bounds = json.loads((export_dir / "assets.extra" / "action_space.json").read_text())
    assert bounds["env_action_low"] == [-1.0] * 6


@pytest.mark.slow
def test_dm_control_end_to_end_with_truncated_normal(tmp_path, tracking_uri):
    config = SacConfig(env="cartpole-swingup", squash="truncated", total_env_steps=300,
                       action_repeat=2, run_dir=str(tmp_path / "run"), **TINY)
    result = train(config)
    assert result["env_steps"] == 300 and np.isfinite(result["eval/return"])
    assert result["eval/episode_length"] == 500  # DMC's 1000 steps at action repeat 2
    assert np.isfinite(result["entropy/executed"]) and result["delta"] >= 0.0


def test_standard_sac_baseline_runs(tmp_path, tracking_uri):
    config = SacConfig(env="Pendulum-v1", agent="sac", total_env_steps=200,
                       run_dir=str(tmp_path / "run"), **TINY)
    result = train(config)
    assert result["train_steps"] == 200 and "alpha" in result and "delta" not in result
    assert result["alpha"] != 1.0  # alpha was tuned


def test_replay_holds_only_real_transitions(tmp_path):
    config = SacConfig(env="Pendulum-v1", time_limit=10, run_dir=str(tmp_path / "run"), **TINY)
    run = SacRun(config)
    for _ in range(55):
        run.collect_random()
    stored = run.buffer.gather_all()
    assert int(run.buffer.num_frames()) == 55  # resets are extra driver steps, not stored
    assert not np.any(stored.time_step.is_last().numpy())
    # Within a stored transition, s' really follows s: Pendulum's cos/sin stay on the circle
    # and the angle moves by at most max speed * dt.
    theta = np.arctan2(stored.time_step.observation[0, :, 1], stored.time_step.observation[0, :, 0])
    theta_next = np.arctan2(stored.next_time_step.observation[0, :, 1],
                            stored.next_time_step.observation[0, :, 0])
    jump = np.abs(np.angle(np.exp(1j * (theta_next - theta))))
    assert np.all(jump <= 8.0 * 0.05 + 1e-4)


def test_resume_refuses_other_settings(tmp_path, tracking_uri):
    run_dir = str(tmp_path / "run")
    train(SacConfig(env="Pendulum-v1", total_env_steps=50, run_dir=run_dir, **TINY))
    with pytest.raises(ValueError, match="hidden_sizes"):
        train(SacConfig(env="Pendulum-v1", total_env_steps=300, run_dir=run_dir,
                        **{**TINY, "hidden_sizes": (8,)}))


def test_cli_rejects_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["--env", "Cheetah-v9", "--run-dir", str(tmp_path / "r"),
                  "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert "Unknown environment id 'Cheetah-v9'" in str(error.value)
    assert "HalfCheetah-v5" in str(error.value) and "humanoid-run" in str(error.value)
    with pytest.raises(SystemExit) as error:
        cli.main(["--batch-size", "0"])
    assert "batch_size must be >= 1" in str(error.value)
    with pytest.raises(SystemExit):
        cli.main(["--agent", "ppo"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="squash must be 'tanh'"):
        from_preset("quick", agent="sac", squash="truncated")


def run_cli(args, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "pipelines.sac", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--env", "HalfCheetah-v5", "--hidden-sizes", "16", "16", "--batch-size", "32",
            "--total-env-steps", "900", "--warmup-steps", "100", "--checkpoint-every", "200",
            "--log-every", "100", "--eval-every", "300", "--eval-episodes", "1",
            "--run-dir", str(run_dir)]
    process = run_cli(args, tmp_path)
    checkpoint_index = run_dir / "checkpoints" / "checkpoint"
    deadline = time.time() + 240
    while not (checkpoint_index.exists() and "ckpt-400" in checkpoint_index.read_text()):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint within 4 minutes"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "result.json").exists()
    first_run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()

    resumed = run_cli(args, tmp_path)
    output, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, output[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["run_id"] == first_run_id
    assert result["env_steps"] == 900
    # Exactly the updates of one uninterrupted run (quick preset: 1 update per step).
    assert result["train_steps"] == 900 - 100
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(first_run_id)
    resumed_from = int(run.data.tags["resumed_from_env_step"])
    assert resumed_from >= 400 and resumed_from % 200 == 0
    assert result["replay/size"] == 900
    assert sorted(metric_history(first_run_id, "eval/return")) == [300, 600, 900]
