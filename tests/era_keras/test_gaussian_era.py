"""Gaussian ERA: entropy exactly at the floor (or above, when clipped), errors, delta.

In float32 the entropy sum_i log sigma_i + D log sqrt(2 pi e) is met to round-off of a sum
of D terms of size <= |log_std_min| = 8: we allow 1e-5 * D nats.
"""

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

import era_keras
from era_keras.gaussian import HALF_LOG_2PI_E
from tests.era_keras.backend_utils import BACKEND, to_numpy, value_and_grad


def entropy64(std):
    return np.log(np.asarray(std, np.float64)).sum(-1) + std.shape[-1] * HALF_LOG_2PI_E


@settings(max_examples=60, deadline=None)
@given(
    action_dim=st.integers(1, 64),
    per_dim=st.floats(-6.5, 1.4),
    scale=st.sampled_from([1e-3, 1.0, 10.0, 1e4]),
    seed=st.integers(0, 2**31 - 1),
)
def test_entropy_is_at_least_the_floor_and_exact_when_unclipped(
    action_dim, per_dim, scale, seed
):
    target = per_dim * action_dim
    rng = np.random.default_rng(seed)
    raw_scale = (rng.standard_normal((32, action_dim)) * scale).astype(np.float32)
    mu = rng.standard_normal((32, action_dim)).astype(np.float32)
    mu_out, std = era_keras.gaussian_era(mu, raw_scale, target)
    std = to_numpy(std)
    np.testing.assert_array_equal(to_numpy(mu_out), mu)
    assert np.all((std > 0) & (std <= 1.0))
    entropy = entropy64(std)
    tol = 1e-5 * action_dim
    assert entropy.min() >= target - tol
    log_std = np.log(std.astype(np.float64))
    unclipped = np.all(log_std > -8.0 + 1e-4, axis=-1)
    np.testing.assert_allclose(entropy[unclipped], target, atol=tol)


def test_entropy_function_matches_the_closed_form():
    std = np.array([[0.5, 1.0, 2.0]], np.float32)
    expected = np.log([0.5, 1.0, 2.0]).sum() + 1.5 * math.log(2 * math.pi * math.e)
    assert to_numpy(era_keras.gaussian_entropy(std))[0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_keep_the_floor_up_to_output_rounding(dtype):
    rng = np.random.default_rng(0)
    raw_scale = ops.convert_to_tensor(rng.standard_normal((64, 17)) * 10, dtype=dtype)
    _, std = era_keras.gaussian_era(raw_scale, raw_scale, 0.25 * 17)
    assert keras.backend.standardize_dtype(std.dtype) == dtype
    # Computed in float32, then each log sigma_i is rounded once: |d log sigma| <= eps * 8.
    eps = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
    entropy = entropy64(to_numpy(ops.cast(std, "float32")))
    assert entropy.min() >= 0.25 * 17 - 17 * (8.0 * eps + 1e-5)


def test_unreachable_total_target_raises_at_build_with_the_range():
    layer = era_keras.GaussianERA(target_entropy=30.0)  # its range depends on D
    x = ops.zeros((1, 6))
    with pytest.raises(ValueError, match=r"outside the range \[-39\.4864, 8\.5136\]"):
        layer([x, x])


@pytest.mark.parametrize("per_dim", [1.5, -7.0])
def test_unreachable_per_dim_target_raises_in_the_constructor_with_the_range(per_dim):
    with pytest.raises(ValueError, match=r"outside the range \[-6\.5811, 1\.4189\] nats per"):
        era_keras.GaussianERA(target_entropy_per_dim=per_dim)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"target_entropy_per_dim": "0.25"}, TypeError, "target_entropy_per_dim must be a number"),
        ({"target_entropy": "1.5"}, TypeError, "target_entropy must be a finite number"),
        ({"target_entropy": float("nan")}, ValueError, "target_entropy must be a finite"),
        ({"target_entropy_per_dim": True}, TypeError, "target_entropy_per_dim must be"),
        ({"target_entropy": 1.0, "target_entropy_per_dim": 0.1}, ValueError, "not both"),
        ({"delta": -1.0}, ValueError, "delta must be >= 0"),
        ({"delta": "0"}, TypeError, "delta must be a finite number >= 0"),
        ({"log_std_min": 0.0, "log_std_max": -1.0}, ValueError, "must be below"),
        ({"log_std_min": float("-inf")}, ValueError, "log_std_min must be a finite number"),
        ({"trainable_delta": "yes"}, TypeError, "trainable_delta must be True or False"),
    ],
)
def test_bad_arguments_raise_in_the_constructor(kwargs, error, message):
    with pytest.raises(error, match=message):
        era_keras.GaussianERA(**kwargs)


def test_mismatched_heads_raise_at_build():
    with pytest.raises(ValueError, match="same last dimension"):
        era_keras.GaussianERA()([ops.zeros((1, 3)), ops.zeros((1, 4))])


def test_layer_defaults_to_the_authors_quarter_nat_per_dimension():
    layer = era_keras.GaussianERA()
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    _, std = layer([x, x])
    assert layer.target_entropy == pytest.approx(1.5)
    np.testing.assert_allclose(entropy64(to_numpy(std)), 1.5, atol=1e-5)


def test_constant_delta_raises_the_entropy_by_delta():
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    _, std = era_keras.GaussianERA(target_entropy=-3.0, delta=0.75)([x, x])
    np.testing.assert_allclose(entropy64(to_numpy(std)), -2.25, atol=1e-5)


def test_delta_too_large_is_capped_at_the_widest_gaussian():
    x = np.zeros((2, 3), np.float32)
    _, std = era_keras.GaussianERA(target_entropy_per_dim=1.0, delta=50.0)([x, x])
    np.testing.assert_allclose(to_numpy(std), 1.0)


