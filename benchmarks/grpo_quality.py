"""GRPO vs GRPO+ERA on a built-in task, from one shared warm start, over several seeds.

    nice .venv/bin/python benchmarks/grpo_quality.py [--seeds 0 1 2] [--steps 300] ...

1. One supervised warm start of a tiny random-init keras-hub model (saved as a preset).
2. The warm-start policy's response-entropy distribution (H_resp over training rollouts)
   sets ERA's thresholds: omega_low and omega_high are quantiles of it (the
   authors' absolute values assume a ~150k-token vocabulary; see docs/layers.md).
3. For each seed, vanilla GRPO and GRPO+ERA (interleaved) train from that preset with
   the same prompts and sampler seeds, evaluated on held-out prompts every --eval-every steps.

Prints a table (mean and spread over seeds) and writes it, with the exact command, to
benchmarks/results/grpo_quality.md; the per-run curves go to grpo_quality.json and a plot
to grpo_quality.png. Every run is tracked in MLflow (a store under --work-dir by default).
"""

import json
import os
import pathlib
import time

import common
import numpy as np

common.setup()

from pipelines.grpo.config import GRPOConfig  # noqa: E402
from pipelines.grpo.train import GRPOTrainer, build_causal_lm, load_problems, run  # noqa: E402


def parse_args():
    parser = common.parser(__doc__)
    parser.add_argument("--task", default="digit_sum")
    parser.add_argument("--model", default="tiny:qwen")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warm-start-steps", type=int, default=2500)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--num-eval-prompts", type=int, default=32)
    parser.add_argument("--omega-low-quantile", type=float, default=0.25)
    parser.add_argument("--omega-high-quantile", type=float, default=0.99)
    parser.add_argument("--calibration-steps", type=int, default=8,
                        help="rollout batches of the warm-start policy used to measure H_resp")
    parser.add_argument("--work-dir", default="/tmp/grpo_quality")
    return parser.parse_args()


def make_warm_start(args, base):
    preset = pathlib.Path(args.work_dir) / "warm_start_preset"
    config = GRPOConfig(model=args.model, task=args.task, warm_start_steps=args.warm_start_steps,
                        run_dir=str(pathlib.Path(args.work_dir) / "warm"), **base)
    if (preset / "config.json").exists():
        return preset, None
    lm = build_causal_lm(config)
    train, test = load_problems(config)
    trainer = GRPOTrainer(config, lm, train, test)
    history = trainer.run_warm_start()
    lm.save_to_preset(str(preset))
    return preset, history["loss"][-1]


def measure_entropy(args, preset, base):
    """H_resp of the warm-start policy on training rollouts, and its held-out accuracy."""
    config = GRPOConfig(model=str(preset), task=args.task, warm_start_steps=0,
                        run_dir=str(pathlib.Path(args.work_dir) / "calibrate"), **base)
    train, test = load_problems(config)
    trainer = GRPOTrainer(config, build_causal_lm(config), train, test)
    trainer.prepare_sampling()
    entropies, accuracy = [], []
    for step in range(1, args.calibration_steps + 1):
        sampled = trainer.sampler.sample(10_000 + step)
        rollout, rewards, advantages = sampled.rollout, sampled.rewards, sampled.advantages
        batch = {"token_ids": rollout.token_ids, "padding_mask": rollout.padding_mask,
                 "response_mask": rollout.response_mask.astype("float32")}
        logits, tokens, mask = trainer.policy_update.outputs(trainer.causal_lm, batch)
        out = trainer.era((logits, tokens, advantages, mask))
        entropies.append(np.asarray(out["response_entropy"]))
        accuracy.append((rewards > 0).mean())
    return np.concatenate(entropies), float(np.mean(accuracy)), trainer.evaluate()


