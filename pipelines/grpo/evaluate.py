"""Held-out evaluation: greedy accuracy, and mean accuracy / pass@k over n samples.

pass@k (k = 1, 2, 4, ... up to n, and n) uses the unbiased estimator from n samples.

For the many-answers task, `distinct_correct` (the number of different correct final
answers among a prompt's k samples) shows collapse that accuracy alone hides.

`python -m pipelines.grpo.evaluate` evaluates a checkpoint on benchmark files without
training (see `pipelines.grpo.benchmark_eval`).
"""

import math
import sys

import numpy as np

from pipelines.grpo.rewards import extract_answer


def pass_at_k(num_samples, num_correct, k):
    """Unbiased pass@k (Chen et al., 2021) from n samples of which c are correct."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def pass_at_k_values(samples):
    """1, 2, 4, ... up to `samples`, and `samples` itself."""
    ks = [2 ** i for i in range(samples.bit_length()) if 2 ** i <= samples]
    return ks + ([samples] if samples not in ks else [])


def correct_matrix(problems, completions, reward_fns, samples):
    """(problems, samples) booleans: whether completion `i * samples + j` (sample j of
    problem i) earns a positive reward from its problem's reward."""
    correct = np.zeros((len(problems), samples), dtype=bool)
    for i, problem in enumerate(problems):
        reward = reward_fns[problem.reward]
        for j in range(samples):
            correct[i, j] = reward(completions[i * samples + j], problem.reference) > 0
    return correct


def pass_at_k_metrics(correct):
    """{"pass_at_k": mean unbiased pass@k} for k in `pass_at_k_values(samples)`."""
    samples = correct.shape[1]
    counts = correct.sum(axis=1)
    return {f"pass_at_{k}": float(np.mean([pass_at_k(samples, c, k) for c in counts]))
            for k in pass_at_k_values(samples)}


def evaluate(generator, problems, reward_fns, samples, seed):
    """Greedy and sampled ("eval" sampler) accuracy of `generator` on `problems`."""
    prompts = [p.prompt for p in problems]
    greedy = generator.generate(prompts, "greedy")
    greedy_correct = correct_matrix(problems, greedy.completions, reward_fns, 1)
    sampled = generator.generate(
        [prompt for prompt in prompts for _ in range(samples)], "eval", seed=seed
    )
    correct = correct_matrix(problems, sampled.completions, reward_fns, samples)
    distinct = [
        len({extract_answer(sampled.completions[i * samples + j])
             for j in range(samples) if correct[i, j]})
        for i in range(len(problems))
    ]
    return {
        "greedy_accuracy": float(greedy_correct.mean()),
        "mean_accuracy": float(correct.mean()),
        "distinct_correct": float(np.mean(distinct)),
        "response_length": float(sampled.response_lengths.mean()),
        **pass_at_k_metrics(correct),
    }


if __name__ == "__main__":
    from pipelines.common.errors import run_cli
    from pipelines.grpo.benchmark_eval import main

    sys.exit(run_cli(main))
