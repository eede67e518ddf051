"""SAC benchmark, exploration: ERA-SAC against standard SAC where exploration matters.

Every run is one `python -m pipelines.sac` subprocess (the real pipeline: same envs,
networks, replay, evaluation with the deterministic policy). The settings below were fixed
before any run of this grid and are the same for every arm of a task:

- MountainCarContinuous-v0 (sparse reward: +100 at the goal, -0.1 a^2 per step), 50k env
  steps, 10 seeds, 64x64 nets (the size RL Zoo uses for this task), arms:
  ERA truncated with auto delta; ERA truncated with delta = 0 (the authors' released
  setting); SAC with alpha_0 = 0.1 and target -dim(A); SAC with alpha_0 = 0.1 and its target
  at ERA's executed-entropy target (+0.25 nats per dim).
- HalfCheetah-v5, 50k env steps, 5 seeds, 256x256 nets, arms: ERA truncated; ERA tanh with
  mean bound 0.75 (its worst case, 0.34 nats per dim, leaves the +0.25 target reachable
  with a margin); SAC with alpha_0 = 0.1.

Runs are interleaved (task -> seed -> arm), so whatever has finished is balanced across
arms; each finished run is appended to benchmarks/results/sac_quality.json(l) and the
table (benchmarks/results/sac_quality.md) is rewritten, plainly marked partial while
seeds are missing. `--workers 2` runs two at a time.

    nice -n 10 .venv/bin/python benchmarks/sac_quality.py --workers 2
"""

import collections
import concurrent.futures
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import threading
import time

import common
import numpy as np

RUNS_FILE = common.RESULTS / "sac_quality_runs.jsonl"
STEPS = 50_000
# Every run: the paper preset's optimisers (lr 3e-4, critic AdamW 1e-4, gamma 0.99,
# tau 0.005), batch 256, 1 update per env step, 5k random warm-up steps.
COMMON = ["--preset", "paper", "--total-env-steps", str(STEPS), "--warmup-steps", "5000",
          "--updates-per-step", "1", "--batch-size", "256", "--buffer-size", str(STEPS),
          "--eval-every", "5000", "--eval-episodes", "5", "--log-every", "500",
          "--checkpoint-every", str(STEPS)]
SAC_ALPHA_01 = ["--agent", "sac", "--initial-log-alpha", f"{math.log(0.1):.6f}"]
TASKS = {
    "MountainCarContinuous-v0": {
        "seeds": 10,
        "nets": ["--hidden-sizes", "64", "64"],
        "arms": {
            "ERA truncated, auto delta": ["--agent", "era", "--squash", "truncated"],
            "ERA truncated, delta 0": ["--agent", "era", "--squash", "truncated",
                                       "--no-auto-delta", "--delta", "0"],
            "SAC alpha_0 0.1, target -dim(A)": SAC_ALPHA_01 + [
                "--sac-target-entropy-per-dim", "-1"],
            "SAC alpha_0 0.1, target = ERA's executed target": SAC_ALPHA_01 + [
                "--sac-target-entropy-per-dim", "0.25"],
        },
    },
    "HalfCheetah-v5": {
        "seeds": 5,
        "nets": ["--hidden-sizes", "256", "256"],
        "arms": {
            "ERA truncated, auto delta": ["--agent", "era", "--squash", "truncated"],
            "ERA tanh, mean bound 0.75": ["--agent", "era", "--squash", "tanh",
                                          "--mean-bound", "0.75"],
            "SAC alpha_0 0.1, target -dim(A)": SAC_ALPHA_01 + [
                "--sac-target-entropy-per-dim", "-1"],
        },
    },
}
GOAL = {"MountainCarContinuous-v0": 90.0}  # gymnasium's "solved" return for the task
CURVES = ("eval/return", "train/max_return", "entropy/executed", "entropy/executed_target",
          "entropy/delta", "entropy/alpha")
_lock = threading.Lock()
COMMIT = common.commit()


def command_for(task, arm, seed, run_dir):
    spec = TASKS[task]
    return [sys.executable, "-m", "pipelines.sac", *COMMON, "--env", task, *spec["nets"],
            *spec["arms"][arm], "--seed", str(seed), "--run-dir", str(run_dir)]


