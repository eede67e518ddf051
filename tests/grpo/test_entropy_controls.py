"""The registered policy losses and entropy controls, each against a small case computed
by hand (numpy here, from the formulas in TRL's and verl's code), loss and gradient.

Two responses of three tokens: row 0 has advantage +1, row 1 -1. Token losses are summed
and divided by the 6 tokens ("dapo"), so d loss / d log pi_t = (d token loss) / 6.
Tolerances: float32 arithmetic on O(1) numbers, rtol 1e-5.
"""

import json
import math

import keras
import numpy as np
import pytest
from keras import ops

from pipelines.common.config import layered_values, make_config
from pipelines.common.errors import ConfigError, UserError
from pipelines.grpo import registry
from pipelines.grpo.config import GRPOConfig
from pipelines.grpo.entropy_controls import EntropyBonusParams, EntropyCoefficient, TopEntropyParams
from pipelines.grpo.loss import LossSettings, grpo_loss
from pipelines.grpo.policy_losses import (
    ClipCovParams,
    KLCovParams,
    PolicyInputs,
    VanillaParams,
    clip_cov,
    kl_cov,
    vanilla,
)

A = np.array([[1.0] * 3, [-1.0] * 3], "float32")
MASK = np.ones((2, 3), "float32")
LOG_PROBS = np.array([[-0.1, -3.0, -1.0], [-2.0, -0.2, -1.0]], "float32")


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _value_and_grad(function, x):
    """function(x) and its gradient with respect to x (TensorFlow or JAX backend)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        variable = keras.Variable(x)
        with tf.GradientTape() as tape:
            value = function(variable)
        return _np(value), _np(tape.gradient(value, variable.value))
    if backend == "jax":
        import jax

        value, grad = jax.value_and_grad(lambda v: function(v))(x)
        return _np(value), _np(grad)
    pytest.skip(f"gradients checked on tensorflow and jax, not {backend}")


def _policy_loss(method, params, old, noise=None):
    def loss(log_probs):
        terms = method(params, PolicyInputs(log_probs, old, A, MASK, noise))
        return ops.sum(terms.per_token * MASK) / 6.0
    return loss


def test_clip_higher_clips_the_ratio_to_1_minus_eps_and_1_plus_eps_high():
    ratio = np.array([[1.5, 1.1, 0.5], [1.5, 0.7, 1.25]], "float32")
    old = LOG_PROBS - np.log(ratio)
    params = VanillaParams(epsilon=0.2, epsilon_high=0.28, dual_clip=None)
    value, grad = _value_and_grad(_policy_loss(vanilla, params, old), LOG_PROBS)
    # A = +1: -min(r, clip(r)) = -1.28, -1.1, -0.5; A = -1: max(r, clip(r)) = 1.5, 0.8, 1.25.
    expected = np.array([[-1.28, -1.1, -0.5], [1.5, 0.8, 1.25]])
    np.testing.assert_allclose(value, expected.sum() / 6, rtol=1e-5)
    # The gradient flows only where the unclipped term is the loss: -A * r / 6 there.
    flows = np.array([[0, 1, 1], [1, 0, 1]])
    np.testing.assert_allclose(grad, flows * -A * ratio / 6, rtol=1e-5, atol=1e-7)
    terms = vanilla(params, PolicyInputs(LOG_PROBS, old, A, MASK))
    np.testing.assert_array_equal(_np(terms.clipped), [[1, 0, 1], [1, 1, 0]])


def test_sequence_level_ratio_is_gspo_each_responses_geometric_mean():
    ratio = np.array([[1.5, 1.5, 1.25], [1.5, 1.1, 0.5]], "float32")
    old = LOG_PROBS - np.log(ratio)
    params = VanillaParams(epsilon=0.2, epsilon_high=0.28, dual_clip=None,
                           importance_sampling_level="sequence")
    s = np.exp(np.log(ratio).mean(axis=1))  # 1.412 (row 0), 0.938 (row 1)
    assert s[0] > 1.28 and 0.8 < s[1] < 1.28
    value, grad = _value_and_grad(_policy_loss(vanilla, params, old), LOG_PROBS)
    # Row 0 (A = +1) clipped at 1.28 for all three tokens; row 1 (A = -1) unclipped: s.
    np.testing.assert_allclose(value, (3 * -1.28 + 3 * s[1]) / 6, rtol=1e-5)
    # TRL's form: d/d lp_t of (sum over the row's 3 tokens of -A s) / 6 = -A s / 6 per token
    # (each of the 3 token losses has gradient -A s / 3 / 6); row 0 is clipped: none.
    np.testing.assert_allclose(grad[0], 0.0, atol=1e-7)
    np.testing.assert_allclose(grad[1], np.full(3, s[1] / 6), rtol=1e-5)


def test_clip_cov_gives_no_gradient_to_the_drawn_high_covariance_tokens():
    # On-policy (ratio 1, nothing clipped). Means: A 0, log pi -7.3 / 6; covariance
    # A * (lp + 1.2167) = [1.117, -1.783, 0.217] and [0.783, -1.017, -0.217]: only
    # token (0, 0) lies in (lb, ub) = (1, 5).
    cov = A * (LOG_PROBS - LOG_PROBS.mean())
    assert ((cov > 1) & (cov < 5)).sum() == 1 and 1 < cov[0, 0] < 5
    noise = np.random.default_rng(0).random((2, 3)).astype("float32")
    params = ClipCovParams(epsilon=0.2, dual_clip=None, clip_cov_ratio=0.5)
    value, grad = _value_and_grad(_policy_loss(clip_cov, params, LOG_PROBS, noise), LOG_PROBS)
    # floor(0.5 * 6) = 3 tokens may be drawn; one is eligible, so it alone is cut.
    per_token = -A.copy()
    per_token[0, 0] = 0.0
    np.testing.assert_allclose(value, per_token.sum() / 6, rtol=1e-5)
    expected = -A / 6
    expected[0, 0] = 0.0
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_clip_cov_draws_its_share_of_eligible_tokens_by_the_noise():
    noise = np.array([[0.1, 0.9, 0.3], [0.8, 0.2, 0.5]], "float32")
    params = ClipCovParams(clip_cov_ratio=0.34, clip_cov_lb=-10.0, clip_cov_ub=10.0)
    terms = clip_cov(params, PolicyInputs(LOG_PROBS, LOG_PROBS, A, MASK, noise))
    # Every token eligible; floor(0.34 * 6) = 2 drawn: the two largest noise values.
    np.testing.assert_array_equal(_np(terms.cov_selected), [[0, 1, 0], [1, 0, 0]])


def test_kl_cov_selects_exactly_its_share_when_covariances_tie():
    # All advantages 0: every covariance is 0; still floor(0.34 * 6) = 2 tokens, as topk.
    zero = np.zeros_like(A)
    terms = kl_cov(KLCovParams(kl_cov_ratio=0.34),
                   PolicyInputs(LOG_PROBS, LOG_PROBS - 0.1, zero, MASK))
    assert _np(terms.cov_selected).sum() == 2


def test_kl_cov_penalises_the_largest_covariance_tokens_by_abs_log_ratio():
    ratio = np.array([[1.2, 0.9, 1.1], [0.8, 1.3, 1.05]], "float32")
    old = LOG_PROBS - np.log(ratio)
    params = KLCovParams(kl_cov_ratio=0.34, ppo_kl_coef=0.5)
    cov = (A - A.mean()) * (LOG_PROBS - LOG_PROBS.mean())
    top = np.zeros((2, 3))
    top.flat[np.argsort(-cov, axis=None)[:2]] = 1  # floor(0.34 * 6) = 2 tokens
    assert top.sum() == 2
    value, grad = _value_and_grad(_policy_loss(kl_cov, params, old), LOG_PROBS)
    log_ratio = np.log(ratio)
    expected = -A * ratio + top * 0.5 * np.abs(log_ratio)  # no clip at all
    np.testing.assert_allclose(value, expected.sum() / 6, rtol=1e-5)
    np.testing.assert_allclose(grad, (-A * ratio + top * 0.5 * np.sign(log_ratio)) / 6,
                               rtol=1e-5, atol=1e-7)


def _logits_of_entropies():
    """Two rows of three tokens over a vocabulary of 4, of distinct entropies."""
    rng = np.random.default_rng(1)
    scales = np.array([[0.1, 3.0, 1.0], [0.5, 6.0, 2.0]], "float32")
    return (rng.normal(size=(2, 3, 4)) * scales[..., None]).astype("float32")


def _entropy(logits):
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return p, -(p * np.log(p)).sum(-1)


def test_top_entropy_quantile_keeps_tokens_at_or_above_torch_quantile():
    logits = _logits_of_entropies()
    tokens = np.zeros((2, 3), "int32")
    mask = MASK.copy()
    mask[1, 2] = 0  # a padding token: never kept, not in the quantile
    _, h = _entropy(logits)
    threshold = np.quantile(h[mask > 0], 1 - 0.4)  # numpy's default is torch's linear
    kept = (h >= threshold) * mask
    assert 0 < kept.sum() < mask.sum()
    settings = LossSettings(entropy_controls={
        "top_entropy_quantile": TopEntropyParams(0.4)})
    info = grpo_loss(logits, tokens, mask, A[:, 0], settings)
    # On-policy: -A per kept token, summed over the batch's 5 tokens (dapo: all of them).
    np.testing.assert_allclose(_np(info.loss), (-A * kept).sum() / 5, rtol=1e-5)
    np.testing.assert_allclose(_np(info.extra["top_entropy_share"]), kept.sum() / 5, rtol=1e-6)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_entropy_bonus_subtracts_coef_times_mean_entropy_and_its_gradient(loss_type):
    logits = _logits_of_entropies()
    tokens = np.array([[0, 1, 2], [3, 0, 1]], "int32")
    coef = 0.3
    settings = LossSettings(loss_type=loss_type,
                            entropy_controls={"entropy_bonus": EntropyBonusParams(coef)})
    p, h = _entropy(logits)
    value, grad = _value_and_grad(
        lambda z: grpo_loss(z, tokens, MASK, A[:, 0], settings).loss, logits)
    # Equal lengths: both aggregations are the mean over 6 tokens; on-policy the policy
    # term's value is -mean(A) = 0 and its gradient (-A / 6)(onehot - p).
    np.testing.assert_allclose(value, -coef * h.mean(), rtol=1e-5)
    onehot = np.eye(4)[tokens]
    d_entropy = -p * (np.log(p) + h[..., None])  # dH / dz
    expected = (-A[..., None] / 6) * (onehot - p) - coef / 6 * d_entropy
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_adaptive_entropy_coefficient_follows_trl_controller():
    params = EntropyBonusParams(entropy_coef=0.1, use_adaptive_entropy=True, entropy_target=0.5,
                                entropy_coef_min=0.02, entropy_coef_max=0.12,
                                entropy_coef_delta=0.05)
    coef = EntropyCoefficient(params)
    assert coef.applied() == 0.0  # nothing measured yet: no bonus (TRL starts at inf)
    coef.update(0.4)  # at or below the target: up by delta, capped at the max
    assert coef.coef == pytest.approx(0.12) and coef.applied() == pytest.approx(0.12)
    coef.update(0.9)  # above: down by delta; the bonus is off while above the target
    assert coef.coef == pytest.approx(0.07) and coef.applied() == 0.0
    coef.update(0.9)
    assert coef.coef == pytest.approx(0.02)  # floored at the min
    state = json.loads(json.dumps(coef.state()))
    restored = EntropyCoefficient(params)
    restored.load_state(state)
    assert (restored.coef, restored.last_entropy) == (coef.coef, 0.9)
    fixed = EntropyCoefficient(EntropyBonusParams(entropy_coef=0.1))
    fixed.update(0.0)
    assert fixed.applied() == 0.1 and math.isinf(fixed.last_entropy)


def test_registry_lists_every_method_with_its_flags_and_refuses_duplicates():
    assert registry.names("policy_loss") == ("vanilla", "clip_cov", "kl_cov")
    assert set(registry.names("entropy_control")) == {"entropy_bonus", "top_entropy_quantile"}
    assert registry.names("advantage_estimator") == ("group", "batch", "none")
    described = registry.describe(GRPOConfig(policy_loss="clip_cov", clip_cov_ratio=0.01))
    assert described["policy_loss"]["clip_cov"]["clip_cov_ratio"] == 0.01
    assert "--clip-cov-ub" in registry.methods_table()
    with pytest.raises(ValueError, match="registered already"):
        registry.register("policy_loss", "vanilla")(lambda params, inputs: None)
    with pytest.raises(ValueError, match="policy_loss must be one of"):
        registry.get("policy_loss", "ppo")


def test_settings_from_config_carry_each_methods_flags():
    config = GRPOConfig(policy_loss="kl_cov", kl_cov_ratio=0.002, ppo_kl_coef=1.0,
                        entropy_coef=0.01, top_entropy_quantile=0.2)
    settings = LossSettings.from_config(config)
    assert settings.policy == KLCovParams(0.002, 1.0)
    assert settings.entropy_controls["top_entropy_quantile"] == TopEntropyParams(0.2)
    assert settings.entropy_controls["entropy_bonus"].entropy_coef == 0.01
    with pytest.raises(ValueError, match="takes KLCovParams"):
        LossSettings(policy_loss="kl_cov", policy=VanillaParams())


def test_config_reports_every_range_and_combination_problem_at_once():
    with pytest.raises(ConfigError) as error:
        GRPOConfig(policy_loss="kl_cov", epsilon_high=0.28, importance_sampling_level="sequence",
                   clip_cov_ratio=0.0, clip_cov_lb=5.0, clip_cov_ub=1.0,
                   top_entropy_quantile=1.5, use_adaptive_entropy=True, entropy_coef=2.0)
    message = str(error.value)
    assert "\n" not in message
    for part in ["GSPO) works with policy_loss=vanilla only", "clip_cov_ratio must be in (0, 1]",
                 "clip_cov_lb (5.0) must be below", "epsilon_high does nothing with "
                 "policy_loss=kl_cov", "top_entropy_quantile must be in [0, 1]",
                 "entropy_coef (2.0) must lie in"]:
        assert part in message, part
    with pytest.raises(ConfigError, match="policy_loss='ppo' is not one of"):
        GRPOConfig(policy_loss="ppo")


def test_old_clip_epsilon_keys_still_work_and_both_names_are_refused(tmp_path):
    settings = tmp_path / "old.json"
    settings.write_text(json.dumps({"clip_epsilon": 0.2, "clip_epsilon_high": 0.28}))
    config = make_config(GRPOConfig, layered_values(GRPOConfig, config_json=settings))
    assert (config.epsilon, config.epsilon_high) == (0.2, 0.28)
    # A flag on top of the file's old name wins, as flags win over files.
    config = make_config(GRPOConfig, layered_values(GRPOConfig, config_json=settings,
                                                    flags={"epsilon": 0.3}))
    assert config.epsilon == 0.3
    settings.write_text(json.dumps({"clip_epsilon": 0.2, "epsilon": 0.3}))
    with pytest.raises(UserError, match="clip_epsilon was renamed epsilon; give only epsilon"):
        layered_values(GRPOConfig, config_json=settings)


def test_print_config_lists_the_registered_methods_with_their_settings(capsys):
    from pipelines.common.errors import run_cli
    from pipelines.grpo.__main__ import main

    assert run_cli(main, ["--policy-loss", "clip_cov", "--clip-cov-ratio", "0.01",
                          "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["policy_loss"] == "clip_cov"  # stdout: the JSON alone
    assert "* clip_cov(epsilon=1.0, epsilon_high=None, dual_clip=10.0, clip_cov_ratio=0.01" in err
    for name in registry.names("entropy_control") + registry.names("advantage_estimator"):
        assert f" {name}(" in err


TINY = dict(model="tiny:qwen", task="arithmetic", tiny_layers=1, tiny_hidden_dim=32,
            warm_start_steps=0, prompts_per_step=2, group_size=4, num_eval_prompts=2,
            eval_samples=2, max_new_tokens=8, eval_every=10, checkpoint_every=1)


def test_adaptive_entropy_coefficient_survives_checkpoint_and_resume(tmp_path, tracking_uri):
    """A target no entropy reaches: the coefficient rises by delta after every update. The
    resumed step must apply the checkpointed 0.01; a fresh controller would apply 0 (it
    has no measurement yet)."""
    from pipelines.grpo.checkpoint import restore_checkpoint
    from pipelines.grpo.train import run

    settings = dict(TINY, use_adaptive_entropy=True, entropy_coef=0.0, entropy_target=1e3,
                    entropy_coef_delta=0.01, run_dir=str(tmp_path / "run"))
    first = run(GRPOConfig(steps=1, **settings), tracking_uri=tracking_uri, export=False,
                progress=False)
    assert first["history"][-1]["entropy/entropy_coef"] == 0.0
    state = restore_checkpoint(tmp_path / "run").state["entropy_control"]
    assert state["entropy_coef"] == pytest.approx(0.01) and state["last_entropy"] < 1e3
    resumed = run(GRPOConfig(steps=2, **settings), tracking_uri=tracking_uri, export=False,
                  progress=False)
    assert resumed["history"][-1]["step"] == 2
    assert resumed["history"][-1]["entropy/entropy_coef"] == pytest.approx(0.01)
    state = restore_checkpoint(tmp_path / "run").state["entropy_control"]
    assert state["entropy_coef"] == pytest.approx(0.02)
