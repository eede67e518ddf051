"""The SAC training loop's compiled machinery: collect from N environments and update.

One *iteration* steps every environment once (up to `num_envs` transitions into the
replay) and then runs `updates_per_step` gradient steps per stored transition, so the
ratio of updates to environment steps does not depend on `num_envs`. `run(env_steps)`
does many iterations in ONE tf.function call: the policy, the environment step (one
`tf.numpy_function` into `envs.FlatSteps`, the only Python per step), the replay write,
the episode metrics and the updates all stay in the graph, and Python sees the loop only
between chunks (logging, evaluation, checkpoints).

The updates are one `tf.function(jit_compile=True)`: a loop of (in-graph replay sample, a
uniform gather from `replay.TransitionReplay`; the agent's own `train`: critic, actor,
alpha or delta, target networks). XLA fuses each step and runs the loop itself, so no
Python, no tf.data iterator and no graph-executor hop sits between two updates
(docs/sac.md, "Speed").
"""

import tensorflow as tf
from tf_agents.policies import random_tf_policy
from tf_agents.trajectories import time_step as ts
from tf_agents.trajectories import trajectory

from pipelines.sac.envs import FlatSteps

# Env steps per compiled call at most: long enough that Python's share is negligible,
# short enough that the progress bar moves.
MAX_CHUNK = 100


def next_chunk(env_step, config):
    """(env_steps, warming_up): what to run from `env_step` up to the next boundary.

    Boundaries are the end of the random warm-up, the next multiple of `log_every`,
    `eval_every` and `checkpoint_every`, and `total_env_steps`. A chunk ends after the
    iteration that reaches its size, so with several envs it can overshoot a boundary by
    fewer than `num_envs` steps.
    """
    warming_up = env_step < config.warmup_steps
    boundaries = [config.total_env_steps] + [
        (env_step // every + 1) * every
        for every in (config.log_every, config.eval_every, config.checkpoint_every)
    ]
    if warming_up:
        boundaries.append(config.warmup_steps)
    return max(1, min(min(boundaries) - env_step, MAX_CHUNK)), warming_up


class CollectAndUpdate:
    """Compiled collect + update steps over a batched TFPyEnvironment's environments.

    An env step is one stored transition. The step that only resets an environment
    (after its episode's LAST time step) stores nothing, so it counts as no env step
    and earns no update, as in TF-Agents' step drivers.

    Args:
        env: a TFPyEnvironment over a BatchedPyEnvironment (its batch size is the number
            of environments). The loop steps the PyEnvironments inside it directly
            (`envs.FlatSteps`), so nothing else may step `env` once the loop has.
        agent: an initialized TF-Agents SAC agent (`agent.train` on `[batch]` Transitions).
        replay: a `replay.TransitionReplay`.
        observers: TF-Agents metrics fed with every collected trajectory (batched like env).
        env_step: an int64 tf.Variable counting env steps (advanced in the graph).
        batch_size: transitions per gradient step.
        updates_per_step: gradient steps per env step.
        jit_compile: compile the update with XLA (the default; False for debugging).
    """

    def __init__(self, env, agent, replay, observers, env_step, batch_size, updates_per_step,
                 jit_compile=True):
        self.env = env
        self.steps = FlatSteps(env.pyenv.envs)
        self._time_step_spec = env.time_step_spec()
        self._batch_size = env.batch_size
        self.agent = agent
        self.replay = replay
        self.observers = list(observers)
        self.env_step = env_step
        self.batch_size = int(batch_size)
        self.updates_per_step = int(updates_per_step)
        self._loss_info_spec = None
        self.random_policy = random_tf_policy.RandomTFPolicy(
            env.time_step_spec(), env.action_spec()
        )
        # One XLA computation for a whole run of updates (a while loop inside XLA), so
        # nothing but a loop counter sits between two updates.
        self._train = tf.function(self._updates, jit_compile=jit_compile)
        self._collect_random = tf.function(self._random_steps)
        self._collect_policy = tf.function(self._policy_steps)
        self._collect_and_update = tf.function(self._policy_steps_and_updates)

    def collect_random(self, env_steps=1):
        """At least `env_steps` env steps with uniform random actions, no updates."""
        self._collect_random(tf.constant(int(env_steps), tf.int64))

    def collect(self, env_steps=1):
        """At least `env_steps` env steps with the collect policy, no updates."""
        self._collect_policy(tf.constant(int(env_steps), tf.int64))

    def run(self, env_steps):
        """At least `env_steps` env steps with the collect policy, each followed by
        `updates_per_step` updates; returns the last LossInfo."""
        return self._collect_and_update(tf.constant(int(env_steps), tf.int64))

    def train(self, updates):
        """`updates` gradient steps on replay samples, in one call; returns the last LossInfo."""
        return self._train(tf.constant(int(updates), tf.int64))

    def _step_environments(self, policy, time_step):
        """One step of every environment; stores its transitions and feeds the metrics.

        Returns the next time step and how many transitions were stored.
        """
        action_step = policy.action(time_step)
        next_time_step = self._env_step(action_step.action)
        stored = self.replay.add(time_step, action_step.action, next_time_step)
        experience = trajectory.from_transition(time_step, action_step, next_time_step)
        for observer in self.observers:
            observer(experience)
        return next_time_step, stored

    def _time_step(self, flat):
        """A batched TimeStep from FlatSteps' four arrays (shapes restored for the graph)."""
        spec = self._time_step_spec
        shaped = [tf.ensure_shape(tensor, [self._batch_size, *field.shape])
                  for tensor, field in zip(flat, (spec.step_type, spec.reward, spec.discount,
                                                  spec.observation))]
        return ts.TimeStep(*shaped)

    def _env_current(self):
        flat = tf.numpy_function(self.steps.current, [], _FLAT_DTYPES, stateful=True,
                                 name="current_time_step")
        return self._time_step(flat)

    def _env_step(self, action):
        flat = tf.numpy_function(self.steps.step, [action], _FLAT_DTYPES, stateful=True,
                                 name="env_step")
        return self._time_step(flat)

    def _update(self):
        """One gradient step: a uniform replay sample, then the agent's own train step."""
        return self.agent.train(self.replay.sample(self.batch_size))

    def _zero_loss_info(self):
        # Loop variables need a value before the loop: zeros shaped like the LossInfo.
        if self._loss_info_spec is None:
            self._loss_info_spec = tf.function(self._update).get_concrete_function(
            ).structured_outputs
        return tf.nest.map_structure(_zeros_like, self._loss_info_spec)

    def _updates(self, count):
        loss_info = self._zero_loss_info()
        for _ in tf.range(count):
            loss_info = self._update()
        return loss_info

    def _random_steps(self, env_steps):
        return self._loop(self.random_policy, env_steps, update=False)

    def _policy_steps(self, env_steps):
        return self._loop(self.agent.collect_policy, env_steps, update=False)

    def _policy_steps_and_updates(self, env_steps):
        return self._loop(self.agent.collect_policy, env_steps, update=True)

    def _loop(self, policy, env_steps, update):
        loss_info = self._zero_loss_info() if update else ()
        time_step = self._env_current()
        done = tf.constant(0, tf.int64)
        while done < env_steps:
            time_step, stored = self._step_environments(policy, time_step)
            done += stored
            self.env_step.assign_add(stored)
            if update:
                loss_info = self._train(stored * self.updates_per_step)
        return loss_info


# step_type, reward, discount, observation (flat float32 for every loaded environment).
_FLAT_DTYPES = (tf.int32, tf.float32, tf.float32, tf.float32)


def _zeros_like(spec):
    return tf.zeros(spec.shape, spec.dtype)