def run_one(task, arm, seed, workdir):
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{task}-{arm}-{seed}")
    run_dir = pathlib.Path(workdir) / name
    command = command_for(task, arm, seed, run_dir)
    # Run in the scratch dir (MuJoCo writes MUJOCO_LOG.TXT into the working directory).
    # One store per run: two workers creating one SQLite store at once collide.
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{run_dir}.db",
           "PYTHONPATH": str(common.ROOT)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    result = json.loads((run_dir / "finished.json").read_text())

    import mlflow

    from pipelines.common.metrics import metric_history

    with _lock:  # MLflow's tracking URI is process-wide; the workers are threads
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        history = metric_history(result["run_id"], list(CURVES))
    curves = {name: list(zip(*series)) for name, series in history.items() if series[0]}
    return {
        "task": task, "arm": arm, "seed": seed, "steps": STEPS,
        "final_return": result["metrics"]["eval/return"],
        "seconds": time.perf_counter() - started,
        "commit": COMMIT,
        "command": shlex.join(command[1:]),
        "curves": curves,
    }


def first_success(run):
    """Env step of the first logged point whose best recent training episode reached the
    goal (MountainCar: any episode return > 0 means the car reached the flag)."""
    for step, value in run["curves"].get("train/max_return", []):
        if value > 0:
            return step
    return None


def late_mean(run, name, share=0.2):
    """Mean of a logged metric over the last `share` of the run's steps."""
    points = [(s, v) for s, v in run["curves"].get(name, []) if s >= (1 - share) * run["steps"]]
    return float(np.mean([v for _, v in points])) if points else float("nan")


def summary_rows(runs):
    rows = []
    for task, spec in TASKS.items():
        for arm in spec["arms"]:
            mine = sorted((r for r in runs if r["task"] == task and r["arm"] == arm),
                          key=lambda r: r["seed"])
            if mine:
                rows.append((task, arm, mine))
    return rows


