"""The SAC algorithm on the shared run lifecycle (`pipelines.common.lifecycle`).

One iteration = one step of every environment (random actions for the first
`warmup_steps` env steps), then `updates_per_step` gradient steps per env step.
`loop.CollectAndUpdate` runs whole chunks of iterations in one compiled call; Python
takes over only at the log / eval / checkpoint boundaries, which `IntervalTrigger`s fire.
`RunLifecycle` does the rest: the run dir is locked and claimed only once the settings are
known to be valid (the environment exists, the entropy targets are reachable with its
action dimension) and the tracking store answers; a run started again on the same run dir
restores the newest readable checkpoint (`checkpoint.SacCheckpoint`), continues the same
MLflow run and logs each metric once per env step, however often it was killed.
"""

import pathlib
import time
import warnings

import numpy as np
import tensorflow as tf
from tf_agents.environments import batched_py_environment, tf_py_environment
from tf_agents.eval import metric_utils
from tf_agents.metrics import tf_metrics
from tf_agents.policies import greedy_policy

from pipelines.common import tracking
from pipelines.common.config import Problems
from pipelines.common.lifecycle import IntervalTrigger, RunLifecycle, run_name
from pipelines.common.metrics import grouped, metric_history
from pipelines.sac import entropy, envs, loop, networks, replay
from pipelines.sac.agent import ERASacAgent, make_agent
from pipelines.sac.checkpoint import SacCheckpoint
from pipelines.sac.export import export_policy

# Autograph compiles TF-Agents' `state is not ()` checks into code that Python flags with a
# SyntaxWarning on every trace; the code is TF-Agents', the warning says nothing about ours.
warnings.filterwarnings("ignore", category=SyntaxWarning, module=r".*__autograph_generated_file")

EXPERIMENT = "sac"
# Fields that may change when a run is resumed; any other change starts a different run.
RESUMABLE_CHANGES = ("total_env_steps", "eval_every", "eval_episodes", "log_every",
                     "checkpoint_every", "export_base", "model_name")


def default_run_name(config):
    """The MLflow run name: pipeline, env, agent (and squash), seed."""
    agent = f"era-{config.squash}" if config.agent == "era" else "sac"
    if config.agent == "era" and config.squash == "tanh" and config.mean_bound > 0:
        agent += f"-m{config.mean_bound:g}"
    return run_name("sac", config.env, agent, seed=config.seed)


