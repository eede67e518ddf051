"""The SAC training loop: collect with a TF-Agents driver, train from transition replay,
evaluate the deterministic policy, checkpoint everything, track in MLflow, export.

One iteration = one environment step (random actions for the first `warmup_steps`), then
`updates_per_step` gradient steps. Everything that a killed run needs is in one
tf.train.Checkpoint under `<run_dir>/checkpoints`: the agent (networks, target networks,
optimizers, alpha or delta), the replay buffer, the env-step counter and the running
episode metrics. Starting again with the same `run_dir` restores it and continues the
same MLflow run.
"""

import json
import pathlib
import time

import numpy as np
import tensorflow as tf
from tf_agents.drivers import dynamic_step_driver
from tf_agents.environments import tf_py_environment
from tf_agents.eval import metric_utils
from tf_agents.metrics import tf_metrics
from tf_agents.policies import greedy_policy, policy_saver, random_tf_policy
from tf_agents.utils import common

from pipelines.common import tracking
from pipelines.sac import envs, networks, replay
from pipelines.sac.agent import ERASacAgent, make_agent

EXPERIMENT = "sac"
# Fields that may change when a run is resumed; any other change starts a different run.
RESUMABLE_CHANGES = {"total_env_steps", "eval_every", "eval_episodes", "log_every",
                     "checkpoint_every", "export_base", "model_name"}


def check_resume_config(run_dir, config):
    """Refuse to resume a run dir with a different config; record the config otherwise."""
    path = pathlib.Path(run_dir) / "sac_config.json"
    current = json.loads(json.dumps(tracking.config_to_dict(config), default=list))
    if path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(
            key for key in set(saved) | set(current)
            if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key)
        )
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise ValueError(
                f"{run_dir} holds a run with other settings ({details}). Resume it with "
                f"the same settings (only {sorted(RESUMABLE_CHANGES)} may change) or give "
                "another --run-dir."
            )
    tracking.write_json(path, current)


class SacRun:
    """The pieces of one run, built from a SacConfig and restored from its checkpoint."""

    def __init__(self, config):
        self.config = config
        tf.keras.utils.set_random_seed(config.seed)
        self.env = tf_py_environment.TFPyEnvironment(
            envs.load_environment(
                config.env, config.seed, config.action_repeat, config.time_limit
            )
        )
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
        self.buffer = replay.transition_buffer(self.agent, config.buffer_size)
        self.train_metrics = [
            tf_metrics.AverageReturnMetric(buffer_size=10),
            tf_metrics.AverageEpisodeLengthMetric(buffer_size=10),
        ]
        self.checkpoint = tf.train.Checkpoint(
            agent=self.agent,
            replay_buffer=self.buffer,
            env_step=self.env_step,
            train_metrics=self.train_metrics,
        )
        self.checkpoints = tf.train.CheckpointManager(
            self.checkpoint, pathlib.Path(config.run_dir) / "checkpoints", max_to_keep=1
        )
        self.checkpoints.restore_or_initialize()

        def driver(policy):
            return common.function(
                dynamic_step_driver.DynamicStepDriver(
                    self.env,
                    policy,
                    observers=self.train_metrics,
                    transition_observers=[replay.TransitionObserver(self.buffer)],
                    num_steps=1,
                ).run
            )

        self.collect_random = driver(
            random_tf_policy.RandomTFPolicy(
                self.env.time_step_spec(), self.env.action_spec()
            )
        )
        self.collect = driver(self.agent.collect_policy)
        self.train_step = common.function(self.agent.train)
        self.batches = None

    def sample(self):
        if self.batches is None:
            self.batches = replay.sample_batches(self.buffer, self.config.batch_size)
        return next(self.batches)

    def policy_statistics(self, batch):
        """Entropies of the current policy on a replay batch (same rule for both agents)."""
        distribution = self.agent.policy.distribution(batch.time_step).action
        executed = networks.executed_entropy(distribution, self.config.entropy_samples)
        pre_squash = networks.pre_squash_entropy(distribution)
        stats = {
            "entropy/executed": float(tf.reduce_mean(executed)),
            "entropy/pre_squash": float(tf.reduce_mean(pre_squash)),
            "entropy/pre_squash_min": float(tf.reduce_min(pre_squash)),
        }
        stats["entropy/target"] = float(self.agent.target_entropy)
        if self.is_era:
            stats["entropy/floor"] = float(self.agent.entropy_floor)
            stats["delta"] = float(self.agent.delta)
        else:
            stats["alpha"] = float(self.agent.alpha)
        return stats

    def evaluate(self):
        """Mean return and episode length of the deterministic policy."""
        metrics = [
            tf_metrics.AverageReturnMetric(buffer_size=self.config.eval_episodes),
            tf_metrics.AverageEpisodeLengthMetric(buffer_size=self.config.eval_episodes),
        ]
        metric_utils.eager_compute(
            metrics,
            self.eval_env,
            greedy_policy.GreedyPolicy(self.agent.policy),
            num_episodes=self.config.eval_episodes,
        )
        return {"eval/return": float(metrics[0].result()),
                "eval/episode_length": float(metrics[1].result())}

    def export(self, export_base, model_name):
        """The deterministic policy as a SavedModel in TF Serving's layout.

        PolicySaver writes TF-Agents' signatures (`action`, ...) to `<run_dir>/policy`;
        serving.export copies that into `<export_base>/<model_name>/<next version>/` with
        `action` also as `serving_default`, and refreshes `<export_base>/models.config`.
        Returns the version directory.
        """
        from serving.export import copy_into_layout

        saved_model_dir = pathlib.Path(self.config.run_dir) / "policy"
        policy_saver.PolicySaver(
            greedy_policy.GreedyPolicy(self.agent.policy),
            batch_size=None,
            train_step=self.agent.train_step_counter,
        ).save(str(saved_model_dir))
        tracking.write_json(
            saved_model_dir / "assets.extra" / "action_space.json",
            {"env": self.config.env, "policy_action_range": [-1.0, 1.0],
             "env_action_low": self.action_bounds[0], "env_action_high": self.action_bounds[1],
             "note": "the policy acts in [-1, 1]; the env gets low + (a + 1) / 2 * (high - low)"},
        )
        version_dir, _ = copy_into_layout(
            saved_model_dir, export_base, model_name, signature_name="action"
        )
        return version_dir


