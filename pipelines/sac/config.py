"""The SAC pipeline's settings: one dataclass, defaults from the ERA paper (arXiv 2510.08549).

`SacConfig()` is the authors' setting (512x2 ELU nets, 1e6 env steps, ...): the `paper`
preset. The CLI starts from the `quick` preset (tiny nets, a few thousand steps, a minute or
two on a laptop CPU) unless `--preset paper` is given; `--config-json FILE` and single flags
then override field by field (`pipelines.common.config.layered_values`). Each field carries
its help (`option`), which `--help`, `--print-config` and the table in docs/sac.md show.
"""

import dataclasses

from pipelines.common.config import Problems, layered_values, option

AGENTS = ("era", "sac")
SQUASHES = ("tanh", "truncated")
ACTIVATIONS = ("elu", "relu")


@dataclasses.dataclass
class SacConfig:
    # Environment
    env: str = option("HalfCheetah-v5",
                      "gymnasium id, DMC '<domain>-<task>', or '<module>:<id>'")
    action_repeat: int = option(1, "each action is applied this many env steps")
    time_limit: int = option(0, "agent steps per episode; 0 keeps the environment's own limit")

    # Agent
    agent: str = option("era", "'era': ERA-SAC; 'sac': standard SAC with auto-tuned alpha")
    squash: str = option(
        "truncated", "ERA: 'truncated' normal on (-1, 1) around tanh(mu) (the authors' "
        "policy), or 'tanh' squashed Gaussian (TF-Agents' usual SAC policy; see mean_bound)")
    target_entropy_per_dim: float = option(
        0.25, "ERA's floor H0 / D on the Gaussian before squashing, nats (authors: 0.25)")
    executed_target_entropy_per_dim: float | None = option(
        None, "what delta steers the executed action's entropy to, nats per dim (none: "
        "H0 / D); at most log 2 = 0.693 on (-1, 1)")
    mean_bound: float = option(
        0.0, "tanh only: mu = m tanh(mu_raw / m) keeps |mu| <= m, so the executed entropy "
        "keeps a floor that delta can reach (0: unbounded)")
    log_std_min: float = option(-8.0, "ERA's lower clip of log sigma")
    log_std_max: float = option(0.0, "ERA's upper clip of log sigma")
    delta: float = option(0.0, "ERA's initial (or constant) entropy compensation, nats")
    auto_delta: bool = option(True, "tune delta so the executed entropy meets its target")
    delta_lr: float = option(1e-2, "Adam's learning rate on log(delta): crosses delta's "
                             "range in ~1k updates")
    entropy_samples: int = option(4, "Monte Carlo samples per state for the tanh policy's "
                                  "entropy")
    sac_target_entropy_per_dim: float = option(
        -1.0, "standard SAC: alpha's target entropy per dim (-1: -dim(A))")
    initial_log_alpha: float = option(0.0, "standard SAC: log(alpha_0)")

    # Networks and optimisation
    hidden_sizes: tuple = option((512, 512), "hidden layer sizes of actor and critic")
    activation: str = option("elu", "hidden layers of actor and critic ('relu': as "
                             "Stable-Baselines3)")
    critic_layer_norm: bool = option(True, "LayerNorm after each critic hidden layer "
                                     "(the authors')")
    actor_lr: float = option(3e-4, "actor learning rate (Adam)")
    critic_lr: float = option(3e-4, "critic learning rate (AdamW)")
    alpha_lr: float = option(3e-4, "standard SAC: alpha's learning rate")
    critic_weight_decay: float = option(1e-4, "critic AdamW weight decay")
    gamma: float = option(0.99, "discount")
    tau: float = option(0.005, "target network update rate")
    batch_size: int = option(256, "transitions per gradient step")
    updates_per_step: int = option(2, "gradient steps per env step")
    num_envs: int = option(1, "environments stepped together; updates_per_step updates per "
                           "env step")

    # Data
    total_env_steps: int = option(1_000_000, "env steps of the whole run (may grow on "
                                  "resume)")
    warmup_steps: int = option(5_000, "uniformly random actions before learning starts")
    buffer_size: int = option(1_000_000, "replay capacity, transitions")

    # Evaluation, logging, checkpoints
    eval_every: int = option(25_000, "env steps between evaluations of the deterministic "
                             "policy")
    eval_episodes: int = option(10, "episodes per evaluation")
    log_every: int = option(1_000, "env steps between logged training metrics")
    checkpoint_every: int = option(10_000, "env steps between checkpoints (two kept)")
    seed: int = option(0, "random seed (environment i gets seed + i)")
    run_dir: str = option("runs/sac", "claimed once the settings are valid; running again "
                          "resumes it")
    export_base: str = option("", "TF Serving base directory; empty: <run_dir>/export")
    model_name: str = option("era_sac_policy", "model name in TF Serving's layout")

    def __post_init__(self):
        self.hidden_sizes = tuple(self.hidden_sizes)
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
# The CLI's starting point; `paper` is the dataclass itself.
PRESETS = {"quick": QUICK, "paper": {}}
DEFAULT_PRESET = "quick"


def from_preset(preset=DEFAULT_PRESET, **overrides):
    """A SacConfig from a named preset, then `overrides` field by field."""
    return SacConfig(**layered_values(SacConfig, PRESETS, preset, flags=overrides))


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
    sizes_ok = bool(config.hidden_sizes) and all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 1
        for size in config.hidden_sizes)
    problems.check(sizes_ok, f"hidden_sizes must be positive whole sizes (got "
                   f"{list(config.hidden_sizes)})")
    problems.in_range("tau", config.tau, 0.0, 1.0, low_open=True)
    problems.in_range("gamma", config.gamma, 0.0, 1.0)
    problems.check(
        config.batch_size <= config.buffer_size,
        f"batch_size ({config.batch_size}) cannot exceed buffer_size ({config.buffer_size})",
    )
    problems.check(bool(config.run_dir), "run_dir must be a directory path (got '')")
    problems.raise_if_any()
