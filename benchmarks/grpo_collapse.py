"""GRPO entropy collapse / explosion: vanilla vs ERA vs ERA without advantage scaling.

Two regimes, each with its own warm start and verdict (settings fixed before any ERA run;
see SETTINGS below, written down before the first run):

- collapse: a strong supervised warm start, then GRPO at a high learning rate with
  several updates per rollout, where vanilla GRPO may grow over-confident (response
  entropy and answer diversity fall). ERA's lower threshold is what acts.
- explosion: a weak warm start, then GRPO at a higher learning rate, where response
  entropy may run towards uniform. ERA's upper threshold is what acts.

Every GRPO run is the pipeline's own command line (`python -m pipelines.grpo`) started
from a warm-started preset (`--model DIR --warm-start-steps 0`); the warm starts use the
pipeline's supervised warm start (one per regime, shared by every arm and seed, so the
arms of one seed start from the same weights and differ by ERA alone). ERA thresholds
come from the regime's warm-started H_resp distribution, measured on training rollouts
before any GRPO step: omega_low = its 25% quantile, omega_high = its 95% quantile.

Held-out: the 44 distinct held-out prompts of `digit_sum_wide` (held-out fraction 0.45),
32 samples each at T = 1: pass@1 ... pass@32, and distinct correct answers per prompt.
Paired differences over seeds (ERA minus vanilla, same seed) get a 95% t interval.

The script resumes: finished runs are read back, not trained again, and the results file
is rewritten after every run, marked PARTIAL until every run is done.
"""

import json
import pathlib
import subprocess
import sys
import time

import common

common.setup()

import numpy as np  # noqa: E402

SETTINGS = dict(
    task="digit_sum_wide", held_out_fraction=0.45, num_eval_prompts=44, eval_samples=32,
    model_layers=2, hidden_dim=128, max_prompt_tokens=24, max_new_tokens=40,
    prompts_per_step=8, group_size=8, steps=60, eval_every=60, checkpoint_every=30,
    era_k=2.0, low_quantile=0.25, high_quantile=0.95, calibration_steps=4,
    # Warm starts, calibrated on the warm-started models alone (no GRPO run had finished):
    # 600 supervised steps reached only 10.5% sample accuracy on training prompts, so they
    # became the weak warm start, and the strong one got 1500 steps (aiming at 60-80%).
    regimes={
        "explosion": dict(warm_start_steps=600, learning_rate=1e-3, updates_per_rollout=2),
        "collapse": dict(warm_start_steps=1500, learning_rate=3e-4, updates_per_rollout=2),
    },
    arms={
        "vanilla": ["--no-era"],
        "era": ["--era", "--scale-advantages"],
        "era_no_adv_scaling": ["--era", "--no-scale-advantages"],
    },
    seeds=[0, 1, 2],
)
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # two-sided 95% t quantiles by dof


def base_config_args(s):
    return ["--task", s["task"], "--held-out-fraction", str(s["held_out_fraction"]),
            "--num-eval-prompts", str(s["num_eval_prompts"]),
            "--eval-samples", str(s["eval_samples"]),
            "--max-prompt-tokens", str(s["max_prompt_tokens"]),
            "--max-new-tokens", str(s["max_new_tokens"]),
            "--prompts-per-step", str(s["prompts_per_step"]),
            "--group-size", str(s["group_size"])]