def summarise(history, omega_low, k):
    train = [r for r in history if "entropy/h_resp_p50" in r]
    evals = [r for r in history if "eval/greedy_accuracy" in r]
    final = evals[-1]
    return {
        "greedy_accuracy": final["eval/greedy_accuracy"],
        "mean_accuracy": final["eval/mean_accuracy"],
        f"pass_at_{k}": final[f"eval/pass_at_{k}"],
        "distinct_correct": final["eval/distinct_correct"],
        "h_resp_p50_first10": float(np.mean([r["entropy/h_resp_p50"] for r in train[:10]])),
        "h_resp_p50_last10": float(np.mean([r["entropy/h_resp_p50"] for r in train[-10:]])),
        "h_resp_p10_last10": float(np.mean([r["entropy/h_resp_p10"] for r in train[-10:]])),
        "share_below_omega_low_last10": float(np.mean(
            [r["entropy/share_below_omega_low"] for r in train[-10:]])),
        "train_accuracy_last10": float(np.mean([r["train/accuracy"] for r in train[-10:]])),
        "share_scaled_up": float(np.mean([r["entropy/share_tokens_scaled_up"] for r in train])),
        "share_scaled_down": float(np.mean([r["entropy/share_tokens_scaled_down"] for r in train])),
    }


def main():
    args = parse_args()
    common.pin(args.cpu)
    started = time.time()
    work = pathlib.Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    base = dict(prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                num_eval_prompts=args.num_eval_prompts, eval_samples=args.eval_samples)
    preset, warm_loss = make_warm_start(args, base)
    entropies, warm_train_accuracy, warm_eval = measure_entropy(args, preset, base)
    omega_low = float(np.quantile(entropies, args.omega_low_quantile))
    omega_high = float(np.quantile(entropies, args.omega_high_quantile))
    print(f"warm start: loss {warm_loss}, train accuracy {warm_train_accuracy:.3f}, "
          f"held-out {warm_eval}; H_resp quantiles 10/50/90%: "
          f"{np.quantile(entropies, [0.1, 0.5, 0.9]).round(3)}; omega_low {omega_low:.3f}, "
          f"omega_high {omega_high:.3f}")
    runs = {"vanilla": [], "era": []}
    for seed in args.seeds:
        for arm in ("vanilla", "era"):
            config = GRPOConfig(
                model=str(preset), task=args.task, warm_start_steps=0, steps=args.steps,
                learning_rate=args.learning_rate, eval_every=args.eval_every,
                checkpoint_every=args.steps, era=arm == "era", omega_low=omega_low,
                omega_high=omega_high, seed=seed, experiment="grpo_quality_benchmark",
                run_name=f"{arm}-seed{seed}", run_dir=str(work / f"{arm}-seed{seed}"), **base)
            t0 = time.time()
            summary = run(config, tracking_uri=tracking_uri, export=False)
            runs[arm].append({"seed": seed, "seconds": time.time() - t0,
                              "history": summary["history"]})
            print(f"{arm} seed {seed}: {time.time() - t0:.0f}s", flush=True)
    k = args.eval_samples
    summaries = {arm: [summarise(r["history"], omega_low, k) for r in rs]
                 for arm, rs in runs.items()}
    keys = list(summaries["vanilla"][0])
    warm_row = {"greedy_accuracy": warm_eval["eval/greedy_accuracy"],
                "mean_accuracy": warm_eval["eval/mean_accuracy"],
                f"pass_at_{k}": warm_eval[f"eval/pass_at_{k}"],
                "distinct_correct": warm_eval["eval/distinct_correct"]}
    lines = [
        f"Scale: one warm start of {args.warm_start_steps} supervised steps (batch 64), then "
        f"{args.steps} GRPO steps x {args.prompts_per_step} prompts x group "
        f"{args.group_size} per run; seeds {args.seeds}; held-out eval on "
        f"{args.num_eval_prompts} prompts, greedy and {k} samples at T=1. "
        f"TensorFlow backend; {time.time() - started:.0f} s in all.", "",
        f"ERA thresholds from the warm-start H_resp distribution "
        f"({len(entropies)} responses; 10/50/90% quantiles "
        f"{', '.join(f'{q:.3f}' for q in np.quantile(entropies, [0.1, 0.5, 0.9]))} nats): "
        f"omega_low = {args.omega_low_quantile:.2f} quantile = {omega_low:.3f}, omega_high = "
        f"{args.omega_high_quantile:.2f} quantile = {omega_high:.3f}; k = 2.", "",
        "Warm start (held-out): " + ", ".join(f"{k_}={v:.3f}" for k_, v in warm_row.items()),
        "", "Final values (mean ± std over seeds; last10 = mean over the last 10 steps):", "",
        "| metric | GRPO | GRPO+ERA |", "|---|---|---|",
    ]
    for key in keys:
        lines.append(f"| {key} | {common.format_mean_sd([s[key] for s in summaries['vanilla']])} | "
                     f"{common.format_mean_sd([s[key] for s in summaries['era']])} |")
    lines += ["", "Per seed (greedy acc / pass@k / distinct correct / H_resp p50 last10):", "",
              "| seed | GRPO | GRPO+ERA |", "|---|---|---|"]
    for i, seed in enumerate(args.seeds):
        cells = []
        for arm in ("vanilla", "era"):
            s = summaries[arm][i]
            cells.append(f"{s['greedy_accuracy']:.3f} / {s[f'pass_at_{k}']:.3f} / "
                         f"{s['distinct_correct']:.2f} / {s['h_resp_p50_last10']:.3f}")
        lines.append(f"| {seed} | {cells[0]} | {cells[1]} |")
    lines += ["", "Held-out metrics over training (mean over seeds):", "",
              "| step | GRPO greedy | ERA greedy | GRPO pass@k | ERA pass@k | GRPO distinct | "
              "ERA distinct | GRPO H_p50 | ERA H_p50 |", "|---|---|---|---|---|---|---|---|---|"]
    eval_steps = [r["step"] for r in runs["vanilla"][0]["history"] if "eval/greedy_accuracy" in r]
    for step in eval_steps:
        cells = []
        for key in ("eval/greedy_accuracy", f"eval/pass_at_{k}", "eval/distinct_correct",
                    "entropy/h_resp_p50"):
            for arm in ("vanilla", "era"):
                vals = [r[key] for run_ in runs[arm] for r in run_["history"]
                        if r["step"] == step and key in r]
                cells.append(f"{np.mean(vals):.3f}" if vals else "-")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    common.write_results(args.name, f"GRPO vs GRPO+ERA ({args.task}, {args.model})",
                         ["\n".join(lines)])
    (common.RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"args": vars(args), "omega_low": omega_low, "omega_high": omega_high,
         "warm_start": warm_row, "summaries": summaries,
         "curves": {arm: [{"seed": r["seed"], "history": [
             {k_: v for k_, v in row.items() if k_ in (
                 "step", "train/reward", "train/accuracy", "entropy/h_resp_p10",
                 "entropy/h_resp_p50",
                 "entropy/h_resp_p90",
                 "entropy/share_tokens_scaled_up", "eval/greedy_accuracy", f"eval/pass_at_{k}",
                 "eval/distinct_correct", "eval/mean_accuracy")}
             for row in r["history"]]} for r in rs] for arm, rs in runs.items()}},
        indent=1))
    plot(runs, omega_low, k, common.RESULTS / f"{args.name}.png")


def plot(runs, omega_low, k, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("entropy/h_resp_p50", "H_resp median (nats)"), ("train/accuracy", "train accuracy"),
              ("eval/greedy_accuracy", "held-out greedy accuracy"),
              (f"eval/pass_at_{k}", f"held-out pass@{k}"),
              ("eval/distinct_correct", "distinct correct answers / prompt")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for arm, color in (("vanilla", "tab:blue"), ("era", "tab:orange")):
            for i, r in enumerate(runs[arm]):
                pts = [(row["step"], row[key]) for row in r["history"] if key in row]
                ax.plot(*zip(*pts), color=color, alpha=0.7,
                        label=("GRPO" if arm == "vanilla" else "GRPO+ERA") if i == 0 else None)
        if key == "entropy/h_resp_p50":
            ax.axhline(omega_low, color="k", ls="--", lw=1, label="omega_low")
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
