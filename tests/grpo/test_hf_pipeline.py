"""GRPO end to end from a Hugging Face directory: rollouts, update, eval, resume, LoRA,
data parallel on simulated devices, and the export back to a Hugging Face directory."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipelines.grpo.checkpoint import latest_checkpoint
from pipelines.grpo.config import GRPOConfig
from pipelines.grpo.models import load_causal_lm
from pipelines.grpo.tasks import Problem
from pipelines.grpo.train import run
from tests.grpo.hf_checkpoints import (
    keras_next_token_log_probs,
    random_token_ids,
    tolerance,
    torch_next_token_log_probs,
    write_checkpoint,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = dict(task="arithmetic", warm_start_steps=2, warm_start_batch_size=8,
             prompts_per_step=2, group_size=4, num_eval_prompts=4, eval_samples=2,
             max_new_tokens=8, eval_every=2, checkpoint_every=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A one-layer Qwen2 checkpoint written by transformers."""
    directory = tmp_path_factory.mktemp("qwen2")
    write_checkpoint("qwen2", directory, num_layers=1, hidden_size=32, num_heads=2)
    return directory


def _assert_hf_export_is_the_policy(export, policy=None):
    """transformers' log-probs of export/hf equal the run's keras model (or its exported
    preset) and the scoring SavedModel's."""
    import tensorflow as tf
    from transformers import AutoModelForCausalLM

    policy = policy or load_causal_lm(str(export / "preset"))
    ids = random_token_ids(policy.backbone.vocabulary_size, batch=2, length=16, seed=7)
    model = AutoModelForCausalLM.from_pretrained(str(export / "hf"))
    torch32 = torch_next_token_log_probs(model, ids, "float32")
    tol, _ = tolerance(torch32, torch_next_token_log_probs(model, ids, "float64"))
    assert np.abs(torch32 - keras_next_token_log_probs(policy, ids)).max() <= tol
    serve = tf.saved_model.load(str(export / "serving" / "grpo_policy" / "1"))
    served = serve.signatures["serving_default"](
        token_ids=tf.constant(ids), padding_mask=tf.ones_like(tf.constant(ids)))
    assert np.abs(torch32 - served["token_log_probs"].numpy()[:, 1:]).max() <= tol


def test_grpo_from_a_hugging_face_directory_and_back(tmp_path, tracking_uri, checkpoint):
    config = GRPOConfig(model=str(checkpoint), steps=2, run_dir=str(tmp_path / "run"),
                        **SMALL)
    summary = run(config, tracking_uri=tracking_uri, export=True, progress=False)
    assert summary["step"] == 2 and "eval/greedy_accuracy" in summary["metrics"]
    export = pathlib.Path(config.run_dir) / "export"
    assert summary["exports"]["hf_dir"] == str(export / "hf")
    # The run's own policy as it ended: its exported keras-hub preset.
    policy = load_causal_lm(str(export / "preset"))
    assert type(policy).__name__ == "QwenCausalLM"
    _assert_hf_export_is_the_policy(export, policy)
    assert json.loads((export / "hf" / "tokenizer_config.json").read_text())["chat_template"] \
        == json.loads((checkpoint / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.skipif("messages" not in {f.name for f in dataclasses.fields(Problem)},
                    reason="tasks.Problem has no chat messages yet")
def test_chat_prompts_of_a_run_are_rendered_with_the_checkpoint_template(tmp_path, checkpoint):
    from pipelines.grpo.chat import render_chat_prompts
    from pipelines.grpo.train import build_causal_lm, load_problems

    data = tmp_path / "chat.jsonl"
    system = "Put your final answer within \\boxed{}."
    data.write_text("".join(json.dumps({
        "prompt": [{"role": "system", "content": system},
                   {"role": "user", "content": f"{a}+{a}?"}],
        "reward_model": {"ground_truth": str(2 * a)}}) + "\n" for a in range(40)))
    config = GRPOConfig(model=str(checkpoint), task=str(data), warm_start_steps=0,
                        max_prompt_tokens=128, run_dir=str(tmp_path / "run"))
    train, test = load_problems(config)
    causal_lm = build_causal_lm(config)
    train, test = render_chat_prompts(config, causal_lm, train, test)
    for problem in train + test:
        assert problem.prompt.startswith(f"<|im_start|>system\n{system}<|im_end|>\n")
        assert problem.prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    plain = render_chat_prompts(dataclasses.replace(config, chat_template="none"), causal_lm,
                                load_problems(config)[0])[0]
    assert not any(p.prompt.startswith("<|im_start|>") for p in plain)


def _cli(checkpoint, run_dir, tracking_uri, *extra):
    args = [sys.executable, "-m", "pipelines.grpo", "--model", str(checkpoint),
            "--run-dir", str(run_dir), "--tracking-uri", tracking_uri, "--no-progress"]
    for key, value in SMALL.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args + list(extra)


@pytest.mark.slow
def test_cli_lora_run_from_hf_dir_killed_resumes_and_exports(tmp_path, tracking_uri,
                                                             checkpoint):
    run_dir = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "MLFLOW_TRACKING_URI": tracking_uri}
    command = _cli(checkpoint, run_dir, tracking_uri, "--steps", "8", "--lora-rank", "2")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 500
    while time.time() < deadline:
        found = latest_checkpoint(run_dir)
        if found is not None and int(found.name.split("-")[1]) >= 2:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = int(latest_checkpoint(run_dir).name.split("-")[1])
    assert 2 <= killed_at < 8, "the run should be killed mid-way"

    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming the run in {run_dir} from step {killed_at}." in result.stderr
    assert f"export (hf_dir): {run_dir / 'export' / 'hf'}" in result.stdout
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["step"] for row in history] == list(range(9))
    _assert_hf_export_is_the_policy(run_dir / "export")
    # The LoRA pairs trained: the export is not the checkpoint it started from.
    from transformers import AutoModelForCausalLM

    ids = random_token_ids(260, batch=2, length=16, seed=8)
    before = torch_next_token_log_probs(AutoModelForCausalLM.from_pretrained(str(checkpoint)),
                                        ids)
    after = torch_next_token_log_probs(
        AutoModelForCausalLM.from_pretrained(str(run_dir / "export" / "hf")), ids)
    assert np.abs(before - after).max() > 1e-4


@pytest.mark.slow
def test_cli_data_parallel_on_four_simulated_devices_from_hf_dir(tmp_path, tracking_uri,
                                                                 checkpoint):
    import mlflow

    run_dir = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": "jax", "MLFLOW_TRACKING_URI": tracking_uri,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run(_cli(checkpoint, run_dir, tracking_uri, "--steps", "2",
                                 "--distribution", "data"),
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    mlflow.set_tracking_uri(tracking_uri)
    tags = mlflow.get_run(run_id).data.tags
    assert tags["layout.distribution"] == "data" and tags["layout.devices"] == "4"
    _assert_hf_export_is_the_policy(run_dir / "export")
