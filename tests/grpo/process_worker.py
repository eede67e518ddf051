"""One of the processes of a multi-process GRPO test (JAX, 2 CPU devices per process).

Tests start two of these with `KERAS_DISTRIBUTION_JOB_ADDRESSES` (a free localhost port),
`KERAS_DISTRIBUTION_NUM_PROCESSES=2`, `KERAS_DISTRIBUTION_PROCESS_ID` and
`XLA_FLAGS=--xla_force_host_platform_device_count=2`:

    python tests/grpo/process_worker.py update OUT_PREFIX data

joins the processes (`pipelines.grpo.processes.initialize`), then runs
`scale_worker.py update` on the 4-device mesh they span: greedy decoding of 4 prompts and
one GRPO+ERA update, written by each process to OUT_PREFIX-<process id>.npz.
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
    import scale_worker

    scale_worker.main(task, f"{out_prefix}-{jax.process_index()}.npz", *args)


if __name__ == "__main__":
    main(*sys.argv[1:])
