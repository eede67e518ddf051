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
from pipelines.grpo.config import GRPOConfig
from pipelines.grpo import rewards
from pipelines.grpo.models import load_causal_lm
from pipelines.grpo.checkpoint import latest_checkpoint
from pipelines.grpo.train import run

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(model="tiny:qwen", task="arithmetic", tiny_layers=1, tiny_hidden_dim=32, warm_start_steps=3,
            warm_start_batch_size=8, prompts_per_step=2, group_size=4, num_eval_prompts=4,
            eval_samples=2, max_new_tokens=12, eval_every=2, checkpoint_every=2)
STEP_METRICS = ["reward", "accuracy", "response_length", "h_resp_p10", "h_resp_p50",
                "h_resp_p90", "share_tokens_scaled_up", "share_tokens_scaled_down", "loss",
                "tokens_per_s", "clip_fraction"]


@pytest.fixture
def parity_reward(monkeypatch):
    """A reward that a random-init model earns half the time: groups always carry signal."""
    monkeypatch.setitem(rewards.REWARDS, "parity",
                        lambda completion, reference: 1.0 if len(completion) % 2 else -1.0)
    return "parity"


def _metric_steps(run_id, key):
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, key)
    return sorted({m.step for m in history})


def test_a_few_grpo_era_steps_end_to_end(tmp_path, tracking_uri, parity_reward):
    # Group size 8: a group has no signal (all one parity) with probability 2 / 2**8.
    config = GRPOConfig(steps=2, run_dir=str(tmp_path / "run"), omega_low=10.0,
                        omega_high=20.0, reward=parity_reward, **{**TINY, "group_size": 8})
    trainer = run(config, tracking_uri=tracking_uri, export=True, progress=False)
    assert trainer.step == 2
    for key in STEP_METRICS:
        assert _metric_steps(trainer.run_id, key) == [1, 2], key
    assert _metric_steps(trainer.run_id, "eval_greedy_accuracy") == [0, 2]
    rows = trainer.history[1:]
    # omega_low above every entropy: every positive-advantage token is scaled up, no other.
    for row in rows:
        assert row["share_tokens_scaled_down"] == 0.0
        assert row["share_tokens_positive_advantage"] > 0.0
        assert row["share_tokens_scaled_up"] == pytest.approx(
            row["share_tokens_positive_advantage"], abs=1e-6)
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(
        trainer.run_id, "plots")}
    assert artifacts == {"plots/entropy.png", "plots/reward.png"}
    assert latest_checkpoint(config.run_dir).name == "step-0000002"

    # Export: a keras-hub preset, and a scoring SavedModel in TF Serving's layout.
    export = pathlib.Path(config.run_dir) / "export"
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
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.array(served["token_log_probs"])[:, 1:], expected, atol=1e-4)
    np.testing.assert_allclose(served["sequence_log_prob"], expected.sum(axis=1), atol=1e-3)


@pytest.mark.slow
def test_vanilla_grpo_flag_turns_era_off(tmp_path, tracking_uri, parity_reward):
    config = GRPOConfig(steps=2, run_dir=str(tmp_path / "run"), era=False, omega_low=10.0,
                        omega_high=20.0, reward=parity_reward, **TINY)
    trainer = run(config, tracking_uri=tracking_uri, export=False, progress=False)
    assert trainer.era is None
    assert all(r["share_tokens_scaled_up"] == 0.0 for r in trainer.history[1:])
    assert any(r["share_tokens_positive_advantage"] > 0 for r in trainer.history[1:])
    assert all(r["h_resp_p50"] > 0.0 for r in trainer.history[1:])  # entropy still logged


def test_bad_config_is_refused_with_what_is_allowed():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="tiny model family must be one of qwen, qwen3"):
        GRPOConfig(model="tiny:llama")
    with pytest.raises(ValueError, match="task must be one of arithmetic, digit_sum"):
        GRPOConfig(task="gsm8k")


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
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["step"] for row in history] == list(range(13))
    mlflow.set_tracking_uri(tracking_uri)
    assert _metric_steps(run_id, "reward") == list(range(1, 13))
    tags = mlflow.get_run(run_id).data.tags
    assert int(tags["resumed_from_step"]) >= killed_at


@pytest.mark.slow
def test_cli_default_pipeline_on_jax_backend_with_savedmodel_export(tmp_path, tracking_uri):
    env = {**os.environ, "KERAS_BACKEND": "jax", "MLFLOW_TRACKING_URI": tracking_uri}
    result = subprocess.run(_cli(tmp_path / "run", tracking_uri, "--steps", "2"), cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "export" / "serving" / "grpo_policy" / "1" /
            "saved_model.pb").exists()
    assert (tmp_path / "run" / "export" / "preset" / "config.json").exists()
