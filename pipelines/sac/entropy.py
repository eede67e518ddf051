"""The entropy of the executed action: what it can reach, its target, and a watch on it.

ERA (arXiv 2510.08549) bounds the entropy of the Gaussian *before* the action is bounded to
(-1, 1). The environment receives the bounded action, whose entropy is lower and is what
delta is tuned on. Per action dimension, with u ~ N(mu, sigma^2):

- tanh squash, a = tanh(u):   H = H[N(mu, sigma)] + E[log(1 - tanh(u)^2)]. It falls by about
  2 nats per unit of |mu| once |mu| > 1 (about 2.8 + log sigma - 2|mu|), whatever sigma
  is, so without a bound on the mean no delta can hold it. `mean_bound` m caps
  |mu| <= m (mu = m * tanh(mu_raw / m)), which makes the worst case h(m, sigma_max).
- truncated normal on (-1, 1) around tanh(mu) (the authors' policy): the closed form of a
  truncated normal; its worst case is a loc at the edge, still about 0.5 nats at sigma = 1.

On (-1, 1) no policy exceeds the uniform's log 2 nats per dimension, so the executed target
is a setting of its own (`executed_target_entropy_per_dim`), separate from the pre-squash
floor H0. These functions are numpy only: they check settings before anything is built.
"""

import math
import warnings

import numpy as np

from era_keras.gaussian import HALF_LOG_2PI_E

# Probabilists' Gauss-Hermite nodes: E[f(u)] for u ~ N(0, 1) as a weighted sum.
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(161)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def tanh_entropy_per_dim(mu, log_std):
    """Entropy (nats) of tanh(u), u ~ N(mu, exp(log_std)^2), by Gauss-Hermite quadrature."""
    u = mu + math.exp(log_std) * _NODES
    # log(1 - tanh(u)^2) = 2 (log 2 - |u| - log(1 + exp(-2|u|))), stable for large |u|.
    log_jacobian = 2.0 * (math.log(2.0) - np.abs(u) - np.log1p(np.exp(-2.0 * np.abs(u))))
    return log_std + HALF_LOG_2PI_E + float(_WEIGHTS @ log_jacobian)


def truncated_entropy_per_dim(loc, log_std, low=-1.0, high=1.0):
    """Entropy (nats) of N(loc, exp(log_std)^2) truncated to (low, high), closed form."""
    scale = math.exp(log_std)
    alpha, beta = (low - loc) / scale, (high - loc) / scale

    def pdf(x):
        return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)

    mass = 0.5 * (math.erf(beta / math.sqrt(2.0)) - math.erf(alpha / math.sqrt(2.0)))
    return (
        log_std + HALF_LOG_2PI_E + math.log(mass)
        + (alpha * pdf(alpha) - beta * pdf(beta)) / (2.0 * mass)
    )


def executed_entropy_range(squash, action_dim, log_std_min=-8.0, log_std_max=0.0,
                           mean_bound=0.0):
    """(lowest, highest guaranteed) executed entropy of a D-dim ERA policy, in nats.

    The highest is what the policy reaches with every sigma_i at its best value in
    [sigma_min, sigma_max] *and its mean at the worst place it may go*: for tanh with a
    mean bound m, |mu| = m; for the truncated normal, a loc at the edge of (-1, 1). A
    target above it cannot be held by any delta once the actor pushes its means there.
    For tanh without a mean bound there is no such guarantee (the worst case falls without
    limit); the highest is then the best case, mu = 0, and only reachable while means stay
    small. The lowest is the narrowest Gaussian's, mu = 0.
    """
    log_stds = np.linspace(log_std_min, log_std_max, 161)
    if squash == "tanh":
        worst_mu = float(mean_bound) if mean_bound > 0 else 0.0
        per_dim = max(tanh_entropy_per_dim(worst_mu, s) for s in log_stds)
        lowest = tanh_entropy_per_dim(0.0, log_std_min)
    else:
        per_dim = max(truncated_entropy_per_dim(1.0, s) for s in log_stds)
        lowest = truncated_entropy_per_dim(0.0, log_std_min)
    return action_dim * lowest, action_dim * per_dim


def check_targets(problems, config, action_dim):
    """Add to `problems` every ERA entropy setting the env's action dim makes impossible."""
    import era_keras

    if config.agent != "era":
        return
    floor = config.target_entropy_per_dim * action_dim
    try:
        era_keras.check_target_entropy(floor, action_dim, config.log_std_min, config.log_std_max)
    except ValueError as error:
        problems.add(f"target_entropy_per_dim: {error}")
        return
    executed = executed_target(config, action_dim)
    low, high = executed_entropy_range(config.squash, action_dim, config.log_std_min,
                                       config.log_std_max, config.mean_bound)
    if not low <= executed <= high:
        where = (
            f"tanh with mean bound {config.mean_bound}" if config.squash == "tanh"
            and config.mean_bound > 0 else
            "tanh without a mean bound, even at mu = 0" if config.squash == "tanh" else
            "the truncated normal with its loc at the edge of (-1, 1)"
        )
        remedy = ("; a smaller --mean-bound raises the upper end" if config.squash == "tanh"
                  else "")
        problems.add(
            f"the executed-entropy target {executed:.3f} nats "
            f"({executed / action_dim:.3f} per dim x {action_dim} dims) cannot be reached: "
            f"{where} reaches [{low:.3f}, {high:.3f}] nats "
            f"([{low / action_dim:.3f}, {high / action_dim:.3f}] per dim) with log std in "
            f"[{config.log_std_min}, {config.log_std_max}]; set "
            f"--executed-target-entropy-per-dim inside it{remedy}"
        )


def executed_target(config, action_dim):
    """The executed-entropy target in nats: its own setting, else the pre-squash floor H0."""
    per_dim = config.executed_target_entropy_per_dim
    if per_dim is None:
        per_dim = config.target_entropy_per_dim
    return float(per_dim) * action_dim


class ShortfallWatch:
    """Warns once when the executed entropy stays more than `margin` nats under its target
    for `share` of the run's env steps in a row (logged points count until the next one)."""

    def __init__(self, total_env_steps, margin=1.0, share=0.1):
        self.span = share * total_env_steps
        self.margin = margin
        self.since = None
        self.warned = False

    def observe(self, step, executed, target):
        """Feed one logged point; returns the warning text the one time it fires."""
        if executed >= target - self.margin:
            self.since = None
            return None
        if self.since is None:
            self.since = step
        if self.warned or step - self.since < self.span:
            return None
        self.warned = True
        message = (
            f"the executed policy's entropy has stayed more than {self.margin:g} nat under its "
            f"target since env step {self.since} ({executed:.2f} against {target:.2f} nats at "
            f"step {step}). With --squash tanh, bound the mean (--mean-bound) or use "
            "--squash truncated; check that --auto-delta is on."
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return message