def loss_metrics(loss_info):
    extra = loss_info.extra._asdict()
    return {f"loss/{name}": float(value) for name, value in extra.items()
            if name.endswith("_loss")}


def _progress(config, initial):
    from tqdm.auto import tqdm

    return tqdm(total=config.total_env_steps, initial=initial, unit="step",
                desc=f"{config.agent}-sac {config.env}", dynamic_ncols=True)


def log_learning_curves(run_id):
    """A learning-curve + entropy plot from the run's whole metric history (resumes too)."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    curves = {}
    names = {"eval/return": "return/eval", "train/return": "return/train",
             "entropy/executed": "entropy/executed", "entropy/pre_squash": "entropy/pre-squash",
             "entropy/target": "entropy/target"}
    for metric, label in names.items():
        # A resumed run logs some steps twice; keep the latest value per step.
        points = {m.step: m.value for m in sorted(
            client.get_metric_history(run_id, metric), key=lambda m: m.timestamp)}
        if points:
            steps = sorted(points)
            curves[label] = (steps, [points[s] for s in steps])
    if curves:
        tracking.log_curves(curves, "learning_curves.png", xlabel="env step")
    return curves


def train(config, tracking_uri=None, run_name=None):
    """Train (or resume) one run; returns a dict of final metrics and paths."""
    import mlflow

    run_dir = pathlib.Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resume_config(run_dir, config)
    run = SacRun(config)
    with tracking.tracked_run(EXPERIMENT, config, run_dir=run_dir,
                              tracking_uri=tracking_uri, run_name=run_name) as active:
        mlflow.set_tag("resumed_from_env_step", int(run.env_step.numpy()))
        progress = _progress(config, int(run.env_step.numpy()))
        last = {"time": time.perf_counter(), "env": int(run.env_step.numpy()),
                "train": int(run.agent.train_step_counter.numpy())}
        metrics, loss_info = {}, None
        while int(run.env_step.numpy()) < config.total_env_steps:
            step = int(run.env_step.numpy())
            (run.collect_random if step < config.warmup_steps else run.collect)()
            run.env_step.assign_add(1)
            step += 1
            if step > config.warmup_steps:
                for _ in range(config.updates_per_step):
                    loss_info = run.train_step(run.sample())
            progress.update(1)

            if step % config.log_every == 0 or step == config.total_env_steps:
                now = time.perf_counter()
                train_steps = int(run.agent.train_step_counter.numpy())
                metrics = {
                    "train/return": float(run.train_metrics[0].result()),
                    "train/episode_length": float(run.train_metrics[1].result()),
                    "perf/env_steps_per_s": (step - last["env"]) / (now - last["time"]),
                    "perf/grad_steps_per_s": (train_steps - last["train"]) / (now - last["time"]),
                    "replay/size": int(run.buffer.num_frames().numpy()),
                }
                if int(run.buffer.num_frames()) >= config.batch_size:
                    metrics.update(run.policy_statistics(run.sample()))
                if loss_info is not None:
                    metrics.update(loss_metrics(loss_info))
                mlflow.log_metrics(metrics, step=step)
                progress.set_postfix({"return": f"{metrics['train/return']:.1f}",
                                      "entropy": f"{metrics.get('entropy/executed', np.nan):.2f}"})
                last = {"time": time.perf_counter(), "env": step, "train": train_steps}
            if step % config.eval_every == 0 or step == config.total_env_steps:
                evaluation = run.evaluate()
                mlflow.log_metrics(evaluation, step=step)
                metrics.update(evaluation)
                last["time"] = time.perf_counter()  # evaluation is not training time
            if step % config.checkpoint_every == 0 or step == config.total_env_steps:
                run.checkpoints.save(checkpoint_number=step)
        progress.close()

        export_base = pathlib.Path(config.export_base or run_dir / "export")
        export_dir = run.export(export_base, config.model_name)
        mlflow.log_artifacts(str(export_dir), artifact_path="policy")
        log_learning_curves(active.info.run_id)
        result = {
            "run_id": active.info.run_id,
            "env_steps": int(run.env_step.numpy()),
            "train_steps": int(run.agent.train_step_counter.numpy()),
            "export_dir": str(export_dir),
            **metrics,
        }
        tracking.write_json(run_dir / "result.json", result)
        return result
