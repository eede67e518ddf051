import json

import pytest

from pipelines.common.errors import UserError
from pipelines.grpo.rewards import (
    digit_sum_reward,
    extract_answer,
    get_reward,
    math_reward,
    parse_number,
)
from pipelines.grpo.tasks import (
    BUILTIN_TASKS,
    builtin_problems,
    digit_sum_answers,
    load_jsonl,
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


@pytest.mark.parametrize("completion, reference, reward", [
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{\\dfrac{6}{8}}", "3/4", 1.0),
    ("total 1,000", "1000", 1.0),
    ("-7", "-7.0", 1.0),
    ("\\boxed{x+1}", "x + 1", 1.0),
    ("\\boxed{2/3}", "0.66", -1.0),
    ("23+48=71;71-17=54", "54", 1.0),
    ("23+48=71;71-17=55", "54", -1.0),
    ("", "1", -1.0),
])
def test_math_reward_numeric_and_fraction_equivalence(completion, reference, reward):
    assert math_reward(completion, reference) == reward


def test_parse_number_rejects_non_numbers():
    assert parse_number("abc") is None
    assert parse_number("1/0") is None


@pytest.mark.parametrize("completion, reward", [
    ("12-5=7;7-4=3;543", 1.0), ("930", 1.0), ("039", -1.0), ("9300", -1.0), ("931", -1.0),
    ("", -1.0),
])
def test_digit_sum_reward(completion, reward):
    assert digit_sum_reward(completion, "3:12") == reward


def test_get_reward_by_name_and_import_path_and_error():
    assert get_reward("math") is math_reward
    assert get_reward("pipelines.grpo.rewards:digit_sum_reward") is digit_sum_reward
    with pytest.raises(UserError, match="Unknown reward 'nope'.*math"):
        get_reward("nope")


def test_register_reward_makes_a_reward_available_by_name():
    from pipelines.grpo import rewards

    def shout(completion, reference):
        return 1.0 if completion.isupper() else -1.0

    rewards.register_reward("shout", shout)
    try:
        assert get_reward("shout") is shout
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


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_jsonl_reads_gsm8k_math_and_dapo_styles(tmp_path):
    path = _write(tmp_path / "mixed.jsonl", [
        json.dumps({"question": "2+2?", "answer": "two and two make 4\n#### 4"}),
        json.dumps({"problem": "Half of 1?", "solution": "It is \\boxed{\\frac{1}{2}}."}),
        json.dumps({"prompt": [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "3*3?"}],
                    "reward_model": {"ground_truth": "9", "style": "rule"}}),
        "",
    ])
    problems = load_jsonl(path)
    assert [(p.prompt, p.reference) for p in problems] == [
        ("2+2?", "4"), ("Half of 1?", "\\frac{1}{2}"), ("3*3?", "9")]


@pytest.mark.parametrize("line, message", [
    ('{"question": "1+1?", "answer": "2"', r"bad\.jsonl:2: not valid JSON"),
    ('["a list"]', r"bad\.jsonl:2: expected a JSON object, got list"),
    ('{"answer": "2"}', r"bad\.jsonl:2: no prompt.*'prompt', 'question' or 'problem'"),
    ('{"question": "1+1?"}', r"bad\.jsonl:2: no reference answer"),
])
def test_malformed_jsonl_gets_a_clear_error(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", ['{"question": "ok?", "answer": "1"}', line])
    with pytest.raises(UserError, match=message):
        load_jsonl(path)


def test_missing_or_empty_jsonl(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(UserError, match="holds no problems"):
        load_jsonl(_write(tmp_path / "empty.jsonl", [""]))


def test_split_problems_needs_both_sides():
    problems = (builtin_problems("arithmetic", "train", 50)
                + builtin_problems("arithmetic", "test", 10))
    train, test = split_problems(problems)
    assert len(train) == 50 and len(test) == 10
    with pytest.raises(UserError, match="left one side empty"):
        split_problems(problems[:3])
