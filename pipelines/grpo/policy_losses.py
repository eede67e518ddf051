"""The registered policy losses: the per-token surrogate of GRPO, by verl's `loss_mode` names.

Each is `loss(params, inputs) -> PolicyTerms`: `inputs` holds the (batch, time) log-probs of
the current and the rollout policy, token advantages, the response mask and (for clip_cov)
uniform noise; the result is the per-token loss to aggregate and the tokens the method
touched (for the `entropy/` metrics). Semantics follow verl's `core_algos.py`
(`compute_policy_loss_vanilla`, `_clip_cov`, `_kl_cov`, `_gspo`); where they differ it
says so below.

- `vanilla`: PPO's clipped ratio, clipped to [1 - epsilon, 1 + epsilon_high] (DAPO's
  clip-higher: epsilon_high 0.28), with dual clip c (a negative-advantage token's loss is
  at most -c * A). `importance_sampling_level="sequence"` is GSPO's ratio (TRL's option of
  the same name): each response's geometric-mean ratio, written as verl writes it, so a
  token's gradient is s_i * A * grad log pi_t (TRL's broadcast form gives the same gradient
  summed over a response); the log ratio is capped at 10 as in verl. Unlike verl's `gspo`
  mode it keeps the configured `loss_type` (verl forces "seq-mean-token-mean", our "grpo").
- `clip_cov` (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for
  Reasoning Language Models"): the vanilla loss, but a random `clip_cov_ratio` share of
  the tokens (at least one) among those whose centred covariance (A - mean A) *
  (log pi - mean log pi) lies in (clip_cov_lb, clip_cov_ub) and that the ratio clip left
  alone get no gradient. verl draws them with `torch.randperm`; here the draw is the
  largest values of the `noise` input, so a compiled step stays deterministic given the
  noise (the update seeds it by run seed and step). Unlike verl, the dual clip applies,
  so clip_cov differs from vanilla by the covariance clip alone.
- `kl_cov` (same paper): no ratio clipping; the `kl_cov_ratio` share of tokens (at least
  one) with the largest covariance get ppo_kl_coef * |log pi - log pi_old| added to their
  loss. Means and shares are over this call's (micro-)batch, as in verl.

Defaults of the settings objects are verl's (`PolicyLossConfig`: clip_cov_ratio 2e-4,
lb 1, ub 5, kl_cov_ratio 2e-4, ppo_kl_coef 0.1); the ratio clip's are the ERA authors'
script's (epsilon 1.0, dual clip 10), this pipeline's defaults (TRL's epsilon is 0.2).
"""

import dataclasses
from typing import NamedTuple

from keras import ops

from pipelines.grpo.registry import register

IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
SEQUENCE_LOG_RATIO_CAP = 10.0  # verl's clamp of GSPO's log ratio, for numerical safety


class PolicyInputs(NamedTuple):
    log_probs: object  # (batch, time) log pi of the tokens, with gradient
    old_log_probs: object  # (batch, time) log pi_old (the rollout policy), no gradient
    advantages: object  # (batch, time) token advantages
    mask: object  # (batch, time) float, 1 on the response tokens the loss sees
    noise: object = None  # (batch, time) uniform [0, 1): clip_cov's random draw


class PolicyTerms(NamedTuple):
    per_token: object  # (batch, time) loss of each token, to aggregate
    clipped: object  # (batch, time) 1 where the ratio clip bound the ratio
    cov_selected: object  # (batch, time) 1 where a covariance rule acted (Clip-Cov, KL-Cov)


@dataclasses.dataclass(frozen=True)
class VanillaParams:
    epsilon: float = 1.0
    epsilon_high: float | None = None  # None: epsilon
    dual_clip: float | None = 10.0
    importance_sampling_level: str = "token"


@dataclasses.dataclass(frozen=True)
class ClipCovParams:
    epsilon: float = 1.0
    epsilon_high: float | None = None
    dual_clip: float | None = 10.0
    clip_cov_ratio: float = 0.0002
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0


@dataclasses.dataclass(frozen=True)
class KLCovParams:
    kl_cov_ratio: float = 0.0002
    ppo_kl_coef: float = 0.1


def masked_mean(x, mask):
    return ops.sum(x * mask) / ops.maximum(ops.sum(mask), 1.0)


