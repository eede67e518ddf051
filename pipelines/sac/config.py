"""The SAC pipeline's settings: one dataclass, defaults from the ERA paper (arXiv 2510.08549).

`SacConfig()` is the authors' setting (512x2 ELU nets, 1e6 env steps, ...). The CLI starts
from a preset: `quick` (tiny nets, a few thousand steps, a minute or two on a laptop CPU)
or `paper` (the dataclass defaults); every field can then be overridden one by one.
"""

import dataclasses

from pipelines.common.config import Problems
from pipelines.common.errors import UserError

AGENTS = ("era", "sac")
SQUASHES = ("tanh", "truncated")
ACTIVATIONS = ("elu", "relu")


@dataclasses.dataclass
class SacConfig:
    # Environment
    env: str = "HalfCheetah-v5"
    action_repeat: int = 1
    time_limit: int = 0  # env steps per episode; 0 keeps the environment's own limit

    # Agent
    agent: str = "era"  # "era": ERA-SAC; "sac": standard SAC with auto-tuned alpha
    # ERA only: "truncated" normal on (-1, 1) around tanh(mu) (the authors' policy) or
    # "tanh" squashed Gaussian (TF-Agents' usual SAC policy; bound its mean, see mean_bound)
    squash: str = "truncated"
    target_entropy_per_dim: float = 0.25  # ERA's pre-squash floor H0 / D (nats); authors: 0.25
    # What delta steers the executed (bounded) action's entropy to, per dim; None: H0 / D.
    # On (-1, 1) no policy has more than log 2 = 0.693 nats per dim.
    executed_target_entropy_per_dim: float | None = None
    # tanh only: mu = m * tanh(mu_raw / m) keeps |mu| <= m, so the executed entropy has a
    # floor that delta can reach (0: unbounded mean, no such floor)
    mean_bound: float = 0.0
    log_std_min: float = -8.0
    log_std_max: float = 0.0
    delta: float = 0.0  # ERA's initial (or constant) entropy compensation, nats
    auto_delta: bool = True  # tune delta so the executed policy's entropy meets its target
    delta_lr: float = 1e-2  # Adam on log(delta): crosses delta's range in ~1k updates
    entropy_samples: int = 4  # Monte Carlo samples per state for the tanh policy's entropy
    sac_target_entropy_per_dim: float = -1.0  # standard SAC's alpha target (-dim(A))
    initial_log_alpha: float = 0.0

    # Networks and optimisation
    hidden_sizes: tuple = (512, 512)
    activation: str = "elu"  # hidden layers of actor and critic; "relu" as in SB3
    critic_layer_norm: bool = True  # LayerNorm after each critic hidden layer (authors)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    critic_weight_decay: float = 1e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    updates_per_step: int = 2
    num_envs: int = 1  # environments stepped together; updates_per_step per env step

    # Data
    total_env_steps: int = 1_000_000
    warmup_steps: int = 5_000  # uniformly random actions before learning starts
    buffer_size: int = 1_000_000

    # Evaluation, logging, checkpoints
    eval_every: int = 25_000
    eval_episodes: int = 10
    log_every: int = 1_000
    checkpoint_every: int = 10_000
    seed: int = 0
    run_dir: str = "runs/sac"
    export_base: str = ""  # TF Serving base dir; empty: <run_dir>/export
    model_name: str = "era_sac_policy"

    def __post_init__(self):
        self.hidden_sizes = tuple(int(size) for size in self.hidden_sizes)
        check_config(self)


QUICK = dict(
    env="Pendulum-v1",
    hidden_sizes=(64, 64),
    batch_size=64,
    updates_per_step=1,
    total_env_steps=3_000,
    warmup_steps=500,
    buffer_size=10_000,
    eval_every=1_000,
    eval_episodes=2,
    log_every=250,
    checkpoint_every=1_000,
)
PRESETS = {"quick": QUICK, "paper": {}}


def from_preset(preset="quick", **overrides):
    """A SacConfig from a named preset, then `overrides` field by field."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
    return SacConfig(**{**PRESETS[preset], **overrides})


def check_config(config):
    """Raise one ConfigError listing every setting that is not allowed (and what is)."""
    problems = Problems("SAC settings")
    problems.choice("agent", config.agent, AGENTS)
    problems.choice("squash", config.squash, SQUASHES)
    problems.choice("activation", config.activation, ACTIVATIONS)
    positive = (
        "action_repeat", "batch_size", "updates_per_step", "num_envs", "total_env_steps",
        "buffer_size", "eval_every", "eval_episodes", "log_every", "checkpoint_every",
        "entropy_samples",
    )
    for name in positive:
        problems.at_least(name, getattr(config, name), 1)
    for name in ("time_limit", "warmup_steps", "delta", "critic_weight_decay", "mean_bound",
                 "delta_lr"):
        problems.at_least(name, getattr(config, name), 0)
    problems.check(config.mean_bound == 0 or config.squash == "tanh",
                   "mean_bound applies to squash='tanh' only (the truncated normal's loc is "
                   "tanh(mu), already inside (-1, 1))")
    problems.check(config.log_std_min < config.log_std_max,
                   f"log_std_min ({config.log_std_min}) must be below log_std_max "
                   f"({config.log_std_max})")
    problems.check(bool(config.hidden_sizes) and min(config.hidden_sizes, default=0) >= 1,
                   f"hidden_sizes must be positive sizes (got {config.hidden_sizes})")
    problems.in_range("tau", config.tau, 0.0, 1.0, low_open=True)
    problems.in_range("gamma", config.gamma, 0.0, 1.0)
    problems.check(
        config.batch_size <= config.buffer_size,
        f"batch_size ({config.batch_size}) cannot exceed buffer_size ({config.buffer_size})",
    )
    problems.raise_if_any()
