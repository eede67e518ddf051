"""Settings of a GRPO(+ERA) run: one dataclass, checked on creation.

Defaults give a run that finishes in a minute or two on a CPU: a tiny random-init Qwen
model, a short supervised warm start, then GRPO on the built-in many-answers task. The
authors' settings (arXiv 2510.08549, nothingbutbut/era) are k = 2, omega_low = 0.45,
omega_high = 3.0, group size 8, temperature 1.0, clip epsilon 1.0 with dual clip 10, no
KL, lr 1e-6 on a 7B model (`--preset era-paper` sets their shipped script's values).
Their thresholds are absolute entropies set for a ~150k-token vocabulary; with a tiny
vocabulary choose them from the measured H_resp distribution (logged every step).
"""

import dataclasses
import pathlib

from pipelines.common.config import Problems, option
from pipelines.grpo import registry
from pipelines.grpo.loss import LOSS_TYPES, SCALE_REWARDS
from pipelines.grpo.models import TINY_FAMILIES
from pipelines.grpo.policy_losses import IMPORTANCE_SAMPLING_LEVELS
from pipelines.grpo.tasks import BUILTIN_TASKS, DATA_SUFFIXES, is_data_file

# float32; bfloat16 (weights and compute: half the memory, but Adam steps far below a
# weight's bf16 resolution, ~0.4% of it, are rounded away); mixed_bfloat16 (float32
# weights, bfloat16 compute). The loss's log-softmax and entropies run in float32.
DTYPES = ("float32", "bfloat16", "mixed_bfloat16")
WARM_START_STEPS = 150  # for a built-in task, when --warm-start-steps is not given
POLICY_LOSSES = registry.names("policy_loss")
# Fields renamed to TRL's names; a config file or preset with the old name still works
# (`make_config` moves it), one with both names is refused.
RENAMED_FIELDS = {"clip_epsilon": "epsilon", "clip_epsilon_high": "epsilon_high"}


