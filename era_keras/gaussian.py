"""Gaussian ERA: a diagonal Gaussian policy whose entropy is at least a floor.

Kang et al. (2025, arXiv 2510.08549). From a mean head mu and a raw scale head s (both D):

    K            = H0' - D * log(sqrt(2*pi*e)) - D * log_std_max          (K <= 0)
    log sigma'_i = clip(log_std_max + K * softmax(s)_i, log_std_min, log_std_max)

The softmax weights sum to one, so sum_i log sigma'_i = H0' - D log sqrt(2 pi e) before
clipping and N(mu, sigma'^2) has entropy exactly H0'; clipping at log_std_min only raises
it. H0' = H0 + delta, where delta >= 0 makes up for the entropy lost when actions are
squashed (tanh) or truncated: the bound holds for the Gaussian before squashing.
"""

import math

import keras
from keras import ops

from era_keras.arguments import flag, real

HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


def gaussian_entropy(std, axis=-1):
    """Entropy (nats) of a diagonal Gaussian with standard deviations `std`."""
    std = ops.convert_to_tensor(std)
    return ops.sum(ops.log(std), axis=axis) + std.shape[axis] * HALF_LOG_2PI_E


def entropy_range(action_dim, log_std_min=-8.0, log_std_max=0.0):
    """(lowest, highest) entropy a D-dim Gaussian ERA head can produce, in nats."""
    if log_std_min >= log_std_max:
        raise ValueError(
            f"log_std_min ({log_std_min}) must be below log_std_max ({log_std_max})."
        )
    return (
        action_dim * (log_std_min + HALF_LOG_2PI_E),
        action_dim * (log_std_max + HALF_LOG_2PI_E),
    )


def check_target_entropy(target_entropy, action_dim, log_std_min=-8.0, log_std_max=0.0):
    """Raise a ValueError naming the range if `target_entropy` cannot be a floor here."""
    low, high = entropy_range(action_dim, log_std_min, log_std_max)
    if not low <= float(target_entropy) <= high:
        raise ValueError(
            f"target_entropy={float(target_entropy):.4f} nats is outside the range "
            f"[{low:.4f}, {high:.4f}] that a {action_dim}-dim Gaussian with log std in "
            f"[{log_std_min}, {log_std_max}] can have (per dimension: "
            f"[{low / action_dim:.4f}, {high / action_dim:.4f}])."
        )


def delta_range(action_dim, target_entropy, log_std_max=0.0):
    """(lowest, highest) useful delta for a floor H0: [0, D (log sqrt(2 pi e) + log_std_max) - H0].

    At the upper end every sigma_i is already sigma_max, so a larger delta changes nothing
    (`gaussian_era_log_std` caps it there); a tuned delta kept inside this range never
    winds up past the point where it acts.
    """
    return 0.0, max(0.0, action_dim * (HALF_LOG_2PI_E + log_std_max) - float(target_entropy))


def gaussian_era_log_std(raw_scale, target_entropy, log_std_min=-8.0, log_std_max=0.0):
    """log sigma' of Gaussian ERA for a raw scale head; `target_entropy` may be a tensor.

    A target above the reachable maximum is capped there (sigma' = sigma_max), so a
    trainable delta can never push the layer outside its range.
    """
    raw_scale = ops.convert_to_tensor(raw_scale)
    input_dtype = keras.backend.standardize_dtype(raw_scale.dtype)
    compute_dtype = "float64" if input_dtype == "float64" else "float32"
    s = ops.cast(raw_scale, compute_dtype)
    action_dim = s.shape[-1]
    budget = ops.cast(target_entropy, compute_dtype) - action_dim * (
        HALF_LOG_2PI_E + log_std_max
    )
    budget = -ops.relu(-budget)  # = min(budget, 0), keeping the dtype on every backend
    # With one dimension the softmax weight is 1 (and Keras warns about it).
    weights = ops.ones_like(s) if action_dim == 1 else ops.softmax(s, axis=-1)
    log_std = log_std_max + budget * weights
    low, high = (ops.cast(bound, compute_dtype) for bound in (log_std_min, log_std_max))
    return ops.cast(ops.clip(log_std, low, high), input_dtype)


