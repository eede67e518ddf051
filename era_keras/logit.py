"""Logit ERA for GRPO: keep an LLM's response entropy inside a band.

Kang et al. (2025, arXiv 2510.08549). Rollouts are sampled from the unmodified model; ERA
changes only the log-probabilities (and advantages) used in the policy-gradient loss.

- Response entropy H_resp (no gradient): the per-token entropy of the full-vocabulary,
  temperature-scaled distribution; H_resp = mean of the largest `top_fraction` of the
  response's token entropies (at least one token).
- For every token t of a response with advantage A_t > 0:
      H_resp < omega_low  ->  z' = k * z,  A' = A / k   (sharpen less: entropy is low)
      H_resp > omega_high ->  z' = z / k,  A' = k * A
  and z' = z, A' = A otherwise.

`A_t > 0` is tested on the real-valued advantage: the authors' code casts advantages to
integers first, which turns the test into A_t >= 1.
"""

import keras
from keras import ops

from era_keras.arguments import flag, real
from era_keras.topk import check_top_k, top_k_positions


def token_entropy(logits, temperature=1.0):
    """Entropy (nats) of softmax(logits / temperature) over the last axis, in float32.

    Written as H = log S - sum_i e_i (x_i - m) / S with x = logits / temperature,
    m = max x, e = exp(x - m) and S = sum e: one pass over the vocabulary, and both terms
    are sums of non-negative numbers, so a near one-hot row keeps its small entropy exact.
    """
    x = ops.cast(logits, "float32") / temperature
    shifted = x - ops.stop_gradient(ops.max(x, axis=-1, keepdims=True))
    e = ops.exp(shifted)
    total = ops.sum(e, axis=-1)
    return ops.log(total) - ops.sum(e * shifted, axis=-1) / total


def response_entropy(token_entropies, mask, top_fraction=0.2):
    """Mean of the largest `top_fraction` of each row's masked token entropies.

    token_entropies, mask: (batch, time). A row keeps max(1, floor(top_fraction * n))
    tokens, n its number of unmasked tokens; a row with no tokens gets 0. No gradient.
    """
    check_top_fraction(top_fraction)
    entropies = ops.stop_gradient(ops.cast(token_entropies, "float32"))
    mask = ops.cast(mask, "float32")
    count = ops.sum(mask, axis=-1)
    keep = ops.maximum(ops.floor(top_fraction * count), 1.0)
    # Masked tokens sort last: entropies are >= 0, so -1 is below every real one.
    ranked = -ops.sort(-ops.where(mask > 0, entropies, -1.0), axis=-1)
    rank = ops.cast(ops.arange(ranked.shape[-1]), "float32")
    chosen = ops.cast(rank[None, :] < keep[:, None], "float32") * ops.cast(
        ranked >= 0, "float32"
    )
    total = ops.sum(ranked * chosen, axis=-1)
    return ops.where(count > 0, total / keep, 0.0)


def check_top_fraction(top_fraction):
    """top_fraction as a float in (0, 1], or a TypeError / ValueError naming that range."""
    top_fraction = real("top_fraction", top_fraction, "a number in (0, 1]")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}.")
    return top_fraction


def check_band(k, omega_low, omega_high):
    """(k, omega_low, omega_high) as floats: k >= 1 finite, omega_low <= omega_high (either
    may be infinite, which switches its branch off), or an error naming the rule."""
    k = real("k", k, "a finite number >= 1")
    if not k >= 1.0:
        raise ValueError(f"k must be >= 1 (k = 1 scales nothing), got {k}.")
    omega_low = real("omega_low", omega_low, "a number of nats (or -inf)", finite=False)
    omega_high = real("omega_high", omega_high, "a number of nats (or inf)", finite=False)
    if not omega_low <= omega_high:
        raise ValueError(
            f"omega_low ({omega_low}) must not exceed omega_high ({omega_high})."
        )
    return k, omega_low, omega_high


def era_scales(response_entropies, advantages, k=2.0, omega_low=0.45, omega_high=3.0):
    """Per-token (logit_scale, advantage_scale) of logit ERA.

    response_entropies: (batch,); advantages: (batch,) or (batch, time), real-valued.
    Returns two tensors shaped like the advantages (broadcast to time if given so).
    """
    check_band(k, omega_low, omega_high)
    advantages = ops.cast(advantages, "float32")
    h = ops.cast(response_entropies, "float32")
    if len(advantages.shape) == 2:
        h = h[:, None]
    positive = advantages > 0
    low = ops.logical_and(h < omega_low, positive)
    high = ops.logical_and(h > omega_high, positive)
    one = ops.ones_like(advantages)
    logit_scale = ops.where(low, k * one, ops.where(high, one / k, one))
    return logit_scale, 1.0 / logit_scale


