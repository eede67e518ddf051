"""Softmax ERA: logits whose softmax has entropy at least `target_entropy`.

Kang et al. (2025, arXiv 2510.08549). With p = softmax(z), A = log(tau) / tau and a
constant C,

    y_i  = A - (D*A - C) / (D - 1) * (1 - p_i)       (sum_i y_i = C, 0 < y_i <= A)
    z'_i = W_{-1}(-y_i)                               (so z'_i * exp(z'_i) = -y_i)

and H(softmax(z')) = C / S + log S with S = sum_i exp(z'_i) <= C. Two choices of C:

- `floor="paper"`: C = exp(H0 - 1), the authors' constant. Then H >= 1 + log C = H0, but
  the bound is loose: the smallest entropy the map produces is well above H0 (0.97 nats
  for D = 10, H0 = 0.6), which caps the top probability and leaves models underconfident.
- `floor="tight"` (default): C chosen so that the smallest entropy the map can produce is
  exactly H0. That minimum is reached at a one-hot input (S is a sum of a convex function
  of y_i, so it is largest at a vertex of the simplex, and H falls as S grows while
  S <= C), so C is found by a 1-D root solve on the one-hot entropy when the layer is
  built. `target_entropy` then means what it says.

Both keep the argmax: y_i grows with p_i and W_{-1} is increasing on its branch.
"""

import collections
import functools
import math

import keras
import numpy as np
from keras import ops

from era_keras.arguments import flag, real
from era_keras.lambertw import (
    approx_lambertw_m1_from_log,
    lambertw_m1_from_log,
    lambertw_m1_numpy,
)

FLOORS = ("tight", "paper")
INVERSES = ("exact", "approx")

EntropyFloor = collections.namedtuple(
    "EntropyFloor",
    [
        "num_classes",
        "target_entropy",
        "floor",
        "tau",
        "constant",
        "excess",
        "min_entropy",
        "max_probability",
        "admissible_range",
    ],
)
EntropyFloor.__doc__ = """What a softmax ERA setting does, before any training.

`min_entropy` is the smallest entropy the map can produce (at a one-hot input),
`max_probability` the largest probability any class can get, and `admissible_range` the
open interval of targets this (num_classes, floor, tau) accepts.
"""


def _score_scale(tau):
    if not tau > 1.0:
        raise ValueError(f"tau must be > 1 (got {tau}); the authors use tau = 4.")
    scale = math.log(tau) / tau
    if scale > (1.0 / math.e) * (1.0 - 1e-6):
        raise ValueError(
            f"tau = {tau} gives log(tau)/tau = 1/e, where W_-1 has no slope; "
            "pick tau away from e (the authors use tau = 4)."
        )
    return scale


def admissible_range(num_classes, floor="tight", tau=4.0):
    """The open interval of entropy targets (nats) that softmax ERA accepts.

    `floor="tight"`: (0, log D); `floor="paper"`: (1 + log A, 1 + log(D * A)), the
    targets for which A < C < D * A. Above the upper end the map would flip the order of
    the classes (paper) or can only return the uniform distribution (tight).
    """
    _check_num_classes(num_classes)
    _check_floor(floor)
    a = _score_scale(tau)
    if floor == "tight":
        return (0.0, math.log(num_classes))
    return (1.0 + math.log(a), 1.0 + math.log(num_classes * a))


def _check_num_classes(num_classes):
    if num_classes is None or int(num_classes) < 2:
        raise ValueError(
            f"Softmax ERA needs at least 2 classes on the last axis (got {num_classes}): "
            "with one class every distribution has entropy 0."
        )


def _check_floor(floor):
    if floor not in FLOORS:
        raise ValueError(f"floor must be one of {FLOORS}, got {floor!r}.")


def _one_hot_entropy(num_classes, excess, a):
    """Entropy and top probability of the ERA output at a one-hot input (float64).

    `excess` is C - A, passed on its own so that C close to A keeps its precision.
    """
    constant = a + excess
    rest = excess / (num_classes - 1)
    z_top = lambertw_m1_numpy(math.log(a))
    q_top = math.exp(z_top)
    q_rest = rest / -lambertw_m1_numpy(math.log(rest))
    total = q_top + (num_classes - 1) * q_rest
    return constant / total + math.log(total), q_top / total


