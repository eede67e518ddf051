"""Settings of a GRPO(+ERA) run: one dataclass, checked on creation.

Defaults give a run that finishes in a minute or two on a CPU: a tiny random-init Qwen
model, a short supervised warm start, then GRPO on the built-in many-answers task. The
authors' settings (arXiv 2510.08549, nothingbutbut/era) are k = 2, omega_low = 0.45, omega_high = 3.0, group
size 8, temperature 1.0, clip epsilon 1.0 with dual clip 10, no KL, lr 1e-6 on a 7B model.
Their thresholds are absolute entropies set for a ~150k-token vocabulary; with a tiny
vocabulary choose them from the measured H_resp distribution (logged every step).
"""

import dataclasses

from pipelines.grpo.models import TINY_FAMILIES
from pipelines.grpo.tasks import BUILTIN_TASKS

# float32; bfloat16 (weights and compute: half the memory, but Adam steps far below a
# weight's bf16 resolution, ~0.4% of it, are rounded away); mixed_bfloat16 (float32
# weights, bfloat16 compute). The loss's log-softmax and entropies run in float32.
DTYPES = ("float32", "bfloat16", "mixed_bfloat16")


@dataclasses.dataclass
class GRPOConfig:
    # Model: a keras-hub preset name or directory, or "tiny:<family>" (random init).
    model: str = "tiny:qwen"
    tiny_layers: int = 2
    tiny_hidden_dim: int = 128
    # Data: a built-in task name or a JSONL file; reward by name or "module:function".
    task: str = "digit_sum"
    eval_data: str | None = None
    reward: str | None = None  # None: the task's own (built-ins) or "math" (JSONL)
    held_out_fraction: float = 0.2
    num_eval_prompts: int = 32
    # Supervised warm start (0 steps: none).
    warm_start_steps: int = 150
    warm_start_batch_size: int = 64
    warm_start_learning_rate: float = 3e-3
    # Rollouts.
    steps: int = 40
    prompts_per_step: int = 8
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompt_tokens: int = 24
    max_new_tokens: int = 28
    # Optimisation. On the tiny warm-started Qwen, 3e-4 lost accuracy within 60 steps
    # (0.94 -> ~0.6 on training rollouts) while 3e-5 raised it.
    learning_rate: float = 3e-5
    clip_epsilon: float = 1.0
    clip_epsilon_high: float | None = None
    dual_clip: float | None = 10.0
    kl_coef: float = 0.0
    updates_per_rollout: int = 1
    # ERA.
    era: bool = True
    era_k: float = 2.0
    omega_low: float = 0.45
    omega_high: float = 3.0
    top_fraction: float = 0.2
    era_top_k: int | None = None
    scale_advantages: bool = True
    # Evaluation.
    eval_every: int = 20
    eval_samples: int = 8
    eval_temperature: float = 1.0
    eval_top_p: float = 1.0
    # Scale-out: devices (JAX), LoRA, precision, schedule (see distribution.py, optim.py).
    distribution: str = "none"
    lora_rank: int = 0  # 0: full fine-tuning
    dtype: str = "float32"
    grad_accum_steps: int = 1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    # Bookkeeping.
    seed: int = 0
    run_dir: str = "runs/grpo"
    checkpoint_every: int = 10
    experiment: str = "grpo"
    run_name: str | None = None

    def __post_init__(self):
        problems = []
        positive = ["tiny_layers", "tiny_hidden_dim", "num_eval_prompts", "steps",
                    "prompts_per_step", "max_prompt_tokens", "max_new_tokens",
                    "updates_per_rollout", "eval_every", "eval_samples", "checkpoint_every",
                    "warm_start_batch_size"]
        for name in positive:
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.group_size < 2:
            problems.append(f"group_size must be >= 2 to normalise within a group (got {self.group_size})")
        if self.warm_start_steps < 0:
            problems.append(f"warm_start_steps must be >= 0 (got {self.warm_start_steps})")
        for name in ["temperature", "eval_temperature", "learning_rate", "clip_epsilon"]:
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0 (got {getattr(self, name)})")
        for name in ["top_p", "eval_top_p", "top_fraction"]:
            if not 0 < getattr(self, name) <= 1:
                problems.append(f"{name} must be in (0, 1] (got {getattr(self, name)})")
        if not 0 < self.held_out_fraction < 1:
            problems.append(f"held_out_fraction must be in (0, 1) (got {self.held_out_fraction})")
        if self.dual_clip is not None and self.dual_clip <= 1:
            problems.append(f"dual_clip must be > 1 or None (got {self.dual_clip})")
        if self.kl_coef < 0:
            problems.append(f"kl_coef must be >= 0 (got {self.kl_coef})")
        if self.era_k < 1:
            problems.append(f"era_k must be >= 1 (got {self.era_k})")
        if self.omega_low > self.omega_high:
            problems.append(f"omega_low ({self.omega_low}) must not exceed omega_high ({self.omega_high})")
        if self.model.startswith("tiny:") and self.model[5:] not in TINY_FAMILIES:
            problems.append(f"tiny model family must be one of {', '.join(TINY_FAMILIES)} (got {self.model!r})")
        if self.task not in BUILTIN_TASKS and not self.task.endswith((".jsonl", ".json")):
            problems.append(f"task must be one of {', '.join(BUILTIN_TASKS)} or a .jsonl file (got {self.task!r})")
        problems.extend(self._scale_out_problems())
        if problems:
            raise ValueError("Invalid GRPO config: " + "; ".join(problems) + ".")

    def _scale_out_problems(self):
        from pipelines.common.errors import UserError
        from pipelines.grpo.distribution import parse_distribution
        from pipelines.grpo.optim import LR_SCHEDULES

        problems = []
        try:
            parse_distribution(self.distribution)
        except UserError as error:
            problems.append(str(error))
        if self.lora_rank < 0:
            problems.append(f"lora_rank must be >= 0 (0: full fine-tuning; got {self.lora_rank})")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if self.grad_accum_steps < 1 or self.batch_size % self.grad_accum_steps:
            problems.append(
                f"grad_accum_steps must be >= 1 and divide the batch of prompts_per_step x "
                f"group_size = {self.batch_size} rollouts (got {self.grad_accum_steps})")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)} "
                            f"(got {self.lr_schedule!r})")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        return problems

    @property
    def batch_size(self):
        return self.prompts_per_step * self.group_size