def gaussian_era(mu, raw_scale, target_entropy, log_std_min=-8.0, log_std_max=0.0):
    """(mu, sigma') with entropy(N(mu, sigma'^2)) >= target_entropy, the floor in nats."""
    log_std = gaussian_era_log_std(raw_scale, target_entropy, log_std_min, log_std_max)
    return mu, ops.exp(log_std)


def tanh_gaussian_entropy(mu, std, num_samples=16, seed=None):
    """Monte Carlo entropy (nats) of tanh(u), u ~ N(mu, std^2): the executed policy.

    -log pi(a) = -log N(u; mu, std) + sum_i log(1 - tanh(u_i)^2), with the stable form
    log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)). Returns one value per state.
    """
    mu = ops.convert_to_tensor(mu)
    std = ops.cast(std, mu.dtype)
    noise = keras.random.normal((num_samples,) + tuple(mu.shape), dtype=mu.dtype, seed=seed)
    u = mu + std * noise
    log_normal = -ops.sum(
        ops.log(std) + 0.5 * math.log(2.0 * math.pi) + 0.5 * ops.square(noise), axis=-1
    )
    log_det = ops.sum(2.0 * (math.log(2.0) - u - ops.softplus(-2.0 * u)), axis=-1)
    return ops.mean(log_det - log_normal, axis=0)


def delta_loss(delta, policy_entropy, target_entropy):
    """L(delta) = E[delta * (H[pi] - H0)], H taken as a constant.

    Minimising it grows delta while the policy's (squashed) entropy is below the target
    and shrinks it above, the way SAC tunes its temperature.
    """
    gap = ops.stop_gradient(ops.convert_to_tensor(policy_entropy)) - target_entropy
    return ops.mean(delta * ops.cast(gap, "float32"))


