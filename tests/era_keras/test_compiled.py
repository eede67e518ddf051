"""Every ERA function runs compiled (XLA on TensorFlow, jax.jit on JAX) with the eager
result, and models using GaussianERA and LogitERA survive .keras save/load."""

import keras
import numpy as np
import pytest

import era_keras
from tests.era_keras.backend_utils import BACKEND, to_numpy

pytestmark = pytest.mark.skipif(BACKEND == "torch", reason="compiled means XLA or jax.jit")


def compiled(fn):
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def assert_same(eager, jitted):
    for a, b in zip(keras.tree.flatten(eager), keras.tree.flatten(jitted)):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=2e-6, atol=2e-6)


RNG = np.random.default_rng(0)


def test_softmax_era_compiled():
    logits = (RNG.standard_normal((16, 100)) * 30).astype("float32")
    def fn(z):
        return era_keras.softmax_era(z, 0.6)

    assert_same(fn(logits), compiled(fn)(logits))


def test_gaussian_era_compiled_with_a_tensor_target():
    raw = RNG.standard_normal((16, 6)).astype("float32")
    target = np.float32(-1.0)
    def fn(s, t):
        return era_keras.gaussian_era(s, s, t)

    assert_same(fn(raw, target), compiled(fn)(raw, target))


def test_logit_era_compiled():
    logits = RNG.standard_normal((4, 7, 50)).astype("float32")
    tokens = RNG.integers(0, 50, (4, 7)).astype("int32")
    advantages = RNG.standard_normal(4).astype("float32")
    mask = (RNG.uniform(size=(4, 7)) > 0.2).astype("float32")
    layer = era_keras.LogitERA(omega_low=2.0, top_k=20)
    def fn(*args):
        return layer(args)

    inputs = (logits, tokens, advantages, mask)
    assert_same(fn(*inputs), compiled(fn)(*inputs))


def test_logit_era_model_saves_and_loads(tmp_path):
    logits = keras.Input((7, 50))
    tokens = keras.Input((7,), dtype="int32")
    advantages = keras.Input(())
    mask = keras.Input((7,))
    outputs = era_keras.LogitERA(k=3.0, omega_low=2.0)((logits, tokens, advantages, mask))
    model = keras.Model([logits, tokens, advantages, mask], outputs)
    inputs = [
        RNG.standard_normal((4, 7, 50)).astype("float32"),
        RNG.integers(0, 50, (4, 7)).astype("int32"),
        RNG.standard_normal(4).astype("float32"),
        np.ones((4, 7), "float32"),
    ]
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert_same(model(inputs), restored(inputs))


def test_gaussian_policy_trains_compiled():
    obs = keras.Input((5,))
    hidden = keras.layers.Dense(16, activation="elu")(obs)
    mu, std = era_keras.GaussianERA(target_entropy=-1.0)(
        [keras.layers.Dense(3)(hidden), keras.layers.Dense(3)(hidden)]
    )
    model = keras.Model(obs, keras.layers.Concatenate()([mu, std]))
    model.compile("adam", "mse", jit_compile=True)
    x = RNG.standard_normal((64, 5)).astype("float32")
    model.fit(x, np.zeros((64, 6), "float32"), epochs=2, verbose=0)
    std_out = model.predict(x, verbose=0)[:, 3:]
    # Pushed towards sigma = 0 by the loss, the entropy still sits exactly on the floor.
    entropy = np.log(std_out.astype(np.float64)).sum(-1) + 3 * era_keras.gaussian.HALF_LOG_2PI_E
    np.testing.assert_allclose(entropy, -1.0, atol=1e-4)
