"""The GRPO objective, with logit ERA (arXiv 2510.08549), written with `keras.ops`.

As TF-Agents' agents expose theirs (e.g. `SacAgent.actor_loss`), the loss is a plain
function that returns `GRPOLossInfo(loss, extra)`: the scalar to minimise and the
quantities worth logging. The machinery, whose
swappable parts are registered by name in `registry.py`:

- advantages from rewards (`group_advantages`, the registered advantage estimators): R
  minus the group mean, divided by the unbiased standard deviation of the group
  (`scale_rewards="group"`), of the whole batch ("batch"), or not at all ("none", Dr.
  GRPO), as TRL and verl compute them;
- ERA (`era_keras.LogitERA`): for responses with A > 0, logits scaled by k
  (H_resp < omega_low) or 1/k (H_resp > omega_high), advantages by 1/k or k. Vanilla
  GRPO is the same code with k = 1, so the two arms differ by ERA alone (top-k
  renormalisation, temperature and all);
- the registered policy loss (`policy_losses.py`, by verl's `loss_mode` names): vanilla
  (the PPO ratio pi'_theta / pi'_old clipped to [1 - epsilon, 1 + epsilon_high], with dual
  clip, token- or sequence-level), clip_cov or kl_cov;
- the registered entropy controls (`entropy_controls.py`, TRL's names): the
  top-entropy-quantile token mask and the entropy bonus, fixed or adaptive;
- an optional KL penalty to a reference model (the k3 estimator, on unscaled log-probs);
- the aggregation `loss_type`, with TRL's meanings: "grpo" (each response's token mean,
  averaged over responses), "bnpo" (token mean over the batch), "dr_grpo" (token sum over
  batch size x max response tokens, a constant) and "dapo" (token mean over the whole
  batch, also when the loss sees a micro-batch of it: pass `batch_tokens`).

`LossSettings` holds one small settings object per method; `LossSettings.from_config`
builds it from a `GRPOConfig`.

Logits come from a causal LM, whose position t predicts token t + 1: `next_token_targets`
shifts tokens and masks so that each response token lines up with the logits that chose it.
"""

import dataclasses
from typing import NamedTuple

import numpy as np
from keras import ops

from era_keras import LogitERA, token_entropy, token_log_probs
from pipelines.grpo import entropy_controls, policy_losses, registry
from pipelines.grpo.registry import register

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


class GRPOLossInfo(NamedTuple):
    loss: object
    extra: dict


@register("advantage_estimator", "group")
def group_scaled(groups, rewards, epsilon):
    """(R - group mean) / (group std + epsilon): GRPO (TRL's scale_rewards="group")."""
    return (groups - groups.mean(axis=1, keepdims=True)) / (
        groups.std(axis=1, ddof=1, keepdims=True) + epsilon)


@register("advantage_estimator", "batch")
def batch_scaled(groups, rewards, epsilon):
    """(R - group mean) / (batch std + epsilon): TRL's scale_rewards="batch"."""
    return (groups - groups.mean(axis=1, keepdims=True)) / (rewards.std(ddof=1) + epsilon)


@register("advantage_estimator", "none")
def centred_only(groups, rewards, epsilon):
    """R - group mean, unscaled: Dr. GRPO (TRL's scale_rewards="none")."""
    return groups - groups.mean(axis=1, keepdims=True)


