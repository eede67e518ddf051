import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import numpy as np
import pytest

import era_keras
from pipelines.common.errors import ConfigError, UserError
from pipelines.grpo import rewards
from pipelines.grpo.checkpoint import latest_checkpoint
from pipelines.grpo.config import GRPOConfig
from pipelines.grpo.models import load_causal_lm
from pipelines.grpo.train import run

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(model="tiny:qwen", task="arithmetic", tiny_layers=1, tiny_hidden_dim=32,
            warm_start_steps=3,
            warm_start_batch_size=8, prompts_per_step=2, group_size=4, num_eval_prompts=4,
            eval_samples=2, max_new_tokens=12, eval_every=2, checkpoint_every=2)
STEP_METRICS = ["train/reward", "train/accuracy", "train/response_length",
                "entropy/h_resp_p10", "entropy/h_resp_p50", "entropy/h_resp_p90",
                "entropy/share_tokens_scaled_up", "entropy/share_tokens_scaled_down",
                "train/loss", "perf/tokens_per_s", "train/clip_fraction"]


@pytest.fixture
def parity_reward():
    """A reward that a random-init model earns half the time: groups always carry signal.

    Registered with `register_reward`, the way a user adds one, and reached by name.
    """
    rewards.register_reward("parity", lambda completion, reference:
                            1.0 if len(completion) % 2 else -1.0)
    yield "parity"
    rewards.REWARDS.pop("parity")


def _metric_steps(run_id, key):
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, key)
    return sorted({m.step for m in history})


def test_a_few_grpo_era_steps_end_to_end(tmp_path, tracking_uri, parity_reward):
    # Group size 8: a group has no signal (all one parity) with probability 2 / 2**8.
    config = GRPOConfig(steps=2, run_dir=str(tmp_path / "run"), omega_low=10.0,
                        omega_high=20.0, reward=parity_reward, **{**TINY, "group_size": 8})
    summary = run(config, tracking_uri=tracking_uri, export=True, progress=False)
    assert summary["step"] == 2
    for key in STEP_METRICS:
        assert _metric_steps(summary["run_id"], key) == [1, 2], key
    assert _metric_steps(summary["run_id"], "eval/greedy_accuracy") == [0, 2]
    rows = summary["history"][1:]
    # omega_low above every entropy: every positive-advantage token is scaled up, no other.
    for row in rows:
        assert row["entropy/share_tokens_scaled_down"] == 0.0
        assert row["entropy/share_tokens_positive_advantage"] > 0.0
        assert row["entropy/share_tokens_scaled_up"] == pytest.approx(
            row["entropy/share_tokens_positive_advantage"], abs=1e-6)
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(
        summary["run_id"], "plots")}
    assert artifacts == {"plots/entropy.png", "plots/reward.png"}
    assert latest_checkpoint(config.run_dir).name == "step-0000002"

    assert mlflow.get_run(summary["run_id"]).info.run_name == "grpo tiny:qwen arithmetic era seed 0"
    finished = json.loads((pathlib.Path(config.run_dir) / "finished.json").read_text())
    assert finished == {k: v for k, v in summary.items() if k != "history"}
    assert finished["exports"]["savedmodel_dir"].endswith("grpo_policy/1")
    _assert_savedmodel_scores_like_the_preset(pathlib.Path(config.run_dir) / "export", tmp_path)

    # The run dir now belongs to this run: other settings are refused, naming them.
    with pytest.raises(UserError, match=r"learning_rate: 3e-05 -> 0\.001.*only "
                                        r"checkpoint_every, coordinator_address, distribution, "
                                        r"peer_timeout, process_id, processes, steps may "
                                        r"change"):
        run(dataclasses.replace(config, learning_rate=1e-3), tracking_uri=tracking_uri,
            progress=False)
    with pytest.raises(UserError, match="has already finished"):
        run(config, tracking_uri=tracking_uri, progress=False)


def _assert_savedmodel_scores_like_the_preset(export, tmp_path):
    """The exported SavedModel, loaded by TensorFlow alone, scores tokens as the preset does."""
    saved_model = export / "serving" / "grpo_policy" / "1"
    assert (saved_model / "saved_model.pb").exists()
    preset = load_causal_lm(str(export / "preset"))
    token_ids = np.array([[5, 20, 21, 11, 9, 3], [7, 8, 9, 3, 3, 3]], "int32")
    padding_mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], "int32")
    logits = np.asarray(preset({"token_ids": token_ids, "padding_mask": padding_mask}))
    expected = np.asarray(era_keras.token_log_probs(logits[:, :-1], token_ids[:, 1:]))
    expected = expected * padding_mask[:, 1:]
    # Load it where neither era_keras nor keras_hub (nor keras) can be imported.
    script = textwrap.dedent(f"""
        import json, sys
        for name in ("era_keras", "keras_hub", "keras", "pipelines"):
            sys.modules[name] = None
        import numpy as np, tensorflow as tf
        model = tf.saved_model.load({str(saved_model)!r})
        out = model.signatures["serving_default"](
            token_ids=tf.constant({token_ids.tolist()}, tf.int32),
            padding_mask=tf.constant({padding_mask.tolist()}, tf.int32))
        print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}))
    """)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.array(served["token_log_probs"])[:, 1:], expected, atol=1e-4)
    np.testing.assert_allclose(served["sequence_log_prob"], expected.sum(axis=1), atol=1e-3)


