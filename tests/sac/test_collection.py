"""Collection and replay of the SAC loop: what is stored, from which env, and what survives
a checkpoint. Every check is exact: the probe environment writes (env, episode, t) into
its observations, so each stored transition says where it came from."""

import gymnasium
import numpy as np
import pytest

from pipelines.sac.config import SacConfig
from pipelines.sac.train import SacRun

TINY = dict(hidden_sizes=(8, 8), batch_size=8, warmup_steps=0, log_every=50,
            eval_every=1000, eval_episodes=1, checkpoint_every=1000)


class ProbeEnv(gymnasium.Env):
    """Observation (env id, episode, t), reward 1000 * id + 10 * episode + t.

    The env id is the seed of its first reset (env i of a run is seeded seed + i).
    Env i's episodes last 3 + i steps; even episodes end by termination (discount 0),
    odd ones by truncation (discount 1), so both endings are exercised.
    """

    observation_space = gymnasium.spaces.Box(-1e6, 1e6, (3,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self):
        self.env_id, self.episode, self.t = None, -1, 0

    def _observation(self):
        return np.array([self.env_id, self.episode, self.t], np.float32)

    def reset(self, seed=None, options=None):
        if self.env_id is None:
            self.env_id = seed
        self.episode += 1
        self.t = 0
        return self._observation(), {}

    def step(self, action):
        self.t += 1
        reward = 1000.0 * self.env_id + 10.0 * self.episode + self.t
        ended = self.t == 3 + self.env_id
        terminated = ended and self.episode % 2 == 0
        truncated = ended and self.episode % 2 == 1
        return self._observation(), reward, terminated, truncated, {}


gymnasium.register("TransitionProbe-v0", entry_point=ProbeEnv, disable_env_checker=True)


def probe_run(tmp_path, **overrides):
    config = SacConfig(env="TransitionProbe-v0", seed=0, run_dir=str(tmp_path / "run"),
                       **{"num_envs": 3, "buffer_size": 1000, **TINY, **overrides})
    run = SacRun(config)
    run.restore()  # a fresh run dir: nothing to restore, but it sets up the saving
    return run


def stored_rows(run):
    stored = run.replay.stored()
    return (stored.time_step.observation.numpy(), stored.next_time_step.observation.numpy(),
            stored.next_time_step.reward.numpy(), stored.next_time_step.discount.numpy())


def check_every_transition_is_one_env_step(observations, next_observations, rewards, discounts):
    env_id, episode, t = observations.T
    next_env_id, next_episode, next_t = next_observations.T
    np.testing.assert_array_equal(next_env_id, env_id)  # never mixed across envs
    np.testing.assert_array_equal(next_episode, episode)  # never across an episode end
    np.testing.assert_array_equal(next_t, t + 1)
    np.testing.assert_array_equal(rewards, 1000 * env_id + 10 * episode + next_t)
    ended = next_t == 3 + env_id
    np.testing.assert_array_equal(discounts, np.where(ended & (episode % 2 == 0), 0.0, 1.0))


def test_several_envs_store_each_envs_own_consecutive_steps(tmp_path):
    run = probe_run(tmp_path)
    run.loop.collect_random(40)
    after_warmup = int(run.env_step.numpy())
    run.loop.run(20)  # the collect policy and updates, as in training
    observations, next_observations, rewards, discounts = stored_rows(run)
    check_every_transition_is_one_env_step(observations, next_observations, rewards, discounts)

    # Nothing is lost either: each env's steps are stored in order, every episode whole.
    assert int(run.env_step.numpy()) == len(observations) >= 60
    for env_id in range(3):
        mine = observations[observations[:, 0] == env_id]
        episodes = mine[:, 1]
        assert np.all(np.diff(episodes) >= 0)
        for episode in np.unique(episodes)[:-1]:  # the last one may still be running
            np.testing.assert_array_equal(mine[episodes == episode, 2], np.arange(3 + env_id))
    # updates_per_step (2) updates per stored transition of the policy-driven part.
    updates = int(run.agent.train_step_counter.numpy())
    assert updates == 2 * (int(run.env_step.numpy()) - after_warmup)


def test_replay_wraps_around_keeping_the_newest_rows(tmp_path):
    run = probe_run(tmp_path, num_envs=1, buffer_size=10)
    run.loop.collect_random(25)
    observations, next_observations, rewards, discounts = stored_rows(run)
    assert len(observations) == 10 and int(run.replay.added.numpy()) == 25
    check_every_transition_is_one_env_step(observations, next_observations, rewards, discounts)
    # Env 0: episodes of 3 steps; stored oldest first, the 10 newest of 25 transitions.
    steps = observations[:, 1] * 3 + observations[:, 2]
    np.testing.assert_array_equal(steps, np.arange(15, 25))


def test_checkpoint_restores_the_replay_exactly(tmp_path):
    run = probe_run(tmp_path, num_envs=2, buffer_size=16)
    run.loop.collect_random(23)  # past capacity: the write position matters
    run.save()
    saved = stored_rows(run)
    added = int(run.replay.added.numpy())

    restored = probe_run(tmp_path, num_envs=2, buffer_size=16)
    assert int(restored.replay.added.numpy()) == added
    for before, after in zip(saved, stored_rows(restored)):
        np.testing.assert_array_equal(after, before)
    # The next rows go where the first run would have written them: the oldest are
    # overwritten first, and what was newest stays.
    restored.loop.collect_random(3)
    new = int(restored.replay.added.numpy()) - added
    after = stored_rows(restored)[0]
    np.testing.assert_array_equal(after[:16 - new], saved[0][new:])


@pytest.mark.parametrize("num_envs", [0, -2])
def test_num_envs_must_be_positive(tmp_path, num_envs):
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        SacConfig(num_envs=num_envs)


def test_stored_transitions_are_what_tf_agents_batched_environment_returns(tmp_path):
    """The loop steps its envs through `envs.FlatSteps`; replaying the stored actions on
    the same envs stepped the TF-Agents way (TFPyEnvironment over BatchedPyEnvironment,
    what the loop used before) must give exactly the stored observations, rewards and
    discounts: MuJoCo is deterministic for a given seed. A 4-step time limit puts episode
    ends (and the unstored reset steps) among the 30 policy steps."""
    from tf_agents.environments import batched_py_environment, tf_py_environment

    from pipelines.sac import envs

    config = SacConfig(env="HalfCheetah-v5", seed=3, run_dir=str(tmp_path / "run"),
                       num_envs=2, buffer_size=1000, time_limit=4, updates_per_step=1,
                       **TINY)
    run = SacRun(config)
    run.loop.run(30)  # the collect policy with updates: each action from the current actor
    stored = run.replay.stored()
    actions = stored.action_step.action.numpy()
    observations, next_observations, rewards, discounts = stored_rows(run)
    assert len(actions) == int(run.env_step.numpy()) >= 30

    reference = tf_py_environment.TFPyEnvironment(batched_py_environment.BatchedPyEnvironment(
        [envs.load_environment(config.env, config.seed + i, time_limit=4) for i in range(2)],
        multithreading=False))
    time_step = reference.current_time_step()
    row, resets = 0, 0
    while row < len(actions):
        stepping = ~time_step.is_last().numpy()  # a LAST step is followed by a reset
        resets += int((~stepping).sum())
        batch = np.zeros((2, actions.shape[1]), np.float32)
        batch[stepping] = actions[row:row + stepping.sum()]
        next_time_step = reference.step(batch)
        for env in np.flatnonzero(stepping):
            np.testing.assert_array_equal(observations[row], time_step.observation[env])
            np.testing.assert_array_equal(next_observations[row],
                                          next_time_step.observation[env])
            assert rewards[row] == next_time_step.reward[env]
            assert discounts[row] == next_time_step.discount[env]
            row += 1
        time_step = next_time_step
    assert row == int(run.replay.added.numpy())
    assert resets >= 6  # episode ends were crossed: 30 steps of 4-step episodes in 2 envs
