"""Environments as TF-Agents PyEnvironments: gymnasium (MuJoCo and any registered id) and
the DeepMind Control Suite, with actions in [-1, 1] and flat float32 observations.

`load_environment("HalfCheetah-v5")`, `load_environment("cheetah-run")` (DMC ids are
`<domain>-<task>`), `load_environment("humanoid_bench:h1hand-run-v0")` (gymnasium's
`module:id` form imports the module that registers the id). Every environment's actions are
rescaled to [-1, 1], so entropies and the ERA floor are measured on the same scale for
every task. Episode ends: gymnasium's `terminated` becomes discount 0, `truncated` (a time
limit) stays discount 1, so the critic bootstraps through time limits.
"""

import difflib
import importlib
import os

import numpy as np
from tf_agents.environments import py_environment, wrappers
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from pipelines.common.errors import UserError


class EnvError(UserError, ValueError):
    """An environment id or option that cannot be loaded; the message says what can."""


class GymnasiumEnvironment(py_environment.PyEnvironment):
    """A gymnasium environment (the 5-tuple step API) as a TF-Agents PyEnvironment."""

    def __init__(self, env, seed=None):
        super().__init__(handle_auto_reset=True)
        import gymnasium

        if not isinstance(env.action_space, gymnasium.spaces.Box):
            raise EnvError(
                f"{env.spec.id if env.spec else env} has action space {env.action_space}; "
                "SAC needs continuous (Box) actions."
            )
        if not isinstance(env.observation_space, gymnasium.spaces.Box):
            env = gymnasium.wrappers.FlattenObservation(env)
        self._env = env
        self._seed = seed
        space = env.action_space
        self._action_spec = array_spec.BoundedArraySpec(
            space.shape, np.float32, minimum=space.low, maximum=space.high, name="action"
        )
        self._observation_spec = array_spec.ArraySpec(
            env.observation_space.shape, np.float32, name="observation"
        )

    def observation_spec(self):
        return self._observation_spec

    def action_spec(self):
        return self._action_spec

    def _observation(self, observation):
        return np.asarray(observation, dtype=np.float32)

    def _reset(self):
        # Seed only the first reset: later resets continue that random stream.
        observation, _ = self._env.reset(seed=self._seed)
        self._seed = None
        return ts.restart(self._observation(observation))

    def _step(self, action):
        observation, reward, terminated, truncated, _ = self._env.step(
            np.asarray(action, dtype=self._env.action_space.dtype)
        )
        observation = self._observation(observation)
        reward = np.float32(reward)
        if terminated:
            return ts.termination(observation, reward)
        if truncated:
            return ts.truncation(observation, reward, discount=np.float32(1.0))
        return ts.transition(observation, reward, discount=np.float32(1.0))

    def render(self, mode="rgb_array"):
        return self._env.render()

    def close(self):
        self._env.close()


class UnitActions(wrappers.PyEnvironmentBaseWrapper):
    """Takes actions in [-1, 1] and rescales them to the wrapped environment's bounds."""

    def __init__(self, env):
        super().__init__(env)
        spec = env.action_spec()
        self._low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float32)
        self._high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float32)
        if not (np.all(np.isfinite(self._low)) and np.all(np.isfinite(self._high))):
            raise ValueError(f"Actions must be bounded to be rescaled; got spec {spec}.")
        self._action_spec = array_spec.BoundedArraySpec(
            spec.shape, np.float32, minimum=-1.0, maximum=1.0, name="action"
        )

    def action_spec(self):
        return self._action_spec

    def _step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        scaled = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        return self._env.step(scaled)


class FlatFloat32Observations(wrappers.PyEnvironmentBaseWrapper):
    """Concatenates a dict of observations (DMC's) into one float32 vector."""

    def __init__(self, env):
        super().__init__(env)
        specs = env.observation_spec()
        self._keys = sorted(specs) if isinstance(specs, dict) else None
        flat = [specs[key] for key in self._keys] if self._keys else [specs]
        size = int(sum(np.prod(spec.shape, dtype=int) for spec in flat))
        self._observation_spec = array_spec.ArraySpec((size,), np.float32, "observation")

    def observation_spec(self):
        return self._observation_spec

    def _flatten(self, time_step):
        parts = [time_step.observation[k] for k in self._keys] if self._keys else [
            time_step.observation
        ]
        observation = np.concatenate([np.ravel(part) for part in parts]).astype(np.float32)
        return time_step._replace(
            observation=observation,
            reward=np.float32(time_step.reward),
            discount=np.float32(time_step.discount),
        )

    def _reset(self):
        return self._flatten(self._env.reset())

    def _step(self, action):
        return self._flatten(self._env.step(action))


def native_action_bounds(env):
    """The (low, high) lists that UnitActions maps [-1, 1] onto, found in `env`'s wrappers."""
    while env is not None:
        if isinstance(env, UnitActions):
            return env._low.tolist(), env._high.tolist()
        env = getattr(env, "_env", None)
    raise ValueError("No UnitActions wrapper: was the env made by load_environment?")


def _dm_control_suite():
    # dm_control picks an OpenGL backend on import and warns (GLFW: no DISPLAY) on a
    # headless machine; training never renders, so ask for none unless the user chose one.
    os.environ.setdefault("MUJOCO_GL", "disable")
    from dm_control import suite

    return suite


def dm_control_tasks():
    """DMC ids available here, as `<domain>-<task>`."""
    suite = _dm_control_suite()

    return sorted(f"{domain}-{task}" for domain, task in suite.ALL_TASKS)


