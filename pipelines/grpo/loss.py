"""The GRPO objective, with logit ERA (arXiv 2510.08549), written with `keras.ops`.

As TF-Agents' agents expose theirs (e.g. `SacAgent.actor_loss`), the loss is a plain
function that returns `GRPOLossInfo(loss, extra)`: the scalar to minimise and the
quantities worth logging. The machinery:

- advantages from rewards (`group_advantages`): R minus the group mean, divided by the
  unbiased standard deviation of the group (`scale_rewards="group"`), of the whole batch
  ("batch"), or not at all ("none", Dr. GRPO), as TRL and verl compute them;
- ERA (`era_keras.LogitERA`): for responses with A > 0, logits scaled by k
  (H_resp < omega_low) or 1/k (H_resp > omega_high), advantages by 1/k or k. Vanilla
  GRPO is the same code with k = 1, so the two arms differ by ERA alone (top-k
  renormalisation, temperature and all);
- the PPO ratio pi'_theta / pi'_old, clipped to [1 - eps, 1 + eps_high], with dual clip c
  (the loss of a negative-advantage token is at most -c * A);
- an optional KL penalty to a reference model (the k3 estimator, on unscaled log-probs);
- the aggregation `loss_type`, with TRL's meanings: "grpo" (each response's token mean,
  averaged over responses), "bnpo" (token mean over the batch), "dr_grpo" (token sum over
  batch size x max response tokens, a constant) and "dapo" (token mean over the whole
  batch, also when the loss sees a micro-batch of it: pass `batch_tokens`).

Logits come from a causal LM, whose position t predicts token t + 1: `next_token_targets`
shifts tokens and masks so that each response token lines up with the logits that chose it.
"""

from typing import NamedTuple

import numpy as np
from keras import ops

from era_keras import LogitERA, token_log_probs

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


class GRPOLossInfo(NamedTuple):
    loss: object
    extra: dict


def group_advantages(rewards, group_size, scale="group", epsilon=1e-6):
    """Advantages of rewards laid out group after group: (R - group mean) / (std + epsilon).

    scale: "group" divides by each group's standard deviation, "batch" by the whole
    batch's, "none" by nothing (Dr. GRPO). Standard deviations are unbiased (n - 1), as
    `torch.std` gives them to TRL and verl.
    """
    rewards = np.asarray(rewards, dtype=np.float32)
    if rewards.ndim != 1 or rewards.size % group_size:
        raise ValueError(
            f"rewards must be a flat array whose length ({rewards.size}) is a multiple "
            f"of group_size ({group_size})."
        )
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale must be one of {SCALE_REWARDS}, got {scale!r}.")
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if scale == "group":
        centred = centred / (groups.std(axis=1, ddof=1, keepdims=True) + epsilon)
    elif scale == "batch":
        centred = centred / (rewards.std(ddof=1) + epsilon)
    return centred.reshape(-1)


def next_token_targets(logits, token_ids, response_mask):
    """Align a causal LM's logits with the tokens they predict.

    logits: (batch, time, vocab) from the model on `token_ids`; response_mask: (batch, time),
    1 on generated tokens. Returns (logits[:, :-1], token_ids[:, 1:], response_mask[:, 1:]):
    position t's logits scored token t + 1.
    """
    return logits[:, :-1], token_ids[:, 1:], response_mask[:, 1:]


def vanilla_era(temperature=1.0, top_fraction=0.2, top_k=None):
    """Vanilla GRPO as logit ERA with k = 1: nothing is scaled, everything else is shared."""
    return LogitERA(k=1.0, omega_low=0.0, omega_high=float("inf"), top_fraction=top_fraction,
                    temperature=temperature, top_k=top_k)