def warm_start_preset(work, regime, s):
    """The regime's warm-started preset, its H_resp distribution and held-out metrics."""
    from pipelines.grpo.config import GRPOConfig
    from pipelines.grpo.train import GRPOTrainer, build_causal_lm, load_problems

    preset = work / regime / "warm_start_preset"
    info_file = work / regime / "warm_start.json"
    if info_file.exists():
        return preset, json.loads(info_file.read_text())
    r = s["regimes"][regime]
    config = GRPOConfig(
        task=s["task"], held_out_fraction=s["held_out_fraction"],
        num_eval_prompts=s["num_eval_prompts"], eval_samples=s["eval_samples"],
        tiny_layers=s["model_layers"], tiny_hidden_dim=s["hidden_dim"],
        max_prompt_tokens=s["max_prompt_tokens"], max_new_tokens=s["max_new_tokens"],
        prompts_per_step=s["prompts_per_step"], group_size=s["group_size"],
        warm_start_steps=r["warm_start_steps"], seed=1000, run_dir=str(work / "unused"))
    train, test = load_problems(config)
    trainer = GRPOTrainer(config, build_causal_lm(config), train, test)
    loss = trainer.run_warm_start(verbose=0)["loss"][-1]
    trainer.causal_lm.save_to_preset(str(preset))
    trainer.prepare_sampling()
    entropies, accuracy = [], []
    for step in range(1, s["calibration_steps"] + 1):
        sampled = trainer.sampler.sample(100_000 + step)
        rollout, task_rewards, advantages = (sampled.rollout, sampled.task_rewards,
                                             sampled.advantages)
        batch = {"token_ids": rollout.token_ids, "padding_mask": rollout.padding_mask,
                 "response_mask": rollout.response_mask.astype("float32")}
        logits, tokens, mask = trainer.policy_update.outputs(trainer.causal_lm, batch)
        out = trainer.era((logits, tokens, advantages, mask))
        entropies.append(np.asarray(out["response_entropy"]))
        accuracy.append(float((task_rewards > 0).mean()))
    h = np.concatenate(entropies)
    info = {"warm_start_loss": float(loss), "train_sample_accuracy": float(np.mean(accuracy)),
            "h_resp_quantiles": {q: float(np.quantile(h, q))
                                 for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.95)},
            "omega_low": float(np.quantile(h, s["low_quantile"])),
            "omega_high": float(np.quantile(h, s["high_quantile"])),
            "held_out": trainer.evaluate()}
    info_file.write_text(json.dumps(info, indent=1))
    return preset, info


def run_arm(work, regime, arm, seed, preset, warm, s, tracking_uri):
    r = s["regimes"][regime]
    return run_grpo(work / regime / arm / f"seed{seed}", preset, s, r["learning_rate"],
                    r["updates_per_rollout"], warm, seed, s["arms"][arm], "grpo_collapse",
                    f"grpo_collapse {regime} {arm} seed {seed}", tracking_uri)


