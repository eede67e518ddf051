import numpy as np
import pytest
import tensorflow as tf
from tf_agents.specs import tensor_spec

import era_keras
from pipelines.sac import entropy, networks

OBS_SPEC = tensor_spec.TensorSpec((5,), tf.float32)
ACTION_SPEC = tensor_spec.BoundedTensorSpec((3,), tf.float32, -1.0, 1.0)


def era_actor(**kwargs):
    actor = networks.era_actor_network(OBS_SPEC, ACTION_SPEC, (16,), **kwargs)
    actor.create_variables()
    return actor


def distribution(actor, observations):
    return actor(observations, step_type=(), network_state=(), training=False)[0]


@pytest.mark.parametrize("squash", ["tanh", "truncated"])
@pytest.mark.parametrize("delta", [0.0, 1.7])
def test_pre_squash_entropy_is_the_floor(squash, delta):
    actor = era_actor(squash=squash, delta=delta, target_entropy_per_dim=0.25)
    # Large, varied inputs push the raw scale head far from uniform.
    observations = tf.random.stateless_normal((64, 5), seed=(1, 2)) * 30.0
    dist = distribution(actor, observations)
    entropy = networks.pre_squash_entropy(dist).numpy()
    assert np.all(entropy >= 0.75 + delta - 1e-4)
    np.testing.assert_allclose(entropy, 0.75 + delta, atol=1e-4)  # no clipping here


def test_floor_holds_when_log_std_min_clips():
    actor = era_actor(target_entropy_per_dim=-3.5, log_std_min=-5.0)
    dist = distribution(actor, tf.random.stateless_normal((64, 5), seed=(3, 4)) * 100.0)
    entropy = networks.pre_squash_entropy(dist).numpy()
    assert np.all(entropy >= -10.5 - 1e-4) and entropy.max() > -10.5 + 0.1  # clipped above


def test_tanh_executed_entropy_matches_tf_agents_log_prob():
    actor = era_actor(squash="tanh")
    observations = tf.random.stateless_normal((8, 5), seed=(5, 6))
    dist = distribution(actor, observations)
    tf.random.set_seed(0)
    ours = networks.executed_entropy(dist, num_samples=4000).numpy()
    samples = dist.sample(4000)
    reference = -tf.reduce_mean(dist.log_prob(samples), axis=0).numpy()
    np.testing.assert_allclose(ours, reference, atol=0.1)
    # Squashing only removes entropy.
    assert np.all(ours < networks.pre_squash_entropy(dist).numpy())


def test_truncated_policy_stays_in_bounds_and_entropy_is_analytic():
    actor = era_actor(squash="truncated", delta=2.0)
    dist = distribution(actor, tf.random.stateless_normal((8, 5), seed=(7, 8)))
    samples = dist.sample(5000)
    assert float(tf.reduce_max(tf.abs(samples))) <= 1.0
    monte_carlo = -tf.reduce_mean(dist.log_prob(samples), axis=0).numpy()
    np.testing.assert_allclose(networks.executed_entropy(dist).numpy(), monte_carlo, atol=0.1)
    mode = dist.mode().numpy()
    assert np.all(np.abs(mode) < 1.0)


def test_delta_is_a_non_trainable_variable_of_the_actor():
    actor = era_actor()
    head = networks.era_head(actor)
    assert head is not None and any(v is head.delta for v in actor.variables)
    assert all(v is not head.delta for v in actor.trainable_variables)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        networks.ERAProjectionNetwork(tensor_spec.BoundedTensorSpec((2,), tf.float32, -2.0, 2.0))
    with pytest.raises(ValueError, match="outside the range"):
        networks.ERAProjectionNetwork(ACTION_SPEC, target_entropy_per_dim=2.0)
    with pytest.raises(ValueError, match="squash"):
        networks.ERAProjectionNetwork(ACTION_SPEC, squash="clip")


def test_critic_outputs_one_q_value_per_state_action():
    critic = networks.CriticNetwork((OBS_SPEC, ACTION_SPEC), (8, 8))
    q, _ = critic((tf.ones((4, 5)), tf.zeros((4, 3))))
    assert q.shape == (4,)
    assert any(isinstance(layer, tf.keras.layers.LayerNormalization)
               for layer in critic._hidden_layers)


@pytest.mark.parametrize("squash,mean_bound", [("truncated", 0.0), ("tanh", 0.0), ("tanh", 0.5)])
def test_era_keras_floor_function_is_what_the_head_uses(squash, mean_bound):
    """The head's scale is era_keras.gaussian_era of its own projection, at H0 + delta,
    and its mean is the projection's mu (bounded by m * tanh(mu / m) when asked)."""
    actor = era_actor(squash=squash, mean_bound=mean_bound, delta=0.4)
    head = networks.era_head(actor)
    observations = tf.random.stateless_normal((6, 5), seed=(9, 9)) * 5.0
    dist = distribution(actor, observations)
    features, _ = actor._encoder(observations, step_type=(), network_state=())
    mu, raw_scale = tf.split(head._projection_layer(features), 2, -1)
    if mean_bound:
        mu = mean_bound * tf.tanh(mu / mean_bound)
    expected_mu, expected_std = era_keras.gaussian_era(mu, raw_scale, 0.75 + 0.4)
    if squash == "tanh":
        gaussian = dist.input_distribution
        loc, std = gaussian.mean(), gaussian.stddev()
    else:
        # The truncated normal's loc is tanh(mu). Compare it there: inverting it with atanh
        # amplifies float32 rounding near +-1 (mu = 6.8 came back 0.02 off).
        gaussian = dist.distribution
        loc, std = gaussian.loc, gaussian.scale
        expected_mu = tf.tanh(expected_mu)
    np.testing.assert_allclose(std.numpy(), expected_std.numpy(), rtol=1e-5)
    np.testing.assert_allclose(loc.numpy(), expected_mu.numpy(), rtol=1e-5, atol=1e-6)
    if mean_bound:
        assert float(tf.reduce_max(tf.abs(loc))) <= mean_bound


def test_mean_bound_keeps_the_executed_entropy_above_its_worst_case():
    """Inputs large enough to saturate an unbounded mean: the bounded head's executed
    entropy stays at or above D * h(m, sigma) (the worst case the config check uses),
    while the unbounded one falls far below it."""
    observations = tf.random.stateless_normal((64, 5), seed=(3, 3)) * 200.0
    bounded = distribution(era_actor(squash="tanh", mean_bound=0.75, delta=2.0), observations)
    unbounded = distribution(era_actor(squash="tanh", delta=2.0), observations)
    tf.random.set_seed(0)
    ours = networks.executed_entropy(bounded, 4096).numpy()
    log_std = np.log(bounded.input_distribution.stddev().numpy())
    worst = np.array([sum(entropy.tanh_entropy_per_dim(0.75, s) for s in row) for row in log_std])
    # 4096 draws per state: the estimate's standard error is ~0.025 nats here (0.07 with
    # 512 draws, measured), so the lowest of 64 states lies within 0.1 of its true value.
    assert np.all(ours >= worst - 0.1)
    assert networks.executed_entropy(unbounded, 512).numpy().mean() < worst.mean() - 5.0
