"""One GRPO update step on a batch of rollouts, for the backend Keras runs on.

`make_train_step(model, optimizer, loss_fn)` returns `train_step(batch, old_log_probs,
reference_log_probs)`, which computes `loss_fn(model, batch, old_log_probs,
reference_log_probs)` (a `GRPOLossInfo`), takes its gradient with respect to the model's
trainable weights, applies one optimizer step and returns the loss info, with the global
norms of the gradient and of the updated weights added to its extras as `grad_norm` and
`weight_norm` (float32: a norm that is not finite stops the run).

- TensorFlow: `tf.GradientTape` inside one XLA-compiled `tf.function`.
- JAX: the model is called statelessly (`keras.StatelessScope` over the variable values),
  `jax.value_and_grad` differentiates it, `optimizer.stateless_apply` updates, and the
  new values are written back into the Keras variables after the jitted call.

Other backends are refused with the list of the two that work.

`enable_compilation_cache()` turns on XLA's persistent compilation cache on JAX, so a
run's first step (and first rollout) reuses what an earlier run with the same shapes
compiled instead of compiling again: `$ERA_KERAS_COMPILATION_CACHE`, or
`<user cache dir>/era-keras/jax` (`$XDG_CACHE_HOME`, else `~/.cache`); set
`ERA_KERAS_COMPILATION_CACHE=off` to opt out. TensorFlow's XLA clusters have no such
cache that Python can switch on after TensorFlow started (`TF_XLA_FLAGS` with
`--tf_xla_persistent_cache_directory=DIR` must be set before the process imports it).
"""

import os
import pathlib

import keras


def compilation_cache_dir():
    """Where JAX keeps compiled programs between runs; None when opted out."""
    setting = os.environ.get("ERA_KERAS_COMPILATION_CACHE", "")
    if setting.lower() in ("off", "0", "none", "false"):
        return None
    if setting:
        return pathlib.Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "era-keras" / "jax"


def enable_compilation_cache():
    """Switch JAX's persistent compilation cache on (see the module docstring); a no-op
    on other backends, when opted out, or when the user configured one already."""
    if keras.backend.backend() != "jax":
        return
    import jax

    directory = compilation_cache_dir()
    if directory is None or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Cache every program, not just those that took over a second to compile: a tiny
    # model's programs compile in well under one and add up to several seconds.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def make_train_step(model, optimizer, loss_fn):
    enable_compilation_cache()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_train_step(model, optimizer, loss_fn)
    if backend == "jax":
        return _jax_train_step(model, optimizer, loss_fn)
    raise ValueError(
        f"The GRPO loop runs on the 'tensorflow' or 'jax' Keras backend, not {backend!r}; "
        "set KERAS_BACKEND."
    )


def _tensorflow_train_step(model, optimizer, loss_fn):
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def train_step(batch, old_log_probs, reference_log_probs):
        with tf.GradientTape() as tape:
            info = loss_fn(model, batch, old_log_probs, reference_log_probs)
        grads = tape.gradient(info.loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return _with_norms(info, _tf_norm(tf, grads), _tf_norm(tf, model.trainable_variables))

    return train_step


def _jax_train_step(model, optimizer, loss_fn):
    import jax

    def stateless_loss(trainable, non_trainable, batch, old, ref):
        mapping = list(zip(model.trainable_variables, trainable)) + list(
            zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping):
            info = loss_fn(model, batch, old, ref)
        return info.loss, info

    @jax.jit
    def stateless_step(trainable, non_trainable, optimizer_vars, batch, old, ref):
        (_, info), grads = jax.value_and_grad(stateless_loss, has_aux=True)(
            trainable, non_trainable, batch, old, ref)
        trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return trainable, optimizer_vars, _with_norms(info, _jax_norm(grads), _jax_norm(trainable))

    def train_step(batch, old_log_probs, reference_log_probs):
        trainable, optimizer_vars, info = stateless_step(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in optimizer.variables], batch,
            old_log_probs, reference_log_probs)
        for variable, value in zip(model.trainable_variables, trainable):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, optimizer_vars):
            variable.assign(value)
        return info

    return train_step


def _with_norms(info, grad_norm, weight_norm):
    return info._replace(extra={**info.extra, "grad_norm": grad_norm, "weight_norm": weight_norm})


def _tf_norm(tf, tensors):
    return tf.linalg.global_norm([tf.cast(t, "float32") for t in tensors])


def _jax_norm(arrays):
    import jax.numpy as jnp

    return jnp.sqrt(sum(jnp.sum(jnp.square(a.astype("float32"))) for a in arrays))
