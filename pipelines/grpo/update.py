"""The policy update of one step: the GRPO(+ERA) loss on a batch of groups, optimised.

`PolicyUpdate(batch)` takes `updates_per_rollout` optimizer steps on `loss.grpo_loss`,
each over `grad_accum_steps` micro-batches laid out on the mesh's "batch" axis, and
returns the loss info of the last one. ERA is on unless `era=False`, which makes this the
vanilla GRPO baseline: the same code with k = 1.

With more than one update per rollout, pi_old is the rollout policy, and ERA decides
once, on its logits: the scales and A' it picks are used for the old and the new log-probs
alike, so the ratio compares one distribution at two parameter values.

A loss, gradient or updated weights whose float32 norm is not finite stop the run
(`NonFiniteUpdate`), as TF-Agents' `check_numerics` does for SAC: the weights such an
update produced are never checkpointed.
"""

import numpy as np
from keras import ops

import era_keras
from pipelines.common.errors import UserError
from pipelines.grpo.distribution import shard_batch
from pipelines.grpo.entropy_controls import EntropyCoefficient
from pipelines.grpo.loss import (
    GRPOLossInfo,
    LossSettings,
    grpo_loss,
    next_token_targets,
    vanilla_era,
)
from pipelines.grpo.processes import to_numpy
from pipelines.grpo.step import make_train_step


class NonFiniteUpdate(UserError):
    """An update whose loss or gradient is NaN or infinite."""


def make_era(config):
    """The configured `LogitERA`, or vanilla GRPO's (k = 1, the same code path)."""
    if not config.era:
        return vanilla_era(config.temperature, config.top_fraction, config.era_top_k)
    return era_keras.LogitERA(
        k=config.era_k, omega_low=config.omega_low, omega_high=config.omega_high,
        top_fraction=config.top_fraction, temperature=config.temperature,
        top_k=config.era_top_k, scale_advantages=config.scale_advantages)


def merge_infos(infos):
    """One GRPOLossInfo from the micro-batches of an update: scalars averaged (as the
    accumulated gradient is), per-response arrays concatenated."""
    extra = {}
    for key in infos[0].extra:
        values = [to_numpy(info.extra[key]) for info in infos]
        extra[key] = np.concatenate(values) if values[0].ndim else np.mean(values)
    loss = np.mean([to_numpy(info.loss) for info in infos])
    return GRPOLossInfo(loss, extra)


