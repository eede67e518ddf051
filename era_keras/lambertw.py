"""The lower branch of the Lambert W function, W_{-1}, written with `keras.ops`.

Softmax ERA maps every class score y in (0, 1/e) to the logit z = W_{-1}(-y), the
solution of z * exp(z) = -y with z <= -1. We solve it in log space,

    g(z) = z + log(-z) - log(y) = 0,

because that form stays finite for y far below float32's smallest normal number and is
almost linear in z, so Newton's method converges in a few steps from the authors' closed
form approximation. The gradient is not taken through the iterations: the implicit
function theorem gives it exactly, dz/dlog(y) = z / (z + 1).
"""

import keras
import numpy as np
from keras import ops


def approx_lambertw_m1_from_log(log_y):
    """The authors' closed-form approximation of W_{-1}(-y), from log(y).

    With u = -1 - log(y): W_{-1}(-y) ~ -1 - sqrt(2u) - 0.75u. Off by up to ~0.35 (and
    exact only at y = 1/e). Differentiable as written.
    """
    u = ops.relu(-1.0 - log_y)
    return -1.0 - ops.sqrt(2.0 * u) - 0.75 * u


def lambertw_m1_from_log(log_y, iterations=None):
    """W_{-1}(-y) to float precision, from log(y), for log(y) < -1.

    Newton on g(z) = z + log(-z) - log(y) from the closed form converges quadratically:
    for every y in (0, 0.35] the relative error is 1.6e-4 after one step, 4.5e-10 after
    two and float64 round-off after three. So two steps for float32 and below, three for
    float64 (the tests check both against scipy). The returned tensor carries the exact
    gradient dz/dlog(y) = z / (z + 1).
    """
    if iterations is None:
        iterations = 3 if keras.backend.standardize_dtype(log_y.dtype) == "float64" else 2
    fixed_log_y = ops.stop_gradient(log_y)
    z = _below_branch_point(approx_lambertw_m1_from_log(fixed_log_y))
    for _ in range(iterations):
        step = (z + ops.log(-z) - fixed_log_y) * z / (z + 1.0)
        z = _below_branch_point(z - step)
    z = ops.stop_gradient(z)
    slope = ops.stop_gradient(z / (z + 1.0))
    return z + (log_y - fixed_log_y) * slope


def _below_branch_point(z):
    # Keeps z on the branch (z < -1). Written with `where`, because Keras' torch backend
    # computes `minimum` of float64 tensors in float32.
    ceiling = ops.full_like(z, -1.0 - 1e-6)
    return ops.where(z < ceiling, z, ceiling)


def lambertw_m1_numpy(log_y, iterations=8):
    """The same solve in float64 NumPy; used to derive constants when a layer is built."""
    log_y = np.asarray(log_y, dtype=np.float64)
    u = np.maximum(-1.0 - log_y, 0.0)
    z = np.minimum(-1.0 - np.sqrt(2.0 * u) - 0.75 * u, -1.0 - 1e-12)
    for _ in range(iterations):
        z = np.minimum(z - (z + np.log(-z) - log_y) * z / (z + 1.0), -1.0 - 1e-12)
    return z
