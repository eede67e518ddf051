"""Entropy control side by side on GRPO's collapse regime: ERA against what practitioners
turn on instead (entropy bonus, adaptive entropy, clip-higher, Clip-Cov, KL-Cov, top-entropy
tokens), every arm the pipeline's own command line with one flag set changed.

The regime is `grpo_collapse.py`'s "collapse": its task, warm start (1500 supervised steps,
shared by every arm and seed), learning rate 3e-4, 2 updates per rollout, 60 steps and
held-out evaluation (44 prompts x 32 samples: pass@1 ... pass@32, distinct correct
answers). ERA's thresholds come from the warm-started H_resp quantiles as there.

Coefficients, fixed here before any run, from each method's paper or library defaults:

- vanilla: the ERA authors' ratio clip (epsilon 1.0 both sides, dual clip 10), which is
  also the Clip-Cov / KL-Cov paper's recipe (verl `recipe/entropy`, clip_ratio 1, c 10),
  so those two arms differ from vanilla by their covariance rule alone.
- entropy_bonus: entropy_coef 0.001 (verl's long-standing `entropy_coeff` default). Not
  rescaled: the bonus multiplies the mean token entropy in nats, the policy term has the
  same per-token scale (|A| ~ 1) as in a large-vocabulary run, and ln V only bounds H.
- adaptive_entropy: TRL's controller (Skywork-OR1) with TRL's defaults (start 0, delta
  0.005, range [0, 1]); the target is rescaled: Skywork-OR1's 0.2 nats is an absolute
  entropy for a ~150k-token vocabulary, so, as TRL's help advises ("set it close to the
  entropy observed early in training"), it is the warm-started model's mean token
  entropy, measured on training rollouts before any GRPO step.
- clip_0.2 and clip_higher: DAPO's epsilon 0.2 and its clip-higher 0.2 / 0.28 (dual clip
  10 kept). clip_0.2 is the reference that isolates clip-higher (vanilla's clip is 1.0).
- clip_cov: verl's recipe values clip_cov_ratio 2e-4, window (1, 5). A share, so not
  rescaled; with ~2.5k tokens per update it rounds up to one token per update (the
  share logged says how many it touched).
- kl_cov: the recipe's 7B values kl_cov_ratio 2e-3, ppo_kl_coef 1.0. It acts only off
  policy: on the second update of each rollout here.
- top_entropy_0.2: the 80/20 paper's quantile 0.2 (TRL's top_entropy_quantile).

Reported per arm: the H_resp trajectory (one plot of every arm's median H_resp), pass@1,
pass@32, distinct correct answers, the share of tokens each method touched, and each arm
paired against vanilla by seed (95% t interval). The script resumes: finished runs are
read back. `--smoke` runs one seed for 2 steps after a 20-step warm start, into
`entropy_control_smoke.md`, to show the harness works; its numbers mean nothing.
"""

import json
import pathlib
import time

import common

common.setup()

import grpo_collapse  # noqa: E402  (benchmarks/ is on sys.path: the collapse regime's code)
import numpy as np  # noqa: E402

COLLAPSE = grpo_collapse.SETTINGS
SETTINGS = dict(
    {k: v for k, v in COLLAPSE.items() if k not in ("regimes", "arms")},
    regime="collapse", **COLLAPSE["regimes"]["collapse"],
    arms={
        "vanilla": ["--no-era"],
        "era": ["--era", "--scale-advantages"],
        "era_no_adv_scaling": ["--era", "--no-scale-advantages"],
        "entropy_bonus": ["--no-era", "--entropy-coef", "0.001"],
        "adaptive_entropy": ["--no-era", "--use-adaptive-entropy", "--entropy-coef", "0.0",
                             "--entropy-coef-delta", "0.005", "--entropy-coef-min", "0.0",
                             "--entropy-coef-max", "1.0", "--entropy-target", "{token_entropy}"],
        "clip_0.2": ["--no-era", "--epsilon", "0.2"],
        "clip_higher": ["--no-era", "--epsilon", "0.2", "--epsilon-high", "0.28"],
        "clip_cov": ["--no-era", "--policy-loss", "clip_cov", "--clip-cov-ratio", "0.0002",
                     "--clip-cov-lb", "1.0", "--clip-cov-ub", "5.0"],
        "kl_cov": ["--no-era", "--policy-loss", "kl_cov", "--kl-cov-ratio", "0.002",
                   "--ppo-kl-coef", "1.0"],
        "top_entropy_0.2": ["--no-era", "--top-entropy-quantile", "0.2"],
    },
    seeds=[0, 1, 2],
)
SMOKE = dict(steps=2, eval_every=2, checkpoint_every=2, warm_start_steps=20,
             num_eval_prompts=4, eval_samples=4, calibration_steps=1, seeds=[0])
