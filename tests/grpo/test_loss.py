import numpy as np
import pytest
from keras import ops

import era_keras
from pipelines.grpo.loss import (
    LossSettings,
    group_advantages,
    grpo_loss,
    next_token_targets,
    vanilla_era,
)
from pipelines.grpo.policy_losses import VanillaParams
from pipelines.grpo.rewards import overlong_penalty


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_group_advantages_use_the_unbiased_group_std():
    rewards = [1, -1, -1, -1, 1, 1, 1, 1]
    adv = group_advantages(rewards, group_size=4)
    # Group 1: mean -0.5, centred (1.5, -0.5, -0.5, -0.5); unbiased variance
    # (2.25 + 3 * 0.25) / 3 = 1, so A = centred / (1 + 1e-6). (The biased std would
    # give 1.5 / 0.866 = 1.73.)
    np.testing.assert_allclose(adv[:4], [1.5, -0.5, -0.5, -0.5], rtol=1e-5)
    np.testing.assert_allclose(adv[4:], 0.0)  # all correct: no signal
    assert 0 < adv[0] < 2 and not float(adv[0]).is_integer()  # fractional advantages
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages([1, 1, 1], group_size=2)


def test_batch_scaling_divides_by_the_batch_std_and_none_only_centres():
    rewards = np.array([1, -1, -1, -1, 1, 1, 1, -1], "float32")
    centred = np.array([1.5, -0.5, -0.5, -0.5, 0.5, 0.5, 0.5, -1.5], "float32")
    # Eight values +-1 with mean 0: unbiased variance 8 / 7.
    np.testing.assert_allclose(group_advantages(rewards, 4, scale="batch"),
                               centred / np.sqrt(8 / 7), rtol=1e-5)
    np.testing.assert_allclose(group_advantages(rewards, 4, scale="none"), centred)


