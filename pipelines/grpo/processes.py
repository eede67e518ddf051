"""GRPO across processes (hosts): Keras' multi-process distribution over `jax.distributed`.

Started with `--processes N` (or the `KERAS_DISTRIBUTION_*` / `JAX_*` variables, or
`--processes auto` where JAX detects the cluster: SLURM, TPU pod slices, Open MPI),
every process runs the same loop; `keras.distribution.initialize` joins them before JAX
does anything else, and the `--distribution` mesh then spans every process's devices.

How the work is split, and why:

- The step's prompts are drawn from (seed, step), the same on every process, so no
  process waits for another to learn them and a resumed run draws what it would have.
  Each process lays the whole batch out on the global mesh (`jax.device_put` of the same
  host array on every process keeps only the rows of its own devices), so the rows a
  process's devices decode and train on are its share; no two processes decode the same
  row.
- What comes back from the devices (tokens, per-response loss terms) is gathered onto
  every host (`to_numpy`: `multihost_utils.process_allgather`), as GRPO needs the whole
  group of a prompt to score it.
- Rewards (Python graders, the costly host-side part) are computed by each process on
  its own share of rows (`process_share`) and summed over the processes
  (`sum_over_processes`), so rewards and advantages are computed over whole groups
  however a group's rows fall on the processes; every process then holds the same batch,
  advantages and metrics.
- Only process 0 writes: the MLflow run, the run dir's claim and lock, checkpoints and
  exports (`is_chief`). Weights split across processes (`model:BxM` with B spanning
  hosts) are first gathered whole into host memory, one variable at a time, for the
  write (`whole_on_every_process`), so no device ever holds the whole model. Every process
  reads the checkpoint process 0 chose on resume (`check_same_on_every_process`), from
  the run dir, which must be on a file system every host sees.
- A process that dies stops the others: JAX's coordination service marks a process that
  sent no heartbeat for `--peer-timeout` seconds as dead and ends every other process
  ("The following tasks are unhealthy (stopped sending heartbeats)"), rather than leaving
  them waiting in a collective forever.

On CPUs the collectives run over gloo (`jax_cpu_collectives_implementation`), so two
local processes with `XLA_FLAGS=--xla_force_host_platform_device_count=2` each try all of
this on one machine (`tests/grpo/test_processes.py`).
"""

import contextlib
import os

import numpy as np

from pipelines.common.errors import UserError

# Environment variables that start a multi-process run without flags (Keras' and JAX's).
ENVIRONMENT = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
               "KERAS_DISTRIBUTION_PROCESS_ID", "JAX_COORDINATOR_ADDRESS")
PROCESSES_FORMS = "1, a number of processes N >= 2, or auto"


def parse_processes(text):
    """`--processes` text -> the number of processes (an int), or "auto"."""
    text = str(text).strip().lower()
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f"--processes {text!r} is not a known form; use {PROCESSES_FORMS}.")


def wanted(config):
    """Whether this run spans several processes (flags, or Keras' / JAX's variables)."""
    processes = parse_processes(config.processes)
    if processes == 1:
        return any(os.environ.get(name) for name in ENVIRONMENT)
    return True


def initialize(config):
    """Join the run's processes (`keras.distribution.initialize`); returns whether several.

    Call it before JAX computes anything. Flags take precedence over the environment;
    what neither gives, JAX detects (SLURM, TPU pod slices, Open MPI) where it can.
    """
    import keras

    if not wanted(config):
        return False
    if keras.backend.backend() != "jax":
        raise UserError(
            f"--processes {config.processes} needs the JAX backend (Keras' multi-process "
            f"distribution runs over jax.distributed); this process runs Keras on "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=jax.")
    import jax

    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    # CPU collectives across processes (the CPU devices of local test runs) run over gloo,
    # JAX 0.10's default; older JAX had none unless asked. Accelerators use their own
    # (NCCL, ICI) and ignore this setting.
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    processes = parse_processes(config.processes)
    _initialize_with_timeouts(
        keras, jax, config.peer_timeout,
        job_addresses=config.coordinator_address,
        num_processes=processes if isinstance(processes, int) and processes > 1 else None,
        process_id=config.process_id)
    return jax.process_count() > 1


def _initialize_with_timeouts(keras, jax, peer_timeout, **arguments):
    """`keras.distribution.initialize`, with JAX's heartbeat timeout set to `peer_timeout`.

    Keras 3.15 passes no timeouts on to `jax.distributed.initialize` (whose default
    heartbeat timeout is 100 s), so they are bound to it for the duration of the call.
    """
    original = jax.distributed.initialize

    def with_timeouts(*args, **kwargs):
        kwargs.setdefault("heartbeat_timeout_seconds", int(peer_timeout))
        kwargs.setdefault("initialization_timeout", max(int(peer_timeout), 60))
        return original(*args, **kwargs)

    jax.distributed.initialize = with_timeouts
    try:
        keras.distribution.initialize(**arguments)
    except (ValueError, RuntimeError) as error:
        raise UserError(f"the run's processes could not be joined: {error}") from None
    finally:
        jax.distributed.initialize = original


def process_index():
    """This process's id (0 without several processes)."""
    import keras

    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def process_count():
    """How many processes run this run (1 without several)."""
    import keras

    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def is_chief():
    """Whether this process writes the run's outputs (process 0)."""
    return process_index() == 0


def process_share(rows):
    """The slice of `rows` rows this process scores: an equal, contiguous share each."""
    count, index = process_count(), process_index()
    return slice(index * rows // count, (index + 1) * rows // count)


def sum_over_processes(array):
    """The element-wise sum of `array` over every process (the array itself with one)."""
    if process_count() == 1:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(array))
    return np.asarray(gathered).sum(axis=0).astype(np.asarray(array).dtype)


def to_numpy(value):
    """A device array as a host numpy array, gathered onto this host when other
    processes' devices hold parts of it."""
    if getattr(value, "is_fully_addressable", True) or getattr(
            value, "is_fully_replicated", False):
        return np.asarray(value)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def check_same_on_every_process(value, what):
    """Raise a UserError unless every process holds the same integer `value` (e.g. the
    step of the checkpoint it restored); returns it."""
    if process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    values = np.asarray(multihost_utils.process_allgather(np.int64(value))).reshape(-1)
    if np.any(values != values[0]):
        raise UserError(
            f"the processes disagree on {what} ({', '.join(map(str, values))} for processes "
            f"0..{len(values) - 1}); every host must see the same run dir (a shared file "
            "system)")
    return value


def from_chief(value):
    """Process 0's integer `value`, on every process."""
    if process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.asarray(multihost_utils.broadcast_one_to_all(np.int64(value))))


@contextlib.contextmanager
def whole_on_every_process(variables):
    """Inside, every variable of `variables` whose value other processes' devices hold
    parts of is a whole numpy array in host memory (so process 0 can read and save it);
    the sharded values come back on leaving. Every process must enter it (a collective).

    One variable at a time is gathered (`process_allgather`), so a device holds at most
    one whole variable beyond its share: a 7B model split over hosts is never whole on
    a device, only in each host's memory."""
    if process_count() == 1:
        yield
        return
    import jax
    from jax.experimental import multihost_utils

    swapped = []
    for variable in variables:
        value = getattr(variable, "_value", None)
        if (not isinstance(value, jax.Array) or value.is_fully_addressable
                or value.is_fully_replicated):  # process 0 reads these as they are
            continue
        swapped.append((variable, value))
        variable._value = multihost_utils.process_allgather(value, tiled=True)
    try:
        yield
    finally:
        for variable, value in swapped:
            variable._value = value
