"""Held-out evaluation: greedy accuracy, and mean accuracy / pass@k over n samples.

pass@k (k = 1, 2, 4, ... up to n, and n) uses the unbiased estimator from n samples.

For the many-answers task, `distinct_correct` (the number of different correct final
answers among a prompt's k samples) shows collapse that accuracy alone hides.
"""

import math

import numpy as np

from pipelines.grpo.rewards import extract_answer


def pass_at_k(num_samples, num_correct, k):
    """Unbiased pass@k (Chen et al., 2021) from n samples of which c are correct."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def evaluate(generator, problems, reward_fns, samples, seed):
    """Greedy and sampled ("eval" sampler) accuracy of `generator` on `problems`."""
    prompts = [p.prompt for p in problems]
    greedy = generator.generate(prompts, "greedy")
    greedy_correct = [
        reward_fns[p.reward](text, p.reference) > 0
        for p, text in zip(problems, greedy.completions)
    ]
    sampled = generator.generate(
        [prompt for prompt in prompts for _ in range(samples)], "eval", seed=seed
    )
    correct = np.zeros((len(problems), samples), dtype=bool)
    distinct = []
    for i, problem in enumerate(problems):
        answers = set()
        for j in range(samples):
            text = sampled.completions[i * samples + j]
            correct[i, j] = reward_fns[problem.reward](text, problem.reference) > 0
            if correct[i, j]:
                answers.add(extract_answer(text))
        distinct.append(len(answers))
    counts = correct.sum(axis=1)
    metrics = {
        "greedy_accuracy": float(np.mean(greedy_correct)),
        "mean_accuracy": float(correct.mean()),
        "distinct_correct": float(np.mean(distinct)),
        "response_length": float(sampled.response_lengths.mean()),
    }
    for k in pass_at_k_values(samples):
        metrics[f"pass_at_{k}"] = float(np.mean([pass_at_k(samples, c, k) for c in counts]))
    return metrics


def pass_at_k_values(samples):
    """1, 2, 4, ... up to `samples`, and `samples` itself."""
    ks = [2 ** i for i in range(samples.bit_length()) if 2 ** i <= samples]
    return ks + ([samples] if samples not in ks else [])
