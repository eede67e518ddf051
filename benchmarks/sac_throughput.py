"""SAC benchmark, speed: env steps/s of each implementation's real training loop, and
gradient steps/s, for ERA-SAC, TF-Agents SAC, Stable-Baselines3 and SBX, one core each.

Same task (HalfCheetah-v5), same networks (ReLU 256x256 actor and twin critics, no
LayerNorm), batch 256, gamma 0.99, tau 0.005, one gradient step per env step.

- ERA-SAC and TF-Agents' SacAgent run in this repo's pipeline (`pipelines.sac.train.SacRun`):
  an env block is `run.loop.run(n)`, the very call `train()` makes (collect with the
  policy, store, update, all in one compiled call); a gradient block is
  `run.loop.train(n)`.
- Stable-Baselines3 2.9.2 (torch) and SBX 0.28 (JAX): an env block is `model.learn(n)`
  with `train_freq=1, gradient_steps=1`; a gradient block is `model.train(n, 256)`.

Each implementation lives in its own worker process, all pinned to the same core
(`--cpu`, default 1, passed on to the workers). A worker fills its replay with
`--fill` random steps and compiles (untimed), then the parent runs interleaved rounds:
each round, every worker in turn times one env block and one gradient block while the
others wait idle. Reported: the median over rounds, the spread (min-max), and ratios of
medians with the range of per-round ratios.

SBX needs `tfp-nightly` (TFP 0.25's JAX substrate fails on this JAX), which would replace
the project's tensorflow-probability if installed beside it: the SBX worker alone puts
`--sbx-path` (a `pip install --target` directory holding tfp-nightly) first on its path.

    .venv/bin/python benchmarks/sac_throughput.py
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import common
import numpy as np

common.setup(legacy_keras=True)

# Short names (for --only and the ratio lines) and what each one is.
IMPLEMENTATIONS = {
    "ERA-SAC": "ERA-SAC (this repo's loop, default squash)",
    "TF-Agents": "SAC (TF-Agents SacAgent in this repo's loop)",
    "SB3": "SAC (Stable-Baselines3 2.9.2, torch)",
    "SBX": "SAC (SBX 0.28, JAX)",
}


# --- workers: one implementation each ------------------------------------------------------

class PipelineSac:
    """ERA-SAC or TF-Agents' SacAgent in the pipeline's own loop."""

    def __init__(self, agent, args, workdir):
        import tensorflow as tf

        from pipelines.sac.config import from_preset
        from pipelines.sac.train import SacRun

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        config = from_preset(
            "paper", env=args.env, agent=agent, hidden_sizes=(256, 256), activation="relu",
            critic_layer_norm=False, batch_size=args.batch, updates_per_step=1,
            buffer_size=args.fill + args.rounds * args.env_steps * 2,
            warmup_steps=args.fill, seed=0, run_dir=str(pathlib.Path(workdir) / agent),
        )
        self.run = SacRun(config)
        self.run.loop.collect_random(args.fill)

    def env_steps(self, count):
        self.run.loop.run(count)

    def grad_steps(self, count):
        self.run.loop.train(count)


class StableBaselinesSac:
    """SB3 (torch) or SBX (JAX): the same class interface."""

    def __init__(self, module, args):
        import gymnasium

        if module == "sbx":
            from sbx import SAC
        else:
            import torch
            from stable_baselines3 import SAC

            torch.set_num_threads(1)
        env = gymnasium.wrappers.RescaleAction(gymnasium.make(args.env), -1.0, 1.0)
        self.model = SAC(
            "MlpPolicy", env, batch_size=args.batch,
            buffer_size=args.fill + args.rounds * args.env_steps * 2,
            learning_starts=args.fill, gamma=0.99, tau=0.005, train_freq=1, gradient_steps=1,
            policy_kwargs={"net_arch": [256, 256]}, seed=0, verbose=0,
            **({"device": "cpu"} if module != "sbx" else {}),
        )
        self.model.learn(total_timesteps=args.fill)  # random actions only: fills the buffer

    def env_steps(self, count):
        self.model.learn(total_timesteps=count, reset_num_timesteps=False)

    def grad_steps(self, count):
        self.model.train(gradient_steps=count, batch_size=self.model.batch_size)


def worker(name, args):
    """Build one implementation, then time the blocks the parent asks for (JSON lines).

    The replies go out on the original stdout; everything the libraries print goes to
    stderr, so it cannot garble them.
    """
    global _channel
    _channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    with tempfile.TemporaryDirectory(prefix="sac_throughput_") as workdir:
        os.chdir(workdir)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
        started = time.perf_counter()
        if name in ("ERA-SAC", "TF-Agents"):
            implementation = PipelineSac("era" if name == "ERA-SAC" else "sac", args, workdir)
        else:
            implementation = StableBaselinesSac(name.lower(), args)
        # Untimed: compile / trace every path at the block sizes that are timed.
        implementation.env_steps(args.env_steps)
        implementation.grad_steps(args.grad_steps)
        reply({"ready": time.perf_counter() - started})
        for line in sys.stdin:
            kind = line.strip()
            count = args.env_steps if kind == "env" else args.grad_steps
            block = implementation.env_steps if kind == "env" else implementation.grad_steps
            started = time.perf_counter()
            block(count)
            reply({"rate": count / (time.perf_counter() - started)})


_channel = None


def reply(message):
    _channel.write(json.dumps(message) + "\n")
    _channel.flush()


# --- the parent: start the workers, interleave the rounds, write the table ----------------

class Worker:
    def __init__(self, name, argv, sbx_path):
        env = dict(os.environ)
        if name == "SBX":
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(sbx_path), env.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", name, *argv], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.name = name

    def receive(self):
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"error: the {self.name} worker exited "
                             f"(code {self.process.wait()}); see its output above")
        return json.loads(line)

    def time_block(self, kind):
        self.process.stdin.write(kind + "\n")
        self.process.stdin.flush()
        return self.receive()["rate"]

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def main():
    parser = common.parser(__doc__, cpu=1)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--fill", type=int, default=2_000, help="random steps in replay")
    parser.add_argument("--env-steps", type=int, default=200, help="env steps per timed block")
    parser.add_argument("--grad-steps", type=int, default=200,
                        help="gradient steps per timed block")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", nargs="+", choices=list(IMPLEMENTATIONS),
                        default=list(IMPLEMENTATIONS))
    parser.add_argument("--sbx-path", default=str(common.ROOT / ".venv" / "sbx-tfp"),
                        help="directory put first on the SBX worker's path (tfp-nightly)")
    parser.add_argument("--worker", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.pin(args.cpu)  # inherited by the workers: every implementation on this core
    if args.worker:
        return worker(args.worker, args)

    # Every setting a worker reads, --cpu included: a worker parses its own flags, and with
    # the default core it would try to re-pin itself off the core it inherited.
    argv = ["--env", args.env, "--batch", str(args.batch), "--fill", str(args.fill),
            "--env-steps", str(args.env_steps), "--grad-steps", str(args.grad_steps),
            "--rounds", str(args.rounds), "--cpu", str(args.cpu)]
    # Set-up runs in parallel (on the same core); only the timed blocks are interleaved.
    workers = {name: Worker(name, argv, args.sbx_path) for name in args.only}
    setup = {name: w.receive()["ready"] for name, w in workers.items()}
    print("ready: " + ", ".join(f"{n} {s:.0f} s" for n, s in setup.items()), flush=True)

    def measure(w):
        return w.time_block("env"), w.time_block("grad")

    results = common.interleave({name: (lambda w=w: measure(w)) for name, w in workers.items()},
                                args.rounds, order="alternate")
    for w in workers.values():
        w.close()

    env_rates = {name: np.array([r[0] for r in rounds]) for name, rounds in results.items()}
    grad_rates = {name: np.array([r[1] for r in rounds]) for name, rounds in results.items()}

    def cell(rates):
        return f"{np.median(rates):.1f} ({rates.min():.0f}-{rates.max():.0f})"

    def ratio(rates, a, b):
        per_round = rates[a] / rates[b]
        return (f"{np.median(rates[a]) / np.median(rates[b]):.2f} "
                f"(per round {per_round.min():.2f}-{per_round.max():.2f})")

    rows = [[IMPLEMENTATIONS[name], cell(env_rates[name]), cell(grad_rates[name])]
            for name in workers]
    lines = [
        f"Task {args.env}; actor and twin critics ReLU 256x256, no LayerNorm, for every "
        f"implementation; batch {args.batch}, gamma 0.99, tau 0.005, 1 gradient step per env "
        f"step; replay filled with {args.fill} random steps; each implementation in its own "
        f"process on core {args.cpu}; {args.rounds} interleaved rounds (order reversed every "
        f"other round), each timing {args.env_steps} env steps of the training loop "
        f"(collect + store + update) and {args.grad_steps} gradient steps (replay sample + "
        "update) per implementation. Median over rounds, (min-max) in brackets.",
        common.table(["implementation", "env steps/s", "grad steps/s"], rows),
    ]
    comparisons = [(a, b) for a in ("ERA-SAC",) for b in ("TF-Agents", "SB3", "SBX")
                   if a in workers and b in workers]
    if "SBX" in workers and "SB3" in workers:
        comparisons.append(("SBX", "SB3"))
    lines.append("\n".join(
        f"- {a} / {b}: env steps/s {ratio(env_rates, a, b)}, "
        f"grad steps/s {ratio(grad_rates, a, b)}" for a, b in comparisons))
    common.write_results(args.name, "SAC throughput on one CPU core", lines)

    for peer in ("SB3", "SBX"):
        if "ERA-SAC" in workers and peer in workers:
            print(f"ERA-SAC / {peer}: env steps/s "
                  f"{np.median(env_rates['ERA-SAC']) / np.median(env_rates[peer]):.2f}, "
                  f"grad steps/s "
                  f"{np.median(grad_rates['ERA-SAC']) / np.median(grad_rates[peer]):.2f}")


if __name__ == "__main__":
    main()