def _tight_excess(num_classes, target_entropy, a):
    # H at a one-hot input grows monotonically with C, from 0 (C -> A) to log D
    # (C = D*A); bisect on log(C - A) so that tiny targets keep their precision.
    lo, hi = -700.0, math.log((num_classes - 1) * a)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        entropy, _ = _one_hot_entropy(num_classes, math.exp(mid), a)
        if entropy < target_entropy:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def entropy_floor(num_classes, target_entropy=0.6, floor="tight", tau=4.0):
    """Report what softmax ERA does for this setting; raise if the target is inadmissible.

    Example:
    >>> era_keras.entropy_floor(10, 0.6, floor="paper").min_entropy  # ~0.97, not 0.6
    >>> era_keras.entropy_floor(10, 0.6).max_probability             # the top-p cap
    """
    _check_num_classes(num_classes)
    _check_floor(floor)
    return _entropy_floor(int(num_classes), float(target_entropy), floor, float(tau))


# The tight floor's root solve takes milliseconds; `softmax_era` called eagerly in a
# training loop asks for the same setting every step, so settings are solved once.
@functools.lru_cache(maxsize=256)
def _entropy_floor(num_classes, target_entropy, floor, tau):
    low, high = admissible_range(num_classes, floor, tau)
    if not low < target_entropy < high:
        raise ValueError(
            f"target_entropy={target_entropy} is outside the admissible range "
            f"({low:.4f}, {high:.4f}) nats for softmax ERA with {num_classes} classes, "
            f"floor={floor!r}, tau={tau}."
        )
    a = _score_scale(tau)
    if floor == "paper":
        excess = math.exp(target_entropy - 1.0) - a
    else:
        excess = _tight_excess(num_classes, target_entropy, a)
    min_entropy, max_probability = _one_hot_entropy(num_classes, excess, a)
    return EntropyFloor(
        num_classes=num_classes,
        target_entropy=target_entropy,
        floor=floor,
        tau=tau,
        constant=a + excess,
        excess=excess,
        min_entropy=min_entropy,
        max_probability=max_probability,
        admissible_range=(low, high),
    )


def softmax_era(logits, target_entropy=0.6, tau=4.0, inverse="exact", floor="tight"):
    """ERA logits: softmax(softmax_era(z)) has entropy >= target_entropy (last axis).

    Computed in float32 (or float64 if given float64) and returned in the input dtype.
    `inverse="exact"` solves W_{-1} to float precision with an exact gradient;
    `inverse="approx"` is the authors' closed form, which does not guarantee the floor.
    """
    if inverse not in INVERSES:
        raise ValueError(f"inverse must be one of {INVERSES}, got {inverse!r}.")
    num_classes = logits.shape[-1]
    setting = entropy_floor(num_classes, target_entropy, floor, tau)
    return _era_logits(logits, setting, inverse)


def _era_logits(logits, setting, inverse):
    input_dtype = keras.backend.standardize_dtype(logits.dtype)
    compute_dtype = "float64" if input_dtype == "float64" else "float32"
    x = _finite_limit(ops.cast(logits, compute_dtype))
    d = setting.num_classes
    a = math.log(setting.tau) / setting.tau
    slope = ((d - 1) * a - setting.excess) / (d - 1)
    offset = setting.excess / (d - 1)
    # y_i = offset + slope * p_i: both terms are positive, so no cancellation for small p_i.
    log_y = ops.log(offset + slope * ops.softmax(x, axis=-1))
    if inverse == "exact":
        z = lambertw_m1_from_log(log_y)
    else:
        z = approx_lambertw_m1_from_log(log_y)
    return ops.cast(z, input_dtype)


def _finite_limit(x):
    """Infinite logits replaced by the largest finite value of their sign.

    softmax of [inf, 0, ...] is NaN, while its limit (a logit growing without bound) is
    the one-hot distribution; with +inf as the largest finite float, softmax gives that
    limit exactly (several +inf share the mass equally, as equal large logits do), and -inf
    keeps probability 0. A float16 logit that overflowed to inf thus gets the floor too.
    NaN stays NaN.
    """
    big = ops.full_like(x, float(np.finfo(keras.backend.standardize_dtype(x.dtype)).max))
    # `where`, not `clip`: Keras' torch backend computes min/max of float64 in float32.
    x = ops.where(x > big, big, x)
    return ops.where(x < -big, -big, x)


