"""Backend-specific pieces the layer tests need: gradients and compiled execution."""

import keras
import numpy as np

BACKEND = keras.backend.backend()


def value_and_grad(fn, x):
    """(fn(x), d sum(fn(x)) / dx) as NumPy arrays, on the active Keras backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            total = tf.reduce_sum(y)
        return y.numpy(), tape.gradient(total, x).numpy()
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        y, pullback = jax.vjp(fn, jnp.asarray(x))
        return np.asarray(y), np.asarray(pullback(jnp.ones_like(y))[0])
    if BACKEND == "torch":
        import torch

        x = torch.tensor(np.asarray(x), requires_grad=True)
        y = fn(x)
        y.sum().backward()
        return y.detach().cpu().numpy(), x.grad.cpu().numpy()
    raise NotImplementedError(BACKEND)


def supports_float64():
    """JAX runs float64 only with x64 enabled; TF and torch always do."""
    if BACKEND == "jax":
        import jax

        return bool(jax.config.jax_enable_x64)
    return True


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))