def group_advantages(rewards, group_size, scale="group", epsilon=1e-6):
    """Advantages of rewards laid out group after group, by the registered estimator `scale`.

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
    estimator = registry.get("advantage_estimator", scale).function
    return estimator(rewards.reshape(-1, group_size), rewards, epsilon).reshape(-1)


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


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """What the GRPO loss computes, one small settings object per registered method.

    policy_loss: the registered policy loss's name, `policy` its settings object
    (`policy_losses.VanillaParams`, `ClipCovParams`, `KLCovParams`); entropy_controls:
    {name: settings} of the registered entropy controls (missing ones are off);
    loss_type: the aggregation (module docstring), "dr_grpo" with `max_response_tokens`;
    kl_coef: weight of the k3 KL penalty to a reference model.
    """

    policy_loss: str = "vanilla"
    policy: object = policy_losses.VanillaParams()
    entropy_controls: dict = dataclasses.field(default_factory=dict)
    loss_type: str = "dapo"
    max_response_tokens: int | None = None
    kl_coef: float = 0.0

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
        method = registry.get("policy_loss", self.policy_loss)
        if not isinstance(self.policy, method.params):
            raise ValueError(f"policy_loss {self.policy_loss!r} takes "
                             f"{method.params.__name__} settings, got {self.policy!r}.")
        for name in self.entropy_controls:
            registry.get("entropy_control", name)

    @classmethod
    def from_config(cls, config):
        """The settings a `GRPOConfig` asks for."""
        return cls(
            policy_loss=config.policy_loss,
            policy=registry.params_from_config("policy_loss", config.policy_loss, config),
            entropy_controls={name: registry.params_from_config("entropy_control", name, config)
                              for name in registry.names("entropy_control")},
            loss_type=config.loss_type, max_response_tokens=config.max_new_tokens,
            kl_coef=config.kl_coef)

    def fixed_entropy_coef(self):
        bonus = self.entropy_controls.get("entropy_bonus")
        return 0.0 if bonus is None else bonus.entropy_coef


def grpo_loss(logits, tokens, response_mask, advantages, settings=None, *, old_log_probs=None,
              era=None, era_decision=None, reference_log_probs=None, entropy_coef=None,
              noise=None, batch_sequences=None, batch_tokens=None):
    """The GRPO(+ERA) loss over a batch of responses, as `settings` (a `LossSettings`) says.

    logits: (batch, time, vocab) at the response positions (see `next_token_targets`);
    tokens, response_mask: (batch, time); advantages: (batch,) from `group_advantages`.
    era: an `era_keras.LogitERA`; None is vanilla GRPO (`vanilla_era()`). era_decision:
    ERA's {"logit_scale", "advantages", "response_entropy"} fixed for this rollout (the
    output of `era` on the rollout policy's logits), so that with several updates per
    rollout the old and the new log-probs use the same scales; None decides on the
    current logits (right for one update per rollout).
    old_log_probs: (batch, time) log pi'_old of the tokens (ERA-scaled like the current
    ones); None means one update per rollout, where pi_old is the current policy
    (stop-gradient). reference_log_probs: (batch, time) from a frozen reference model, for
    `kl_coef` > 0. entropy_coef: the entropy bonus's coefficient this step (a scalar
    tensor from `EntropyCoefficient`; None: the configured fixed one). noise: (batch,
    time) uniform [0, 1) for clip_cov's draw. batch_sequences / batch_tokens: the whole
    batch's response and token counts when this call sees a micro-batch of it (default:
    this call's).
    """
    settings = settings or LossSettings()
    if era is None:
        era = vanilla_era()
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
    inputs = policy_losses.PolicyInputs(
        log_probs, ops.cast(old_log_probs, "float32"),
        ops.broadcast_to(token_advantages, ops.shape(mask)), mask,
        None if noise is None else ops.cast(noise, "float32"))
    policy = registry.get("policy_loss", settings.policy_loss).function(settings.policy, inputs)

    if entropy_coef is None:
        entropy_coef = settings.fixed_entropy_coef()
    terms = entropy_controls.EntropyTerms(
        per_token=policy.per_token, mask=mask, response_mask=mask,
        entropies=token_entropy(logits, era.temperature),
        entropy_coef=ops.cast(entropy_coef, "float32"), bonus=ops.zeros(()),
        normaliser=(batch_tokens if batch_tokens is not None else ops.sum(mask))
        if settings.loss_type == "dapo" else None)
    for name in registry.names("entropy_control"):  # registration order (entropy_controls)
        if name in settings.entropy_controls:
            terms = registry.get("entropy_control", name).function(
                settings.entropy_controls[name], terms)

    policy_loss = aggregate(terms.per_token, mask, settings.loss_type,
                            settings.max_response_tokens, batch_sequences, batch_tokens)
    loss = policy_loss + terms.bonus
    kl = ops.zeros(())
    if reference_log_probs is not None and settings.kl_coef > 0:
        plain = token_log_probs(logits, tokens, temperature=era.temperature)
        log_ratio = ops.cast(reference_log_probs, "float32") - plain
        kl = ops.sum((ops.exp(log_ratio) - log_ratio - 1.0) * mask) / token_count
        loss = loss + settings.kl_coef * kl

    def share(tokens_touched):
        return ops.sum(tokens_touched * mask) / token_count

    entropies = ops.stop_gradient(terms.entropies)
    extra = {
        "policy_loss": policy_loss,
        "kl": kl,
        "clip_fraction": share(policy.clipped),
        "cov_selected_share": share(policy.cov_selected),
        "top_entropy_share": share(terms.mask),
        # Sums, so that merging micro-batches (means of each) keeps their exact ratio.
        "token_entropy_sum": ops.sum(entropies * terms.mask),
        "token_entropy_count": ops.sum(terms.mask),
        "entropy_coef": terms.entropy_coef,
        "response_entropy": h_resp,
        "share_scaled_up": share(ops.cast(logit_scale > 1.0, "float32")),
        "share_scaled_down": share(ops.cast(logit_scale < 1.0, "float32")),
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