@keras.saving.register_keras_serializable(package="era_keras")
class SoftmaxERA(keras.layers.Layer):
    """Softmax ERA: turns logits into logits whose softmax has entropy >= a floor.

    Formula (Kang et al., 2025, arXiv 2510.08549), with p = softmax(z), A = log(tau)/tau:

        y_i  = A - (D*A - C) / (D - 1) * (1 - p_i)
        z'_i = W_{-1}(-y_i)

    Guarantee: H(softmax(z')) >= target_entropy for every input, and argmax(z') =
    argmax(z). Put it on the last layer and train with the usual cross-entropy on z'.

    Args:
        target_entropy: the floor in nats, inside `era_keras.admissible_range(D, floor)`.
        tau: the authors' score scale (4); A = log(tau)/tau.
        inverse: "exact" (W_{-1} to float precision, exact gradient) or "approx" (the
            authors' closed form; does not guarantee the floor).
        floor: "tight" (default: the smallest entropy the map can produce equals
            `target_entropy`, so the target means what it says) or "paper" (the
            authors' C = exp(target - 1), whose real floor is higher than the target;
            see `era_keras.entropy_floor` for how much).
        training_only: if True, the layer is the identity outside training, so served
            probabilities are the plain softmax of the logits. The argmax is the same
            either way. Saved in the config, so a saved model says which it serves.

    Call arguments:
        inputs: logits of shape (..., D), D >= 2 classes on the last axis, any float
            dtype (computed in float32, or float64 for float64 inputs). An infinite
            logit counts as the largest finite value of its sign: +inf gives the limit
            of a logit growing without bound (one-hot, or equal shares among several
            +inf), so the output is finite and the floor holds; NaN stays NaN.
        training: Python bool; matters only with `training_only=True`, where the layer
            applies the floor in training and passes the logits through otherwise.

    Returns:
        Logits z' of the same shape and dtype as `inputs`; use them wherever the plain
        logits went (`from_logits=True` losses, `softmax` for probabilities).

    Example:
    >>> inputs = keras.Input((784,))
    >>> logits = keras.layers.Dense(10)(inputs)
    >>> outputs = era_keras.SoftmaxERA(target_entropy=0.6)(logits)
    >>> model = keras.Model(inputs, outputs)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """

    def __init__(
        self,
        target_entropy=0.6,
        tau=4.0,
        inverse="exact",
        floor="tight",
        training_only=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if inverse not in INVERSES:
            raise ValueError(f"inverse must be one of {INVERSES}, got {inverse!r}.")
        _check_floor(floor)
        tau = real("tau", tau, "a finite number > 1")
        target_entropy = real("target_entropy", target_entropy, "a finite number of nats")
        # The admissible range's lower end does not depend on the number of classes, so a
        # target below it fails here; the upper end is checked in `build`.
        scale = _score_scale(tau)  # tau > 1 and away from e, for either floor
        low = 0.0 if floor == "tight" else 1.0 + math.log(scale)
        if not target_entropy > low:
            raise ValueError(
                f"target_entropy={target_entropy} is at or below {low:.4f} nats, the lower "
                f"end of the admissible range for floor={floor!r}, tau={tau} (the upper end "
                "depends on the number of classes: see era_keras.admissible_range)."
            )
        self.target_entropy = target_entropy
        self.tau = tau
        self.inverse = inverse
        self.floor = floor
        self.training_only = flag("training_only", training_only)
        self.setting = None
        self.supports_masking = True

    def build(self, input_shape):
        self.setting = entropy_floor(
            input_shape[-1], self.target_entropy, self.floor, self.tau
        )
        self.built = True

    def call(self, inputs, training=None):
        if self.training_only and not training:
            return inputs
        return _era_logits(inputs, self.setting, self.inverse)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "target_entropy": self.target_entropy,
                "tau": self.tau,
                "inverse": self.inverse,
                "floor": self.floor,
                "training_only": self.training_only,
            }
        )
        return config