# What each method touches, as logged per step (entropy/...).
TOUCHED = ["share_tokens_clipped", "share_tokens_cov_selected", "share_tokens_top_entropy",
           "share_tokens_scaled_up", "share_tokens_scaled_down", "entropy_coef"]


def warm_start(work, s):
    """The collapse regime's warm start (grpo_collapse's), plus its mean token entropy."""
    regime = {"regimes": {s["regime"]: {"warm_start_steps": s["warm_start_steps"]}}, **s}
    preset, info = grpo_collapse.warm_start_preset(work, s["regime"], regime)
    if "token_entropy_mean" not in info:
        info["token_entropy_mean"] = token_entropy_of(preset, s)
        (work / s["regime"] / "warm_start.json").write_text(json.dumps(info, indent=1))
    return preset, info


def token_entropy_of(preset, s):
    """Mean token entropy of the warm-started policy on training rollouts (no GRPO step)."""
    import keras_hub
    from keras import ops

    from era_keras import token_entropy
    from pipelines.grpo.config import GRPOConfig
    from pipelines.grpo.train import GRPOTrainer, load_problems

    config = GRPOConfig(model=str(preset), task=s["task"], warm_start_steps=0,
                        held_out_fraction=s["held_out_fraction"],
                        max_prompt_tokens=s["max_prompt_tokens"],
                        max_new_tokens=s["max_new_tokens"],
                        prompts_per_step=s["prompts_per_step"], group_size=s["group_size"],
                        seed=1000, run_dir="/tmp/unused")
    causal_lm = keras_hub.models.CausalLM.from_preset(str(preset))
    trainer = GRPOTrainer(config, causal_lm, *load_problems(config))
    trainer.prepare_sampling()
    total = count = 0.0
    for step in range(1, s["calibration_steps"] + 1):
        rollout = trainer.sampler.sample(100_000 + step).rollout
        batch = {"token_ids": rollout.token_ids, "padding_mask": rollout.padding_mask,
                 "response_mask": rollout.response_mask.astype("float32")}
        logits, _, mask = trainer.policy_update.outputs(causal_lm, batch)
        h = ops.convert_to_numpy(token_entropy(logits, config.temperature))
        mask = ops.convert_to_numpy(mask)
        total += float((h * mask).sum())
        count += float(mask.sum())
    return total / max(count, 1.0)


def run_arm(work, arm, seed, preset, warm, s, tracking_uri):
    flags = [f.format(token_entropy=f"{warm['token_entropy_mean']:.6f}")
             for f in s["arms"][arm]]
    return grpo_collapse.run_grpo(
        work / s["regime"] / arm / f"seed{seed}", preset, s, s["learning_rate"],
        s["updates_per_rollout"], warm, seed, flags, "entropy_control",
        f"entropy_control {arm} seed {seed}", tracking_uri)


def summarise(history, eval_samples):
    summary = grpo_collapse.summarise(history)
    train = [r for r in history if "entropy/h_resp_p50" in r]
    for key in TOUCHED:
        summary[key] = float(np.mean([r.get(f"entropy/{key}", 0.0) for r in train]))
    summary["pass_at_k"] = summary.get(f"pass_at_{eval_samples}", float("nan"))
    return summary


