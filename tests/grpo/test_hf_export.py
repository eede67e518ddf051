"""Hugging Face checkpoints out: the exported directory is the policy, as transformers reads it.

The tolerance is the one tests/grpo/test_hf_checkpoints.py derives (8 e32 + 4 ulps, e32
= torch float32 vs float64 on the exported weights).
"""

import json

import numpy as np
import pytest

from pipelines.common.errors import UserError
from pipelines.grpo import chat
from pipelines.grpo.hf import export_hf_dir, export_run_hf_dir
from pipelines.grpo.models import enable_lora, load_causal_lm, tiny_causal_lm
from tests.grpo.hf_checkpoints import (
    keras_next_token_log_probs,
    random_token_ids,
    tolerance,
    torch_next_token_log_probs,
    write_checkpoint,
)


def transformers_log_probs(directory, ids):
    """(torch float32, torch float64) next-token log-probs of a transformers directory."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory))
    return (torch_next_token_log_probs(model, ids, "float32"),
            torch_next_token_log_probs(model, ids, "float64"))


def savedmodel_log_probs(causal_lm, tmp_path, ids):
    import tensorflow as tf

    from pipelines.grpo.export import export_scoring_savedmodel

    path = export_scoring_savedmodel(causal_lm, tmp_path / "serving", "policy")
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = serve(token_ids=tf.constant(ids), padding_mask=tf.ones_like(tf.constant(ids)))
    return out["token_log_probs"].numpy()[:, 1:]


def test_lora_policy_exports_merged_with_its_tokenizer_and_template(tmp_path):
    source = tmp_path / "source"
    write_checkpoint("qwen2", source, init_std=0.3)
    causal_lm = load_causal_lm(str(source))
    enable_lora(causal_lm, 2)
    rng = np.random.default_rng(0)
    for variable in causal_lm.trainable_variables:  # LoRA pairs that change the function
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    ids = random_token_ids(causal_lm.backbone.vocabulary_size, seed=4)
    keras = keras_next_token_log_probs(causal_lm, ids)
    served = savedmodel_log_probs(causal_lm, tmp_path, ids)

    out = export_hf_dir(causal_lm, tmp_path / "hf", source=source)
    torch32, torch64 = transformers_log_probs(out, ids)
    tol, _ = tolerance(torch32, torch64)
    assert np.abs(torch32 - keras).max() <= tol
    assert np.abs(torch32 - served).max() <= tol
    before, _ = transformers_log_probs(source, ids)
    assert np.abs(before - torch32).max() > 100 * tol  # the LoRA update is in the export
    # keras-hub reads the export back as the same model.
    assert np.abs(keras_next_token_log_probs(load_causal_lm(str(out)), ids) - keras).max() <= tol

    # The checkpoint's tokenizer and chat template came along, and transformers reads them.
    from transformers import AutoTokenizer

    assert chat.read_template(out) == chat.read_template(source)
    messages = [{"role": "system", "content": "Box it."}, {"role": "user", "content": "1+1?"}]
    rendered = [AutoTokenizer.from_pretrained(str(d)).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True) for d in (source, out)]
    assert rendered[0] == rendered[1]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["dtype"] == "float32"


@pytest.mark.parametrize("family", ["gemma", "gemma3", "llama3"])
def test_exportable_families_round_trip(tmp_path, family):
    write_checkpoint(family, tmp_path / "source", init_std=0.3,
                     num_kv_heads=1 if family == "gemma" else None)
    causal_lm = load_causal_lm(str(tmp_path / "source"))
    ids = random_token_ids(causal_lm.backbone.vocabulary_size, seed=5)
    out = export_hf_dir(causal_lm, tmp_path / "hf", source=tmp_path / "source")
    torch32, torch64 = transformers_log_probs(out, ids)
    tol, _ = tolerance(torch32, torch64)
    assert np.abs(torch32 - keras_next_token_log_probs(causal_lm, ids)).max() <= tol


def test_tiny_model_exports_with_keras_hub_tokenizer_files(tmp_path):
    causal_lm = tiny_causal_lm("qwen", num_layers=1, hidden_dim=32)
    ids = random_token_ids(causal_lm.backbone.vocabulary_size, seed=6)
    out = export_hf_dir(causal_lm, tmp_path / "hf")
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    torch32, torch64 = transformers_log_probs(out, ids)
    tol, _ = tolerance(torch32, torch64)
    assert np.abs(torch32 - keras_next_token_log_probs(causal_lm, ids)).max() <= tol


def test_families_keras_hub_cannot_write_are_refused_in_one_line(tmp_path, capsys):
    write_checkpoint("qwen3", tmp_path / "qwen3")
    qwen3 = load_causal_lm(str(tmp_path / "qwen3"))
    with pytest.raises(UserError, match="Qwen3Backbone") as raised:
        export_hf_dir(qwen3, tmp_path / "out")
    assert "\n" not in str(raised.value) and not (tmp_path / "out").exists()

    class Config:  # the two settings the run's export reads
        model, chat_template = str(tmp_path / "qwen3"), "auto"

    capsys.readouterr()
    assert export_run_hf_dir(qwen3, Config, tmp_path / "out") == {}
    assert capsys.readouterr().err.startswith("warning: no Hugging Face export: keras-hub "
                                              "cannot write a Qwen3Backbone")

    write_checkpoint("gemma", tmp_path / "gemma")  # two key/value heads
    with pytest.raises(UserError, match="one key/value head"):
        export_hf_dir(load_causal_lm(str(tmp_path / "gemma")), tmp_path / "out")
