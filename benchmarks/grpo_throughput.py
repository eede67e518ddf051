"""Tokens/s of the GRPO loop with and without logit ERA, measured side by side.

    nice .venv/bin/python benchmarks/grpo_throughput.py [--steps 30] [--repeats 3]

Two trainers start from the same tiny keras-hub model (one brief warm start, saved as a
preset): vanilla GRPO and GRPO+ERA. Their steps are interleaved (A B A B ...) so that load
from other processes hits both alike. Both use a negligible learning rate and the same
sampler seeds, so they sample identical rollouts and the only difference is the loss.
Reports the median over steps (after compile warm-up) of generated tokens/s for the whole
step (rollout + update) and of the update alone, and the ERA/vanilla ratios. ERA's thresholds
are set so that it fires (omega_low at the median of the measured H_resp): the cost of the
scaled log-softmax is paid on those tokens.

Pinned to one core (--cpu 1). Writes the table and the exact command to
benchmarks/results/grpo_throughput.md.
"""

import pathlib

import common
import numpy as np

common.setup()

import keras  # noqa: E402

from pipelines.grpo.config import GRPOConfig  # noqa: E402
from pipelines.grpo.train import GRPOTrainer, build_causal_lm, load_problems  # noqa: E402


def parse_args():
    parser = common.parser(__doc__, cpu=1)
    parser.add_argument("--model", default="tiny:qwen")
    parser.add_argument("--task", default="digit_sum")
    parser.add_argument("--preset", default=None,
                        help="start from this preset (e.g. grpo_quality.py's warm start) "
                             "instead of a fresh --warm-start-steps warm start")
    parser.add_argument("--warm-start-steps", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per arm and block")
    parser.add_argument("--blocks", type=int, default=3,
                        help="blocks of --steps interleaved steps; ratios are given per block")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--work-dir", default="/tmp/grpo_throughput")
    return parser.parse_args()


def main():
    args = parse_args()
    common.pin(args.cpu)
    work = pathlib.Path(args.work_dir)
    preset = pathlib.Path(args.preset) if args.preset else work / "preset"
    base = dict(task=args.task, prompts_per_step=args.prompts_per_step,
                group_size=args.group_size, learning_rate=1e-12, run_dir=str(work / "run"))
    if args.preset is None and not (preset / "config.json").exists():
        config = GRPOConfig(model=args.model, warm_start_steps=args.warm_start_steps, **base)
        lm = build_causal_lm(config)
        train, test = load_problems(config)
        GRPOTrainer(config, lm, train, test).run_warm_start()
        lm.save_to_preset(str(preset))

    probe = GRPOConfig(model=str(preset), warm_start_steps=0, **base)
    train, test = load_problems(probe)
    trainers = {}
    for arm in ("vanilla", "era"):
        config = GRPOConfig(model=str(preset), warm_start_steps=0, era=arm == "era",
                            omega_low=0.0, omega_high=1e9, **base)
        trainers[arm] = GRPOTrainer(config, build_causal_lm(config), train, test)
        trainers[arm].prepare_sampling()
    # Thresholds that make ERA fire: omega_low at the measured median H_resp.
    for _ in range(args.warmup_steps):
        metrics = trainers["vanilla"].train_one_step()
    median_h = metrics["entropy/h_resp_p50"]
    trainers["era"].era.omega_low = median_h
    trainers["era"].era.omega_high = 1e9
    for _ in range(args.warmup_steps):
        trainers["era"].train_one_step()

    rows = common.interleave({arm: trainers[arm].train_one_step for arm in ("vanilla", "era")},
                             args.steps * args.blocks, progress=False)

    def block_ratio(key):
        ratios = []
        for b in range(args.blocks):
            part = slice(b * args.steps, (b + 1) * args.steps)
            medians = {arm: np.median([m[key] for m in rows[arm][part]]) for arm in rows}
            ratios.append(medians["era"] / medians["vanilla"])
        return ratios
    summary = {}
    for arm, metrics in rows.items():
        tokens = np.array([m["train/response_length"] * args.prompts_per_step * args.group_size
                           for m in metrics])
        step = np.array([m["perf/step_seconds"] for m in metrics])
        update = np.array([m["perf/update_seconds"] for m in metrics])
        summary[arm] = {
            "tokens_per_s": float(np.median(tokens / step)),
            "update_tokens_per_s": float(np.median(tokens / update)),
            "step_ms": float(np.median(step) * 1e3),
            "update_ms": float(np.median(update) * 1e3),
            "rollout_ms": float(np.median(step - update) * 1e3),
            "scaled_up": float(np.mean([m["entropy/share_tokens_scaled_up"] for m in metrics])),
            "tokens": float(tokens.mean()),
        }
    same = all(abs(a["response_length"] - b["response_length"]) < 1e-9
               for a, b in zip(rows["vanilla"], rows["era"]))
    v, e = summary["vanilla"], summary["era"]
    start = f"preset {args.preset}" if args.preset else f"{args.warm_start_steps}-step warm start"
    lines = [
        f"Keras backend {keras.backend.backend()}. "
        f"{args.blocks} blocks of {args.steps} interleaved steps per arm after "
        f"{args.warmup_steps} warm-up steps; "
        f"{args.prompts_per_step} prompts x group {args.group_size}, "
        f"~{v['tokens']:.0f} generated tokens per step. Identical rollouts in both arms: {same}. "
        f"Start: {start}. "
        f"ERA omega_low = measured median H_resp ({median_h:.3f} nats), so it scaled "
        f"{e['scaled_up']:.1%} of tokens up.", "",
        "Medians over all steps:", "",
        "| | GRPO | GRPO+ERA | ERA / GRPO |", "|---|---|---|---|",
        f"| tokens/s, whole step (rollout + update) | {v['tokens_per_s']:.0f} | "
        f"{e['tokens_per_s']:.0f} | {e['tokens_per_s'] / v['tokens_per_s']:.3f} |",
        f"| tokens/s, update only | {v['update_tokens_per_s']:.0f} | "
        f"{e['update_tokens_per_s']:.0f} | "
        f"{e['update_tokens_per_s'] / v['update_tokens_per_s']:.3f} |",
        f"| step ms | {v['step_ms']:.1f} | {e['step_ms']:.1f} | "
        f"{e['step_ms'] / v['step_ms']:.3f} |",
        f"| rollout ms | {v['rollout_ms']:.1f} | {e['rollout_ms']:.1f} | "
        f"{e['rollout_ms'] / v['rollout_ms']:.3f} |",
        f"| update ms | {v['update_ms']:.1f} | {e['update_ms']:.1f} | "
        f"{e['update_ms'] / v['update_ms']:.3f} |",
        "",
        "ERA / GRPO ratio of median seconds, per block (identical work in both arms):", "",
        "| block | whole step | rollout | update |", "|---|---|---|---|",
        *[f"| {b + 1} | {s_:.3f} | {r:.3f} | {u:.3f} |" for b, (s_, r, u) in enumerate(zip(
            block_ratio("step_seconds"), block_ratio("rollout_seconds"),
            block_ratio("update_seconds")))],
        "| mean ± std | " + " | ".join(
            f"{np.mean(block_ratio(key)):.3f} ± {np.std(block_ratio(key)):.3f}"
            for key in ("step_seconds", "rollout_seconds", "update_seconds")) + " |",
        "",
        "The rollout is the same computation in both arms, so its ratio shows the noise of "
        "this shared machine.",
        "",
        "Both arms compute token entropies and H_resp (vanilla GRPO for logging); ERA adds "
        "the scale selection and a log-softmax of the scaled logits.",
    ]
    common.write_results(
        args.name,
        f"GRPO loop throughput, with and without logit ERA ({args.model}, {args.task})",
        ["\n".join(lines)])


if __name__ == "__main__":
    main()