@keras.saving.register_keras_serializable(package="era_keras")
class GaussianERA(keras.layers.Layer):
    """Gaussian ERA: maps (mu, raw_scale) to (mu, sigma) with an entropy floor.

    Formula (Kang et al., 2025, arXiv 2510.08549), with D action dimensions:

        K            = target_entropy + delta - D * (log sqrt(2 pi e) + log_std_max)
        log sigma_i  = clip(log_std_max + K * softmax(raw_scale)_i, log_std_min, log_std_max)

    Guarantee: the diagonal Gaussian N(mu, sigma^2) has entropy >= target_entropy + delta
    (exactly that, unless clipping at log_std_min raises it). Squashing the sample with
    tanh or truncating it lowers the entropy of the executed action; `delta` makes up for
    that, either as a constant or trained with `delta_loss` like SAC's temperature.

    Args:
        target_entropy: total floor H0 in nats. Give this or `target_entropy_per_dim`;
            with neither, the authors' 0.25 nats per dimension is used.
        target_entropy_per_dim: the floor per action dimension (H0 = D * value).
        log_std_min, log_std_max: the clip range of log sigma (authors: -8, 0).
        delta: initial compensation delta >= 0 (nats).
        trainable_delta: if True, delta is a trainable non-negative weight; step it with
            an optimizer on `layer.delta_loss(policy_entropy)` (see `delta_loss`).

    Call arguments:
        inputs: a pair `[mu, raw_scale]`, each of shape (..., D) with the same D: the
            mean head and the raw scale head of the policy.

    Returns:
        A pair `(mu, sigma)`: `mu` unchanged and the standard deviation `sigma`, same
        shape and dtype as `raw_scale` (computed in float32, or float64 for float64).

    Example:
    >>> obs = keras.Input((17,))
    >>> h = keras.layers.Dense(256, activation="elu")(obs)
    >>> mu, raw_scale = keras.layers.Dense(6)(h), keras.layers.Dense(6)(h)
    >>> mu, sigma = era_keras.GaussianERA(target_entropy_per_dim=0.25)([mu, raw_scale])
    """

    def __init__(
        self,
        target_entropy=None,
        target_entropy_per_dim=None,
        log_std_min=-8.0,
        log_std_max=0.0,
        delta=0.0,
        trainable_delta=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if target_entropy is not None and target_entropy_per_dim is not None:
            raise ValueError("Give target_entropy or target_entropy_per_dim, not both.")
        if target_entropy is None and target_entropy_per_dim is None:
            target_entropy_per_dim = 0.25
        log_std_min = real("log_std_min", log_std_min)
        log_std_max = real("log_std_max", log_std_max)
        low, high = entropy_range(1, log_std_min, log_std_max)
        if target_entropy is not None:
            # Its range depends on the action dimension: checked in `build`.
            target_entropy = real("target_entropy", target_entropy, "a finite number of nats")
        else:
            target_entropy_per_dim = real("target_entropy_per_dim", target_entropy_per_dim,
                                          f"a number of nats in [{low:.4f}, {high:.4f}]")
            if not low <= target_entropy_per_dim <= high:
                raise ValueError(
                    f"target_entropy_per_dim={target_entropy_per_dim} is outside the range "
                    f"[{low:.4f}, {high:.4f}] nats per dimension that a Gaussian with log std "
                    f"in [{log_std_min}, {log_std_max}] can have."
                )
        delta = real("delta", delta, "a finite number >= 0")
        if delta < 0:
            raise ValueError(f"delta must be >= 0 (got {delta}).")
        self.target_entropy_arg = target_entropy
        self.target_entropy_per_dim = target_entropy_per_dim
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        self.initial_delta = delta
        self.trainable_delta = flag("trainable_delta", trainable_delta)
        self.action_dim = None

    @property
    def target_entropy(self):
        """The total floor H0 in nats (known once the layer is built)."""
        if self.target_entropy_arg is not None:
            return float(self.target_entropy_arg)
        if self.action_dim is None:
            return None
        return self.target_entropy_per_dim * self.action_dim

    def build(self, input_shape):
        mu_shape, scale_shape = input_shape
        if mu_shape[-1] != scale_shape[-1]:
            raise ValueError(
                f"mu and raw_scale need the same last dimension, got {mu_shape} and "
                f"{scale_shape}."
            )
        self.action_dim = int(scale_shape[-1])
        check_target_entropy(
            self.target_entropy, self.action_dim, self.log_std_min, self.log_std_max
        )
        self.delta = self.add_weight(
            name="delta",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_delta),
            trainable=self.trainable_delta,
            constraint=keras.constraints.NonNeg(),
        )
        self.built = True

    def call(self, inputs):
        mu, raw_scale = inputs
        floor = self.target_entropy + ops.relu(self.delta)
        return gaussian_era(mu, raw_scale, floor, self.log_std_min, self.log_std_max)

    def entropy(self, std):
        """Entropy (nats) of the Gaussian before squashing, one value per state."""
        return gaussian_entropy(std)

    def delta_loss(self, policy_entropy):
        """The loss whose gradient steps delta (see `era_keras.delta_loss`)."""
        return delta_loss(self.delta, policy_entropy, self.target_entropy)

    def compute_output_shape(self, input_shape):
        mu_shape, scale_shape = input_shape
        return (tuple(mu_shape), tuple(scale_shape))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "target_entropy": self.target_entropy_arg,
                "target_entropy_per_dim": self.target_entropy_per_dim,
                "log_std_min": self.log_std_min,
                "log_std_max": self.log_std_max,
                "delta": self.initial_delta,
                "trainable_delta": self.trainable_delta,
            }
        )
        return config