def run_grpo(run_dir, preset, s, learning_rate, updates_per_rollout, warm, seed, flags,
             experiment, run_name, tracking_uri):
    """One GRPO run from the warm-started preset with these settings and the arm's `flags`
    (a finished run is read back); its history."""
    if not (run_dir / "finished.json").exists():
        command = [sys.executable, "-m", "pipelines.grpo", "--model", str(preset),
                   *base_config_args(s), "--warm-start-steps", "0",
                   "--steps", str(s["steps"]), "--eval-every", str(s["eval_every"]),
                   "--checkpoint-every", str(s["checkpoint_every"]),
                   "--learning-rate", str(learning_rate),
                   "--updates-per-rollout", str(updates_per_rollout),
                   "--era-k", str(s["era_k"]), "--omega-low", f"{warm['omega_low']:.6f}",
                   "--omega-high", f"{warm['omega_high']:.6f}", "--seed", str(seed),
                   *flags, "--run-dir", str(run_dir), "--experiment", experiment,
                   "--run-name", run_name,
                   "--tracking-uri", tracking_uri, "--no-export", "--no-progress"]
        result = subprocess.run(command, cwd=common.ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads((run_dir / "history.json").read_text())


def summarise(history):
    train = [r for r in history if "entropy/h_resp_p50" in r]
    final = [r for r in history if "eval/greedy_accuracy" in r][-1]
    last = train[-10:]
    return {
        "h_resp_p50_first10": float(np.mean([r["entropy/h_resp_p50"] for r in train[:10]])),
        "h_resp_p50_last10": float(np.mean([r["entropy/h_resp_p50"] for r in last])),
        "h_resp_p10_last10": float(np.mean([r["entropy/h_resp_p10"] for r in last])),
        "h_resp_p90_last10": float(np.mean([r["entropy/h_resp_p90"] for r in last])),
        "train_accuracy_last10": float(np.mean([r["train/accuracy"] for r in last])),
        "response_length_last10": float(np.mean([r["train/response_length"] for r in last])),
        "share_scaled_up": float(np.mean([r["entropy/share_tokens_scaled_up"] for r in train])),
        "share_scaled_down": float(np.mean([r["entropy/share_tokens_scaled_down"]
                                            for r in train])),
        **{k[len("eval/"):]: v for k, v in final.items() if k.startswith("eval/")},
    }


def paired(a, b):
    """Mean and 95% t half-width of b - a over paired seeds."""
    d = np.array(b) - np.array(a)
    if len(d) < 2:
        return float(d.mean()), float("nan")
    return float(d.mean()), float(T_95[len(d) - 1] * d.std(ddof=1) / np.sqrt(len(d)))


def report(s, warm, results, elapsed, complete):
    keys = ["h_resp_p50_first10", "h_resp_p50_last10", "h_resp_p10_last10",
            "h_resp_p90_last10", "train_accuracy_last10", "response_length_last10",
            "greedy_accuracy", "pass_at_1", "pass_at_4", "pass_at_32", "distinct_correct",
            "share_scaled_up", "share_scaled_down"]
    lines = []
    if not complete:
        lines += ["**PARTIAL: not every run finished; tables hold the runs that did.**", ""]
    lines += ["Settings (fixed before any run):", "", "```", json.dumps(s, indent=1), "```", ""]
    for regime in s["regimes"]:
        if regime not in warm:
            continue
        w = warm[regime]
        lines += [f"## Regime: {regime}", "",
                  f"Warm start: {s['regimes'][regime]['warm_start_steps']} supervised steps; "
                  f"training-rollout sample accuracy {w['train_sample_accuracy']:.3f}; "
                  "H_resp quantiles " + ", ".join(f"{q}: {v:.3f}" for q, v in
                                                  w["h_resp_quantiles"].items())
                  + f"; omega_low = {w['omega_low']:.3f}, omega_high = {w['omega_high']:.3f}. "
                  "Held-out at the warm start: " + ", ".join(
                      f"{k[5:]} {v:.3f}" for k, v in w["held_out"].items()
                      if k[5:] in ("greedy_accuracy", "pass_at_1", "pass_at_32",
                                   "distinct_correct")), ""]
        arms = {arm: results.get((regime, arm), {}) for arm in s["arms"]}
        rows = []
        for key in keys:
            row = [key]
            for arm in s["arms"]:
                vals = [arms[arm][seed][key] for seed in sorted(arms[arm])
                        if key in arms[arm][seed]]
                row.append(common.format_mean_sd(vals) + f" (n={len(vals)})" if vals else "-")
            rows.append(row)
        lines += ["Mean ± sd over seeds (last10: mean of the last 10 steps; held-out at the "
                  "last step):", "", common.table(["metric", *s["arms"]], rows), ""]
        vanilla = arms["vanilla"]
        if vanilla:
            drops = [1 - v["h_resp_p50_last10"] / v["h_resp_p50_first10"] for v in vanilla.values()]
            lines += ["Vanilla median H_resp change, first 10 -> last 10 steps, per seed: "
                      + ", ".join(f"{-d:+.1%}" for d in drops)
                      + f" (a fall of 30% or more: {sum(d >= 0.3 for d in drops)} of "
                      f"{len(drops)}).",
                      ""]
        prow = []
        for arm in [a for a in s["arms"] if a != "vanilla"]:
            seeds = sorted(set(vanilla) & set(arms[arm]))
            if not seeds:
                continue
            for key in ("h_resp_p50_last10", "pass_at_1", "pass_at_32", "distinct_correct",
                        "greedy_accuracy"):
                m, hw = paired([vanilla[x][key] for x in seeds], [arms[arm][x][key] for x in seeds])
                prow.append([arm, key, f"{m:+.3f}", f"[{m - hw:+.3f}, {m + hw:+.3f}]",
                             str(len(seeds))])
        if prow:
            lines += ["Paired difference arm - vanilla (same seed), mean and 95% t interval:",
                      "", common.table(["arm", "metric", "mean", "95% CI", "seeds"], prow), ""]
        per_seed = []
        for arm in s["arms"]:
            for seed in sorted(arms[arm]):
                r = arms[arm][seed]
                per_seed.append([arm, str(seed), f"{r['h_resp_p50_first10']:.3f}",
                                 f"{r['h_resp_p50_last10']:.3f}", f"{r['pass_at_1']:.3f}",
                                 f"{r['pass_at_32']:.3f}", f"{r['distinct_correct']:.2f}"])
        lines += ["Per seed:", "", common.table(
            ["arm", "seed", "H p50 first10", "H p50 last10", "pass@1", "pass@32",
             "distinct correct"], per_seed), ""]
    lines += [f"Wall time so far: {elapsed:.0f} s."]
    return lines


def plot(s, histories, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in s["regimes"] if any(k[0] == r for k in histories)]
    if not regimes:
        return
    fig, axes = plt.subplots(len(regimes), 3, figsize=(14, 3.6 * len(regimes)), squeeze=False)
    colors = {"vanilla": "tab:blue", "era": "tab:orange", "era_no_adv_scaling": "tab:green"}
    for row, regime in zip(axes, regimes):
        for (reg, arm, seed), history in sorted(histories.items()):
            if reg != regime:
                continue
            for ax, key in zip(row, ("entropy/h_resp_p50", "entropy/h_resp_p10",
                                     "train/accuracy")):
                pts = [(h["step"], h[key]) for h in history if key in h]
                ax.plot(*zip(*pts), color=colors[arm], alpha=0.6,
                        label=arm if seed == s["seeds"][0] else None)
                ax.set_title(f"{regime}: {key}")
                ax.set_xlabel("GRPO step")
                ax.grid(alpha=0.3)
        row[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    parser = common.parser(__doc__)
    parser.add_argument("--work-dir", default="/tmp/grpo_collapse")
    parser.add_argument("--regimes", nargs="+", default=list(SETTINGS["regimes"]),
                        choices=list(SETTINGS["regimes"]),
                        help="which regimes this invocation runs (the settings stay fixed)")
    parser.add_argument("--seeds", nargs="+", type=int, default=SETTINGS["seeds"],
                        help="which seeds this invocation runs (finished runs are read back)")
    args = parser.parse_args()
    common.pin(args.cpu)
    s = SETTINGS
    work = pathlib.Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    start = time.time()
    warm, results, histories = {}, {}, {}
    order = [(seed, regime) for seed in args.seeds for regime in args.regimes]
    total = len(order) * len(s["arms"])
    done = 0
    for seed, regime in order:
        if regime not in warm:
            warm[regime] = warm_start_preset(work, regime, s)[1]
        preset = work / regime / "warm_start_preset"
        for arm in s["arms"]:
            history = run_arm(work, regime, arm, seed, preset, warm[regime], s, tracking_uri)
            histories[(regime, arm, seed)] = history
            results.setdefault((regime, arm), {})[seed] = summarise(history)
            done += 1
            print(f"[{time.time() - start:.0f} s] {regime} {arm} seed {seed} done "
                  f"({done}/{total})", flush=True)
            lines = report(s, warm, results, time.time() - start, done == total)
            common.write_results(args.name, "GRPO collapse and explosion: vanilla vs ERA",
                                 ["\n".join(lines)])
            plot(s, histories, common.RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
