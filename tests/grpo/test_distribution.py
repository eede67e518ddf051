"""GRPO on several devices (Keras' distribution API over JAX, 4 simulated CPU devices).

JAX fixes its device count when it starts, so the multi-device runs happen in
subprocesses (`tests/grpo/scale_worker.py`) with
`XLA_FLAGS=--xla_force_host_platform_device_count=4`.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pipelines.common.errors import UserError
from pipelines.grpo.distribution import DistributionSpec, check_distribution, parse_distribution

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "grpo" / "scale_worker.py"

# One Adam step moves a weight by lr * g / (|g| + eps), about lr = 1e-2 here. The
# gradients of a sharded run are the same sums taken in another order, equal to ~1e-6
# relative in float32; entries of a gradient near eps (1e-7) turn that into larger update
# differences (measured: <= 3e-6). The tolerance, 1e-4, is 1% of one update, and every
# weight moves by ~100 times it, so a wrong update cannot pass.
WEIGHT_ATOL = 1e-4
LOSS_RTOL = 1e-6


def _worker(tmp_path, *args, family="qwen"):
    out = tmp_path / f"{args[0]}-{len(list(tmp_path.iterdir()))}.npz"
    env = {**os.environ, "KERAS_BACKEND": "jax", "SCALE_WORKER_FAMILY": family,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(WORKER), args[0], str(out), *args[1:]],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(np.load(out))


def test_distribution_flag_parses_known_forms_and_refuses_others_with_what_is_allowed():
    assert parse_distribution("none") == DistributionSpec("none")
    assert parse_distribution("data") == DistributionSpec("data")
    assert parse_distribution("model:2x4") == DistributionSpec("model", 2, 4)
    for bad in ("tensor", "model:2", "model:2x", "model:axb", "model:0x4", "2x2"):
        with pytest.raises(UserError, match="use none, data, or model:BxM"):
            parse_distribution(bad)
    with pytest.raises(UserError, match=r"needs 6 devices, and this process sees 4.*model:1x4"):
        check_distribution(parse_distribution("model:3x2"), "jax", 4)
    with pytest.raises(UserError, match="needs the JAX backend.*KERAS_BACKEND=jax"):
        check_distribution(parse_distribution("model:2x2"), "tensorflow", 4)
    with pytest.raises(UserError, match="needs the JAX backend"):
        check_distribution(parse_distribution("data"), "tensorflow", 4)
    check_distribution(parse_distribution("none"), "tensorflow", 1)  # always allowed
    check_distribution(parse_distribution("model:2x2"), "jax", 4)


def test_config_lists_every_bad_scale_out_setting_together():
    from pipelines.grpo.config import GRPOConfig

    with pytest.raises(ValueError) as error:
        GRPOConfig(distribution="mesh", dtype="float16", lora_rank=-1, grad_accum_steps=3,
                   lr_schedule="linear", warmup_steps=-2)
    message = str(error.value)
    for part in ("use none, data, or model:BxM", "dtype must be one of float32, bfloat16",
                 "lora_rank must be >= 0", "grad_accum_steps must be >= 1 and divide",
                 "lr_schedule must be one of constant, cosine", "warmup_steps must be >= 0"):
        assert part in message


@pytest.fixture(scope="module")
def one_update(tmp_path_factory):
    return _worker(tmp_path_factory.mktemp("update"), "update", "none", "data", "model:2x2")


@pytest.mark.parametrize("form", ["data", "model:2x2"])
def test_one_grpo_update_on_a_mesh_equals_the_single_device_update(one_update, form):
    r = one_update
    assert float(r[f"{form}/loss"]) == pytest.approx(float(r["none/loss"]), rel=LOSS_RTOL)
    names = [k[len("none/w/"):] for k in r if k.startswith("none/w/")]
    assert len(names) > 10
    for name in names:
        moved = np.abs(r[f"none/w/{name}"] - r[f"before/w/{name}"]).max()
        assert moved > 10 * WEIGHT_ATOL, f"{name} did not move: the test would be vacuous"
        np.testing.assert_allclose(r[f"{form}/w/{name}"], r[f"none/w/{name}"],
                                   atol=WEIGHT_ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("form", ["data", "model:2x2"])
def test_rollout_generation_on_a_mesh_decodes_what_one_device_decodes(one_update, form):
    """Greedy decoding is exact up to argmax ties, which a random-init float32 model does
    not produce: the same tokens, whatever the layout."""
    np.testing.assert_array_equal(one_update[f"{form}/greedy"], one_update["none/greedy"])


def test_under_model_2x2_the_kernels_are_split_as_the_layout_map_says(one_update):
    """keras-hub's Qwen map: embeddings (model, batch), attention kernels (model, batch,
    -), feed-forward kernels Megatron-style; each device holds a quarter of a kernel
    that both axes split. Under `data` every weight is whole on each device."""
    r = one_update
    expected = {
        "token_embedding/embeddings": ("model", "batch"),
        "transformer_layer_0/self_attention/query/kernel": ("model", "batch", "None"),
        "transformer_layer_0/feedforward_gate_dense/kernel": ("batch", "model"),
        "transformer_layer_0/feedforward_output_dense/kernel": ("model", "batch"),
    }
    for name, axes in expected.items():
        assert tuple(r[f"model:2x2/s/{name}"]) == axes, name
        full = r[f"none/w/{name}"].shape
        shard = tuple(r[f"model:2x2/shard/{name}"])
        assert shard == tuple(n // 2 if a != "None" else n for n, a in zip(full, axes)), name
        assert tuple(r[f"data/shard/{name}"]) == full
    assert tuple(r["model:2x2/s/sequence_output_layernorm/scale"]) == ("None",)


def test_qwen3_and_gemma3_layout_maps_split_their_kernels(tmp_path):
    r = _worker(tmp_path, "layouts", "model:2x2")
    assert tuple(r["qwen3/s/transformer_layer_0/self_attention/query/kernel"]) == (
        "model", "batch", "None")
    assert tuple(r["qwen3/s/transformer_layer_0/feedforward_intermediate_dense/kernel"]) == (
        "batch", "model")
    assert tuple(r["qwen3/s/transformer_layer_0/self_attention/query_dense_layernorm/scale"]
                 ) == ("None",)
    assert tuple(r["gemma3/s/decoder_block_0/attention/query/kernel"]) == (
        "model", "batch", "None")
    assert tuple(r["gemma3/s/decoder_block_0/ffw_linear/kernel"]) == ("model", "batch")
    assert tuple(r["gemma3/s/decoder_block_0/attention/query_norm/scale"]) == ("None",)
    for family in ("qwen3", "gemma3"):
        assert tuple(r[f"{family}/s/token_embedding/embeddings"]) in {
            ("model", "batch"), ("None", "batch")}  # vocab split where 2 divides it


def _resume_across(tmp_path, saved_on, restored_on):
    checkpoint = tmp_path / "run"
    saved = _worker(tmp_path, "save", saved_on, str(checkpoint))
    restored = _worker(tmp_path, "restore", restored_on, str(checkpoint))
    at = [k for k in saved if k.startswith("at_checkpoint/")]
    assert any(k.startswith("at_checkpoint/o/") for k in at)  # optimizer state compared too
    for key in at:  # a checkpoint holds gathered arrays: restored exactly on any mesh
        np.testing.assert_array_equal(restored[key], saved[key], err_msg=key)
    assert float(restored["next/loss"]) == pytest.approx(float(saved["next/loss"]),
                                                         rel=LOSS_RTOL)
    for key in [k for k in saved if k.startswith("next/w/")]:
        np.testing.assert_allclose(restored[key], saved[key], atol=WEIGHT_ATOL, rtol=0,
                                   err_msg=key)
    return saved, restored


def test_checkpoint_of_a_2x2_sharded_run_resumes_on_one_device(tmp_path):
    """Weights and Adam's moments come back exactly; the next update then equals the
    one the sharded run takes (same tolerance as above)."""
    saved, restored = _resume_across(tmp_path, "model:2x2", "none")
    assert tuple(saved["s/token_embedding/embeddings"]) == ("model", "batch")
    assert tuple(restored["s/token_embedding/embeddings"]) == ("None", "None")


@pytest.mark.slow
def test_checkpoint_of_a_one_device_run_resumes_sharded_on_1x4(tmp_path):
    saved, restored = _resume_across(tmp_path, "none", "model:1x4")
    # The "batch" axis has size 1 here, so only "model" splits: a quarter of the rows each.
    query = "transformer_layer_0/self_attention/query/kernel"
    assert restored[f"s/{query}"][0] == "model"
    full = saved[f"next/w/{query}"].shape
    assert tuple(restored[f"shard/{query}"]) == (full[0] // 4, *full[1:])


@pytest.mark.slow
def test_cli_trains_on_a_2x2_mesh_with_lora_resumes_data_parallel_and_exports_servables(
        tmp_path, tracking_uri):
    import mlflow

    from serving.signature_runner import predict_standalone

    run_dir = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": "jax", "MLFLOW_TRACKING_URI": tracking_uri,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    tiny = ["--model", "tiny:qwen", "--task", "arithmetic", "--tiny-layers", "1",
            "--tiny-hidden-dim", "32", "--warm-start-steps", "2", "--warm-start-batch-size",
            "8", "--prompts-per-step", "2", "--group-size", "4", "--num-eval-prompts", "4",
            "--eval-samples", "2", "--max-new-tokens", "8", "--eval-every", "2",
            "--checkpoint-every", "1", "--lora-rank", "4", "--run-dir", str(run_dir),
            "--tracking-uri", tracking_uri, "--no-progress"]

    def cli(*extra):
        result = subprocess.run([sys.executable, "-m", "pipelines.grpo", *tiny, *extra],
                                cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]

    cli("--steps", "2", "--distribution", "model:2x2", "--no-export")
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    mlflow.set_tracking_uri(tracking_uri)
    tags = mlflow.get_run(run_id).data.tags
    assert tags["layout.mesh_batch_x_model"] == "2x2" and tags["layout.devices"] == "4"
    assert 0 < float(tags["layout.trainable_share"]) < 0.1  # LoRA pairs only

    cli("--steps", "3", "--distribution", "data")
    tags = mlflow.get_run(run_id).data.tags
    assert tags["resumed_from_step"] == "2" and tags["layout.distribution"] == "data"
    export = run_dir / "export" / "serving"
    assert (export / "models.config").exists()
    out = predict_standalone(export / "grpo_policy_generate" / "1",
                             {"token_ids": np.array([[16, 17, 10, 18, 28]], np.int32),
                              "lengths": np.array([5], np.int32)})
    assert out["output_ids"].shape == (1, 64) and 0 <= int(out["output_lengths"][0]) <= 64


@pytest.mark.slow
@pytest.mark.parametrize("backend, form, message", [
    ("jax", "model:3x2", "a 3x2 mesh needs 6 devices, and this process sees 4"),
    ("tensorflow", "data", "needs the JAX backend"),
    ("jax", "model:2", "is not a known form; use none, data, or model:BxM"),
])
def test_cli_refuses_a_layout_it_cannot_run_in_one_line_with_exit_code_2(
        tmp_path, backend, form, message):
    env = {**os.environ, "KERAS_BACKEND": backend,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.grpo", "--distribution", form, "--run-dir",
         str(tmp_path / "run"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()  # the run dir was not claimed
