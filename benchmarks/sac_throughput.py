"""SAC benchmark, speed: gradient steps/s of ERA-SAC, the same TF-Agents SAC without ERA,
and Stable-Baselines3's SAC, on CPU, same task, network size and batch, interleaved.

TF-Agents agents are built by the pipeline (`pipelines.sac.train.SacRun`: transition replay,
compiled `agent.train`), SB3 with `SAC("MlpPolicy", net_arch=[...])`. Each implementation
first fills its replay buffer with random steps and runs untimed warm-up updates (tracing),
then every round times a block of updates of each implementation in turn, so machine noise
hits them alike. The table gives the median over rounds and the ratio of medians with the
range of per-round ratios. Pinned to one core (--cpu 1). Writes
benchmarks/results/sac_throughput.md.

    nice .venv/bin/python benchmarks/sac_throughput.py --rounds 5 --updates 200
"""

import os
import pathlib
import tempfile
import time

import common
import numpy as np

common.setup(legacy_keras=True)


class TFAgentsSac:
    def __init__(self, agent, args, workdir):
        from pipelines.sac.config import from_preset
        from pipelines.sac.train import SacRun

        config = from_preset(
            "paper", env=args.env, agent=agent, hidden_sizes=tuple(args.hidden),
            batch_size=args.batch, buffer_size=args.fill, warmup_steps=args.fill,
            run_dir=str(pathlib.Path(workdir) / agent),
        )
        self.run = SacRun(config)
        for _ in range(args.fill):
            self.run.collect_random()

    def updates(self, count):
        for _ in range(count):
            self.run.train_step(self.run.sample())


class StableBaselinesSac:
    def __init__(self, args):
        import gymnasium
        from stable_baselines3 import SAC

        env = gymnasium.wrappers.RescaleAction(gymnasium.make(args.env), -1.0, 1.0)
        self.model = SAC(
            "MlpPolicy", env, batch_size=args.batch, buffer_size=args.fill,
            learning_starts=args.fill, gamma=0.99, tau=0.005, train_freq=1, gradient_steps=1,
            policy_kwargs={"net_arch": list(args.hidden)}, device="cpu", seed=0, verbose=0,
        )
        self.model.learn(total_timesteps=args.fill)  # random actions only: fills the buffer

    def updates(self, count):
        self.model.train(gradient_steps=count, batch_size=self.model.batch_size)


def main():
    parser = common.parser(__doc__, cpu=1)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--fill", type=int, default=2_000, help="random steps in replay")
    parser.add_argument("--warmup-updates", type=int, default=50)
    parser.add_argument("--updates", type=int, default=200, help="updates per timed block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for TF and torch alike (inter-op: 1). On a "
                        "shared, oversubscribed CPU, torch's 2-thread OpenMP pool spins and "
                        "drops to ~1 update/s, so the default is 1 thread each")
    args = parser.parse_args()
    common.pin(args.cpu)

    import tensorflow as tf
    import torch

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    with tempfile.TemporaryDirectory(prefix="sac_throughput_") as workdir:
        os.chdir(workdir)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
        implementations = {
            "ERA-SAC (TF-Agents, this repo)": TFAgentsSac("era", args, workdir),
            "SAC (TF-Agents SacAgent, same replay)": TFAgentsSac("sac", args, workdir),
            "SAC (Stable-Baselines3)": StableBaselinesSac(args),
        }
        for implementation in implementations.values():
            implementation.updates(args.warmup_updates)

        def rate(implementation):
            started = time.perf_counter()
            implementation.updates(args.updates)
            return args.updates / (time.perf_counter() - started)

        rates = common.interleave(
            {name: lambda i=implementation: rate(i)
             for name, implementation in implementations.items()},
            args.rounds)

    names = list(rates)
    era, sac, sb3 = (np.array(rates[name]) for name in names)
    median = {name: float(np.median(rates[name])) for name in names}

    def ratio(a, b):
        per_round = a / b
        return (f"{np.median(a) / np.median(b):.3f} "
                f"(per round {per_round.min():.3f}-{per_round.max():.3f})")

    lines = [
        f"Task {args.env}, nets {'x'.join(map(str, args.hidden))} (TF-Agents: ELU, critic "
        f"LayerNorm; SB3: its MlpPolicy, ReLU), batch {args.batch}, replay filled with "
        f"{args.fill} random steps, {args.warmup_updates} untimed warm-up updates, then "
        f"{args.rounds} interleaved rounds of {args.updates} updates each. TF {tf.__version__}, "
        f"torch {torch.__version__}; {args.threads} intra-op thread(s) and 1 inter-op thread for "
        "both.",
        "",
        common.table(["implementation", "grad steps/s (median)", "all rounds"],
                     [[name, f"{median[name]:.1f}", ", ".join(f"{r:.0f}" for r in rates[name])]
                      for name in names]),
        "",
        f"- ERA-SAC / TF-Agents SAC: {ratio(era, sac)} (target >= 0.95)",
        f"- ERA-SAC / Stable-Baselines3 SAC: {ratio(era, sb3)}",
        f"- TF-Agents SAC / Stable-Baselines3 SAC: {ratio(sac, sb3)}",
        "",
        "An update is one critic, actor and alpha (SAC) or delta (ERA) step including the "
        "replay sample; ERA's update also estimates the squashed policy's entropy "
        "(4 Monte Carlo samples per state) for delta.",
    ]
    common.write_results(args.name, "SAC throughput: gradient steps per second on CPU",
                         ["\n".join(lines)])


if __name__ == "__main__":
    main()