class SacRun:
    """The pieces of one run, built from a SacConfig and restored from its checkpoint."""

    def __init__(self, config):
        self.config = config
        tf.keras.utils.set_random_seed(config.seed)
        # Environment i is seeded seed + i. Stepped one after another in this process:
        # on a CPU the env step is well under 1% of an iteration, so threads or processes
        # would only add overhead (and contend with the update for the same cores).
        self.env = tf_py_environment.TFPyEnvironment(
            batched_py_environment.BatchedPyEnvironment(
                [envs.load_environment(config.env, config.seed + index,
                                       config.action_repeat, config.time_limit)
                 for index in range(config.num_envs)],
                multithreading=False,
            )
        )
        action_dim = self.env.action_spec().shape.num_elements()
        problems = Problems(f"SAC settings for {config.env} ({action_dim} action dims)")
        entropy.check_targets(problems, config, action_dim)
        problems.raise_if_any()
        self.eval_env = tf_py_environment.TFPyEnvironment(
            envs.load_environment(
                config.env, config.seed + 10_000, config.action_repeat, config.time_limit
            )
        )
        self.action_bounds = envs.native_action_bounds(self.env.pyenv.envs[0])
        self.env_step = tf.Variable(0, dtype=tf.int64, name="env_step")
        self.agent = make_agent(
            config,
            self.env.time_step_spec(),
            self.env.action_spec(),
            train_step_counter=tf.Variable(0, dtype=tf.int64, name="train_step"),
        )
        self.agent.initialize()
        self.is_era = isinstance(self.agent, ERASacAgent)
        self.replay = replay.TransitionReplay(
            self.env.observation_spec(), self.env.action_spec(), config.buffer_size
        )
        self.train_metrics = [
            tf_metrics.AverageReturnMetric(batch_size=config.num_envs, buffer_size=10),
            tf_metrics.AverageEpisodeLengthMetric(batch_size=config.num_envs, buffer_size=10),
            # The best of the last 10 episodes: shows the first success on sparse tasks.
            tf_metrics.MaxReturnMetric(batch_size=config.num_envs, buffer_size=10),
        ]
        self.checkpoint = SacCheckpoint(config.run_dir, self.agent, self.replay,
                                        self.env_step, self.train_metrics)
        self.loop = loop.CollectAndUpdate(
            self.env, self.agent, self.replay, self.train_metrics, self.env_step,
            batch_size=config.batch_size, updates_per_step=config.updates_per_step,
        )
        self.eval_metrics = None

    def restore(self):
        """Restore the newest readable checkpoint of the run dir; returns its env step or None."""
        return self.checkpoint.restore()

    def save(self):
        """Checkpoint the current env step (the newest two are kept)."""
        return self.checkpoint.save()

    def policy_statistics(self, batch):
        """Entropies of the current policy on a replay batch (same rule for both agents)."""
        distribution = self.agent.policy.distribution(batch.time_step).action
        executed = networks.executed_entropy(distribution, self.config.entropy_samples)
        pre_squash = networks.pre_squash_entropy(distribution)
        stats = {
            "executed": tf.reduce_mean(executed),
            "executed_target": self.agent.target_entropy,
            "pre_squash": tf.reduce_mean(pre_squash),
            "pre_squash_min": tf.reduce_min(pre_squash),
        }
        if self.is_era:
            stats["pre_squash_floor"] = self.agent.entropy_floor  # H0 + delta
            stats["delta"] = self.agent.delta
        else:
            stats["alpha"] = self.agent.alpha
        return grouped("entropy", stats)

    def evaluate(self):
        """Mean return and episode length of the deterministic policy."""
        if self.eval_metrics is None:  # made once: new metric objects retrace their functions
            self.eval_metrics = [
                tf_metrics.AverageReturnMetric(buffer_size=self.config.eval_episodes),
                tf_metrics.AverageEpisodeLengthMetric(buffer_size=self.config.eval_episodes),
            ]
        metrics = self.eval_metrics
        metric_utils.eager_compute(
            metrics,
            self.eval_env,
            greedy_policy.GreedyPolicy(self.agent.policy),
            num_episodes=self.config.eval_episodes,
        )
        return {"eval/return": float(metrics[0].result()),
                "eval/episode_length": float(metrics[1].result())}

    def export(self, export_base, model_name):
        """The policy as a plain SavedModel in TF Serving's layout (see `export.py`).

        Returns (the SavedModel under the run dir, the version directory).
        """
        return export_policy(
            self.agent._actor_network,
            self.env.observation_spec().shape.num_elements(),
            self.action_bounds,
            self.config.run_dir,
            export_base,
            model_name,
            about={"env": self.config.env, "agent": self.config.agent,
                   "train_step": int(self.agent.train_step_counter.numpy())},
        )


def finite_or_none(value):
    value = float(value)
    return value if np.isfinite(value) else None


def loss_metrics(loss_info):
    extra = loss_info.extra._asdict()
    return grouped("train", {name: value for name, value in extra.items()
                             if name.endswith("_loss")})


def _progress(config, initial):
    from tqdm.auto import tqdm

    return tqdm(total=config.total_env_steps, initial=initial, unit="step",
                desc=f"{config.agent}-sac {config.env}", dynamic_ncols=True)


CURVES = {"eval/return": "return/eval", "train/return": "return/train",
          "entropy/executed": "entropy/executed", "entropy/executed_target": "entropy/target",
          "entropy/pre_squash": "entropy/pre-squash"}


def log_learning_curves(run_id):
    """A learning-curve + entropy plot from the run's whole metric history (resumes too)."""
    history = metric_history(run_id, list(CURVES))
    curves = {CURVES[key]: series for key, series in history.items() if series[0]}
    if curves:
        tracking.log_curves(curves, "learning_curves.png", xlabel="env step")
    return curves


class Throughput:
    """Env and gradient steps per second of training time since the last log."""

    def __init__(self, run):
        self.run = run
        self.restart()

    def counters(self):
        return (int(self.run.env_step.numpy()), int(self.run.agent.train_step_counter.numpy()))

    def restart(self):
        """Start a new interval here (after a log, or after an evaluation: not training)."""
        self.time = time.perf_counter()
        self.env, self.train = self.counters()

    def metrics(self):
        seconds = time.perf_counter() - self.time
        env, train = self.counters()
        return grouped("perf", {"env_steps_per_s": (env - self.env) / seconds,
                                "grad_steps_per_s": (train - self.train) / seconds})