def gymnasium_ids(module=None):
    import gymnasium

    if module:
        importlib.import_module(module)
    return sorted(gymnasium.registry)


def _newest_versions(ids):
    """Gymnasium ids with only the newest version of each: 'Ant-v5' for Ant-v2 ... Ant-v5."""
    newest = {}  # name -> newest version (None for an id without one)
    for env_id in ids:
        name, _, version = env_id.rpartition("-v")
        if name and version.isdigit():
            newest[name] = max(newest.get(name, -1), int(version))
        else:
            newest[env_id] = None
    return [name if version is None else f"{name}-v{version}"
            for name, version in sorted(newest.items())]


def _by_domain(tasks):
    """DMC '<domain>-<task>' ids grouped: 'walker-{run,stand,walk}'."""
    domains = {}
    for task_id in tasks:
        domain, _, task = task_id.partition("-")
        domains.setdefault(domain, []).append(task)
    return [f"{domain}-{names[0]}" if len(names) == 1 else f"{domain}-{{{','.join(names)}}}"
            for domain, names in sorted(domains.items())]


def _unknown_env_error(env_id):
    import gymnasium

    gym_ids = [
        name for name, spec in sorted(gymnasium.registry.items())
        if "mujoco" in str(spec.entry_point) or "classic_control" in str(spec.entry_point)
    ]
    dmc = dm_control_tasks()
    close = difflib.get_close_matches(env_id, sorted(gymnasium.registry) + dmc, n=3, cutoff=0.7)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return EnvError(
        f"Unknown environment id {env_id!r}.{hint} "
        "gymnasium, MuJoCo and classic control (older versions load too; any registered id "
        f"works): {', '.join(_newest_versions(gym_ids))}. "
        f"DeepMind Control Suite, '<domain>-<task>': {', '.join(_by_domain(dmc))}. "
        "Ids that a package registers on import load as '<module>:<id>', "
        "e.g. 'humanoid_bench:h1hand-run-v0' where HumanoidBench is installed."
    )


def _load_gymnasium(env_id, seed):
    import gymnasium

    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise EnvError(
                f"Environment {env_id!r} needs the module {module!r}, which cannot be "
                f"imported here ({error}). Install the package that provides it."
            ) from error
    if name not in gymnasium.registry:
        return None
    return GymnasiumEnvironment(gymnasium.make(name), seed=seed)


def _load_dm_control(env_id, seed):
    domain, _, task = env_id.partition("-")
    if f"{domain}-{task}" not in dm_control_tasks():
        return None
    _dm_control_suite()
    from tf_agents.environments import suite_dm_control

    return suite_dm_control.load(domain, task, task_kwargs={"random": seed})


def load_environment(env_id, seed=0, action_repeat=1, time_limit=0):
    """A PyEnvironment for `env_id` with actions in [-1, 1] and flat float32 observations.

    action_repeat: each agent action is applied this many times (rewards summed).
    time_limit: agent steps per episode (after action repeat); 0 keeps the environment's.
    Raises an EnvError (a UserError) listing the available ids when `env_id` is unknown.
    """
    if not isinstance(env_id, str) or not env_id:
        raise EnvError(f"env must be a non-empty id string, got {env_id!r}.")
    if int(action_repeat) < 1 or int(time_limit) < 0:
        raise EnvError(
            f"action_repeat must be >= 1 and time_limit >= 0 "
            f"(got {action_repeat}, {time_limit})."
        )
    env = _load_gymnasium(env_id, seed)
    if env is None and ":" not in env_id:
        env = _load_dm_control(env_id, seed)
    if env is None:
        raise _unknown_env_error(env_id)
    env = UnitActions(FlatFloat32Observations(env))
    if action_repeat > 1:
        env = wrappers.ActionRepeat(env, int(action_repeat))
    if time_limit:
        env = wrappers.TimeLimit(env, int(time_limit))
    return env


class FlatSteps:
    """Several PyEnvironments stepped together, their time steps as four flat arrays.

    What `TFPyEnvironment(BatchedPyEnvironment(envs))` does for the training loop, without
    its per-step nest work (the batching, `nest.map_structure` over every time step, the
    flatten / repack around `tf.numpy_function`), which cost about twice the MuJoCo step:
    `step` applies one action per environment (each PyEnvironment resets itself after its
    LAST step, as before) and returns `(step_type, reward, discount, observation)`, each
    with a leading dimension of one row per environment. The environments are reset on
    the first call to `current` or `step`, as TFPyEnvironment does.
    """

    def __init__(self, py_envs):
        self.envs = list(py_envs)
        self._current = None

    def _flat(self, time_steps):
        # Fresh arrays every step: the tensors made from them may share their memory.
        self._current = (
            np.array([step.step_type for step in time_steps], np.int32),
            np.array([step.reward for step in time_steps], np.float32),
            np.array([step.discount for step in time_steps], np.float32),
            np.stack([step.observation for step in time_steps]).astype(np.float32, copy=False),
        )
        return self._current

    def current(self):
        """The current time steps (after a reset of every env on the first call)."""
        if self._current is None:
            self._flat([env.reset() for env in self.envs])
        return self._current

    def step(self, actions):
        """Steps env i with `actions[i]`; returns the new time steps as flat arrays."""
        self.current()
        return self._flat([env.step(action) for env, action in zip(self.envs, actions)])