class PolicyUpdate:
    """Optimises the policy on one step's groups (see the module docstring)."""

    def __init__(self, config, causal_lm, optimizer, era, distribution=None, reference=None):
        self.config = config
        self.causal_lm = causal_lm
        self.optimizer = optimizer
        self.era = era
        self.distribution = distribution
        self.reference = reference  # the frozen KL reference policy, or None
        self.settings = LossSettings.from_config(config)
        # State of the run (checkpointed): the entropy bonus's coefficient, fixed or adaptive.
        self.entropy_coef = EntropyCoefficient(self.settings.entropy_controls["entropy_bonus"])
        self._train_step = None

    def loss(self, model, batch, old_log_probs=None, reference_log_probs=None):
        """The GRPO(+ERA) loss of `model` on a batch of rollouts (see `loss.grpo_loss`)."""
        logits = model({"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]},
                       training=True)
        logits, tokens, mask = next_token_targets(logits, batch["token_ids"],
                                                  batch["response_mask"])
        decision = None
        if "logit_scale" in batch:  # fixed once per rollout (several updates per rollout)
            decision = {key: batch[key] for key in
                        ("logit_scale", "era_advantages", "response_entropy")}
            decision["advantages"] = decision.pop("era_advantages")
        noise = batch["clip_cov_noise"][:, 1:] if "clip_cov_noise" in batch else None
        return grpo_loss(
            logits, tokens, mask, batch["advantages"], self.settings,
            old_log_probs=old_log_probs, era=self.era, era_decision=decision,
            reference_log_probs=reference_log_probs, entropy_coef=batch["entropy_coef"][0],
            noise=noise, batch_tokens=batch["batch_tokens"][0],
        )

    def outputs(self, model, batch):
        """(logits, tokens, mask) of `model` at the response positions, without gradient."""
        logits = model({"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]})
        logits, tokens, mask = next_token_targets(logits, batch["token_ids"],
                                                  batch["response_mask"])
        return ops.stop_gradient(logits), tokens, mask

    def _batch(self, rollout, advantages, step):
        c = self.config
        response_mask = rollout.response_mask.astype("float32")
        if c.mask_truncated_completions:  # a cut-off response has no verdict to learn from
            response_mask = response_mask * ~rollout.truncated[:, None]
        # "dapo" divides by the whole batch's tokens; Keras averages the micro-batches'
        # gradients, so each micro-batch divides by that count / pieces (one per row).
        batch_tokens = max(float(response_mask[:, 1:].sum()), 1.0) / c.grad_accum_steps
        batch = {
            "token_ids": rollout.token_ids,
            "padding_mask": rollout.padding_mask,
            "response_mask": response_mask,
            "advantages": advantages.astype("float32"),
            "batch_tokens": np.full(len(advantages), batch_tokens, "float32"),
            "entropy_coef": np.full(len(advantages), self.entropy_coef.applied(), "float32"),
        }
        if c.policy_loss == "clip_cov":  # its random draw, seeded by run seed and step
            rng = np.random.default_rng([c.seed, step or 0])
            batch["clip_cov_noise"] = rng.random(rollout.token_ids.shape, dtype="float32")
        return batch

    def __call__(self, rollout, advantages, step=None):
        """`updates_per_rollout` optimizer updates on one rollout; the last one's loss info
        (numpy values), with `grad_norm` among its extras."""
        c = self.config
        if self._train_step is None:
            self._train_step = make_train_step(self.causal_lm, self.optimizer, self.loss)
        batch = self._batch(rollout, advantages, step)
        sharded = shard_batch(self.distribution, batch)
        old = ref = None
        if c.updates_per_rollout > 1:
            logits, tokens, mask = self.outputs(self.causal_lm, sharded)
            decision = self.era((logits, tokens, sharded["advantages"], mask))
            old = to_numpy(decision["log_probs"])
            batch.update({key: to_numpy(decision[name]) for key, name in (
                ("logit_scale", "logit_scale"), ("era_advantages", "advantages"),
                ("response_entropy", "response_entropy"))})
            sharded = shard_batch(self.distribution, batch)
        if self.reference is not None:
            logits, tokens, _ = self.outputs(self.reference, sharded)
            ref = to_numpy(
                era_keras.token_log_probs(logits, tokens, temperature=c.temperature))
        pieces = c.grad_accum_steps
        size = len(rollout.token_ids) // pieces

        def piece(i, value):
            if value is None:
                return None
            return shard_batch(self.distribution, {"x": value[i * size:(i + 1) * size]})["x"]

        def micro_batches():
            if pieces == 1:
                return [(shard_batch(self.distribution, batch), piece(0, old), piece(0, ref))]
            return [({k: piece(i, v) for k, v in batch.items()}, piece(i, old), piece(i, ref))
                    for i in range(pieces)]

        for _ in range(c.updates_per_rollout):
            # The coefficient of this optimizer step (adaptive control changes it per step).
            batch["entropy_coef"][:] = self.entropy_coef.applied()
            infos = [self._train_step(*micro) for micro in micro_batches()]
            info = merge_infos(infos)
            check_finite(info, step)
            self.entropy_coef.update(mean_token_entropy(info))
        return info


def mean_token_entropy(info):
    """The update's mean token entropy over the tokens its policy loss saw."""
    return float(info.extra["token_entropy_sum"]) / max(
        float(info.extra["token_entropy_count"]), 1.0)


def check_finite(info, step=None):
    """Raise NonFiniteUpdate when the loss or the gradient norm is NaN or infinite."""
    bad = [name for name, value in (("loss", info.loss),
                                    ("gradient norm", info.extra.get("grad_norm", 0.0)),
                                    ("weight norm", info.extra.get("weight_norm", 0.0)))
           if not np.isfinite(value)]
    if bad:
        at = f"step {step}" if step is not None else "an update"
        raise NonFiniteUpdate(
            f"GRPO {at}: the {' and the '.join(bad)} {'is' if len(bad) == 1 else 'are'} not "
            "finite (float32), so the run stopped before checkpointing the weights it produced "
            "and the run dir keeps its last good checkpoint; lower --learning-rate (a new "
            "--run-dir) or check the rewards")