def token_log_probs(logits, tokens, logit_scale=None, temperature=1.0, top_k=None):
    """log pi'(token) under softmax(logit_scale * logits / temperature).

    logits: (batch, time, vocab); tokens: (batch, time) ints; logit_scale: (batch, time)
    or None. With `top_k`, the distribution is renormalised over the top_k logits (the
    authors' scripts use 20): every logit below the k-th largest is lowered by 1e4 (all
    logits equal to it stay), so a token outside them gets a very low log-prob, not -inf.

    Only the log-sum-exp runs over the vocabulary; the token's own logit is gathered
    first, so no (batch, time, vocab) log-softmax is written out. With `top_k` not even
    that: see `_top_k_log_total`.
    """
    if top_k is not None:
        check_top_k(top_k, logits.shape[-1])
    picked = ops.take_along_axis(logits, ops.cast(tokens, "int32")[..., None], axis=-1)
    # x = factor * logits: the scale and temperature, one positive factor per token.
    factor = ops.ones(ops.shape(picked)) / temperature
    if logit_scale is not None:
        factor = factor * ops.cast(logit_scale, "float32")[..., None]
    x_picked = factor * ops.cast(picked, "float32")
    if top_k is None:
        # log_softmax(x)[token] = (x[token] - m) - log sum exp(x - m), m = max x.
        x = factor * ops.cast(logits, "float32")
        top = ops.stop_gradient(ops.max(x, axis=-1, keepdims=True))
        log_total = ops.log(ops.sum(ops.exp(x - top), axis=-1, keepdims=True))
    else:
        top, kth, log_total = _top_k_log_total(logits, factor, int(top_k))
        x_picked = ops.where(ops.cast(picked, "float32") >= kth, x_picked, x_picked - 1e4)
    return ops.squeeze((x_picked - top) - log_total, axis=-1)


def _top_k_log_total(logits, factor, k):
    """(m, kth, log sum_i exp(x'_i - m)) over the last axis, each keeping it as size 1,
    for x = factor * logits: kth is the k-th largest logit (unscaled), x' lowers x_i by
    1e4 wherever logit_i < kth, and m = max x.

    The positive factor keeps the logits' order, so the k largest logits are the k
    largest entries of x, found once on the logits themselves. A lowered entry adds
    exp(x_i - 1e4 - m) <= exp(-1e4), which is 0 in float32, so the sum runs over the
    entries with logit >= kth alone: the k found by `top_k_positions` (gathered, so their
    gradient flows through the gather), plus any other logit equal to kth (a tie), each
    adding exp(factor * kth - m). Only comparisons touch the whole vocabulary; no
    exponential of it is taken, forward or backward, and no scaled copy is written.
    """
    size = logits.shape[-1]
    rows = ops.reshape(ops.cast(logits, "float32"), (-1, size))
    factor = ops.reshape(factor, (-1, 1))
    chosen = ops.take_along_axis(
        rows, top_k_positions(ops.stop_gradient(rows), k), axis=-1)  # (rows, k)
    kth = ops.stop_gradient(ops.min(chosen, axis=-1, keepdims=True))
    top = ops.stop_gradient(factor * ops.max(chosen, axis=-1, keepdims=True))
    # Ties with kth beyond the chosen k: every logit equal to kth, less the chosen ones.
    ties = _tie_count(rows, kth, factor) - _tie_count(chosen, kth, factor)
    total = ops.sum(ops.exp(factor * chosen - top), axis=-1, keepdims=True)
    # With kth = -inf (fewer than k finite logits) the ties add exp(-inf) = 0.
    total = total + ties * ops.exp(factor * kth - top)
    shape = tuple(ops.shape(logits)[:-1]) + (1,)
    return (ops.reshape(top, shape), ops.reshape(kth, shape),
            ops.reshape(ops.log(total), shape))


def _tie_count(values, kth, factor):
    """How many of `values` equal kth (per row, kept as size 1), written as a sum of
    1 + factor * (v - kth), which is 1 for a tie but has gradient `factor` with respect
    to it: so `count * exp(factor * kth - m)` has the value and the gradient of the ties'
    sum of exp(factor * v - m)."""
    difference = ops.where(ops.isfinite(kth), values - kth, 0.0)  # inf - inf is no tie's
    tied = ops.where(values == kth, 1.0 + factor * difference, 0.0)
    return ops.sum(tied, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="era_keras")
