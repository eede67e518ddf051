"""The executed entropy's reachable range, the target check and the shortfall watch."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import era_keras
from pipelines.common.config import Problems
from pipelines.common.errors import ConfigError
from pipelines.sac import entropy
from pipelines.sac.config import SacConfig


@pytest.mark.parametrize("mu,log_std", [(0.0, 0.0), (0.8, -0.5), (2.5, -2.0), (-1.2, 0.0)])
def test_tanh_quadrature_matches_the_monte_carlo_estimate(mu, log_std):
    """Two independent computations of H[tanh(u)]: quadrature here, 200k-draw Monte Carlo in
    era_keras (standard error ~0.005 nats at these settings), agree to 0.02."""
    estimate = era_keras.tanh_gaussian_entropy(
        tf.constant([[mu]]), tf.constant([[math.exp(log_std)]]), num_samples=200_000, seed=3)
    assert entropy.tanh_entropy_per_dim(mu, log_std) == pytest.approx(float(estimate[0]), abs=0.02)


@pytest.mark.parametrize("loc,log_std", [(0.0, 0.0), (0.9, -1.0), (0.999, 0.0), (-0.3, -4.0)])
def test_truncated_closed_form_matches_tfp(loc, log_std):
    reference = tfp.distributions.TruncatedNormal(loc, math.exp(log_std), -1.0, 1.0).entropy()
    assert entropy.truncated_entropy_per_dim(loc, log_std) == pytest.approx(float(reference),
                                                                            abs=1e-4)


def test_no_policy_on_the_unit_interval_beats_the_uniform():
    """log 2 per dim is the ceiling of either squash's range."""
    for squash in ("tanh", "truncated"):
        _, high = entropy.executed_entropy_range(squash, 3, log_std_max=2.0)
        assert high < 3 * math.log(2.0)


def test_a_smaller_mean_bound_raises_the_guaranteed_entropy():
    highs = [entropy.executed_entropy_range("tanh", 6, mean_bound=m)[1] for m in (3.0, 1.0, 0.5)]
    assert highs[0] < highs[1] < highs[2]
    # Per dim about 2.8 - 2m once m is well past 1 (the saturated-tanh rule of thumb).
    assert highs[0] / 6 == pytest.approx(2.8 - 2 * 3.0, abs=0.1)


def test_an_unreachable_executed_target_is_refused_with_the_range():
    problems = Problems("SAC settings")
    config = SacConfig(squash="tanh", mean_bound=1.0)  # H0 / D = 0.25 > h(1, 1) = 0.09
    entropy.check_targets(problems, config, 6)
    with pytest.raises(ConfigError) as error:
        problems.raise_if_any()
    message = str(error.value)
    assert "executed-entropy target 1.500 nats" in message
    assert "tanh with mean bound 1.0 reaches [-39.486, 0.556] nats" in message
    assert "--executed-target-entropy-per-dim" in message and "--mean-bound" in message

    for fixed in (dict(squash="tanh", mean_bound=0.75),
                  dict(squash="tanh", mean_bound=1.0, executed_target_entropy_per_dim=0.05),
                  dict(squash="truncated")):
        problems = Problems("SAC settings")
        entropy.check_targets(problems, SacConfig(**fixed), 6)
        assert problems.messages == [], fixed


def test_executed_target_defaults_to_the_pre_squash_floor():
    assert entropy.executed_target(SacConfig(), 6) == pytest.approx(1.5)
    config = SacConfig(executed_target_entropy_per_dim=-0.5)
    assert entropy.executed_target(config, 6) == pytest.approx(-3.0)


def test_shortfall_warns_once_after_ten_percent_of_the_run():
    watch = entropy.ShortfallWatch(total_env_steps=10_000)
    assert watch.observe(1_000, -5.0, 1.5) is None  # starts counting here
    assert watch.observe(1_500, 1.0, 1.5) is None  # within 1 nat: the count restarts
    assert watch.observe(2_000, -5.0, 1.5) is None
    assert watch.observe(2_900, -5.0, 1.5) is None  # 900 steps < 10% of 10k
    with pytest.warns(RuntimeWarning, match="since env step 2000"):
        assert watch.observe(3_000, -5.0, 1.5)
    assert watch.observe(9_000, -5.0, 1.5) is None  # once per run
    assert np.isfinite(watch.span)
