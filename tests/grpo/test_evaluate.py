"""Held-out evaluation counts pass@k and distinct correct answers as defined, on a known sample."""

import dataclasses

import numpy as np
import pytest

from pipelines.grpo.evaluate import evaluate, pass_at_k, pass_at_k_values
from pipelines.grpo.rewards import digit_sum_reward
from pipelines.grpo.tasks import Problem


@dataclasses.dataclass
class _Generated:
    completions: list

    @property
    def response_lengths(self):
        return np.array([len(c) for c in self.completions])


class _ScriptedGenerator:
    """Returns fixed completions: one list for greedy decoding, one for sampling."""

    def __init__(self, greedy, sampled):
        self.outputs = {"greedy": greedy, "eval": sampled}

    def generate(self, prompts, sampler_name, seed=None):
        completions = self.outputs[sampler_name]
        assert len(completions) == len(prompts)
        return _Generated(list(completions))


def test_pass_at_k_matches_the_combinatorial_definition():
    # n = 4 samples, c = 2 correct: pass@1 = 2/4; pass@2 = 1 - C(2,2)/C(4,2) = 5/6.
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(4, 2, 3) == 1.0  # fewer than 3 wrong samples: a draw of 3 holds a correct one
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k_values(8) == [1, 2, 4, 8]
    assert pass_at_k_values(6) == [1, 2, 4, 6]


def test_evaluate_counts_accuracy_pass_at_k_and_distinct_correct_answers():
    problems = [Problem("3 digits, sum 12:", "3:12", "digit_sum"),
                Problem("3 digits, sum 3:", "3:3", "digit_sum")]
    # Prompt 1: 543, 543 and 930 are correct (two distinct answers), 111 is not.
    # Prompt 2: only 300 is correct (one distinct answer).
    sampled = ["12-5=7;543", "543", "930", "111", "300", "030", "12", "211"]
    generator = _ScriptedGenerator(greedy=["543", "999"], sampled=sampled)
    metrics = evaluate(generator, problems, {"digit_sum": digit_sum_reward}, samples=4, seed=0)
    assert metrics["greedy_accuracy"] == 0.5
    assert metrics["mean_accuracy"] == pytest.approx(4 / 8)
    assert metrics["distinct_correct"] == pytest.approx((2 + 1) / 2)
    # pass@1 = mean c/n = (3/4 + 1/4) / 2; pass@2 = (1 + (1 - C(3,2)/C(4,2))) / 2 = (1 + 1/2) / 2.
    assert metrics["pass_at_1"] == pytest.approx(0.5)
    assert metrics["pass_at_2"] == pytest.approx(0.75)
    assert metrics["pass_at_4"] == 1.0
    assert metrics["response_length"] == pytest.approx(np.mean([len(s) for s in sampled]))


def test_benchmark_metrics_are_avg_at_n_and_pass_at_k_of_the_graded_samples():
    from pipelines.grpo.benchmark_eval import Graded, Sampling

    # 3 problems x 4 samples: 2, 0 and 4 correct.
    correct = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    graded = Graded("aime24", [Problem(str(i), "1") for i in range(3)],
                    Sampling(4, 0.7, 0.95, 8), [""] * 12, np.full((3, 4), 5.0),
                    np.zeros((3, 4), bool), correct)
    metrics = graded.metrics()
    assert metrics["avg_at_4"] == pytest.approx(6 / 12)
    assert metrics["pass_at_4"] == pytest.approx(2 / 3)  # problems with any correct sample
    assert metrics["pass_at_1"] == pytest.approx(metrics["avg_at_4"])
    assert metrics["pass_at_2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    greedy = Graded("math500", graded.problems, Sampling(), [""] * 3, np.ones((3, 1)),
                    np.zeros((3, 1), bool), correct[:, :1])
    assert greedy.metrics()["accuracy"] == pytest.approx(2 / 3)
    assert "pass_at_1" not in greedy.metrics()
