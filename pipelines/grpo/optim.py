"""The GRPO optimizer: Adam with global-norm clipping, a learning-rate schedule and
gradient accumulation.

- `--lr-schedule constant|cosine` with `--warmup-steps W`: the rate rises linearly over
  the first W optimizer updates to `--learning-rate`, then stays there (constant) or
  follows a half cosine to 0 at the last update of the run (cosine). An update is one
  optimizer step; a run takes `steps x updates_per_rollout` of them.
- `--grad-accum-steps N`: each update's batch is split into N micro-batches; Keras'
  optimizer (`gradient_accumulation_steps`) averages their gradients and applies them
  once. With `--loss-type dapo` (the default) each micro-batch divides by the whole
  batch's token count, so the accumulated update equals the full batch's; `grpo` and
  `dr_grpo` add up exactly too; `bnpo` divides by each micro-batch's own token count (as
  TRL's does), which weighs micro-batches equally. Memory falls with N; the update is
  otherwise the same.
"""

import math

import keras
from keras import ops

LR_SCHEDULES = ("constant", "cosine")


@keras.saving.register_keras_serializable(package="era_keras_grpo")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup_updates`, then constant or cosine decay to 0.

    Keras counts optimizer iterations in micro-batches when gradients are accumulated;
    `micro_steps` (the accumulation count) turns them back into updates.
    """

    def __init__(self, learning_rate, total_updates, warmup_updates=0, kind="constant",
                 micro_steps=1):
        self.learning_rate = float(learning_rate)
        self.total_updates = int(total_updates)
        self.warmup_updates = int(warmup_updates)
        self.kind = kind
        self.micro_steps = int(micro_steps)

    def __call__(self, step):
        update = ops.floor(ops.cast(step, "float32") / self.micro_steps)
        warmup = float(max(self.warmup_updates, 1))
        rising = ops.minimum((update + 1.0) / warmup, 1.0)
        if self.kind == "cosine":
            span = float(max(self.total_updates - self.warmup_updates, 1))
            progress = ops.clip((update - self.warmup_updates) / span, 0.0, 1.0)
            after = 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            after = ops.ones_like(update)
        factor = ops.where(update < self.warmup_updates, rising, after)
        return self.learning_rate * factor

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_updates": self.total_updates,
                "warmup_updates": self.warmup_updates, "kind": self.kind,
                "micro_steps": self.micro_steps}


def build_optimizer(config):
    """Adam (global clip norm 1) with the configured schedule and accumulation."""
    accumulate = config.grad_accum_steps if config.grad_accum_steps > 1 else None
    learning_rate = config.learning_rate
    if config.lr_schedule != "constant" or config.warmup_steps > 0:
        learning_rate = WarmupSchedule(
            config.learning_rate, config.steps * config.updates_per_rollout,
            config.warmup_steps, config.lr_schedule, config.grad_accum_steps)
    return keras.optimizers.Adam(learning_rate, global_clipnorm=1.0,
                                 gradient_accumulation_steps=accumulate)