def report(s, warm, results, elapsed, complete):
    k = s["eval_samples"]
    lines = [] if complete else ["**PARTIAL: not every run finished; tables hold the runs "
                                 "that did.**", ""]
    lines += ["Settings (fixed before any run):", "", "```", json.dumps(s, indent=1), "```", "",
              f"Warm start: {s['warm_start_steps']} supervised steps; training-rollout sample "
              f"accuracy {warm['train_sample_accuracy']:.3f}; mean token entropy "
              f"{warm['token_entropy_mean']:.3f} nats (the adaptive arm's target); "
              f"omega_low {warm['omega_low']:.3f}, omega_high {warm['omega_high']:.3f}.", ""]
    keys = ["h_resp_p50_first10", "h_resp_p50_last10", "train_accuracy_last10",
            "greedy_accuracy", "pass_at_1", "pass_at_k", "distinct_correct", *TOUCHED]
    arms = {arm: results.get(arm, {}) for arm in s["arms"]}
    rows = [[key.replace("pass_at_k", f"pass_at_{k}")] + [
        common.format_mean_sd([arms[a][x][key] for x in sorted(arms[a])]) if arms[a] else "-"
        for a in s["arms"]] for key in keys]
    lines += ["Mean ± sd over seeds (last10: the last 10 steps; held-out at the last step; "
              "touched shares: mean over steps):", "", common.table(["metric", *s["arms"]], rows),
              ""]
    vanilla, prow = arms["vanilla"], []
    for arm in [a for a in s["arms"] if a != "vanilla"]:
        seeds = sorted(set(vanilla) & set(arms[arm]))
        for key in ("h_resp_p50_last10", "pass_at_1", "pass_at_k", "distinct_correct"):
            if seeds:
                m, hw = grpo_collapse.paired([vanilla[x][key] for x in seeds],
                                             [arms[arm][x][key] for x in seeds])
                prow.append([arm, key.replace("pass_at_k", f"pass_at_{k}"), f"{m:+.3f}",
                             f"[{m - hw:+.3f}, {m + hw:+.3f}]", str(len(seeds))])
    if prow:
        lines += ["Paired difference arm - vanilla (same seed), mean and 95% t interval:", "",
                  common.table(["arm", "metric", "mean", "95% CI", "seeds"], prow), ""]
    lines += [f"Wall time so far: {elapsed:.0f} s."]
    return lines


def plot(s, histories, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    colors = dict(zip(s["arms"], plt.cm.tab10.colors))
    for (arm, seed), history in sorted(histories.items()):
        pts = [(h["step"], h["entropy/h_resp_p50"]) for h in history if "entropy/h_resp_p50" in h]
        ax.plot(*zip(*pts), color=colors[arm], alpha=0.7,
                label=arm if seed == s["seeds"][0] else None)
    ax.set(title="Collapse regime: median H_resp per arm (every seed)", xlabel="GRPO step",
           ylabel="H_resp p50 (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    parser = common.parser(__doc__)
    parser.add_argument("--work-dir", default="/tmp/entropy_control")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="which seeds this invocation runs (finished runs are read back)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 seed, 2 steps, 20-step warm start: shows the harness works")
    args = parser.parse_args()
    common.pin(args.cpu)
    s = dict(SETTINGS, **SMOKE) if args.smoke else SETTINGS
    name = args.name + ("_smoke" if args.smoke else "")
    seeds = args.seeds or s["seeds"]
    work = pathlib.Path(args.work_dir + ("_smoke" if args.smoke else ""))
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    start = time.time()
    preset, warm = warm_start(work, s)
    results, histories = {}, {}
    total, done = len(seeds) * len(s["arms"]), 0
    for seed in seeds:  # seed-major, so a partial result pairs whole seeds
        for arm in s["arms"]:
            history = run_arm(work, arm, seed, preset, warm, s, tracking_uri)
            histories[(arm, seed)] = history
            results.setdefault(arm, {})[seed] = summarise(history, s["eval_samples"])
            done += 1
            print(f"[{time.time() - start:.0f} s] {arm} seed {seed} done ({done}/{total})",
                  flush=True)
            title = "Entropy control side by side (GRPO collapse regime)"
            if args.smoke:
                title += ": SMOKE RUN (2 steps; the numbers mean nothing)"
            common.write_results(name, title, ["\n".join(
                report(s, warm, results, time.time() - start, done == total))])
            plot(s, histories, common.RESULTS / f"{name}.png")


if __name__ == "__main__":
    main()