def test_gradient_reaches_the_raw_scale_and_is_finite():
    """Unclipped, log sigma_0 = K softmax(s)_0, so d log sigma_0 / d s_j = K p_0 (1[j=0] - p_j)
    with K = H0 - D log sqrt(2 pi e) (log_std_max = 0); float32 gradients match it to 1e-4
    relative. At raw scales of 1e3 the softmax saturates and the gradient must stay finite.
    """

    def log_std_0(s):
        return ops.log(era_keras.gaussian_era(s, s, -3.0)[1])[:, 0]

    raw = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    log_std, grad = value_and_grad(log_std_0, raw)
    assert np.all(log_std > -8.0)  # nothing clipped, so the formula's gradient applies
    p = np.exp(raw - raw.max(-1, keepdims=True)).astype(np.float64)
    p /= p.sum(-1, keepdims=True)
    k = -3.0 - 6 * HALF_LOG_2PI_E
    expected = k * p[:, :1] * ((np.arange(6) == 0) - p)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)

    _, grad = value_and_grad(log_std_0, raw * 1e3)
    assert np.all(np.isfinite(grad))


def test_trainable_delta_grows_below_target_and_shrinks_above():
    layer = era_keras.GaussianERA(target_entropy=-2.0, delta=0.5, trainable_delta=True)
    x = np.zeros((4, 3), np.float32)
    layer([x, x])
    assert [w.name for w in layer.trainable_weights] == ["delta"]
    optimizer = keras.optimizers.SGD(learning_rate=0.1)

    def step(policy_entropy):
        def loss_fn():
            return layer.delta_loss(ops.convert_to_tensor(policy_entropy))

        value_and_grads = _gradients(loss_fn, layer.trainable_weights)
        optimizer.apply(value_and_grads, layer.trainable_weights)
        return float(to_numpy(layer.delta))

    assert step(np.full(4, -3.0, np.float32)) == pytest.approx(0.6, abs=1e-6)
    assert step(np.full(4, -1.0, np.float32)) == pytest.approx(0.5, abs=1e-6)
    # Far above the target for long: the NonNeg constraint keeps delta at zero.
    for _ in range(20):
        delta = step(np.full(4, 5.0, np.float32))
    assert delta == 0.0


def _gradients(loss_fn, variables):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, [v.value for v in variables])
    if BACKEND == "jax":
        import jax

        values = [v.value for v in variables]

        def pure(vals):
            for var, val in zip(variables, vals):
                var.assign(val)
            return loss_fn()

        grads = jax.grad(lambda vals: _stateless(variables, vals, loss_fn))(values)
        return grads
    if BACKEND == "torch":
        loss = loss_fn()
        for v in variables:
            v.value.grad = None
        loss.backward()
        return [v.value.grad for v in variables]
    raise NotImplementedError(BACKEND)


def _stateless(variables, values, loss_fn):
    with keras.StatelessScope(state_mapping=list(zip(variables, values))):
        return loss_fn()


def test_tanh_gaussian_entropy_matches_numerical_integration():
    """D = 1: H[tanh(u)] = H[u] + E[log(1 - tanh(u)^2)], integrated on a fine grid."""
    mu, std = 0.7, 0.4
    u = np.linspace(mu - 12 * std, mu + 12 * std, 200001)
    density = np.exp(-0.5 * ((u - mu) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    expected = math.log(std) + HALF_LOG_2PI_E + np.trapezoid(
        density * np.log(1 - np.tanh(u) ** 2), u
    )
    estimate = to_numpy(
        era_keras.tanh_gaussian_entropy(
            np.full((1, 1), mu, np.float32), np.full((1, 1), std, np.float32),
            num_samples=200000, seed=0,
        )
    )[0]
    assert estimate == pytest.approx(expected, abs=0.01)


def test_tanh_entropy_collapses_when_means_saturate_even_with_the_floor():
    """The pre-squash floor holds while the executed entropy collapses (docs/layers.md)."""
    raw = np.zeros((8, 6), np.float32)
    mu_saturated = np.full((8, 6), 6.0, np.float32)
    _, std = era_keras.gaussian_era(mu_saturated, raw, 1.5)
    assert entropy64(to_numpy(std)).min() == pytest.approx(1.5, abs=1e-5)
    squashed = to_numpy(era_keras.tanh_gaussian_entropy(mu_saturated, std, 2000, seed=1))
    assert squashed.max() < -20.0


def test_save_and_load_keeps_outputs_and_delta(tmp_path):
    obs = keras.Input((5,))
    hidden = keras.layers.Dense(16, activation="elu")(obs)
    mu, raw = keras.layers.Dense(3)(hidden), keras.layers.Dense(3)(hidden)
    outputs = era_keras.GaussianERA(target_entropy=0.5, delta=0.3, trainable_delta=True)(
        [mu, raw]
    )
    model = keras.Model(obs, outputs)
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    model.save(tmp_path / "policy.keras")
    restored = keras.saving.load_model(tmp_path / "policy.keras")
    for a, b in zip(model(x), restored(x)):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert float(to_numpy(restored.layers[-1].delta)) == pytest.approx(0.3)


def test_float64_stays_float64_and_exact():
    from tests.era_keras.backend_utils import supports_float64

    if not supports_float64():
        pytest.skip("float64 needs JAX x64 mode")
    raw = ops.convert_to_tensor(np.random.default_rng(0).standard_normal((8, 6)), "float64")
    _, std = era_keras.gaussian_era(raw, raw, -1.0)
    std = to_numpy(std)
    assert std.dtype == np.float64
    np.testing.assert_allclose(entropy64(std), -1.0, atol=1e-12)
