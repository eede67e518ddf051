"""One of the processes of a multi-process GRPO test (JAX, 2 CPU devices per process).

Tests start two of these with `KERAS_DISTRIBUTION_JOB_ADDRESSES` (a free localhost port),
`KERAS_DISTRIBUTION_NUM_PROCESSES=2`, `KERAS_DISTRIBUTION_PROCESS_ID` and
`XLA_FLAGS=--xla_force_host_platform_device_count=2`:

    python tests/grpo/process_worker.py update OUT_PREFIX data

joins the processes (`pipelines.grpo.processes.initialize`), then runs
`scale_worker.py update` on the 4-device mesh they span: greedy decoding of 4 prompts and
one GRPO+ERA update, written by each process to OUT_PREFIX-<process id>.npz.

    python tests/grpo/process_worker.py helpers OUT_PREFIX

exercises `pipelines.grpo.processes` alone (no model): the reward shares summed over the
processes, a batch-sharded array gathered onto each host, process 0's value broadcast,
and a disagreement between the processes refused.
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def main(task, out_prefix, *args):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from pipelines.grpo import processes
    from pipelines.grpo.config import GRPOConfig

    processes.initialize(GRPOConfig(peer_timeout=30))
    import jax

    assert jax.process_count() == 2 and len(jax.local_devices()) == 2, jax.devices()
    out = f"{out_prefix}-{jax.process_index()}.npz"
    if task == "helpers":
        return helpers(out)
    import scale_worker

    scale_worker.main(task, out, *args)


def helpers(out):
    import jax
    import keras
    import numpy as np

    from pipelines.common.errors import UserError
    from pipelines.grpo import processes

    rows = np.arange(10)
    share = processes.process_share(len(rows))
    scored = np.zeros(len(rows), "float32")
    scored[share] = rows[share] * 10.0  # this process's share only
    results = {"share": np.array([share.start, share.stop]),
               "summed": processes.sum_over_processes(scored),
               "chief_value": np.array(processes.from_chief(100 + jax.process_index()))}
    mesh = keras.distribution.DeviceMesh((4,), ("batch",), keras.distribution.list_devices())
    layout = keras.distribution.TensorLayout(("batch", None), mesh)
    array = keras.distribution.distribute_tensor(np.arange(16.0).reshape(8, 2), layout)
    results["fully_addressable"] = np.array(array.is_fully_addressable)
    results["gathered"] = processes.to_numpy(jax.numpy.asarray(array) * 2)
    processes.check_same_on_every_process(7, "a value both hold")
    try:
        processes.check_same_on_every_process(jax.process_index(), "the process id")
        results["disagreement"] = np.array("not refused")
    except UserError as error:
        results["disagreement"] = np.array(str(error))
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