@dataclasses.dataclass
class GRPOConfig:
    RENAMED_FIELDS = RENAMED_FIELDS  # not a field (no annotation): read by make_config
    # Model.
    model: str = option(
        "tiny:qwen", "keras-hub preset name or preset directory, a Hugging Face transformers "
        "directory (config.json, safetensors, tokenizer files: Qwen2/2.5, Qwen3, Gemma, Gemma "
        "3, Llama 3), or tiny:qwen|qwen3|gemma|gemma3 (random init, tokenizer built offline)")
    chat_template: str = option(
        "auto", "prompts given as chat messages: auto (the checkpoint's own chat template), "
        "none, or a Jinja template file")
    tiny_layers: int = option(2, "tiny:<family> models: transformer layers")
    tiny_hidden_dim: int = option(128, "tiny:<family> models: hidden size")
    # Data.
    task: str = option(
        "digit_sum", "built-in task (arithmetic: one exact answer; digit_sum, digit_sum_wide: "
        "many answers) or a data file (GSM8K / MATH / DAPO-Math fields)")
    eval_data: str | None = option(
        None, "file of held-out problems (default: a hash split of --task)")
    reward: str | None = option(
        None, "reward name (math, digit_sum) or package.module:function; default: the "
        "task's own (built-in tasks) or math (files)")
    held_out_fraction: float = option(
        0.2, "share of the task's prompts held out for evaluation (hash split)")
    num_eval_prompts: int = option(32, "held-out prompts evaluated")
    # Supervised warm start.
    warm_start_steps: int | None = option(
        None, f"supervised warm-start steps before GRPO (built-in tasks only; none: "
        f"{WARM_START_STEPS} for a built-in task, 0 for a data file)")
    warm_start_batch_size: int = option(64, "warm-start batch size")
    warm_start_learning_rate: float = option(3e-3, "warm-start learning rate (Adam)")
    # Rollouts.
    steps: int = option(40, "GRPO steps (one rollout batch each)")
    prompts_per_step: int = option(8, "prompts per step")
    group_size: int = option(8, "completions sampled per prompt (the group)")
    temperature: float = option(1.0, "sampling temperature of the rollouts (and of the loss)")
    top_p: float = option(1.0, "top-p of the rollouts")
    max_prompt_tokens: int = option(24, "longest prompt, in tokens (longer ones are an error)")
    max_new_tokens: int = option(28, "longest response, in tokens")
    # Optimisation. On the tiny warm-started Qwen, 3e-4 lost accuracy within 60 steps
    # (0.94 -> ~0.6 on training rollouts) while 3e-5 raised it.
    learning_rate: float = option(3e-5, "Adam learning rate (peak, after warm-up)")
    # The policy loss and the ratio clip (TRL / verl names; see policy_losses.py).
    policy_loss: str = option(
        "vanilla", f"registered policy loss: {', '.join(POLICY_LOSSES)} (verl's "
        "policy_loss.loss_mode; Clip-Cov and KL-Cov after Cui et al. 2025)")
    epsilon: float = option(
        1.0, "PPO clip: ratio clipped below at 1 - epsilon (TRL's epsilon; ERA authors: 1.0)")
    epsilon_high: float | None = option(
        None, "PPO clip above at 1 + epsilon_high (none: epsilon; DAPO's clip-higher: 0.28)")
    dual_clip: float | None = option(
        10.0, "dual clip c: a negative-advantage token's loss is at most -c * A (none: off; "
        "vanilla and clip_cov)")
    importance_sampling_level: str = option(
        "token", "importance ratio per token, or per sequence (GSPO: each response's "
        "geometric-mean ratio; vanilla only)")
    clip_cov_ratio: float = option(
        0.0002, "clip_cov: share of tokens drawn from those with covariance in (lb, ub) and "
        "given no gradient (verl's default)")
    clip_cov_lb: float = option(1.0, "clip_cov: lower bound of the covariance window")
    clip_cov_ub: float = option(5.0, "clip_cov: upper bound of the covariance window")
    kl_cov_ratio: float = option(
        0.0002, "kl_cov: share of tokens of largest covariance given the |log ratio| penalty")
    ppo_kl_coef: float = option(0.1, "kl_cov: weight of the |log ratio| penalty (verl's "
                                "default)")
    # Entropy controls (TRL's names; see entropy_controls.py).
    entropy_coef: float = option(
        0.0, "entropy bonus: loss - coef * mean token entropy (TRL's entropy_coef; with "
        "--use-adaptive-entropy its starting value)")
    use_adaptive_entropy: bool = option(
        False, "adapt entropy_coef toward --entropy-target each update (Skywork-OR1, TRL)")
    entropy_target: float = option(
        0.2, "adaptive entropy: target mean token entropy (nats); the bonus applies while "
        "the last measured entropy is at or below it")
    entropy_coef_min: float = option(0.0, "adaptive entropy: lowest coefficient")
    entropy_coef_max: float = option(1.0, "adaptive entropy: highest coefficient")
    entropy_coef_delta: float = option(0.005, "adaptive entropy: step of the coefficient")
    top_entropy_quantile: float = option(
        1.0, "train on the top quantile of tokens by entropy only (0.2 in Wang et al. 2025; "
        "1.0: every token)")
    kl_coef: float = option(
        0.0, "weight of the KL penalty to the initial (post warm start) model")
    updates_per_rollout: int = option(1, "optimizer steps per batch of rollouts (PPO epochs)")
    # Recipes (TRL / verl names): loss aggregation, advantage scaling, DAPO's extras.
    loss_type: str = option("dapo", f"loss aggregation, TRL's meanings: {', '.join(LOSS_TYPES)}")
    scale_rewards: str = option(
        "group", f"advantage scaling: {', '.join(SCALE_REWARDS)} (std of the group, the "
        "batch, or none)")
    dynamic_sampling: bool = option(
        False, "DAPO: drop groups whose rewards are all equal and sample more prompts")
    max_sampling_rounds: int = option(3, "dynamic sampling: most rounds per step")
    mask_truncated_completions: bool = option(
        False, "leave responses cut off at --max-new-tokens out of the loss")
    overlong_buffer_len: int = option(
        0, "DAPO overlong penalty: the last N tokens before --max-new-tokens are penalised "
        "(0: off)")
    overlong_penalty_factor: float = option(1.0, "DAPO overlong penalty at the limit")
    # ERA.
    era: bool = option(True, "logit ERA on (--no-era: the vanilla GRPO baseline)")
    era_k: float = option(2.0, "ERA: the logit scale k (>= 1; 1 is vanilla GRPO)")
    omega_low: float = option(
        0.45, "ERA: responses with H_resp below this (and A > 0) get logits x k; choose it "
        "from the logged H_resp distribution (authors: 0.45 for a ~150k vocabulary)")
    omega_high: float = option(
        3.0, "ERA: responses with H_resp above this (and A > 0) get logits / k")
    top_fraction: float = option(
        0.2, "ERA: H_resp is the mean entropy of a response's top fraction of tokens by "
        "entropy")
    era_top_k: int | None = option(
        None, "renormalise ERA log-probs over the top-k logits (authors' scripts: 20; "
        "applied to both arms)")
    scale_advantages: bool = option(
        True, "ERA also rescales advantages (A/k low, kA high); on in the authors' shipped "
        "script (adv_scale=True)")
    # Evaluation.
    eval_every: int = option(20, "evaluate every N steps (and at the last)")
    eval_samples: int = option(8, "samples per held-out prompt (pass@k, mean accuracy)")
    eval_temperature: float = option(1.0, "evaluation sampling temperature")
    eval_top_p: float = option(1.0, "evaluation top-p")
    # Scale-out: devices (JAX), LoRA, precision, schedule (see distribution.py, optim.py).
    distribution: str = option(
        "none", "none | data | model:BxM (KERAS_BACKEND=jax): data parallel over every "
        "device, or weights sharded by the backbone's layout map on a (batch B, model M) "
        "mesh with B x M = the device count")
    processes: str = option(
        "1", "processes (hosts) of the run: 1, N (each started with its --process-id and "
        "process 0's --coordinator-address, or Keras' KERAS_DISTRIBUTION_* variables / "
        "JAX_COORDINATOR_ADDRESS), or auto (JAX detects SLURM, TPU pod slices, Open MPI); "
        "KERAS_BACKEND=jax")
    process_id: int | None = option(
        None, "this process's id, 0 to N-1 (process 0 coordinates and alone writes MLflow, "
        "checkpoints and exports); none: from the environment")
    coordinator_address: str | None = option(
        None, "host:port where process 0 serves JAX's coordinator (none: from the "
        "environment)")
    peer_timeout: int = option(
        100, "seconds without a heartbeat after which a process counts as dead and every "
        "other process stops (JAX's heartbeat timeout)")
    lora_rank: int = option(
        0, "train rank-R LoRA pairs on the attention's query/value projections only (0: full "
        "fine-tuning); the export merges them into a full preset")
    dtype: str = option(
        "float32", "float32 | bfloat16 (weights and compute) | mixed_bfloat16 (float32 "
        "weights); the loss's log-softmax and entropies run in float32")
    grad_accum_steps: int = option(
        1, "split each update's batch into N micro-batches and average their gradients (N "
        "must divide prompts_per_step x group_size)")
    lr_schedule: str = option("constant", "constant | cosine (to 0 at the last update), "
                              "after --warmup-steps")
    warmup_steps: int = option(0, "optimizer updates of linear learning-rate warm-up")
    # Bookkeeping.
    seed: int = option(0, "seed of the model's init, prompts, samples and evaluation")
    run_dir: str = option(
        "runs/grpo", "checkpoints, history and exports; rerun with the same --run-dir to "
        "resume")
    checkpoint_every: int = option(10, "checkpoint every N steps (and at the last)")
    experiment: str = option("grpo", "MLflow experiment")
    run_name: str | None = option(None, "MLflow run name (none: pipeline, model, task, arm, "
                                  "seed)")

    def __post_init__(self):
        problems = Problems("GRPO settings")
        is_file = is_data_file(self.task)
        if self.warm_start_steps is None:
            self.warm_start_steps = 0 if is_file else WARM_START_STEPS
        for name in ["tiny_layers", "tiny_hidden_dim", "num_eval_prompts", "steps",
                     "prompts_per_step", "max_prompt_tokens", "max_new_tokens",
                     "updates_per_rollout", "eval_every", "eval_samples", "checkpoint_every",
                     "warm_start_batch_size"]:
            problems.at_least(name, getattr(self, name), 1)
        problems.check(self.group_size >= 2,
                       "group_size must be >= 2 to normalise within a group "
                       f"(got {self.group_size})")
        problems.at_least("warm_start_steps", self.warm_start_steps, 0)
        for name in ["temperature", "eval_temperature", "learning_rate", "epsilon"]:
            value = getattr(self, name)
            problems.check(value > 0, f"{name} must be > 0 (got {value})")
        for name in ["top_p", "eval_top_p", "top_fraction"]:
            problems.in_range(name, getattr(self, name), 0, 1, low_open=True)
        problems.in_range("held_out_fraction", self.held_out_fraction, 0, 1,
                          low_open=True, high_open=True)
        problems.check(self.dual_clip is None or self.dual_clip > 1,
                       f"dual_clip must be > 1 or none (got {self.dual_clip})")
        problems.at_least("kl_coef", self.kl_coef, 0)
        for problem in self._loss_problems():
            problems.add(problem)
        problems.at_least("era_k", self.era_k, 1)
        # H_resp is an entropy: never negative, so a negative threshold is a typo.
        problems.at_least("omega_low", self.omega_low, 0)
        problems.check(self.omega_low <= self.omega_high,
                       f"omega_low ({self.omega_low}) must not exceed omega_high "
                       f"({self.omega_high})")
        problems.check(
            not self.model.startswith("tiny:") or self.model[5:] in TINY_FAMILIES,
            f"tiny model family must be one of {', '.join(TINY_FAMILIES)} (got {self.model!r})")
        problems.check(
            self.task in BUILTIN_TASKS or is_file,
            f"task must be one of {', '.join(BUILTIN_TASKS)} or a data file "
            f"({', '.join(DATA_SUFFIXES)}) (got {self.task!r})")
        for name in ("task", "eval_data"):
            path = getattr(self, name)
            if path and is_data_file(path):
                problems.check(pathlib.Path(path).is_file(),
                               f"{name} file {path} does not exist")
        problems.check(
            not is_file or self.warm_start_steps == 0,
            "warm_start_steps must be 0 for a data file task: the supervised warm start needs "
            f"the worked solutions that only the built-in tasks ({', '.join(BUILTIN_TASKS)}) "
            "have")
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

    def _loss_problems(self):
        """Ranges of the policy loss's and entropy controls' settings, and the
        combinations that would silently do nothing."""
        problems = Problems("")
        if not problems.choice("policy_loss", self.policy_loss, POLICY_LOSSES):
            return problems.messages
        problems.choice("importance_sampling_level", self.importance_sampling_level,
                        IMPORTANCE_SAMPLING_LEVELS)
        if self.epsilon_high is not None:
            problems.check(self.epsilon_high > 0,
                           f"epsilon_high must be > 0 or none (got {self.epsilon_high})")
        problems.check(
            self.importance_sampling_level == "token" or self.policy_loss == "vanilla",
            f"importance_sampling_level=sequence (GSPO) works with policy_loss=vanilla only "
            f"(got policy_loss={self.policy_loss})")
        problems.in_range("clip_cov_ratio", self.clip_cov_ratio, 0, 1, low_open=True)
        problems.check(self.clip_cov_lb < self.clip_cov_ub,
                       f"clip_cov_lb ({self.clip_cov_lb}) must be below clip_cov_ub "
                       f"({self.clip_cov_ub})")
        problems.in_range("kl_cov_ratio", self.kl_cov_ratio, 0, 1, low_open=True)
        problems.at_least("ppo_kl_coef", self.ppo_kl_coef, 0)
        problems.check(
            self.policy_loss != "kl_cov" or self.epsilon_high is None,
            "epsilon_high does nothing with policy_loss=kl_cov (KL-Cov does not clip the "
            "ratio); leave it unset")
        problems.at_least("entropy_coef", self.entropy_coef, 0)
        problems.at_least("entropy_target", self.entropy_target, 0)
        problems.at_least("entropy_coef_min", self.entropy_coef_min, 0)
        problems.check(self.entropy_coef_delta > 0,
                       f"entropy_coef_delta must be > 0 (got {self.entropy_coef_delta})")
        if self.use_adaptive_entropy:
            problems.check(
                self.entropy_coef_min <= self.entropy_coef <= self.entropy_coef_max,
                f"with use_adaptive_entropy, entropy_coef ({self.entropy_coef}) must lie in "
                f"[entropy_coef_min, entropy_coef_max] = [{self.entropy_coef_min}, "
                f"{self.entropy_coef_max}]")
        problems.in_range("top_entropy_quantile", self.top_entropy_quantile, 0, 1)
        return problems.messages

    def _scale_out_problems(self):
        from pipelines.common.errors import UserError
        from pipelines.grpo.distribution import parse_distribution
        from pipelines.grpo.optim import LR_SCHEDULES
        from pipelines.grpo.processes import parse_processes

        problems = []
        try:
            parse_distribution(self.distribution)
        except UserError as error:
            problems.append(str(error))
        try:
            parse_processes(self.processes)
        except UserError as error:
            problems.append(str(error))
        if self.process_id is not None and self.process_id < 0:
            problems.append(f"process_id must be >= 0 (got {self.process_id})")
        if self.peer_timeout < 1:
            problems.append(f"peer_timeout must be >= 1 second (got {self.peer_timeout})")
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
PRESETS = {
    "era-paper": dict(
        era=True, era_k=2.0, omega_low=0.45, omega_high=3.0, era_top_k=20,
        scale_advantages=True,
        group_size=8, prompts_per_step=256, dynamic_sampling=True, max_sampling_rounds=30,
        loss_type="dapo", scale_rewards="group", updates_per_rollout=1,
        policy_loss="vanilla", epsilon=1.0, epsilon_high=1.0, dual_clip=10.0, kl_coef=0.0,
        learning_rate=1e-6, temperature=1.0, top_p=1.0,
        max_prompt_tokens=2048, max_new_tokens=8192,
        overlong_buffer_len=0, mask_truncated_completions=False,
        eval_temperature=1.0, eval_top_p=0.7, warm_start_steps=0,
    ),
}