def test_next_token_targets_pairs_position_t_with_token_t_plus_1():
    """A model that puts all mass on the *next* token scores log-prob 0 once aligned."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 7, size=(2, 6)).astype("int32")
    response = np.array([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]], "float32")
    logits = np.full((2, 6, 7), -20.0, "float32")
    for b in range(2):
        for t in range(5):
            logits[b, t, tokens[b, t + 1]] = 20.0
    shifted_logits, targets, mask = next_token_targets(logits, tokens, response)
    np.testing.assert_array_equal(_np(targets), tokens[:, 1:])
    np.testing.assert_array_equal(_np(mask), response[:, 1:])
    log_probs = _np(era_keras.token_log_probs(shifted_logits, targets))
    assert np.all(log_probs[_np(mask) > 0] > -1e-6)
    unshifted = _np(era_keras.token_log_probs(logits, tokens))
    assert np.all(unshifted[response > 0] < -1.0)  # misaligned: the wrong token


def _batch(seed=0, batch=4, time=5, vocab=6):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, time, vocab)).astype("float32")
    tokens = rng.integers(0, vocab, size=(batch, time)).astype("int32")
    mask = np.ones((batch, time), "float32")
    return logits, tokens, mask


def test_token_mean_aggregation_over_unequal_lengths():
    logits, tokens, mask = _batch()
    mask[0, 2:] = 0  # 2 tokens in row 0, 5 in the others
    adv = np.array([0.7, -0.3, 1.2, -1.6], "float32")
    info = grpo_loss(logits, tokens, mask, adv, era=None)
    # On-policy (ratio 1): loss = -sum(A_t) / #tokens over the whole batch.
    expected = -(adv[:, None] * mask).sum() / mask.sum()
    np.testing.assert_allclose(_np(info.loss), expected, rtol=1e-5)


def test_era_scales_exactly_the_spec_tokens_with_fractional_advantages():
    vocab, time = 6, 5
    sharp = np.zeros((time, vocab), "float32")
    sharp[:, 0] = 12.0  # near one-hot: H_resp ~ 0 < omega_low
    flat = np.zeros((time, vocab), "float32")  # uniform: H = ln 6 = 1.79 > omega_high
    logits = np.stack([sharp, sharp, flat, flat, np.zeros_like(flat) + np.eye(vocab)[:time] * 1.0])
    tokens = np.zeros((5, time), "int32")
    mask = np.ones((5, time), "float32")
    mask[0, 3:] = 0
    # Fractional advantages: 0.4 > 0 must count (the authors' int cast would drop it).
    adv = np.array([0.4, -0.4, 0.4, -0.4, 0.0], "float32")
    era = era_keras.LogitERA(k=2.0, omega_low=0.45, omega_high=1.5)
    info = grpo_loss(logits, tokens, mask, adv, era=era)
    h = _np(info.extra["response_entropy"])
    assert h[0] < 0.45 and h[1] < 0.45 and h[2] > 1.5 and h[3] > 1.5
    tokens_total = mask.sum()
    # Scaled up: row 0 only (low entropy, A > 0): its 3 unmasked tokens.
    np.testing.assert_allclose(_np(info.extra["share_scaled_up"]), 3 / tokens_total)
    # Scaled down: row 2 only (high entropy, A > 0).
    np.testing.assert_allclose(_np(info.extra["share_scaled_down"]), time / tokens_total)

    # The loss uses log softmax(k z) for row 0, log softmax(z / k) for row 2, z elsewhere,
    # and advantages A / k, k A there: on-policy, d loss / d log pi'_t = -A'_t / #tokens.
    out = era((logits, tokens, adv, mask))
    log_p = _np(out["log_probs"])
    np.testing.assert_allclose(log_p[0], _log_softmax(2.0 * logits[0])[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_p[2], _log_softmax(logits[2] / 2.0)[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_p[1], _log_softmax(logits[1])[:, 0], rtol=1e-5, atol=1e-6)
    a = _np(out["advantages"])
    np.testing.assert_allclose(a[0], 0.2)
    np.testing.assert_allclose(a[2], 0.8)
    np.testing.assert_allclose(a[1], -0.4)
    expected = -(a * mask).sum() / tokens_total
    np.testing.assert_allclose(_np(info.loss), expected, rtol=1e-5)


def _clip(epsilon, dual_clip):
    return LossSettings(policy=VanillaParams(epsilon=epsilon, dual_clip=dual_clip))


def test_ppo_clipping_and_dual_clip():
    logits, tokens, mask = _batch(batch=2, time=3)
    current = _np(era_keras.token_log_probs(logits, tokens))
    old = current - np.log(3.0)  # ratio 3 everywhere
    adv = np.array([1.0, -1.0], "float32")
    info = grpo_loss(logits, tokens, mask, adv, _clip(0.2, dual_clip=None), old_log_probs=old)
    # A > 0: min(3A, 1.2A) -> -1.2 per token; A < 0: max(-3A, -1.2A) = 3.
    np.testing.assert_allclose(_np(info.loss), (-1.2 * 3 + 3.0 * 3) / 6, rtol=1e-5)
    assert _np(info.extra["clip_fraction"]) == pytest.approx(1.0)
    dual = grpo_loss(logits, tokens, mask, adv, _clip(0.2, dual_clip=2.0), old_log_probs=old)
    # Dual clip caps the negative-advantage loss at -c * A = 2.
    np.testing.assert_allclose(_np(dual.loss), (-1.2 * 3 + 2.0 * 3) / 6, rtol=1e-5)


def test_kl_to_reference_is_zero_for_the_same_policy_and_positive_otherwise():
    logits, tokens, mask = _batch()
    adv = np.zeros(4, "float32")
    same = _np(era_keras.token_log_probs(logits, tokens))
    info = grpo_loss(logits, tokens, mask, adv, LossSettings(kl_coef=0.1), reference_log_probs=same)
    assert _np(info.extra["kl"]) == pytest.approx(0.0, abs=1e-6)
    info = grpo_loss(logits, tokens, mask, adv, LossSettings(kl_coef=0.1),
                     reference_log_probs=same - 0.5)
    kl = float(_np(info.extra["kl"]))
    assert kl == pytest.approx(np.exp(-0.5) + 0.5 - 1.0, rel=1e-4)
    assert float(_np(info.loss)) == pytest.approx(0.1 * kl, rel=1e-4)


def test_vanilla_loss_does_not_scale_anything():
    logits, tokens, mask = _batch()
    info = grpo_loss(logits, tokens, mask, np.array([0.5, 1.0, -1.0, 0.2], "float32"))
    assert float(_np(info.extra["share_scaled_up"])) == 0.0
    assert float(_np(info.extra["share_scaled_down"])) == 0.0


def _two_rows():
    """Rows of 2 and 4 response tokens with advantages 1 and -0.25, on-policy.

    On-policy the ratio is 1, so each token's loss is -A: -1 (x2) and 0.25 (x4); token sum
    -2 + 1 = -1.
    """
    logits, tokens, _ = _batch(batch=2, time=4)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], "float32")
    return logits, tokens, mask, np.array([1.0, -0.25], "float32")


@pytest.mark.parametrize("loss_type, extra, expected", [
    ("grpo", {}, (-1.0 + 0.25) / 2),            # mean over rows of each row's token mean
    ("bnpo", {}, -1.0 / 6),                     # token sum / this batch's 6 tokens
    ("dapo", {}, -1.0 / 6),                     # the same with one micro-batch ...
    ("dapo", {"batch_tokens": 12}, -1.0 / 12),  # ... and the whole batch's count otherwise
    ("dr_grpo", {"max_response_tokens": 8}, -1.0 / (2 * 8)),  # sum / (rows x max tokens)
])
def test_loss_types_normalise_as_trl_defines_them(loss_type, extra, expected):
    logits, tokens, mask, adv = _two_rows()
    max_tokens = extra.pop("max_response_tokens", None)
    settings = LossSettings(loss_type=loss_type, max_response_tokens=max_tokens)
    info = grpo_loss(logits, tokens, mask, adv, settings, **extra)
    np.testing.assert_allclose(_np(info.loss), expected, rtol=1e-5)


GRPO = LossSettings(loss_type="grpo")


def test_grpo_loss_of_micro_batches_adds_up_to_the_batch_loss():
    logits, tokens, mask, adv = _two_rows()
    whole = _np(grpo_loss(logits, tokens, mask, adv, GRPO).loss)
    parts = sum(_np(grpo_loss(logits[i:i + 1], tokens[i:i + 1], mask[i:i + 1], adv[i:i + 1],
                              GRPO, batch_sequences=2).loss) for i in range(2))
    np.testing.assert_allclose(parts, whole, rtol=1e-5)


def test_dapo_micro_batches_averaged_as_keras_accumulates_give_the_batch_loss():
    """Rows of unequal length (2 and 4 tokens): each micro-batch divides by the whole
    batch's 6 tokens / 2 micro-batches, so the mean of the two losses is the batch's."""
    logits, tokens, mask, adv = _two_rows()
    whole = _np(grpo_loss(logits, tokens, mask, adv).loss)
    parts = [_np(grpo_loss(logits[i:i + 1], tokens[i:i + 1], mask[i:i + 1], adv[i:i + 1],
                           batch_tokens=6 / 2).loss) for i in range(2)]
    np.testing.assert_allclose(np.mean(parts), whole, rtol=1e-5)
    # Each micro-batch's own token mean (bnpo) would weigh the rows' means equally instead.
    bnpo = [_np(grpo_loss(logits[i:i + 1], tokens[i:i + 1], mask[i:i + 1], adv[i:i + 1],
                          LossSettings(loss_type="bnpo")).loss) for i in range(2)]
    assert abs(np.mean(bnpo) - whole) > 0.1


def test_vanilla_is_logit_era_with_k_1_sharing_top_k_renormalisation():
    """The vanilla arm uses the same top-k renormalised log-probs as ERA, and ERA whose
    thresholds never fire gives the vanilla loss and gradient exactly."""
    import keras

    logits, tokens, mask = _batch(seed=3)
    adv = np.array([0.5, 1.0, -1.0, 0.2], "float32")
    vanilla = vanilla_era(top_k=2)
    out = vanilla((logits, tokens, adv, mask))
    np.testing.assert_allclose(_np(out["log_probs"]),
                               _np(era_keras.token_log_probs(logits, tokens, top_k=2)), rtol=1e-6)
    assert not np.allclose(_np(out["log_probs"]), _np(era_keras.token_log_probs(logits, tokens)))
    idle_era = era_keras.LogitERA(k=2.0, omega_low=-1.0, omega_high=1e9, top_k=2)

    def loss_and_grad(era):
        variable = keras.Variable(logits)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = grpo_loss(variable, tokens, mask, adv, era=era).loss
            return _np(loss), _np(tape.gradient(loss, variable.value))
        return _np(grpo_loss(logits, tokens, mask, adv, era=era).loss), None

    (loss_a, grad_a), (loss_b, grad_b) = loss_and_grad(vanilla), loss_and_grad(idle_era)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    if grad_a is not None:
        np.testing.assert_allclose(grad_a, grad_b, rtol=1e-6, atol=1e-8)


def test_a_fixed_era_decision_keeps_the_rollout_policys_scales():
    """With several updates per rollout, ERA decides on the rollout policy's logits; the
    current logits' entropy must not change the scales or A' used for the update."""
    time, vocab = 4, 6
    sharp = np.zeros((1, time, vocab), "float32")
    sharp[..., 0] = 12.0  # rollout policy: H_resp ~ 0 < omega_low
    flat = np.zeros((1, time, vocab), "float32")  # current policy: H = ln 6 > omega_low
    tokens = np.zeros((1, time), "int32")
    mask = np.ones((1, time), "float32")
    adv = np.array([0.5], "float32")
    era = era_keras.LogitERA(k=2.0, omega_low=0.45, omega_high=10.0)
    decision = era((sharp, tokens, adv, mask))
    fixed = grpo_loss(flat, tokens, mask, adv, era=era, era_decision=decision)
    assert float(_np(fixed.extra["share_scaled_up"])) == 1.0
    np.testing.assert_allclose(_np(fixed.extra["response_entropy"]),
                               _np(decision["response_entropy"]))
    # On-policy, loss = -mean(A') = -A / k: the rollout policy's (low-entropy) branch.
    np.testing.assert_allclose(_np(fixed.loss), -0.25, rtol=1e-5)
    redecided = grpo_loss(flat, tokens, mask, adv, era=era)
    assert float(_np(redecided.extra["share_scaled_up"])) == 0.0
    np.testing.assert_allclose(_np(redecided.loss), -0.5, rtol=1e-5)


def test_overlong_penalty_falls_linearly_over_the_buffer():
    # max 16 tokens, buffer 4: no penalty up to 12 tokens, then -1/4 per token down to -1.
    lengths = [10, 12, 14, 16]
    np.testing.assert_allclose(overlong_penalty(lengths, 16, 4, 1.0), [0, 0, -0.5, -1.0])
    np.testing.assert_allclose(overlong_penalty(lengths, 16, 4, 0.5), [0, 0, -0.25, -0.5])
    np.testing.assert_allclose(overlong_penalty(lengths, 16, 0, 1.0), 0.0)
