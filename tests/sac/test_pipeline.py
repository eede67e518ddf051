import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import numpy as np
import pytest

from pipelines.common.checkpoints import CheckpointFallbackWarning, CheckpointRotation
from pipelines.common.errors import CorruptCheckpointError, UserError, run_cli
from pipelines.common.metrics import metric_history
from pipelines.sac import cli
from pipelines.sac.config import SacConfig
from pipelines.sac.train import SacRun, train

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(hidden_sizes=(16, 16), batch_size=32, buffer_size=5_000, warmup_steps=100,
            log_every=50, eval_every=150, eval_episodes=1, checkpoint_every=150)


def history(run_id, name):
    steps, values = metric_history(run_id, [name])[name]
    return dict(zip(steps, values))


# Loads the export the way TF Serving's Python twin does, in a process where tfp,
# TF-Agents, Keras, era_keras and this repository cannot be imported.
STANDALONE = textwrap.dedent("""
    import sys
    BLOCKED = ("tensorflow_probability", "tf_agents", "era_keras", "pipelines", "serving",
               "keras", "tf_keras", "gym", "gymnasium")
    for name in BLOCKED:
        sys.modules[name] = None  # `import name` now raises ImportError; find_spec says absent
    sys.path[:] = [p for p in sys.path if p and p.rstrip("/") != "REPO"]
    import numpy as np
    import tensorflow as tf

    export_dir, observations_file, out_file = sys.argv[1:]
    policy = tf.saved_model.load(export_dir)
    observations = tf.constant(np.load(observations_file))
    deterministic = policy.signatures["serving_default"](observation=observations)
    sample = policy.signatures["sample"](observation=observations)
    spec = policy.signatures["serving_default"].structured_input_signature[1]["observation"]
    assert all(sys.modules[name] is None for name in BLOCKED), "a blocked module was loaded"
    np.savez(out_file, action=deterministic["action"].numpy(),
             env_action=deterministic["env_action"].numpy(), sample=sample["action"].numpy(),
             shape=np.array([-1 if d is None else d for d in spec.shape]))
""").replace("REPO", str(REPO))