class LogitERA(keras.layers.Layer):
    """Logit ERA for GRPO: ERA log-probs and advantages for a policy-gradient loss.

    Formula (Kang et al., 2025, arXiv 2510.08549), per response with entropy H_resp (the
    mean of its top `top_fraction` token entropies) and for tokens with advantage A_t > 0:

        scale = k    if H_resp < omega_low     (sharpen a collapsing response)
        scale = 1/k  if H_resp > omega_high    (flatten a too random one)
        scale = 1    otherwise, and wherever A_t <= 0
        log pi'(a_t | s_t) = log_softmax(scale * z_t / temperature)[a_t],  A'_t = A_t / scale

    Use A' and log pi' in the GRPO objective E_t[ratio(log pi') * A']. Rollouts are
    sampled from the unmodified model; only the loss changes.

    Args:
        k: the scale factor (authors: 2).
        omega_low, omega_high: the H_resp band in nats (authors: 0.45 and 3.0, set for a
            ~150k-token vocabulary; choose them from your model's measured H_resp).
        top_fraction: share of a response's largest token entropies averaged into H_resp.
        temperature: the sampling temperature the logits are divided by.
        top_k: if set, log pi' is renormalised over the top-k logits (the authors'
            shipped script uses 20).
        scale_advantages: if False, A' = A (the logit scaling only).

    Call arguments:
        inputs: a tuple `(logits, tokens, advantages, mask)`: logits (batch, time, vocab)
            of the policy at the response positions, the sampled tokens and the mask
            (batch, time; 1 on response tokens), and advantages (batch,) or
            (batch, time), fractional values allowed.

    Returns:
        A dict of float32 tensors: "log_probs" (batch, time), log pi'(a_t | s_t);
        "advantages" (batch, time), A'; "response_entropy" (batch,), H_resp before ERA,
        without gradient; "logit_scale" (batch, time), the scale per token, for logging
        how often each branch fires.

    Example:
    >>> era = era_keras.LogitERA(k=2.0, omega_low=0.45, omega_high=3.0)
    >>> out = era((logits, tokens, advantages, mask))
    >>> ratio = keras.ops.exp(out["log_probs"] - old_log_probs)
    """

    def __init__(
        self,
        k=2.0,
        omega_low=0.45,
        omega_high=3.0,
        top_fraction=0.2,
        temperature=1.0,
        top_k=None,
        scale_advantages=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.k, self.omega_low, self.omega_high = check_band(k, omega_low, omega_high)
        self.top_fraction = check_top_fraction(top_fraction)
        temperature = real("temperature", temperature, "a finite number > 0")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = temperature
        if top_k is not None:
            check_top_k(top_k)
        self.top_k = None if top_k is None else int(top_k)
        self.scale_advantages = flag("scale_advantages", scale_advantages)

    def build(self, input_shape):
        if self.top_k is not None:  # the vocabulary is known now
            check_top_k(self.top_k, tuple(input_shape[0])[-1])
        self.built = True

    def call(self, inputs):
        logits, tokens, advantages, mask = inputs
        # H_resp carries no gradient: keep the entropy pass out of the backward one.
        entropies = token_entropy(ops.stop_gradient(logits), self.temperature)
        h_resp = response_entropy(entropies, mask, self.top_fraction)
        advantages = ops.cast(advantages, "float32")
        if len(advantages.shape) == 1:
            advantages = advantages[:, None] * ops.ones_like(entropies)
        logit_scale, advantage_scale = era_scales(
            h_resp, advantages, self.k, self.omega_low, self.omega_high
        )
        if self.scale_advantages:
            advantages = advantages * advantage_scale
        return {
            "log_probs": token_log_probs(
                logits, tokens, logit_scale, self.temperature, self.top_k
            ),
            "advantages": advantages,
            "response_entropy": h_resp,
            "logit_scale": logit_scale,
        }

    def compute_output_shape(self, input_shape):
        logits_shape = tuple(input_shape[0])
        return {
            "log_probs": logits_shape[:-1],
            "advantages": logits_shape[:-1],
            "response_entropy": logits_shape[:1],
            "logit_scale": logits_shape[:-1],
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "k": self.k,
                "omega_low": self.omega_low,
                "omega_high": self.omega_high,
                "top_fraction": self.top_fraction,
                "temperature": self.temperature,
                "top_k": self.top_k,
                "scale_advantages": self.scale_advantages,
            }
        )
        return config
