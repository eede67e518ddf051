"""GRPO across two processes on this machine (JAX's CPU collectives over gloo, localhost).

Each process sees 2 simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`),
so the two span the same 4-device mesh that `test_distribution.py` runs in one process;
the processes are joined by `keras.distribution.initialize` on a free localhost port.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pipelines.common.errors import UserError
from pipelines.grpo.processes import parse_processes, wanted

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROCESS_WORKER = ROOT / "tests" / "grpo" / "process_worker.py"
SCALE_WORKER = ROOT / "tests" / "grpo" / "scale_worker.py"

# The same bounds as tests/grpo/test_distribution.py: the two-process update takes the
# same sums as the one-process update on the same mesh, in at most another order (measured:
# <= 1.1e-7 under `data`, exact under `model:2x2`); 1e-4 is 1% of one Adam step (lr 1e-2).
WEIGHT_ATOL = 1e-4
LOSS_RTOL = 1e-6
PEER_TIMEOUT = 10  # --peer-timeout of the CLI runs below, seconds


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(port, process_id, **extra):
    return {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
            "KERAS_DISTRIBUTION_PROCESS_ID": str(process_id),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **extra}


def run_two(command, timeout=600, env=None):
    """Run `command` (a list) as processes 0 and 1; returns their CompletedProcess-like
    (returncode, stdout, stderr) tuples."""
    port = free_port()
    procs = [subprocess.Popen(command, cwd=ROOT, env=process_env(port, i, **(env or {})),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out, err))
    return results


def test_processes_flag_parses_its_forms_and_refuses_others(monkeypatch):
    from pipelines.grpo.config import GRPOConfig

    assert parse_processes("1") == 1 and parse_processes("4") == 4
    assert parse_processes("auto") == "auto"
    for bad in ("0", "-2", "two", ""):
        with pytest.raises(UserError, match="use 1, a number of processes N >= 2, or auto"):
            parse_processes(bad)
    with pytest.raises(ValueError) as error:
        GRPOConfig(processes="many", process_id=-1, peer_timeout=0)
    for part in ("--processes 'many' is not a known form", "process_id must be >= 0",
                 "peer_timeout must be >= 1 second"):
        assert part in str(error.value)
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                 "KERAS_DISTRIBUTION_PROCESS_ID", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert not wanted(GRPOConfig())
    assert wanted(GRPOConfig(processes="2"))
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    assert wanted(GRPOConfig())  # Keras' variables start it without flags


def test_two_processes_share_rewards_gather_outputs_and_refuse_a_disagreement(tmp_path):
    """The cross-process helpers on two joined processes (no model: quick)."""
    results = run_two([sys.executable, str(PROCESS_WORKER), "helpers", str(tmp_path / "h")],
                      timeout=300)
    for rc, _, err in results:
        assert rc == 0, err[-4000:]
    r = [dict(np.load(tmp_path / f"h-{i}.npz")) for i in range(2)]
    assert [tuple(x["share"]) for x in r] == [(0, 5), (5, 10)]  # disjoint, covering all
    for x in r:
        np.testing.assert_array_equal(x["summed"], np.arange(10) * 10.0)  # every row, once
        assert int(x["chief_value"]) == 100  # process 0's
        assert not bool(x["fully_addressable"])  # half the rows live on the other process
        np.testing.assert_array_equal(x["gathered"], np.arange(16.0).reshape(8, 2) * 2)
        assert "the processes disagree on the process id (0, 1" in str(x["disagreement"])


def test_a_run_across_processes_without_a_mesh_is_refused_before_joining(
        tmp_path, monkeypatch):
    from pipelines.grpo.config import GRPOConfig
    from pipelines.grpo.train import run

    monkeypatch.delenv("KERAS_DISTRIBUTION_NUM_PROCESSES", raising=False)
    with pytest.raises(UserError, match="needs a mesh over their devices; use --distribution "
                                        "data or model:BxM"):
        run(GRPOConfig(processes="2", process_id=0, coordinator_address="localhost:1",
                       run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def two_process_update(tmp_path_factory):
    """One GRPO+ERA update (and greedy decoding) on the 4-device mesh, once spanned by two
    processes and once in one process."""
    tmp = tmp_path_factory.mktemp("processes")
    forms = ["data", "model:2x2"]
    results = run_two([sys.executable, str(PROCESS_WORKER), "update", str(tmp / "two"), *forms])
    for rc, _, err in results:
        assert rc == 0, err[-4000:]
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    single = subprocess.run([sys.executable, str(SCALE_WORKER), "update", str(tmp / "one.npz"),
                             *forms], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]
    return ([dict(np.load(tmp / f"two-{i}.npz")) for i in range(2)],
            dict(np.load(tmp / "one.npz")))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["data", "model:2x2"])
def test_one_update_across_two_processes_equals_the_one_process_update(
        two_process_update, form):
    processes, single = two_process_update
    names = [k for k in single if k.startswith(f"{form}/w/")]
    assert len(names) > 10
    for r in processes:  # both processes end with the same weights as one process
        assert float(r[f"{form}/loss"]) == pytest.approx(float(single[f"{form}/loss"]),
                                                         rel=LOSS_RTOL)
        for name in names:
            np.testing.assert_allclose(r[name], single[name], atol=WEIGHT_ATOL, rtol=0,
                                       err_msg=name)
    if form == "model:2x2":  # each process holds only its quarter of a 2x2-split kernel
        kernel = "model:2x2/shard/transformer_layer_0/feedforward_gate_dense/kernel"
        full = single["model:2x2/w/transformer_layer_0/feedforward_gate_dense/kernel"].shape
        assert tuple(processes[0][kernel]) == (full[0] // 2, full[1] // 2)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["data", "model:2x2"])
def test_greedy_rollouts_across_two_processes_are_the_one_process_tokens(
        two_process_update, form):
    processes, single = two_process_update
    for r in processes:
        np.testing.assert_array_equal(r[f"{form}/greedy"], single[f"{form}/greedy"])


TINY = ["--model", "tiny:qwen", "--task", "arithmetic", "--tiny-layers", "1",
        "--tiny-hidden-dim", "32", "--warm-start-steps", "0", "--prompts-per-step", "2",
        "--group-size", "4", "--num-eval-prompts", "4", "--eval-samples", "2",
        "--max-new-tokens", "8", "--eval-every", "2", "--checkpoint-every", "1",
        "--no-progress", "--peer-timeout", str(PEER_TIMEOUT)]


def _cli(run_dir, tracking_uri, port, process_id, steps, form):
    """A `python -m pipelines.grpo` process of a two-process run, started with flags."""
    command = [sys.executable, "-m", "pipelines.grpo", *TINY, "--steps", str(steps),
               "--distribution", form,
               "--run-dir", str(run_dir), "--tracking-uri", tracking_uri,
               "--processes", "2", "--process-id", str(process_id),
               "--coordinator-address", f"localhost:{port}"]
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["data", "model:2x2"])  # model:2x2: weights split over hosts
def test_killed_process_stops_its_peer_then_both_resume_and_the_outputs_exist_once(
        tmp_path, tracking_uri, form):
    import mlflow

    run_dir = tmp_path / "run"
    port = free_port()
    procs = [_cli(run_dir, tracking_uri, port, i, 4, form) for i in range(2)]
    # Kill process 1 once process 0 has written the checkpoint of step 2.
    deadline = time.monotonic() + 500
    while not (run_dir / "checkpoints" / "step-0000002" / "state.json").exists():
        assert procs[0].poll() is None and procs[1].poll() is None, procs[0].stderr.read()
        assert time.monotonic() < deadline, "step 2 was never checkpointed"
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = procs[0].communicate(timeout=PEER_TIMEOUT * 6)
    # The peer is stopped by JAX's heartbeat check: within a few heartbeat timeouts,
    # with a message naming the dead process.
    assert procs[0].returncode != 0
    assert time.monotonic() - killed_at < PEER_TIMEOUT * 6
    assert "stopped sending heartbeats" in err, err[-3000:]
    procs[1].communicate()
    assert not (run_dir / "finished.json").exists()

    port = free_port()
    procs = [_cli(run_dir, tracking_uri, port, i, 4, form) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    assert "Resuming the run" in outs[0][1] and "Resuming" not in outs[1][1]
    # Outputs exist once: one MLflow run, each step's metric logged once, one export.
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["grpo"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert int(run.data.tags["resumed_from_step"]) >= 2
    assert run.data.tags["layout.processes"] == "2" and run.data.tags["layout.devices"] == "4"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/reward")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert (run_dir / "export" / "serving" / "models.config").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step-0000003", "step-0000004"]  # the newest two, written by process 0 alone
    assert not list(tmp_path.glob("**/*.partial"))