def test_mujoco_end_to_end_tracks_exports_and_keeps_the_floor(tmp_path, tracking_uri):
    config = SacConfig(env="HalfCheetah-v5", total_env_steps=300, run_dir=str(tmp_path / "run"),
                       **TINY)
    result = train(config)
    assert result["step"] == 300 and result["train_steps"] == 2 * 200
    assert result["experiment"] == "sac" and result["run_dir"] == config.run_dir
    assert json.loads((tmp_path / "run" / "finished.json").read_text()) == result

    run = mlflow.get_run(result["run_id"])
    assert run.data.params["agent"] == "era" and run.data.params["env"] == "HalfCheetah-v5"
    assert run.info.run_name == "sac HalfCheetah-v5 era-truncated seed 0"
    for name in ("eval/return", "train/return", "entropy/executed", "entropy/executed_target",
                 "entropy/pre_squash", "entropy/delta", "train/critic_loss",
                 "train/actor_loss", "train/delta_loss", "perf/grad_steps_per_s"):
        assert name in run.data.metrics, name
    # The floor: the actor's Gaussian never has less entropy than H0 + delta.
    floors = history(result["run_id"], "entropy/pre_squash_floor")
    minima = history(result["run_id"], "entropy/pre_squash_min")
    assert len(floors) >= 5
    for step, floor in floors.items():
        assert minima[step] >= floor - 1e-4
        assert floor >= 0.25 * 6 - 1e-6
    assert set(history(result["run_id"], "entropy/executed_target").values()) == {1.5}

    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(result["run_id"])}
    assert {"learning_curves.png", "policy", "config.json"} <= artifacts
    export_dir = pathlib.Path(result["exports"]["policy"])
    assert export_dir.parent.name == "era_sac_policy" and export_dir.name == "1"
    assert (export_dir.parent.parent / "models.config").exists()
    bounds = json.loads((export_dir / "assets.extra" / "action_space.json").read_text())
    assert bounds["env_action_low"] == [-1.0] * 6

    # The export acts with TensorFlow alone, as the trained deterministic policy does.
    import tensorflow as tf
    from tf_agents.policies import greedy_policy
    from tf_agents.trajectories import time_step as ts

    observations = np.random.default_rng(0).standard_normal((5, 17)).astype(np.float32)
    np.save(tmp_path / "obs.npy", observations)
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONSTARTUP", "TF_USE_LEGACY_KERAS")}
    done = subprocess.run([sys.executable, str(script), str(export_dir), str(tmp_path / "obs.npy"),
                           str(tmp_path / "out.npz")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    served = np.load(tmp_path / "out.npz")
    assert served["shape"].tolist() == [-1, 17]
    run_again = SacRun(config)
    run_again.restore()
    expected = greedy_policy.GreedyPolicy(run_again.agent.policy).action(
        ts.restart(tf.constant(observations), batch_size=5)).action.numpy()
    np.testing.assert_allclose(served["action"], expected, atol=1e-5)
    np.testing.assert_allclose(served["env_action"], expected, atol=1e-5)  # bounds are +-1
    assert served["sample"].shape == (5, 6) and np.all(np.abs(served["sample"]) <= 1.0)
    assert not np.allclose(served["sample"], served["action"])


@pytest.mark.slow
def test_dm_control_end_to_end_with_tanh_and_a_mean_bound(tmp_path, tracking_uri):
    config = SacConfig(env="cartpole-swingup", squash="tanh", mean_bound=0.75,
                       total_env_steps=300, action_repeat=2, run_dir=str(tmp_path / "run"),
                       **TINY)
    result = train(config)
    metrics = result["metrics"]
    assert result["step"] == 300 and np.isfinite(metrics["eval/return"])
    assert metrics["eval/episode_length"] == 500  # DMC's 1000 steps at action repeat 2
    assert np.isfinite(metrics["entropy/executed"]) and metrics["entropy/delta"] >= 0.0


def test_standard_sac_tunes_alpha_towards_its_target(tmp_path, tracking_uri):
    """SAC's temperature rule: alpha falls while the policy's entropy is above the target
    -dim(A) (= -1 on Pendulum) and rises below it. A fresh tanh-Gaussian policy on one
    action dim has ~0.5 nats, well above -1, so every alpha logged once updates have begun
    is below the one before, starting from alpha_0 = 1."""
    config = SacConfig(env="Pendulum-v1", agent="sac", total_env_steps=300,
                       run_dir=str(tmp_path / "run"), **TINY)
    result = train(config)
    assert result["train_steps"] == 2 * 200 and "entropy/delta" not in result["metrics"]
    alphas = history(result["run_id"], "entropy/alpha")
    executed = history(result["run_id"], "entropy/executed")
    assert set(history(result["run_id"], "entropy/executed_target").values()) == {-1.0}
    steps = [step for step in sorted(alphas) if step > TINY["warmup_steps"]]  # updates began
    assert len(steps) == 4 and all(executed[step] > -1.0 for step in steps)
    values = [1.0] + [alphas[step] for step in steps]
    assert all(later < earlier for earlier, later in zip(values, values[1:])), values
    assert "train/alpha_loss" in mlflow.get_run(result["run_id"]).data.metrics


def test_replay_holds_only_real_transitions(tmp_path):
    config = SacConfig(env="Pendulum-v1", time_limit=10, run_dir=str(tmp_path / "run"), **TINY)
    run = SacRun(config)
    run.loop.collect_random(55)
    stored = run.replay.stored()
    # Resets are extra env calls that store nothing and count as no env step.
    assert int(run.replay.size()) == 55 == int(run.env_step.numpy())
    # Within a stored transition, s' really follows s: Pendulum's cos/sin stay on the circle
    # and the angle moves by at most max speed * dt.
    theta = np.arctan2(stored.time_step.observation[:, 1], stored.time_step.observation[:, 0])
    theta_next = np.arctan2(stored.next_time_step.observation[:, 1],
                            stored.next_time_step.observation[:, 0])
    jump = np.abs(np.angle(np.exp(1j * (theta_next - theta))))
    assert np.all(jump <= 8.0 * 0.05 + 1e-4)


def test_resume_refuses_other_settings(tmp_path, tracking_uri):
    run_dir = str(tmp_path / "run")
    train(SacConfig(env="Pendulum-v1", total_env_steps=50, run_dir=run_dir, **TINY))
    with pytest.raises(UserError, match="hidden_sizes"):
        train(SacConfig(env="Pendulum-v1", total_env_steps=300, run_dir=run_dir,
                        **{**TINY, "hidden_sizes": (8,)}))


def test_a_mistyped_env_does_not_claim_the_run_dir(tmp_path, tracking_uri, capsys):
    """Regression: the config used to be written before the env was checked, so the
    corrected command was refused as "a run with other settings"."""
    run_dir = str(tmp_path / "run")
    args = ["--run-dir", run_dir, "--total-env-steps", "50", "--warmup-steps", "20",
            "--hidden-sizes", "8", "--batch-size", "8", "--log-every", "25",
            "--eval-every", "50", "--eval-episodes", "1", "--checkpoint-every", "50"]
    assert run_cli(cli.main, ["--env", "NoSuchEnv-v0", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: Unknown environment id 'NoSuchEnv-v0'")
    assert "\n" not in error and "Traceback" not in error
    assert not (tmp_path / "run" / "config.json").exists()
    assert run_cli(cli.main, ["--env", "Pendulum-v1", *args]) == 0
    assert (tmp_path / "run" / "finished.json").exists()


def test_an_unreachable_entropy_target_is_refused_before_the_run_dir_is_claimed(tmp_path):
    with pytest.raises(UserError, match=r"tanh with mean bound 1.0 reaches"):
        train(SacConfig(env="Pendulum-v1", squash="tanh", mean_bound=1.0,
                        run_dir=str(tmp_path / "run"), **TINY))
    assert not (tmp_path / "run").exists()


def test_a_damaged_checkpoint_falls_back_to_the_one_before(tmp_path, tracking_uri, capsys):
    run_dir = tmp_path / "run"
    config = dict(env="Pendulum-v1", run_dir=str(run_dir), **TINY)
    train(SacConfig(total_env_steps=300, **config))
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000150", "step-0000300"]
    newest = next((checkpoints / "step-0000300").glob("ckpt.data-*"))
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    with pytest.warns(CheckpointFallbackWarning, match=r"step-0000300 .*cannot be read.*"
                      r"falling back to the checkpoint before it"):
        result = train(SacConfig(total_env_steps=450, **config))
    assert "Resuming the run in" in capsys.readouterr().err
    assert result["step"] == 450
    run = mlflow.get_run(result["run_id"])
    assert run.data.tags["resumed_from_env_step"] == "150"

    for data in checkpoints.glob("*/ckpt.data-*"):
        data.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError) as error, pytest.warns(CheckpointFallbackWarning):
        train(SacConfig(total_env_steps=600, **config))
    message = str(error.value)
    assert "no readable SAC checkpoint" in message and "step-0000450" in message
    assert f"delete {checkpoints}" in message


# Random actions only (the warm-up outlasts the run): the run dir's life without updates.
WARMUP_ONLY = dict(hidden_sizes=(8,), batch_size=8, warmup_steps=1_000, log_every=25,
                   eval_every=50, eval_episodes=1, checkpoint_every=50, time_limit=20)


def test_a_moved_run_dir_resumes_from_its_new_place(tmp_path, tracking_uri, capsys):
    first = train(SacConfig(env="Pendulum-v1", total_env_steps=50,
                            run_dir=str(tmp_path / "here"), **WARMUP_ONLY))
    os.rename(tmp_path / "here", tmp_path / "there")
    moved = train(SacConfig(env="Pendulum-v1", total_env_steps=100,
                            run_dir=str(tmp_path / "there"), **WARMUP_ONLY))
    assert "Resuming the run in" in capsys.readouterr().err
    assert moved["run_id"] == first["run_id"] and moved["step"] == 100
    assert mlflow.get_run(moved["run_id"]).data.tags["resumed_from_env_step"] == "50"
    assert moved["exports"]["policy"].startswith(str(tmp_path / "there"))
    assert moved["metrics"]["train/replay_size"] == 100
    assert sorted(history(moved["run_id"], "train/replay_size")) == [25, 50, 75, 100]


def start_cli(args, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "pipelines.sac", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process, what, timeout=600):
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_second_process_on_a_run_dir_is_refused_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--env", "Pendulum-v1", "--run-dir", str(run_dir),
            *[f"--{k.replace('_', '-')}={v}" for k, v in WARMUP_ONLY.items()
              if k != "hidden_sizes"], "--hidden-sizes", "8",
            "--total-env-steps", "1000000", "--buffer-size", "1000"]
    first = start_cli(args, tmp_path)
    try:
        wait_for(lambda: (run_dir / "config.json").exists(), first, "it claimed the run dir")
        second = start_cli(args, tmp_path)
        _, error = second.communicate(timeout=600)
        assert second.returncode == 2
        # Lines TensorFlow's native code logs itself (absl's "E0000 00:00:..." format, such
        # as a cuInit line on a machine without a GPU) are not the pipeline's.
        lines = [line for line in error.splitlines() if not re.match(r"[IWE]\d{4} ", line)]
        assert len(lines) == 1 and "Traceback" not in error, error
        assert lines[0].startswith(f"error: {run_dir} is in use by another run "
                                   f"(pid {first.pid})")
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_a_run_killed_and_resumed_logs_each_metric_once_per_step(tmp_path):
    """kill -9 after the run logged steps its newest checkpoint does not hold: the resumed
    run trains those steps again, and MLflow keeps one value per (metric, step)."""
    run_dir = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--env", "Pendulum-v1", "--hidden-sizes", "16", "16", "--batch-size", "32",
            "--total-env-steps", "1200", "--warmup-steps", "100", "--checkpoint-every", "400",
            "--log-every", "100", "--eval-every", "600", "--eval-episodes", "1",
            "--run-dir", str(run_dir)]
    rotation = CheckpointRotation(run_dir / "checkpoints", prefix="step")
    client = mlflow.tracking.MlflowClient(uri)

    def logged_steps():
        id_file = run_dir / "mlflow_run_id.txt"
        if not id_file.exists():
            return []
        return [m.step for m in client.get_metric_history(id_file.read_text().strip(),
                                                          "train/return")]

    def newest_checkpoint():
        saved = rotation.saved()
        return saved[0][0] if saved else 0

    process = start_cli(args, tmp_path)
    wait_for(lambda: newest_checkpoint() >= 400
             and max(logged_steps(), default=0) > newest_checkpoint(),
             process, "a step past its newest checkpoint was logged")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "finished.json").exists()
    resumed_from = newest_checkpoint()
    assert max(logged_steps()) > resumed_from  # steps the resumed run trains again
    first_run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()

    resumed = start_cli(args, tmp_path)
    _, error = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, error[-3000:]
    assert f"Resuming the run in {run_dir} from env step {resumed_from}." in error
    result = json.loads((run_dir / "finished.json").read_text())
    assert result["run_id"] == first_run_id and result["step"] == 1200
    # Exactly the updates of one uninterrupted run (quick preset: 1 update per step).
    assert result["train_steps"] == 1200 - 100
    assert result["metrics"]["train/replay_size"] == 1200
    run = client.get_run(first_run_id)
    assert int(run.data.tags["resumed_from_env_step"]) == resumed_from
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(first_run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    assert sorted(logged_steps()) == list(range(100, 1201, 100))
    eval_steps = [m.step for m in client.get_metric_history(first_run_id, "eval/return")]
    assert sorted(eval_steps) == [600, 1200]
