"""Hugging Face checkpoints in: keras-hub's converter gives transformers' log-probs.

Each family's tiny checkpoint is written by transformers itself (tests/grpo/hf_checkpoints.py)
and loaded with `models.load_causal_lm` (keras-hub's `CausalLM.from_preset(dir)`), on the
TensorFlow backend here and on JAX in a subprocess. Both sides score the same token ids.

Tolerance. keras-hub and torch are two float32 evaluations of one function that sum in
different orders, so each is off the exact value by rounding, and that rounding grows
with the size of the activations (the init std) and with depth. The exact value is torch
in float64 on the same weights; e32 = max |torch float32 - torch float64| is this very
network's float32 rounding. Per log-prob, |keras - torch32| <= |keras - exact| +
|exact - torch32| = e_keras + e32. keras-hub's own rounding e_keras was measured at up to
2.4 e32 (it computes RoPE angles and the attention softmax in another order), so the
difference stays below 3.4 e32; the test allows 8 e32 (a margin of more than 2), plus 4
ulps of the largest |log p| (float32's resolution there) for when e32 is itself a few
ulps. A converter that drops or transposes one weight is off by O(1) nats.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pipelines.common.errors import UserError
from pipelines.grpo.models import load_causal_lm
from tests.grpo.hf_checkpoints import (
    FAMILIES,
    keras_next_token_log_probs,
    random_token_ids,
    tolerance,
    torch_next_token_log_probs,
    write_checkpoint,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
INIT_STD = 0.3  # logits spread over ~15 nats: a wrong weight cannot hide in a flat softmax

KERAS_LOG_PROBS = """
import json, sys
import numpy as np
from pipelines.grpo.models import load_causal_lm
from tests.grpo.hf_checkpoints import keras_next_token_log_probs
out = {directory: keras_next_token_log_probs(load_causal_lm(directory), ids).tolist()
       for directory, ids in json.loads(sys.argv[1]).items()}
print(json.dumps(out))
"""


def keras_log_probs(directory, token_ids):
    """Next-token log-probs of the keras-hub model of `directory` (this backend)."""
    return keras_next_token_log_probs(load_causal_lm(str(directory)), token_ids)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{family: (directory, token ids, torch float32 and float64 log-probs)}."""
    made = {}
    for family in FAMILIES:
        directory = tmp_path_factory.mktemp(f"hf_{family}")
        model = write_checkpoint(family, directory, init_std=INIT_STD)
        ids = random_token_ids(model.config.vocab_size, batch=2, length=24, seed=1)
        made[family] = (directory, ids, torch_next_token_log_probs(model, ids, "float32"),
                        torch_next_token_log_probs(model, ids, "float64"))
    return made


@pytest.fixture(scope="module")
def jax_log_probs(checkpoints):
    """The same, from keras-hub on the JAX backend (one subprocess for every family)."""
    request = {str(d): ids.tolist() for d, ids, _, _ in checkpoints.values()}
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", KERAS_LOG_PROBS, json.dumps(request)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {d: np.asarray(v) for d, v in json.loads(result.stdout.splitlines()[-1]).items()}


def _check(family, keras, torch32, torch64, backend):
    tol, e32 = tolerance(torch32, torch64)
    diff = np.abs(keras - torch32).max()
    print(f"{family} {backend}: max |keras - torch32| = {diff:.3g}, e32 = {e32:.3g}, "
          f"tolerance {tol:.3g}")
    assert diff <= tol, (family, backend, diff, tol)


@pytest.mark.parametrize("family", FAMILIES)
def test_keras_hub_gives_transformers_log_probs_tensorflow(checkpoints, family):
    directory, ids, torch32, torch64 = checkpoints[family]
    _check(family, keras_log_probs(directory, ids), torch32, torch64, "tensorflow")


@pytest.mark.slow  # a JAX subprocess converting every family: ~40 s
@pytest.mark.parametrize("family", FAMILIES)
def test_keras_hub_gives_transformers_log_probs_jax(checkpoints, jax_log_probs, family):
    directory, ids, torch32, torch64 = checkpoints[family]
    _check(family, jax_log_probs[str(directory)], torch32, torch64, "jax")


def test_sharded_safetensors_load_as_one(tmp_path):
    model = write_checkpoint("qwen2", tmp_path, init_std=INIT_STD, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    ids = random_token_ids(model.config.vocab_size, seed=2)
    torch32 = torch_next_token_log_probs(model, ids, "float32")
    tol, _ = tolerance(torch32, torch_next_token_log_probs(model, ids, "float64"))
    assert np.abs(keras_log_probs(tmp_path, ids) - torch32).max() <= tol


# --- a directory that is not complete: one line naming what is there and what is needed ---

def _broken(tmp_path, family="qwen2", drop=(), model_type=None, **kwargs):
    write_checkpoint(family, tmp_path, **kwargs)
    for name in drop:
        (tmp_path / name).unlink()
    if model_type is not None:
        config = json.loads((tmp_path / "config.json").read_text())
        config["model_type"] = model_type
        (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def _one_line_error(directory):
    with pytest.raises(UserError) as raised:
        load_causal_lm(directory)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    message = _one_line_error(_broken(tmp_path, model_type="mamba"))
    assert "'mamba'" in message and "qwen2" in message and "llama" in message


def test_missing_weights_name_what_is_there_and_what_is_needed(tmp_path):
    message = _one_line_error(_broken(tmp_path, drop=["model.safetensors"]))
    assert "tokenizer.json" in message and "config.json" in message  # what is there
    assert "model.safetensors" in message and "index.json" in message  # what is needed
    assert "model.weights.h5" not in message


def test_missing_shard_is_named(tmp_path):
    write_checkpoint("llama3", tmp_path, max_shard_size="40KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    message = _one_line_error(str(tmp_path))
    assert shard.name in message and "missing" in message


@pytest.mark.parametrize("family, drop, needed", [
    ("qwen2", "tokenizer.json", "tokenizer.json"),
    ("llama3", "tokenizer_config.json", "tokenizer.json + tokenizer_config.json"),
    ("gemma", "tokenizer.model", "tokenizer.model"),
])
def test_missing_tokenizer_files_are_named(tmp_path, family, drop, needed):
    message = _one_line_error(_broken(tmp_path, family, drop=[drop]))
    assert needed in message and "model.safetensors" in message


def test_directory_without_config_is_neither_format(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    message = _one_line_error(str(tmp_path))
    assert "no config.json" in message and "weights.bin" in message
