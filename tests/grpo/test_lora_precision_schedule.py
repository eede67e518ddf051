"""LoRA, bfloat16, gradient accumulation and the learning-rate schedule of the GRPO loop
(on the Keras backend the test process runs; the JAX multi-device runs are in
test_distribution.py)."""

import keras
import numpy as np
import pytest

from pipelines.grpo.checkpoint import restore_checkpoint, save_checkpoint, save_lora_base
from pipelines.grpo.optim import WarmupSchedule
from pipelines.grpo.train import GRPOTrainer, build_causal_lm
from tests.grpo.scale_worker import config, rollout


def _trainer(**overrides):
    keras.utils.set_random_seed(0)
    c = config(**overrides)
    causal_lm = build_causal_lm(c)
    trainer = GRPOTrainer(c, causal_lm, [], [])
    return trainer


def _log_probs(causal_lm, token_ids):
    logits = causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    log_p = keras.ops.log_softmax(keras.ops.cast(logits[:, :-1], "float32"), axis=-1)
    picked = keras.ops.take_along_axis(log_p, token_ids[:, 1:, None], axis=-1)[..., 0]
    return keras.ops.convert_to_numpy(picked)


def test_lora_trains_only_its_pairs_resumes_them_and_exports_a_merged_full_preset(tmp_path):
    trainer = _trainer(lora_rank=2)
    causal_lm = trainer.causal_lm
    save_lora_base(tmp_path, causal_lm)
    trainer.prepare_sampling()
    trainable = {v.path for v in causal_lm.trainable_variables}
    assert trainable and all("lora_kernel" in path for path in trainable)
    before = {v.path: np.array(v.numpy()) for v in causal_lm.weights}
    trainer.update(*rollout(0, causal_lm.backbone.vocabulary_size))
    after = {v.path: np.array(v.numpy()) for v in causal_lm.weights}
    for path in before:
        if path in trainable:
            continue
        np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    # keras-hub starts B at zero: one update moves it, so the model changed through LoRA.
    assert any(np.abs(after[p] - before[p]).max() > 1e-3 for p in trainable if "_b" in p)

    token_ids = rollout(2, causal_lm.backbone.vocabulary_size)[0].token_ids
    unmerged = _log_probs(causal_lm, token_ids)

    # The checkpoint holds the pairs (not a preset) and restores them over the base.
    trainer.step = 1
    path = save_checkpoint(tmp_path, 1, causal_lm, trainer.optimizer, {"history": []})
    assert (path / "lora.lora.h5").exists() and not (path / "preset").exists()
    restored = restore_checkpoint(tmp_path).causal_lm
    assert {v.path for v in restored.trainable_variables} == trainable
    np.testing.assert_allclose(_log_probs(restored, token_ids), unmerged, atol=1e-5)

    # The export is a plain preset: LoRA merged into the kernels, no LoRA layers left.
    from pipelines.grpo.export import export_preset
    from pipelines.grpo.models import load_causal_lm

    merged = load_causal_lm(str(export_preset(causal_lm, tmp_path / "export")))
    assert not any("lora" in v.path for v in merged.weights)
    assert len(merged.trainable_variables) == len(before) - len(trainable)
    # float32 sums of W x + B(A x) vs (W + BA) x: equal to ~1e-6 relative.
    np.testing.assert_allclose(_log_probs(merged, token_ids), unmerged, atol=1e-5)


def test_gradient_accumulation_over_equal_micro_batches_equals_one_full_batch_update():
    """With every response equally long, the mean of the micro-batches' token-means is
    the batch's token-mean, so two accumulated halves give the full-batch gradient up to
    float32 rounding; Adam's first step is ~lr = 1e-2 per weight, compared to 1e-4."""
    results = []
    for accumulate in (1, 2):
        trainer = _trainer(grad_accum_steps=accumulate)
        trainer.prepare_sampling()
        before = [np.array(v.numpy()) for v in trainer.causal_lm.trainable_variables]
        info = trainer.update(*rollout(0, trainer.causal_lm.backbone.vocabulary_size,
                                       equal_lengths=True))
        results.append((float(info.loss), [np.array(v.numpy())
                                           for v in trainer.causal_lm.trainable_variables]))
        assert int(trainer.optimizer.iterations.numpy()) == 1  # one update, not two
    (loss_1, full), (loss_2, accumulated) = results
    assert loss_2 == pytest.approx(loss_1, rel=1e-5)
    for w_full, w_acc, w_0 in zip(full, accumulated, before):
        assert np.abs(w_full - w_0).max() > 1e-3
        np.testing.assert_allclose(w_acc, w_full, atol=1e-4, rtol=0)


def test_bfloat16_weights_and_compute_with_a_float32_loss():
    trainer = _trainer(dtype="bfloat16")
    trainer.prepare_sampling()
    causal_lm = trainer.causal_lm
    assert {v.dtype for v in causal_lm.backbone.trainable_variables} == {"bfloat16"}
    logits = causal_lm({"token_ids": np.ones((1, 4), "int32"),
                        "padding_mask": np.ones((1, 4), "int32")})
    assert keras.backend.standardize_dtype(logits.dtype) == "bfloat16"
    info = trainer.update(*rollout(0, causal_lm.backbone.vocabulary_size))
    assert keras.backend.standardize_dtype(info.loss.dtype) == "float32"
    entropy = info.extra["response_entropy"]
    assert keras.backend.standardize_dtype(entropy.dtype) == "float32"
    assert np.isfinite(float(info.loss)) and np.all(np.isfinite(np.asarray(entropy)))


def test_learning_rate_warms_up_then_stays_or_follows_a_cosine_to_zero():
    def rates(kind, micro_steps=1):
        schedule = WarmupSchedule(1.0, total_updates=10, warmup_updates=2, kind=kind,
                                  micro_steps=micro_steps)
        return [float(schedule(step)) for step in range(0, 11 * micro_steps, micro_steps)]

    assert rates("constant") == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    cosine = rates("cosine")
    assert cosine[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert cosine[6] == pytest.approx(0.5)  # half-way through the 8 decay updates
    assert cosine[10] == pytest.approx(0.0, abs=1e-7)
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:]))
    # With accumulation Keras counts micro-batches; the schedule counts updates.
    assert rates("cosine", micro_steps=4) == pytest.approx(cosine)
