"""The registered entropy controls, with TRL's names and semantics (`GRPOConfig` /
`GRPOTrainer._compute_loss`).

Each is `control(params, terms) -> terms` on an `EntropyTerms`: the per-token policy loss,
the mask of tokens it is averaged over, the token entropies of the sampling distribution
(softmax(logits / temperature), with gradient) and the loss terms added so far. They run
in registration order: `top_entropy_quantile` first, so the bonus acts on the tokens it
kept, as in TRL. The policy term is aggregated over every response token either way.

- `top_entropy_quantile` (Wang et al. 2025, "Beyond the 80/20 Rule"; TRL's
  `top_entropy_quantile`, the paper's value 0.2): only the tokens whose entropy is at or
  above the (1 - q) quantile (linear interpolation, `torch.quantile`'s) of this call's
  response tokens stay in the policy loss. 1.0 keeps every token. TRL takes the quantile
  over every process's micro-batch; here over the micro-batch the loss sees.
- `entropy_bonus` (TRL's `entropy_coef`, verl's `entropy_coeff`): loss - c * H, H the
  mean token entropy over the kept tokens: for loss_type "dapo" their entropy sum over
  the whole batch's token count (the policy term's normaliser), else their mean, as TRL
  does. With `use_adaptive_entropy` (Skywork-OR1, arXiv 2505.22312; TRL's controller),
  c is state, `EntropyCoefficient`: after each optimizer step it rises by
  `entropy_coef_delta` when the step's mean entropy was at or below `entropy_target`
  and falls by it otherwise, within [entropy_coef_min, entropy_coef_max]; the bonus is
  applied only while the last measured entropy is at or below the target (none before
  the first measurement). The coefficient reaches the compiled step as an input, so a
  change never recompiles it.
"""

import dataclasses
import math
from typing import NamedTuple

from keras import ops

from pipelines.grpo.registry import register


class EntropyTerms(NamedTuple):
    per_token: object  # (batch, time) policy loss per token
    mask: object  # (batch, time) float: the tokens kept in the policy loss (and the bonus)
    response_mask: object  # (batch, time) float: every response token
    entropies: object  # (batch, time) token entropies, with gradient
    entropy_coef: object  # scalar: the bonus coefficient applied in this step
    bonus: object  # scalar added to the loss (minus c * H once the bonus ran)
    normaliser: object  # scalar: the whole batch's token count for "dapo", else None


@dataclasses.dataclass(frozen=True)
class TopEntropyParams:
    top_entropy_quantile: float = 1.0


@dataclasses.dataclass(frozen=True)
class EntropyBonusParams:
    entropy_coef: float = 0.0
    use_adaptive_entropy: bool = False
    entropy_target: float = 0.2
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0
    entropy_coef_delta: float = 0.005

    @property
    def active(self):
        return self.entropy_coef != 0.0 or self.use_adaptive_entropy


def masked_quantile(values, mask, q):
    """`torch.quantile(values[mask], q)` (linear interpolation) over the masked entries."""
    flat = ops.reshape(ops.cast(values, "float32"), (-1,))
    keep = ops.reshape(mask, (-1,)) > 0
    # Masked entries sort last: +inf above every real value.
    ordered = ops.sort(ops.where(keep, flat, float("inf")))
    count = ops.maximum(ops.sum(ops.cast(keep, "float32")), 1.0)
    position = q * (count - 1.0)
    low = ops.floor(position)
    high = ops.minimum(low + 1.0, count - 1.0)
    below = ops.take(ordered, ops.cast(low, "int32"))
    above = ops.take(ordered, ops.cast(high, "int32"))
    return below + (position - low) * (above - below)


@register("entropy_control", "top_entropy_quantile", TopEntropyParams)
def top_entropy_quantile(params, terms):
    """Policy loss on the top-entropy quantile of tokens only (the high-entropy minority)."""
    if params.top_entropy_quantile >= 1.0:
        return terms
    entropies = ops.stop_gradient(terms.entropies)
    threshold = masked_quantile(entropies, terms.mask, 1.0 - params.top_entropy_quantile)
    kept = terms.mask * ops.cast(entropies >= threshold, "float32")
    # The dropped tokens' losses are zeroed, but the aggregation still counts every
    # response token (TRL multiplies `per_token_loss` by the mask, not the normaliser).
    return terms._replace(per_token=terms.per_token * kept, mask=kept)


@register("entropy_control", "entropy_bonus", EntropyBonusParams)
def entropy_bonus(params, terms):
    """Entropy bonus -c * H, c fixed or adapted toward a target entropy (Skywork-OR1)."""
    if not params.active:
        return terms
    total = ops.sum(terms.entropies * terms.mask)
    if terms.normaliser is not None:
        mean_entropy = total / ops.maximum(ops.cast(terms.normaliser, "float32"), 1.0)
    else:
        mean_entropy = total / ops.maximum(ops.sum(terms.mask), 1.0)
    return terms._replace(bonus=terms.bonus - terms.entropy_coef * mean_entropy)


class EntropyCoefficient:
    """The entropy bonus's coefficient over a run: fixed, or TRL's adaptive controller.

    `applied()` is the coefficient for the next optimizer step; `update(entropy)` takes
    the mean token entropy that step measured. `state()` / `load_state()` carry it
    through a checkpoint (TRL keeps the same two numbers in `entropy_ctrl_state.json`).
    """

    def __init__(self, params):
        self.params = params
        self.coef = float(params.entropy_coef)
        self.last_entropy = math.inf  # no measurement yet: adaptive applies no bonus

    def applied(self):
        if not self.params.use_adaptive_entropy:
            return self.coef
        return self.coef if self.last_entropy <= self.params.entropy_target else 0.0

    def update(self, entropy):
        p = self.params
        if not p.use_adaptive_entropy:
            return
        if entropy <= p.entropy_target:
            self.coef = min(self.coef + p.entropy_coef_delta, p.entropy_coef_max)
        else:
            self.coef = max(self.coef - p.entropy_coef_delta, p.entropy_coef_min)
        self.last_entropy = float(entropy)

    def state(self):
        # JSON has no infinity: None stands for "not measured yet".
        last = None if math.isinf(self.last_entropy) else self.last_entropy
        return {"entropy_coef": self.coef, "last_entropy": last}

    def load_state(self, state):
        self.coef = float(state["entropy_coef"])
        last = state["last_entropy"]
        self.last_entropy = math.inf if last is None else float(last)