@pytest.mark.slow
def test_vanilla_grpo_flag_turns_era_off(tmp_path, tracking_uri, parity_reward):
    config = GRPOConfig(steps=2, run_dir=str(tmp_path / "run"), era=False, omega_low=10.0,
                        omega_high=20.0, reward=parity_reward, **TINY)
    history = run(config, tracking_uri=tracking_uri, export=False, progress=False)["history"]
    # vanilla is logit ERA with k = 1: nothing scaled, entropy still logged
    assert all(r["entropy/share_tokens_scaled_up"] == 0.0 for r in history[1:])
    assert any(r["entropy/share_tokens_positive_advantage"] > 0 for r in history[1:])
    assert all(r["entropy/h_resp_p50"] > 0.0 for r in history[1:])


def test_bad_config_is_refused_with_every_problem_and_what_is_allowed():
    with pytest.raises(ConfigError) as caught:
        GRPOConfig(group_size=1, model="tiny:llama", task="gsm8k")
    assert len(caught.value.problems) == 3
    message = str(caught.value)
    assert "group_size must be >= 2" in message
    assert "tiny model family must be one of qwen, qwen3" in message
    assert "task must be one of arithmetic, digit_sum" in message
    with pytest.raises(ConfigError, match="warm_start_steps must be 0 for a data file task"):
        GRPOConfig(task="train.jsonl", warm_start_steps=10)


def _cli(run_dir, tracking_uri, *extra):
    args = [sys.executable, "-m", "pipelines.grpo", "--run-dir", str(run_dir),
            "--tracking-uri", tracking_uri, "--no-progress"]
    for key, value in TINY.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args + list(extra)


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_and_loses_nothing(tmp_path, tracking_uri):
    run_dir = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "MLFLOW_TRACKING_URI": tracking_uri}
    command = _cli(run_dir, tracking_uri, "--steps", "12", "--checkpoint-every", "1",
                   "--no-export")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None and int(checkpoint.name.split("-")[1]) >= 3:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = int(latest_checkpoint(run_dir).name.split("-")[1])
    assert 3 <= killed_at < 12, "the run should be killed mid-way"
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()

    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "mlflow_run_id.txt").read_text().strip() == run_id  # same MLflow run
    assert f"Resuming the run in {run_dir} from step {killed_at}." in result.stderr
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["step"] for row in history] == list(range(13))
    mlflow.set_tracking_uri(tracking_uri)
    assert _metric_steps(run_id, "train/reward") == list(range(1, 13))
    # Steps trained again after the kill are not logged a second time.
    logged = [m.step for m in mlflow.tracking.MlflowClient().get_metric_history(
        run_id, "train/reward")]
    assert sorted(logged) == list(range(1, 13))
    tags = mlflow.get_run(run_id).data.tags
    assert int(tags["resumed_from_step"]) >= killed_at


@pytest.mark.slow
def test_cli_default_pipeline_on_jax_backend_with_savedmodel_export(tmp_path, tracking_uri):
    env = {**os.environ, "KERAS_BACKEND": "jax", "MLFLOW_TRACKING_URI": tracking_uri}
    result = subprocess.run(_cli(tmp_path / "run", tracking_uri, "--steps", "2"), cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    export = tmp_path / "run" / "export"
    assert f"export (savedmodel_dir): {export / 'serving' / 'grpo_policy' / '1'}" in result.stdout
    _assert_savedmodel_scores_like_the_preset(export, tmp_path)


@pytest.mark.slow
def test_a_resumed_run_draws_the_same_prompts_and_samples_as_an_uninterrupted_one(
        tmp_path, tracking_uri, parity_reward):
    """Step 3 of a run resumed after step 2 equals step 3 of a run that never stopped.

    Sampling is seeded by (seed, step) and the checkpoint restores weights and optimizer
    exactly, so the rollouts (rewards and lengths: discrete) must match exactly; H_resp
    is computed by the same compiled update on the same inputs (tolerance 1e-5 nats).
    """
    settings = dict(reward=parity_reward, **{**TINY, "checkpoint_every": 1, "eval_every": 10})
    straight = run(GRPOConfig(steps=3, run_dir=str(tmp_path / "straight"), **settings),
                   tracking_uri=tracking_uri, export=False, progress=False)
    run(GRPOConfig(steps=2, run_dir=str(tmp_path / "resumed"), **settings),
        tracking_uri=tracking_uri, export=False, progress=False)
    resumed = run(GRPOConfig(steps=3, run_dir=str(tmp_path / "resumed"), **settings),
                  tracking_uri=tracking_uri, export=False, progress=False)
    assert [row["step"] for row in resumed["history"]] == [0, 1, 2, 3]
    a, b = straight["history"][3], resumed["history"][3]
    for key in ("train/reward", "train/response_length", "entropy/share_tokens_positive_advantage"):
        assert a[key] == b[key], key
    assert a["entropy/h_resp_p50"] == pytest.approx(b["entropy/h_resp_p50"], abs=1e-5)
