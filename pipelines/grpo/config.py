"""Settings of a GRPO(+ERA) run: one dataclass, checked on creation.

Defaults give a run that finishes in a minute or two on a CPU: a tiny random-init Qwen
model, a short supervised warm start, then GRPO on the built-in many-answers task. The
authors' settings (arXiv 2510.08549, nothingbutbut/era) are k = 2, omega_low = 0.45,
omega_high = 3.0, group size 8, temperature 1.0, clip epsilon 1.0 with dual clip 10, no
KL, lr 1e-6 on a 7B model (`--recipe era-paper` sets their shipped script's values).
Their thresholds are absolute entropies set for a ~150k-token vocabulary; with a tiny
vocabulary choose them from the measured H_resp distribution (logged every step).
"""

import dataclasses

from pipelines.common.config import Problems
from pipelines.grpo.loss import LOSS_TYPES, SCALE_REWARDS
from pipelines.grpo.models import TINY_FAMILIES
from pipelines.grpo.tasks import BUILTIN_TASKS

# float32; bfloat16 (weights and compute: half the memory, but Adam steps far below a
# weight's bf16 resolution, ~0.4% of it, are rounded away); mixed_bfloat16 (float32
# weights, bfloat16 compute). The loss's log-softmax and entropies run in float32.
DTYPES = ("float32", "bfloat16", "mixed_bfloat16")


@dataclasses.dataclass
class GRPOConfig:
    # Model: a keras-hub preset name or directory, a Hugging Face transformers directory,
    # or "tiny:<family>" (random init).
    model: str = "tiny:qwen"
    # Prompts given as chat messages: "auto" (the checkpoint's own template), "none", or a
    # Jinja template file (see chat.py).
    chat_template: str = "auto"
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
    # Recipes (TRL / verl names): loss aggregation, advantage scaling, DAPO's extras.
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    mask_truncated_completions: bool = False
    overlong_buffer_len: int = 0
    overlong_penalty_factor: float = 1.0
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
        problems = Problems("GRPO settings")
        for name in ["tiny_layers", "tiny_hidden_dim", "num_eval_prompts", "steps",
                     "prompts_per_step", "max_prompt_tokens", "max_new_tokens",
                     "updates_per_rollout", "eval_every", "eval_samples", "checkpoint_every",
                     "warm_start_batch_size"]:
            problems.at_least(name, getattr(self, name), 1)
        problems.check(self.group_size >= 2,
                       "group_size must be >= 2 to normalise within a group "
                       f"(got {self.group_size})")
        problems.at_least("warm_start_steps", self.warm_start_steps, 0)
        for name in ["temperature", "eval_temperature", "learning_rate", "clip_epsilon"]:
            value = getattr(self, name)
            problems.check(value > 0, f"{name} must be > 0 (got {value})")
        for name in ["top_p", "eval_top_p", "top_fraction"]:
            problems.in_range(name, getattr(self, name), 0, 1, low_open=True)
        problems.in_range("held_out_fraction", self.held_out_fraction, 0, 1,
                          low_open=True, high_open=True)
        problems.check(self.dual_clip is None or self.dual_clip > 1,
                       f"dual_clip must be > 1 or none (got {self.dual_clip})")
        problems.at_least("kl_coef", self.kl_coef, 0)
        problems.at_least("era_k", self.era_k, 1)
        problems.check(self.omega_low <= self.omega_high,
                       f"omega_low ({self.omega_low}) must not exceed omega_high "
                       f"({self.omega_high})")
        problems.check(
            not self.model.startswith("tiny:") or self.model[5:] in TINY_FAMILIES,
            f"tiny model family must be one of {', '.join(TINY_FAMILIES)} (got {self.model!r})")
        problems.check(
            self.task in BUILTIN_TASKS or self.task.endswith((".jsonl", ".json")),
            f"task must be one of {', '.join(BUILTIN_TASKS)} or a .jsonl file (got {self.task!r})")
        problems.check(
            not self.task.endswith((".jsonl", ".json")) or self.warm_start_steps == 0,
            "warm_start_steps must be 0 for a JSONL task: the supervised warm start needs the "
            f"worked solutions that only the built-in tasks ({', '.join(BUILTIN_TASKS)}) have")
        problems.choice("loss_type", self.loss_type, LOSS_TYPES)
        problems.choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        problems.at_least("max_sampling_rounds", self.max_sampling_rounds, 1)
        problems.in_range("overlong_buffer_len", self.overlong_buffer_len, 0,
                          self.max_new_tokens)
        problems.at_least("overlong_penalty_factor", self.overlong_penalty_factor, 0)
        if self.era_top_k is not None:
            problems.at_least("era_top_k", self.era_top_k, 1)
        for problem in self._scale_out_problems():
            problems.add(problem)
        problems.raise_if_any()

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


# The ERA authors' shipped script (ERA-LLM/qwen_7b_era_topk_scale.sh in nothingbutbut/era):
# verl's DAPO recipe with ERA. It sets no model: the authors train Qwen2.5-Math-7B on
# DAPO-Math-17k (pass --model and --task). Differences that remain: their generation batch
# is 3x the training batch (768 prompts sampled per round for 256 kept) and the number of
# rounds is unbounded; here one round samples `prompts_per_step` prompts and at most
# `max_sampling_rounds` rounds run before the batch is filled with groups without signal.
RECIPES = {
    "era-paper": dict(
        era=True, era_k=2.0, omega_low=0.45, omega_high=3.0, era_top_k=20,
        scale_advantages=True,
        group_size=8, prompts_per_step=256, dynamic_sampling=True, max_sampling_rounds=30,
        loss_type="dapo", scale_rewards="group", updates_per_rollout=1,
        clip_epsilon=1.0, clip_epsilon_high=1.0, dual_clip=10.0, kl_coef=0.0,
        learning_rate=1e-6, temperature=1.0, top_p=1.0,
        max_prompt_tokens=2048, max_new_tokens=8192,
        overlong_buffer_len=0, mask_truncated_completions=False,
        eval_temperature=1.0, eval_top_p=0.7, warm_start_steps=0,
    ),
}
