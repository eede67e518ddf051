"""Rewards: math-verify's grading on known pairs, the built-in tasks scored as before, a
deadline per answer, rewards that return something other than a number; built-in tasks."""

import math
import random
import re
import threading
import time

import numpy as np
import pytest

from pipelines.common.errors import UserError
from pipelines.grpo.math_grader import KILL_GRACE_S, MathGrader
from pipelines.grpo.rewards import (
    digit_sum_reward,
    extract_answer,
    get_reward,
    math_reward,
)
from pipelines.grpo.tasks import (
    BUILTIN_TASKS,
    builtin_problems,
    digit_sum_answers,
    split_problems,
)


@pytest.mark.parametrize("text, expected", [
    ("so the answer is \\boxed{42}.", "42"),
    ("first \\boxed{1}, then \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("12-5=7;7-4=3;543", "543"),
    ("it costs 1,250 dollars", "1,250"),
    ("x = -3/4", "-3/4"),
    ("no number here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# (completion, reference, equal): what math-verify must decide.
EQUIVALENCE_TABLE = [
    # LaTeX fractions, and \frac12 vs 0.5
    ("\\boxed{\\frac{3}{4}}", "0.75", True),
    ("\\boxed{\\dfrac{6}{8}}", "3/4", True),
    ("so it is $\\frac12$", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{2/3}", "0.66", False),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", False),
    # \boxed{}: the last one is the answer
    ("so the answer is \\boxed{42}.", "42", True),
    ("first \\boxed{1}, then \\boxed{\\frac{3}{4}}", "3/4", True),
    ("first \\boxed{1}, then \\boxed{\\frac{3}{4}}", "1", False),
    # intervals
    ("\\boxed{[1, 2)}", "[1,2)", True),
    ("\\boxed{(1, 2)}", "[1,2)", False),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]", True),
    # units
    ("\\boxed{5\\text{ cm}}", "5", True),
    ("\\boxed{5 \\mathrm{~cm}}", "5", True),
    ("\\boxed{5\\text{ cm}}", "6", False),
    # percentages
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{50\\%}", "0.5", True),
    ("\\boxed{51\\%}", "50", False),
    # a wrong answer with the right number in its working
    ("There are 12 apples, and 3 more come, so the answer is \\boxed{15}", "12", False),
    ("There are 12 apples, so 12 + 3 = 15. The answer is 15.", "12", False),
    ("There are 12 apples, so 12 + 3 = 15. The answer is 15.", "15", True),
    # anchors, expressions, tuples, sets, thousands separators
    ("Answer: $\\frac{1}{3}$", "1/3", True),
    ("The final answer is $x^2+1$. I hope it is correct.", "x^2 + 1", True),
    ("\\boxed{x+1}", "x + 1", True),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{2, 3}", "3, 2", True),
    ("\\boxed{8\\sqrt{2}}", "\\sqrt{128}", True),
    ("total 1,000", "1000", True),
    ("\\boxed{27}", "27.0", True),
    ("\\boxed{70}", "070", True),
    ("-7", "-7.0", True),
    ("", "1", False),
]


@pytest.mark.parametrize("completion, reference, equal", EQUIVALENCE_TABLE)
def test_math_reward_follows_math_verify_on_known_pairs(completion, reference, equal):
    assert math_reward(completion, reference) == (1.0 if equal else -1.0)


def _old_math_reward(completion, reference):
    """The hand-written grader `math_reward` replaced, on text without \\boxed{} (all that
    the arithmetic task's alphabet can spell): its last number, compared as a number."""
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+", completion)
    return 1.0 if numbers and int(numbers[-1]) == int(reference) else -1.0


def test_the_arithmetic_task_scores_exactly_as_before():
    """Worked solutions, their corruptions (a digit changed, a character dropped or added,
    cut short) and random text over the task's alphabet score as the old grader did."""
    rng = random.Random(0)
    alphabet = "0123456789+-=;"
    problems = builtin_problems("arithmetic", "train", 40, seed=5)
    completions = []
    for problem in problems:
        text = problem.solution
        completions.append((text, problem.reference))
        for _ in range(6):
            i = rng.randrange(len(text))
            corrupt = rng.choice([
                text[:i] + rng.choice(alphabet) + text[i + 1:],
                text[:i] + text[i + 1:],
                text[:i] + rng.choice(alphabet) + text[i:],
                text[:i],
            ])
            completions.append((corrupt, problem.reference))
        length = rng.randrange(1, 25)
        completions.append(("".join(rng.choice(alphabet) for _ in range(length)),
                            problem.reference))
    scores = [(math_reward(c, r), _old_math_reward(c, r)) for c, r in completions]
    assert [new for new, _ in scores] == [old for _, old in scores]
    # The comparison covers both verdicts, not only wrong answers.
    assert 40 <= sum(new > 0 for new, _ in scores) < len(scores) - 40


# 32k characters that make math-verify's LaTeX regexes backtrack: ~23 s to parse on this
# project's CI machine without a deadline.
PATHOLOGICAL = "$$" + "\\boxed{1" * 4000


def test_a_pathological_completion_is_wrong_within_the_deadline_in_any_thread():
    grader = MathGrader(timeout=1.0)
    assert grader("\\boxed{\\frac12}", "0.5")  # the worker is up: only grading is timed
    bound = grader.timeout + KILL_GRACE_S + 1.0  # + 1 s for a busy machine
    start = time.perf_counter()
    assert grader(PATHOLOGICAL, "1") is False
    assert time.perf_counter() - start < bound
    results = []
    worker = threading.Thread(target=lambda: results.append(
        (grader(PATHOLOGICAL, "1"), grader("\\boxed{2}", "2"))))
    start = time.perf_counter()
    worker.start()
    worker.join()
    assert time.perf_counter() - start < bound + 3.0  # and the second, correct answer
    assert results == [(False, True)]
    grader.close()


def test_a_worker_that_stops_answering_is_replaced():
    import os
    import signal

    grader = MathGrader(timeout=0.5)
    assert grader("\\boxed{3}", "3")
    frozen = grader.worker_pid
    os.kill(frozen, signal.SIGSTOP)  # hung in a C call, as far as the grader can tell
    try:
        start = time.perf_counter()
        assert grader("\\boxed{3}", "3") is False
        assert time.perf_counter() - start < grader.timeout + KILL_GRACE_S + 1.0
    finally:
        try:
            os.kill(frozen, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert grader.restarts == 1 and grader.worker_pid != frozen
    assert grader("\\boxed{3}", "3")  # a fresh worker grades again
    grader.close()


@pytest.mark.parametrize("completion, reward", [
    ("12-5=7;7-4=3;543", 1.0), ("930", 1.0), ("039", -1.0), ("9300", -1.0), ("931", -1.0),
    ("", -1.0),
])
def test_digit_sum_reward(completion, reward):
    assert digit_sum_reward(completion, "3:12") == reward


def test_get_reward_by_name_and_import_path_and_error():
    assert get_reward("math")("\\boxed{1}", "1") == 1.0
    assert get_reward("pipelines.grpo.rewards:digit_sum_reward")("543", "3:12") == 1.0
    with pytest.raises(UserError, match="Unknown reward 'nope'.*math"):
        get_reward("nope")


def _answer_in_words(completion, reference):
    return "yes"


@pytest.mark.parametrize("function, shown", [
    (_answer_in_words, "returned 'yes' \\(str\\)"),
    (lambda c, r: None, "returned None \\(NoneType\\)"),
    (lambda c, r: math.nan, "returned nan \\(float\\)"),
    (lambda c, r: True, "returned True \\(bool\\)"),
])
def test_a_reward_that_returns_no_finite_number_is_one_line_naming_it(function, shown):
    reward = get_reward(function)
    with pytest.raises(UserError, match=f"reward .* {shown}.*must return a finite number") as e:
        reward("completion", "42")
    assert "\n" not in str(e.value)
    assert "_answer_in_words" in str(get_reward(_answer_in_words).name)


def test_a_reward_by_import_path_that_returns_a_string_is_named(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def grade(completion, reference):\n"
                                            "    return 'correct'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="reward 'my_rewards:grade' returned 'correct'"):
        get_reward("my_rewards:grade")("x", "1")


def test_rewards_may_be_any_finite_number_and_come_back_as_floats():
    assert get_reward(lambda c, r: np.float32(0.5))("", "") == 0.5
    assert get_reward(lambda c, r: 1)("", "") == 1.0
    assert isinstance(get_reward(lambda c, r: np.int64(-1))("", ""), float)


def test_register_reward_makes_a_reward_available_by_name():
    from pipelines.grpo import rewards

    def shout(completion, reference):
        return 1.0 if completion.isupper() else -1.0

    rewards.register_reward("shout", shout)
    try:
        assert get_reward("shout").function is shout
        assert get_reward("shout")("ABC", "") == 1.0
    finally:
        rewards.REWARDS.pop("shout")
    with pytest.raises(UserError, match="Unknown reward 'shout'"):
        get_reward("shout")
    with pytest.raises(TypeError, match="must be callable"):
        rewards.register_reward("bad", 42)


@pytest.mark.parametrize("task", BUILTIN_TASKS)
def test_builtin_solutions_earn_the_reward_and_splits_are_disjoint(task):
    train = builtin_problems(task, "train", 200, seed=3)
    test = builtin_problems(task, "test", 20, seed=3)
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in test})
    for problem in train[:50] + test:
        assert get_reward(problem.reward)(problem.solution, problem.reference) == 1.0
        assert len(problem.solution) >= 10  # responses of 10+ tokens (char-level)


def test_held_out_prompts_are_distinct_and_the_wide_task_has_44_of_them():
    test = builtin_problems("digit_sum_wide", "test", 100, seed=0, held_out_fraction=0.45)
    prompts = [p.prompt for p in test]
    assert len(prompts) == len(set(prompts)) == 44  # every held-out (digits, sum) pair
    assert len(builtin_problems("arithmetic", "test", 50, seed=0)) == 50
    train = builtin_problems("digit_sum_wide", "train", 500, seed=0, held_out_fraction=0.45)
    assert {p.prompt for p in train}.isdisjoint(prompts)


def test_digit_sum_has_many_answers():
    assert len(digit_sum_answers(3, 12)) > 50
    assert all(sum(map(int, a)) == 12 and a[0] != "0" for a in digit_sum_answers(3, 12))


def test_split_problems_needs_both_sides():
    problems = (builtin_problems("arithmetic", "train", 50)
                + builtin_problems("arithmetic", "test", 10))
    train, test = split_problems(problems)
    assert len(train) == 50 and len(test) == 10
    with pytest.raises(UserError, match="left one side empty"):
        split_problems(problems[:3])