def write_results(runs, started_at):
    lines = [f"Started {started_at} UTC.", ""]
    missing = []
    for task, spec in TASKS.items():
        for arm in spec["arms"]:
            got = sum(1 for r in runs if r["task"] == task and r["arm"] == arm)
            if got < spec["seeds"]:
                missing.append(f"{task} / {arm}: {got} of {spec['seeds']} seeds")
    if missing:
        lines += ["**PARTIAL RESULTS.** The grid did not finish; each arm below has only the "
                  "seeds listed (every finished run has the full 50k env steps):", ""]
        lines += [f"- {item}" for item in missing] + [""]
    lines += [
        "Settings (fixed before any run): 50k env steps per run, 5k uniformly random warm-up "
        "steps, then 1 update per env step, batch 256, replay 50k, lr 3e-4 (critic AdamW, "
        "weight decay 1e-4), gamma 0.99, tau 0.005, ELU nets (critic with LayerNorm), "
        "64x64 on MountainCarContinuous-v0 and 256x256 on HalfCheetah-v5. ERA: H0 = 0.25 nats "
        "per action dim before squashing; auto delta steers the executed entropy to +0.25 "
        "nats per dim (Adam on log delta, lr 1e-2). SAC: TF-Agents' SacAgent, alpha auto-tuned "
        "(lr 3e-4) from alpha_0 = 0.1. Evaluation: the deterministic policy, every 5k steps, "
        "5 episodes. Everything on a 2-core CPU shared with other jobs (runs niced).",
        "",
        "Columns: *solved* = final evaluation's mean return >= 90 (gymnasium's threshold for "
        "MountainCarContinuous); *reached the goal* = some training episode reached the flag "
        "(return > 0), with the first env step where the logged best return of the last 10 "
        "episodes was > 0 (logged every 500 steps); *executed entropy* = the executed "
        "policy's entropy (nats) averaged over the last 20% of the run, against its target "
        "(ERA: what delta steers to; SAC: alpha's target).",
        "",
        "| task | arm | seeds | final eval return (mean +- sd) | per seed | solved | "
        "reached the goal (first step per seed) | executed entropy (last 20%) | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, arm, mine in summary_rows(runs):
        returns = [r["final_return"] for r in mine]
        goal = GOAL.get(task)
        solved = f"{sum(r >= goal for r in returns)}/{len(mine)}" if goal else "-"
        if goal:
            firsts = [first_success(r) for r in mine]
            reached = (f"{sum(f is not None for f in firsts)}/{len(mine)} ("
                       + ", ".join("never" if f is None else f"{f / 1000:.1f}k" for f in firsts)
                       + ")")
        else:
            reached = "-"
        executed = [late_mean(r, "entropy/executed") for r in mine]
        target = late_mean(mine[0], "entropy/executed_target")
        lines.append(
            f"| {task} | {arm} | {len(mine)} | {common.format_mean_sd(returns, 1)} | "
            f"{', '.join(f'{v:.0f}' for v in returns)} | {solved} | {reached} | "
            f"{common.format_mean_sd(executed, 2)} | {target:.2f} |"
        )
    commits = collections.Counter(r.get("commit", "not recorded") for r in runs)
    if commits:
        lines += ["", "Commit of the code each run used: " + ", ".join(
            f"{c} ({n} runs)" for c, n in sorted(commits.items())) + "."]
    minutes = [r["seconds"] / 60 for r in runs]
    if minutes:
        lines += ["", f"Wall time per run: {np.median(minutes):.0f} min (median), niced, on "
                  "the shared CPU."]
    lines += ["", "Curves: `sac_quality_curves.png` (one line per seed). Every run's command "
              "and curves: `sac_quality_runs.jsonl`."]
    plot(runs, common.RESULTS / "sac_quality_curves.png")
    return common.write_results(
        "sac_quality", "SAC exploration benchmark: ERA-SAC vs SAC (TF-Agents, this repo's "
        "pipeline)", ["\n".join(lines)])


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 7), squeeze=False)
    colours = dict(zip(sorted({a for s in TASKS.values() for a in s["arms"]}),
                       ["tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple"]))
    for column, task in enumerate(tasks):
        for row, metric in enumerate(("eval/return", "entropy/executed")):
            ax = axes[row][column]
            labelled = set()
            for run in (r for r in runs if r["task"] == task):
                points = run["curves"].get(metric)
                if not points:
                    continue
                xs, ys = zip(*points)
                label = run["arm"] if run["arm"] not in labelled else None
                labelled.add(run["arm"])
                ax.plot(xs, ys, color=colours[run["arm"]], alpha=0.6, label=label)
            ax.set_title(f"{task}: {metric}")
            ax.set_xlabel("env step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_runs():
    if not RUNS_FILE.exists():
        return []
    runs = [json.loads(line) for line in RUNS_FILE.read_text().splitlines() if line]
    return [r for r in runs if r.get("steps") == STEPS and "arm" in r]


def schedule(tasks):
    """(task, arm, seed) in the order that keeps partial results balanced."""
    for task in tasks:
        for seed in range(TASKS[task]["seeds"]):
            for arm in TASKS[task]["arms"]:
                yield task, arm, seed


def main():
    parser = common.parser(__doc__)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the table and plot from sac_quality_runs.jsonl")
    args = parser.parse_args()
    common.pin(args.cpu)
    started_at = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    runs = load_runs()
    if args.report_only:
        write_results(runs, started_at)
        return
    done = {(r["task"], r["arm"], r["seed"]) for r in runs}
    todo = [job for job in schedule(args.tasks) if job not in done]
    with tempfile.TemporaryDirectory(prefix="sac_quality_") as workdir, \
            concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        futures = {pool.submit(run_one, *job, workdir): job for job in todo}
        for future in concurrent.futures.as_completed(futures):
            try:
                run = future.result()
            except RuntimeError as error:  # one failed run must not stop the grid
                print(f"FAILED {futures[future]}: {error}", flush=True)
                continue
            with _lock:
                runs.append(run)
                with RUNS_FILE.open("a") as handle:
                    handle.write(json.dumps(run) + "\n")
                print(f"{run['task']} | {run['arm']} | seed {run['seed']}: return "
                      f"{run['final_return']:.1f}, {run['seconds'] / 60:.1f} min", flush=True)
                write_results(runs, started_at)
    write_results(runs, started_at)


if __name__ == "__main__":
    main()
