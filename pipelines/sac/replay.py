"""Replay of single transitions (s, a, r, s', discount) in tf.Variables, sampled in-graph.

TF-Agents' usual SAC input pipeline stores time steps and samples pairs with
`as_dataset(num_steps=2)`; a pair that straddles two episodes must then be filtered out,
which cost ~40% of training throughput here (108 vs 180 grad steps/s), and every batch
is a round trip through a tf.data iterator. This buffer stores whole transitions, so
every stored row is a valid (s, a, r, s'), and keeps them in a ring of tf.Variables:
`sample` is a `tf.random.uniform` + gather that runs inside the (XLA-compiled) update,
with no Python and no iterator between updates. The variables are the checkpoint: a
tf.train.Checkpoint of the buffer restores every stored transition and the write
position exactly.

What is never stored: the step from an episode's LAST time step to the next episode's
FIRST one (an auto-reset, not an environment transition). With several environments
(`--num-envs`) each row comes from one environment's own consecutive time steps.
"""

import tensorflow as tf
from tf_agents.trajectories import policy_step, trajectory
from tf_agents.trajectories import time_step as ts


class TransitionReplay(tf.Module):
    """A uniform replay ring of transitions.

    Args:
        observation_spec, action_spec: TF-Agents TensorSpecs of one observation / action.
        capacity: rows kept; once full, the oldest rows are overwritten.

    Rows hold observation, action, reward, discount (of the next time step: 0 on
    termination, 1 on a time-limit truncation) and next_observation.
    """

    def __init__(self, observation_spec, action_spec, capacity, name="transition_replay"):
        super().__init__(name=name)
        self.capacity = int(capacity)
        self._observation_spec = observation_spec
        self._action_spec = action_spec

        def ring(shape, dtype, field):
            return tf.Variable(tf.zeros((self.capacity, *shape), dtype), trainable=False,
                               name=field)

        obs_shape, obs_dtype = observation_spec.shape, observation_spec.dtype
        self.observation = ring(obs_shape, obs_dtype, "observation")
        self.action = ring(action_spec.shape, action_spec.dtype, "action")
        self.reward = ring((), tf.float32, "reward")
        self.discount = ring((), tf.float32, "discount")
        self.next_observation = ring(obs_shape, obs_dtype, "next_observation")
        # Rows ever added; the next row goes to added % capacity.
        self.added = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="added")

    def size(self):
        """Rows currently stored (int64 scalar)."""
        return tf.minimum(self.added, self.capacity)

    def add(self, time_step, action, next_time_step):
        """Stores the batch's transitions, skipping rows whose `time_step` is LAST.

        All arguments carry a leading batch dimension (one row per environment).
        Returns the number of rows stored.
        """
        keep = tf.logical_not(time_step.is_last())
        count = tf.reduce_sum(tf.cast(keep, tf.int64))
        rows = (self.added + tf.range(count)) % self.capacity
        rows = rows[:, tf.newaxis]
        values = (
            (self.observation, time_step.observation),
            (self.action, action),
            (self.reward, next_time_step.reward),
            (self.discount, next_time_step.discount),
            (self.next_observation, next_time_step.observation),
        )
        for variable, value in values:
            variable.scatter_nd_update(rows, tf.boolean_mask(
                tf.cast(value, variable.dtype), keep))
        self.added.assign_add(count)
        return count

    def sample(self, batch_size):
        """`[batch_size]` TF-Agents Transitions drawn uniformly with replacement.

        The buffer must hold at least one row. Step types are MID on both sides: the
        agent's losses use only observations, the action, and the next step's reward
        and discount.
        """
        rows = tf.random.uniform((batch_size,), maxval=self.size(), dtype=tf.int64)
        return self.transitions(rows)

    def transitions(self, rows):
        """The stored rows `rows` as TF-Agents Transitions (leading dim = len(rows))."""
        gather = lambda variable: tf.gather(variable, rows)  # noqa: E731
        mid = tf.fill(tf.shape(rows), ts.StepType.MID)
        reward = gather(self.reward)
        discount = gather(self.discount)
        time_step = ts.TimeStep(mid, tf.zeros_like(reward), tf.ones_like(discount),
                                gather(self.observation))
        next_time_step = ts.TimeStep(mid, reward, discount, gather(self.next_observation))
        action_step = policy_step.PolicyStep(gather(self.action), (), ())
        return trajectory.Transition(time_step, action_step, next_time_step)

    def stored(self):
        """Every stored row, oldest first (for inspection and tests)."""
        size = self.size()
        start = tf.where(self.added > self.capacity, self.added % self.capacity, 0)
        return self.transitions((start + tf.range(size)) % self.capacity)
