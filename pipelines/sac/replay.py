"""Replay of single transitions (s, a, r, s', discount), correct without any filtering.

TF-Agents' usual SAC input pipeline stores time steps and samples pairs with
`as_dataset(num_steps=2)`; a pair that straddles two episodes must then be filtered out,
which cost ~40% of training throughput when measured here (108 vs 180 grad steps/s).
Storing whole transitions, as the driver's transition observers see them, makes every
stored sample a valid (s, a, r, s') and lets the agent train on `[batch]`-shaped
Transitions directly.
The one transition a driver produces across an episode boundary (from a LAST step to the
reset's FIRST step) is never stored.
"""

import tensorflow as tf
from tf_agents.replay_buffers import tf_uniform_replay_buffer
from tf_agents.trajectories import trajectory


def transition_buffer(agent, capacity, batch_size=1):
    """A TFUniformReplayBuffer of the agent's Transitions (checkpointable tf.Module)."""
    return tf_uniform_replay_buffer.TFUniformReplayBuffer(
        data_spec=agent.data_context.transition_spec,
        batch_size=batch_size,
        max_length=int(capacity),
    )


class TransitionObserver:
    """A driver transition observer that adds (s, a, s') to the buffer, not across resets."""

    def __init__(self, buffer):
        self._buffer = buffer

    def __call__(self, transition_tuple):
        time_step, policy_step, next_time_step = transition_tuple
        transition = trajectory.Transition(
            time_step=time_step,
            action_step=policy_step._replace(info=(), state=()),
            next_time_step=next_time_step,
        )

        def add():
            self._buffer.add_batch(transition)
            return tf.constant(True)

        # Batch size 1: a LAST -> FIRST pair is a reset, not an environment transition.
        return tf.cond(time_step.is_last()[0], lambda: tf.constant(False), add)


def sample_batches(buffer, batch_size, seed=None):
    """An iterator of uniformly sampled `[batch_size]` Transitions."""
    dataset = buffer.as_dataset(
        sample_batch_size=batch_size, num_steps=None, num_parallel_calls=2
    ).map(lambda transition, _: transition)
    return iter(dataset.prefetch(2))
