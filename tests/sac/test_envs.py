import re

import gymnasium
import numpy as np
import pytest
from tf_agents.trajectories import time_step as ts

from pipelines.sac import envs


def run_until_last(env, action, max_steps=2000):
    time_step = env.reset()
    for _ in range(max_steps):
        time_step = env.step(action)
        if time_step.is_last():
            return time_step
    raise AssertionError("episode did not end")


def test_termination_has_discount_zero():
    # Hopper falls within a few hundred steps under a constant extreme action.
    env = envs.load_environment("Hopper-v5", seed=0)
    last = run_until_last(env, np.ones(3, np.float32))
    assert last.discount == 0.0


def test_time_limit_is_a_truncation_with_discount_one():
    env = envs.load_environment("HalfCheetah-v5", seed=0, time_limit=7)
    time_step = env.reset()
    steps = 0
    while not time_step.is_last():
        time_step = env.step(np.zeros(6, np.float32))
        steps += 1
    assert steps == 7 and time_step.discount == 1.0
    assert env.step(np.zeros(6, np.float32)).step_type == ts.StepType.FIRST


def test_actions_are_rescaled_from_unit_box_to_env_bounds():
    env = envs.load_environment("Pendulum-v1", seed=3)
    raw = gymnasium.make("Pendulum-v1")
    assert env.action_spec().minimum == -1.0 and env.action_spec().maximum == 1.0
    first = env.reset()
    raw_obs, _ = raw.reset(seed=3)
    np.testing.assert_allclose(first.observation, raw_obs, rtol=1e-6)
    for unit_action, raw_action in [(0.5, 1.0), (-1.0, -2.0), (0.0, 0.0)]:
        ours = env.step(np.array([unit_action], np.float32))
        theirs = raw.step(np.array([raw_action], np.float32))
        np.testing.assert_allclose(ours.observation, theirs[0], rtol=1e-5)
        assert ours.reward == pytest.approx(theirs[1], rel=1e-5)


def test_action_repeat_sums_rewards():
    single = envs.load_environment("Pendulum-v1", seed=1)
    repeated = envs.load_environment("Pendulum-v1", seed=1, action_repeat=3)
    single.reset(), repeated.reset()
    action = np.array([0.3], np.float32)
    total = sum(float(single.step(action).reward) for _ in range(3))
    step = repeated.step(action)
    assert float(step.reward) == pytest.approx(total, rel=1e-5)


def test_dm_control_task_has_flat_float32_observations():
    env = envs.load_environment("cheetah-run", seed=0)
    spec = env.observation_spec()
    first = env.reset()
    assert spec.shape == (17,) and first.observation.dtype == np.float32
    assert env.action_spec().shape == (6,)
    step = env.step(np.zeros(6, np.float32))
    assert step.observation.shape == (17,) and step.discount == 1.0


def test_unknown_id_lists_what_is_available():
    with pytest.raises(ValueError) as error:
        envs.load_environment("HalfCheeta-v5")
    message = str(error.value)
    assert "Unknown environment id 'HalfCheeta-v5'" in message
    assert "Did you mean HalfCheetah-v5" in message
    # One line a reader can scan: the newest version of each gymnasium id, DMC tasks
    # grouped by domain.
    assert "Humanoid-v5" in message and "Humanoid-v4" not in message
    assert re.search(r"dog-\{[a-z_,]*\brun\b", message) and "cheetah-run," in message
    assert len(message) < 1500


def test_only_close_ids_are_suggested():
    with pytest.raises(ValueError) as error:
        envs.load_environment("Nope-v0")
    assert "Did you mean" not in str(error.value)


def test_unknown_dmc_task_and_missing_module():
    with pytest.raises(ValueError, match="cheetah-run"):
        envs.load_environment("cheetah-fly")
    with pytest.raises(ValueError, match="needs the module 'no_such_bench'"):
        envs.load_environment("no_such_bench:h1hand-run-v0")


def test_discrete_actions_are_refused():
    with pytest.raises(ValueError, match="continuous"):
        envs.load_environment("CartPole-v1")


@pytest.mark.parametrize("kwargs", [{"action_repeat": 0}, {"time_limit": -1}, {}])
def test_bad_options(kwargs):
    with pytest.raises(ValueError):
        envs.load_environment("" if not kwargs else "Pendulum-v1", **kwargs)


def test_ids_registered_on_import_load_as_module_colon_id(tmp_path, monkeypatch):
    # How HumanoidBench ids load ("humanoid_bench:h1hand-run-v0"): importing the module
    # registers the id with gymnasium.
    (tmp_path / "my_bench.py").write_text(
        "import gymnasium\n"
        "gymnasium.register('MyBench-Swing-v0', "
        "entry_point='gymnasium.envs.classic_control.pendulum:PendulumEnv', "
        "max_episode_steps=5)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env = envs.load_environment("my_bench:MyBench-Swing-v0", seed=0)
    time_step = env.reset()
    steps = 0
    while not time_step.is_last():
        time_step = env.step(np.zeros(1, np.float32))
        steps += 1
    assert steps == 5 and time_step.discount == 1.0
    with pytest.raises(ValueError, match="Unknown environment id 'my_bench:Nope-v0'"):
        envs.load_environment("my_bench:Nope-v0")
