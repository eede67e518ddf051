"""SAC benchmark, quality: ERA-SAC against standard SAC (auto-tuned alpha), same pipeline.

Every run is one `python -m pipelines.sac` subprocess (the real pipeline: same envs,
networks, replay, evaluation with the deterministic policy), runs interleaved as
seed -> task -> agent, and reports per task and agent the final evaluation return and the
entropy of the executed (squashed) policy as mean +- standard deviation over seeds, with
every seed's value, plus learning and entropy curves. Each finished run is appended to
benchmarks/results/<name>_runs.jsonl, so an interrupted benchmark picks up where it
stopped. Writes benchmarks/results/<name>.md and <name>_curves.png (name: sac_quality).

    nice .venv/bin/python benchmarks/sac_quality.py --steps 10000 --seeds 3
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

import common
import numpy as np

# Agent variants: name -> pipeline options.
AGENTS = {
    "era": ["--agent", "era", "--squash", "tanh"],
    "era-truncated": ["--agent", "era", "--squash", "truncated"],
    "sac": ["--agent", "sac"],
}
CURVES = ("eval/return", "entropy/executed", "entropy/pre_squash", "delta", "alpha")


def run_one(task, agent, seed, args, workdir):
    run_dir = pathlib.Path(workdir) / f"{task}-{agent}-{seed}"
    command = [
        sys.executable, "-m", "pipelines.sac", "--preset", "paper",
        "--env", task, *AGENTS[agent], "--seed", str(seed),
        "--total-env-steps", str(args.steps), "--warmup-steps", str(args.warmup),
        "--hidden-sizes", *map(str, args.hidden), "--updates-per-step", str(args.updates),
        "--buffer-size", str(args.steps), "--eval-every", str(args.eval_every),
        "--eval-episodes", str(args.eval_episodes), "--log-every", "500",
        "--checkpoint-every", str(args.steps), "--run-dir", str(run_dir),
    ]
    # Run in the scratch dir (MuJoCo writes MUJOCO_LOG.TXT into the working directory).
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db",
           "PYTHONPATH": str(common.ROOT)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    result = json.loads((run_dir / "result.json").read_text())

    import mlflow

    from pipelines.common.metrics import metric_history

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    curves = {name: [list(point) for point in zip(steps, values)]
              for name, (steps, values) in metric_history(result["run_id"], CURVES).items()
              if steps}
    return {
        "task": task, "agent": agent, "seed": seed, "steps": args.steps,
        "final_return": result["eval/return"],
        "final_entropy": result["entropy/executed"],
        "seconds": time.perf_counter() - started,
        "curves": curves,
    }


def runs_file(args):
    return common.RESULTS / f"{args.name}_runs.jsonl"


def load_runs(args):
    if not runs_file(args).exists():
        return []
    runs = [json.loads(line) for line in runs_file(args).read_text().splitlines() if line]
    return [r for r in runs if r["steps"] == args.steps]


def summarise(runs, tasks):
    rows = []
    for task in tasks:
        for agent in AGENTS:
            mine = sorted((r for r in runs if r["task"] == task and r["agent"] == agent),
                          key=lambda r: r["seed"])
            if not mine:
                continue
            returns = np.array([r["final_return"] for r in mine])
            entropies = np.array([r["final_entropy"] for r in mine])
            rows.append((task, agent, mine, returns, entropies))
    return rows


def plot(runs, tasks, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 7), squeeze=False)
    colours = {"era": "tab:red", "era-truncated": "tab:orange", "sac": "tab:blue"}
    for column, task in enumerate(tasks):
        for row, metric in enumerate(("eval/return", "entropy/executed")):
            ax = axes[row][column]
            for run in (r for r in runs if r["task"] == task):
                xs, ys = zip(*run["curves"].get(metric, [(0, np.nan)]))
                label = run["agent"] if run["seed"] == min(
                    r["seed"] for r in runs if r["task"] == task and r["agent"] == run["agent"]
                ) else None
                ax.plot(xs, ys, color=colours[run["agent"]], alpha=0.7, label=label)
            ax.set_title(f"{task}: {metric}")
            ax.set_xlabel("env step")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_table(runs, tasks, args):
    lines = [
        f"Scale: {args.steps} env steps per run ({args.warmup} random warm-up), "
        f"{len(set(r['seed'] for r in runs))} seeds, nets {'x'.join(map(str, args.hidden))} "
        f"ELU (critic LayerNorm), batch 256, {args.updates} update(s) per env step, "
        f"evaluation every {args.eval_every} steps over {args.eval_episodes} episodes with the "
        "deterministic policy. The paper trains 1e6 steps with 512x512 nets and 2 updates per "
        "step: these runs are ~1% of that.",
        "",
        "era: tanh-squashed Gaussian ERA; era-truncated: the authors' normal truncated to "
        "(-1, 1) around tanh(mu); both H0 = 0.25 nats per action dim, delta auto-tuned "
        "(Adam, lr 3e-4) towards H0 on the executed policy's entropy. sac: TF-Agents' "
        "SacAgent, alpha (initially 1) auto-tuned towards -dim(A). Same networks, optimizers, "
        "replay and seeds.",
        "",
        "| task | agent | final eval return (mean +- sd) | per seed "
        "| executed entropy (nats, mean +- sd) | minutes per run |",
        "|---|---|---|---|---|---|",
    ]
    for task, agent, mine, returns, entropies in summarise(runs, tasks):
        per_seed = ", ".join(f"{r['final_return']:.0f}" for r in mine)
        minutes = np.mean([r["seconds"] for r in mine]) / 60
        (r_mean, r_sd), (h_mean, h_sd) = common.mean_sd(returns), common.mean_sd(entropies)
        lines.append(f"| {task} | {agent} | {r_mean:.1f} +- {r_sd:.1f} | {per_seed} "
                     f"| {h_mean:.2f} +- {h_sd:.2f} | {minutes:.1f} |")
    others = [r for r in runs if r["task"] not in tasks]
    if others:
        lines += ["", f"Runs of other tasks in `{runs_file(args).name}` (same settings):", ""]
        lines += [f"- {r['task']} {r['agent']} seed {r['seed']}: final eval return "
                  f"{r['final_return']:.1f}, executed entropy {r['final_entropy']:.2f}"
                  for r in others]
    lines += ["", f"Curves: `{args.name}_curves.png` (one line per seed).", ""]
    return "\n".join(lines)


def main():
    parser = common.parser(__doc__)
    parser.add_argument("--tasks", nargs="+", default=["HalfCheetah-v5", "cheetah-run"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the table and plot from <name>_runs.jsonl, run nothing")
    parser.add_argument("--agents", nargs="+", choices=sorted(AGENTS), default=["era", "sac"])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--updates", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=2_000)
    parser.add_argument("--eval-episodes", type=int, default=3)
    args = parser.parse_args()
    common.pin(args.cpu)
    common.RESULTS.mkdir(parents=True, exist_ok=True)

    runs = load_runs(args)
    if args.report_only:
        write_results(runs, args)
        return
    done = {(r["task"], r["agent"], r["seed"]) for r in runs}
    with tempfile.TemporaryDirectory(prefix="sac_quality_") as workdir:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for task in args.tasks:
                for agent in args.agents:
                    if (task, agent, seed) in done:
                        continue
                    run = run_one(task, agent, seed, args, workdir)
                    runs.append(run)
                    with runs_file(args).open("a") as handle:
                        handle.write(json.dumps(run) + "\n")
                    print(f"{task} {agent} seed {seed}: return {run['final_return']:.1f}, "
                          f"entropy {run['final_entropy']:.2f}, {run['seconds']:.0f}s", flush=True)
                    write_results(runs, args)
    write_results(runs, args)


def write_results(runs, args):
    """Write the table (keeping a hand-written `## Reading` section) and the curves."""
    common.write_results(args.name, "SAC quality: ERA-SAC vs SAC (TF-Agents, this repo's pipeline)",
                         [write_table(runs, args.tasks, args)])
    plot([r for r in runs if r["task"] in args.tasks], args.tasks,
         common.RESULTS / f"{args.name}_curves.png")


if __name__ == "__main__":
    main()
