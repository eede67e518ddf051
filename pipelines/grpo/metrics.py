"""What a GRPO step logs (`train/`, `entropy/`, `perf/`), and the plots of a whole run.

The names are documented in docs/grpo.md; `entropy/` is what ERA controls: the response
entropy H_resp (quantiles), the share of responses under / over its thresholds and the
share of tokens it scaled; and the other entropy controls: the share of tokens each
policy loss or control touched and the entropy bonus's (adaptive) coefficient.
"""

import numpy as np

from pipelines.common.metrics import grouped
from pipelines.common.tracking import log_curves


def step_metrics(config, batch, info, seconds):
    """One step's metrics from its `GroupBatch`, the update's loss info and timings
    ({"rollout": s, "update": s})."""
    h = np.asarray(info.extra["response_entropy"])
    rollout, advantages = batch.rollout, batch.advantages
    groups = batch.task_rewards.reshape(-1, config.group_size)
    tokens = float(rollout.response_mask.sum())
    # The loss sees tokens 1.. of each row (next-token targets): count the same ones.
    response_tokens = rollout.response_mask[:, 1:]
    positive_tokens = float((response_tokens * (advantages[:, None] > 0)).sum())
    total_seconds = sum(seconds.values())
    return {
        **grouped("train", {
            "reward": batch.rewards.mean(),
            "accuracy": (batch.task_rewards > 0).mean(),
            "truncated_share": rollout.truncated.mean(),
            **batch.stats,
            "groups_with_signal": (groups.std(axis=1) > 0).mean(),
            "response_length": rollout.response_lengths.mean(),
            "loss": info.loss,
            "policy_loss": info.extra["policy_loss"],
            "kl": info.extra["kl"],
            "clip_fraction": info.extra["clip_fraction"],
            "grad_norm": info.extra.get("grad_norm"),
            "weight_norm": info.extra.get("weight_norm"),
        }),
        **grouped("entropy", {
            "h_resp_mean": h.mean(),
            "h_resp_p10": np.quantile(h, 0.1),
            "h_resp_p50": np.quantile(h, 0.5),
            "h_resp_p90": np.quantile(h, 0.9),
            "share_below_omega_low": (h < config.omega_low).mean(),
            "share_above_omega_high": (h > config.omega_high).mean(),
            "share_tokens_scaled_up": info.extra["share_scaled_up"],
            "share_tokens_scaled_down": info.extra["share_scaled_down"],
            "share_tokens_positive_advantage":
                positive_tokens / max(float(response_tokens.sum()), 1.0),
            # What each registered method touched: the ratio clip, Clip-Cov / KL-Cov's
            # covariance selection, the top-entropy mask (1: every token kept).
            "share_tokens_clipped": info.extra["clip_fraction"],
            "share_tokens_cov_selected": info.extra["cov_selected_share"],
            "share_tokens_top_entropy": info.extra["top_entropy_share"],
            "token_entropy_mean": float(info.extra["token_entropy_sum"]) / max(
                float(info.extra["token_entropy_count"]), 1.0),
            "entropy_coef": info.extra["entropy_coef"],
        }),
        **grouped("perf", {
            "tokens_per_s": tokens / total_seconds,
            "step_seconds": total_seconds,
            **{f"{name}_seconds": value for name, value in seconds.items()},
        }),
    }


def log_plots(history, config):
    """Response entropy and reward / accuracy over training, as figures in the MLflow run."""
    if not history:
        return
    steps = [row["step"] for row in history]

    def series(key):
        points = [(row["step"], row[key]) for row in history if key in row]
        return ([p[0] for p in points], [p[1] for p in points])

    entropy = {f"H_resp/{q}": series(f"entropy/h_resp_{q}") for q in ("p10", "p50", "p90")}
    entropy["H_resp/omega_low"] = (steps, [config.omega_low] * len(steps))
    entropy["ERA share of tokens/scaled up"] = series("entropy/share_tokens_scaled_up")
    entropy["ERA share of tokens/scaled down"] = series("entropy/share_tokens_scaled_down")
    log_curves(entropy, "plots/entropy.png", title="Response entropy (nats)")
    k = config.eval_samples
    log_curves({
        "reward/train": series("train/reward"),
        "accuracy/train": series("train/accuracy"),
        "accuracy/eval greedy": series("eval/greedy_accuracy"),
        "accuracy/eval mean": series("eval/mean_accuracy"),
        f"accuracy/eval pass@{k}": series(f"eval/pass_at_{k}"),
        "distinct correct answers/eval": series("eval/distinct_correct"),
    }, "plots/reward.png", title="Reward and accuracy")