def train_metrics(run, step, loss_info, watch):
    """The metrics logged every `log_every` env steps: returns, entropies, losses."""
    metrics = grouped("train", {
        "return": run.train_metrics[0].result(),
        "episode_length": run.train_metrics[1].result(),
        # None (not logged) before the first episode ends: max of nothing.
        "max_return": finite_or_none(run.train_metrics[2].result()),
        "replay_size": run.replay.size(),
    })
    if int(run.replay.size()) >= run.config.batch_size:
        metrics.update(run.policy_statistics(run.replay.sample(run.config.batch_size)))
    if step > run.config.warmup_steps and "entropy/executed" in metrics:
        # Counts only once updates start: the warm-up's random actions are not the policy's.
        shortfall = watch.observe(step, metrics["entropy/executed"],
                                  metrics["entropy/executed_target"])
        if shortfall:
            import mlflow

            mlflow.set_tag("warning.entropy_shortfall", shortfall)
    if loss_info is not None:
        metrics.update(loss_metrics(loss_info))
    return metrics


def train(config, tracking_uri=None, run_name=None):
    """Train (or resume) one run; returns the lifecycle's summary (`RunLifecycle.finish`).

    `step` is the env step reached; `exports` holds `policy`, the version directory in TF
    Serving's layout; besides the final `metrics`, the summary has `train_steps`,
    `saved_model` (the policy under the run dir), `models_config` and `experiment` (the
    MLflow experiment the run is in: `sac`, or the one `mlflow run` chose).
    """
    import mlflow

    run = SacRun(config)  # loads the env and checks what needs its action dimension
    life = RunLifecycle(config, EXPERIMENT, run_name or default_run_name(config),
                        tracking_uri=tracking_uri, may_change=RESUMABLE_CHANGES)
    try:
        life.start()  # the store answers; the run dir is locked and claimed
        resumed_from = run.restore()
        if resumed_from is not None:
            life.announce_resume(f"env step {resumed_from}")
        last = config.total_env_steps
        log, evaluate, save = (IntervalTrigger(every, last) for every in (
            config.log_every, config.eval_every, config.checkpoint_every))
        watch = entropy.ShortfallWatch(config.total_env_steps)
        with life.tracking() as active:
            mlflow.set_tag("resumed_from_env_step", int(run.env_step.numpy()))
            progress = _progress(config, int(run.env_step.numpy()))
            throughput = Throughput(run)
            metrics, loss_info = {}, None
            while int(run.env_step.numpy()) < config.total_env_steps:
                previous = int(run.env_step.numpy())
                env_steps, warming_up = loop.next_chunk(previous, config)
                if warming_up:
                    run.loop.collect_random(env_steps)
                else:
                    loss_info = run.loop.run(env_steps)
                step = int(run.env_step.numpy())
                progress.update(step - previous)
                if log(previous, step):
                    metrics = {**train_metrics(run, step, loss_info, watch),
                               **throughput.metrics()}
                    life.log_metrics(metrics, step)
                    progress.set_postfix({
                        "return": f"{metrics['train/return']:.1f}",
                        "entropy": f"{metrics.get('entropy/executed', np.nan):.2f}"})
                    throughput.restart()
                if evaluate(previous, step):
                    evaluation = run.evaluate()
                    life.log_metrics(evaluation, step)
                    metrics.update(evaluation)
                    throughput.restart()  # evaluation is not training time
                if save(previous, step):
                    run.save()
            progress.close()

            export_base = pathlib.Path(config.export_base or life.run_dir / "export")
            saved_model_dir, export_dir = run.export(export_base, config.model_name)
            mlflow.log_artifacts(str(saved_model_dir), artifact_path="policy")
            log_learning_curves(active.info.run_id)
            experiment = mlflow.get_experiment(active.info.experiment_id).name
        return life.finish(
            int(run.env_step.numpy()), exports={"policy": export_dir}, metrics=metrics,
            train_steps=int(run.agent.train_step_counter.numpy()),
            saved_model=str(saved_model_dir), experiment=experiment,
            models_config=str(export_base.resolve() / "models.config"))
    finally:
        life.close()
