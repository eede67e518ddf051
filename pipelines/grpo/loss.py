"""The GRPO objective, with logit ERA (arXiv 2510.08549), written with `keras.ops`.

As TF-Agents' agents expose theirs (e.g. `SacAgent.actor_loss`), the loss is a plain
function that returns `GRPOLossInfo(loss, extra)`: the scalar to minimise and the
quantities worth logging. The machinery:

- group-normalised advantages: A = (R - mean_group) / (std_group + 1e-6), one per response,
  the same for all of its tokens;
- ERA (`era_keras.LogitERA`, when given): for responses with A > 0, logits scaled by k
  (H_resp < omega_low) or 1/k (H_resp > omega_high), advantages by 1/k or k;
- the PPO ratio pi'_theta / pi'_old, clipped to [1 - eps, 1 + eps_high], with dual clip c
  (the loss of a negative-advantage token is at most -c * A);
- an optional KL penalty to a reference model (the k3 estimator, on unscaled log-probs);
- token-mean aggregation: the mean over every response token of the batch.

Logits come from a causal LM, whose position t predicts token t + 1: `next_token_targets`
shifts tokens and masks so that each response token lines up with the logits that chose it.
"""

from typing import NamedTuple

import numpy as np
from keras import ops

from era_keras import response_entropy, token_entropy, token_log_probs


class GRPOLossInfo(NamedTuple):
    loss: object
    extra: dict


def group_advantages(rewards, group_size, epsilon=1e-6):
    """(R - group mean) / (group std + epsilon) for rewards laid out group after group."""
    rewards = np.asarray(rewards, dtype=np.float32)
    if rewards.ndim != 1 or rewards.size % group_size:
        raise ValueError(
            f"rewards must be a flat array whose length ({rewards.size}) is a multiple "
            f"of group_size ({group_size})."
        )
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    return (centred / (groups.std(axis=1, keepdims=True) + epsilon)).reshape(-1)


def next_token_targets(logits, token_ids, response_mask):
    """Align a causal LM's logits with the tokens they predict.

    logits: (batch, time, vocab) from the model on `token_ids`; response_mask: (batch, time),
    1 on generated tokens. Returns (logits[:, :-1], token_ids[:, 1:], response_mask[:, 1:]):
    position t's logits scored token t + 1.
    """
    return logits[:, :-1], token_ids[:, 1:], response_mask[:, 1:]


def grpo_loss(
    logits,
    tokens,
    response_mask,
    advantages,
    old_log_probs=None,
    era=None,
    temperature=1.0,
    clip_epsilon=1.0,
    clip_epsilon_high=None,
    dual_clip=10.0,
    reference_log_probs=None,
    kl_coef=0.0,
    top_fraction=0.2,
):
    """The GRPO(+ERA) policy loss over a batch of responses.

    logits: (batch, time, vocab) at the response positions (see `next_token_targets`);
    tokens, response_mask: (batch, time); advantages: (batch,) group-normalised.
    old_log_probs: (batch, time) log pi'_old of the tokens (ERA-scaled like the current
    ones); None means one update per rollout, where pi_old is the current policy
    (stop-gradient). era: an `era_keras.LogitERA`, or None for vanilla GRPO.
    reference_log_probs: (batch, time) from a frozen reference model, for `kl_coef` > 0.
    """
    mask = ops.cast(response_mask, "float32")
    token_count = ops.maximum(ops.sum(mask), 1.0)
    advantages = ops.cast(advantages, "float32")
    if era is not None:
        out = era((logits, tokens, advantages, mask))
        log_probs, token_advantages = out["log_probs"], out["advantages"]
        h_resp, logit_scale = out["response_entropy"], out["logit_scale"]
    else:
        log_probs = token_log_probs(logits, tokens, temperature=temperature)
        token_advantages = advantages[:, None] * ops.ones_like(mask)
        entropies = token_entropy(ops.stop_gradient(logits), temperature)
        h_resp = response_entropy(entropies, mask, top_fraction)
        logit_scale = ops.ones_like(mask)
    if old_log_probs is None:
        old_log_probs = ops.stop_gradient(log_probs)
    ratio = ops.exp(log_probs - old_log_probs)
    high = clip_epsilon if clip_epsilon_high is None else clip_epsilon_high
    clipped_ratio = ops.clip(ratio, 1.0 - clip_epsilon, 1.0 + high)
    per_token = ops.maximum(-token_advantages * ratio, -token_advantages * clipped_ratio)
    if dual_clip is not None:
        dual_bound = -token_advantages * dual_clip
        per_token = ops.where(
            token_advantages < 0, ops.minimum(per_token, dual_bound), per_token
        )
    policy_loss = ops.sum(per_token * mask) / token_count
    loss = policy_loss
    kl = ops.zeros(())
    if reference_log_probs is not None and kl_coef > 0:
        plain = log_probs if era is None else token_log_probs(logits, tokens, temperature=temperature)
        log_ratio = ops.cast(reference_log_probs, "float32") - plain
        kl = ops.sum((ops.exp(log_ratio) - log_ratio - 1.0) * mask) / token_count
        loss = loss + kl_coef * kl
    clipped = ops.cast(ops.not_equal(ratio, clipped_ratio), "float32")
    extra = {
        "policy_loss": policy_loss,
        "kl": kl,
        "clip_fraction": ops.sum(clipped * mask) / token_count,
        "response_entropy": h_resp,
        "share_scaled_up": ops.sum(ops.cast(logit_scale > 1.0, "float32") * mask) / token_count,
        "share_scaled_down": ops.sum(ops.cast(logit_scale < 1.0, "float32") * mask) / token_count,
    }
    return GRPOLossInfo(loss, extra)