def grpo_loss(
    logits,
    tokens,
    response_mask,
    advantages,
    old_log_probs=None,
    era=None,
    era_decision=None,
    temperature=1.0,
    clip_epsilon=1.0,
    clip_epsilon_high=None,
    dual_clip=10.0,
    reference_log_probs=None,
    kl_coef=0.0,
    top_fraction=0.2,
    loss_type="dapo",
    max_response_tokens=None,
    batch_sequences=None,
    batch_tokens=None,
):
    """The GRPO(+ERA) policy loss over a batch of responses.

    logits: (batch, time, vocab) at the response positions (see `next_token_targets`);
    tokens, response_mask: (batch, time); advantages: (batch,) from `group_advantages`.
    era: an `era_keras.LogitERA`; None is vanilla GRPO (`vanilla_era(temperature,
    top_fraction)`). era_decision: ERA's {"logit_scale", "advantages", "response_entropy"}
    fixed for this rollout (the output of `era` on the rollout policy's logits), so that
    with several updates per rollout the old and the new log-probs use the same scales;
    None decides on the current logits (right for one update per rollout).
    old_log_probs: (batch, time) log pi'_old of the tokens (ERA-scaled like the current
    ones); None means one update per rollout, where pi_old is the current policy
    (stop-gradient). reference_log_probs: (batch, time) from a frozen reference model, for
    `kl_coef` > 0. loss_type: see the module docstring; "dr_grpo" needs
    `max_response_tokens`. batch_sequences / batch_tokens: the whole batch's response and
    token counts when this call sees a micro-batch of it (default: this call's).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
    if era is None:
        era = vanilla_era(temperature, top_fraction)
    mask = ops.cast(response_mask, "float32")
    token_count = ops.maximum(ops.sum(mask), 1.0)
    advantages = ops.cast(advantages, "float32")
    if era_decision is None:
        era_decision = era((logits, tokens, advantages, mask))
        log_probs = era_decision["log_probs"]
    else:
        log_probs = token_log_probs(logits, tokens, era_decision["logit_scale"],
                                    era.temperature, era.top_k)
    token_advantages = ops.cast(era_decision["advantages"], "float32")
    h_resp, logit_scale = era_decision["response_entropy"], era_decision["logit_scale"]
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
    policy_loss = aggregate(per_token, mask, loss_type, max_response_tokens,
                            batch_sequences, batch_tokens)
    loss = policy_loss
    kl = ops.zeros(())
    if reference_log_probs is not None and kl_coef > 0:
        plain = token_log_probs(logits, tokens, temperature=temperature)
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


def aggregate(per_token, mask, loss_type="dapo", max_response_tokens=None,
              batch_sequences=None, batch_tokens=None):
    """Reduce a (batch, time) per-token loss to a scalar, as `loss_type` says (TRL's meanings).

    grpo: mean over responses of each response's token mean; bnpo: sum / this call's token
    count; dr_grpo: sum / (responses x max_response_tokens); dapo: sum / the whole batch's
    token count (`batch_tokens`, this call's when None). Sums over a micro-batch of a larger
    batch add up to the batch's loss for grpo, dr_grpo and dapo given the batch's counts.
    """
    mask = ops.cast(mask, "float32")
    total = ops.sum(per_token * mask)
    sequences = float(mask.shape[0]) if batch_sequences is None else float(batch_sequences)
    if loss_type == "grpo":
        lengths = ops.maximum(ops.sum(mask, axis=1), 1.0)
        return ops.sum(ops.sum(per_token * mask, axis=1) / lengths) / sequences
    if loss_type == "bnpo":
        return total / ops.maximum(ops.sum(mask), 1.0)
    if loss_type == "dr_grpo":
        if max_response_tokens is None:
            raise ValueError("loss_type 'dr_grpo' needs max_response_tokens.")
        return total / (sequences * float(max_response_tokens))
    if loss_type == "dapo":
        tokens = ops.sum(mask) if batch_tokens is None else ops.cast(batch_tokens, "float32")
        return total / ops.maximum(tokens, 1.0)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