def importance_ratio(inputs, level="token"):
    """pi / pi_old per token, or GSPO's per-response ratio laid out over its tokens."""
    log_ratio = inputs.log_probs - inputs.old_log_probs
    if level == "token":
        return ops.exp(log_ratio)
    if level != "sequence":
        raise ValueError(f"importance_sampling_level must be one of "
                         f"{IMPORTANCE_SAMPLING_LEVELS}, got {level!r}.")
    lengths = ops.maximum(ops.sum(inputs.mask, axis=1, keepdims=True), 1.0)
    sequence = ops.sum(log_ratio * inputs.mask, axis=1, keepdims=True) / lengths
    log_s = inputs.log_probs - ops.stop_gradient(inputs.log_probs) + ops.stop_gradient(sequence)
    return ops.exp(ops.minimum(log_s, SEQUENCE_LOG_RATIO_CAP))


def clipped_surrogate(ratio, advantages, epsilon, epsilon_high, dual_clip):
    """(per-token loss, where the clip bound, where the clipped term is the larger loss)."""
    high = epsilon if epsilon_high is None else epsilon_high
    clipped_ratio = ops.clip(ratio, 1.0 - epsilon, 1.0 + high)
    unclipped_loss, clipped_loss = -advantages * ratio, -advantages * clipped_ratio
    per_token = ops.maximum(unclipped_loss, clipped_loss)
    if dual_clip is not None:
        per_token = ops.where(advantages < 0,
                              ops.minimum(per_token, -advantages * dual_clip), per_token)
    bound = ops.cast(ops.not_equal(ratio, clipped_ratio), "float32")
    return per_token, bound, clipped_loss > unclipped_loss


def centred_covariance(inputs):
    """(A - mean A) * (log pi - mean log pi) per token, means over the masked tokens."""
    log_probs = ops.stop_gradient(inputs.log_probs)
    a = inputs.advantages
    return (a - masked_mean(a, inputs.mask)) * (log_probs - masked_mean(log_probs, inputs.mask))


def largest(scores, eligible, share, mask):
    """1 on the max(1, floor(share x tokens)) eligible entries with the largest scores
    (all eligible ones when fewer), 0 elsewhere. Exactly that many, ties or not (as
    `torch.topk`): entries are ranked by position in the sorted order."""
    count = ops.maximum(ops.floor(share * ops.sum(mask)), 1.0)
    flat = ops.reshape(ops.where(eligible, ops.cast(scores, "float32"), -1e30), (-1,))
    rank = ops.argsort(ops.argsort(-flat))  # 0 for the largest
    chosen = ops.reshape(ops.cast(rank, "float32") < count, ops.shape(mask))
    return ops.cast(eligible & chosen, "float32")


@register("policy_loss", "vanilla", VanillaParams)
def vanilla(params, inputs):
    """PPO clipped ratio with clip-higher and dual clip; token or sequence (GSPO) ratio."""
    ratio = importance_ratio(inputs, params.importance_sampling_level)
    per_token, bound, _ = clipped_surrogate(ratio, inputs.advantages, params.epsilon,
                                            params.epsilon_high, params.dual_clip)
    return PolicyTerms(per_token, bound, ops.zeros_like(per_token))


@register("policy_loss", "clip_cov", ClipCovParams)
def clip_cov(params, inputs):
    """Clip-Cov: no gradient for a random few tokens of high advantage-logprob covariance."""
    if inputs.noise is None:
        raise ValueError("policy_loss 'clip_cov' needs `noise` (uniform, one per token).")
    ratio = importance_ratio(inputs)
    per_token, bound, clip_active = clipped_surrogate(
        ratio, inputs.advantages, params.epsilon, params.epsilon_high, params.dual_clip)
    cov = centred_covariance(inputs)
    eligible = ((inputs.mask > 0) & ~clip_active
                & (cov > params.clip_cov_lb) & (cov < params.clip_cov_ub))
    selected = largest(ops.cast(inputs.noise, "float32"), eligible, params.clip_cov_ratio,
                       inputs.mask)
    return PolicyTerms(per_token * (1.0 - selected), bound, selected)


@register("policy_loss", "kl_cov", KLCovParams)
def kl_cov(params, inputs):
    """KL-Cov: an absolute log-ratio penalty on the tokens of largest covariance; no clip."""
    log_ratio = inputs.log_probs - inputs.old_log_probs
    per_token = -inputs.advantages * ops.exp(log_ratio)
    selected = largest(centred_covariance(inputs), inputs.mask > 0, params.kl_cov_ratio,
                       inputs.mask)
    per_token = per_token + selected * params.ppo_kl_coef * ops.abs(log_ratio)
    return PolicyTerms(per_token, ops.zeros_like(per_token), selected)
