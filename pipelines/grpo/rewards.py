"""Verifiable rewards: +1 for a correct final answer, -1 otherwise (as in arXiv 2510.08549).

A reward is any callable `reward(completion: str, reference: str) -> float` returning a
finite number. Built-in:

- `math_reward`: the completion's final answer (its last `\\boxed{}`, else an answer
  math-verify finds after "Answer:" / "final answer is" or in LaTeX math, else its last
  number) graded against the reference by math-verify, the grader TRL and verl use, within
  a deadline per answer (see `math_grader`).
- `digit_sum_reward`: for the many-answers task; the reference "<digits>:<sum>" accepts
  any number with that many digits (no leading zero) whose digits add up to the sum.

`get_reward("math")` looks a reward up by name (built-in or added with `register_reward`);
"package.module:function" imports one. What it returns checks every value: a reward that
returns anything but a finite number (a string, None, NaN) stops the run with one line
naming the reward and the value.
"""

import importlib
import math
import numbers
import re

import numpy as np

from pipelines.common.errors import UserError
from pipelines.grpo.math_grader import MathGrader, last_boxed, last_number

CORRECT, INCORRECT = 1.0, -1.0

_GRADER = MathGrader()


def extract_answer(text):
    """The final answer of a completion as text: last \\boxed{} contents, else last number."""
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else last_number(text)


def math_reward(completion, reference):
    """+1 when math-verify finds the completion's final answer equal to `reference`, else -1
    (also when grading it takes longer than `math_grader.GRADING_TIMEOUT_S`)."""
    return CORRECT if _GRADER(completion, reference) else INCORRECT


def digit_sum_reward(completion, reference):
    """+1 when the last number has `digits` digits (no leading zero) summing to `sum`."""
    digits, total = (int(part) for part in reference.split(":"))
    numbers_found = re.findall(r"\d+", completion)
    if not numbers_found:
        return INCORRECT
    answer = numbers_found[-1]
    ok = len(answer) == digits and answer[0] != "0" and sum(map(int, answer)) == total
    return CORRECT if ok else INCORRECT


def overlong_penalty(lengths, max_new_tokens, buffer_len, factor=1.0):
    """DAPO's soft overlong punishment, added to the reward of each response.

    0 up to `max_new_tokens - buffer_len` tokens, then falling linearly to `-factor` at
    `max_new_tokens`: min(-(length - (max_new_tokens - buffer_len)) / buffer_len * factor, 0).
    `buffer_len` 0 turns it off.
    """
    lengths = np.asarray(lengths, dtype=np.float32)
    if buffer_len == 0:
        return np.zeros_like(lengths)
    exceed = lengths - (max_new_tokens - buffer_len)
    return np.minimum(-exceed / buffer_len * factor, 0.0).astype(np.float32)


REWARDS = {"math": math_reward, "digit_sum": digit_sum_reward}


def register_reward(name, function):
    """Make `function(completion, reference) -> float` available as reward `name`."""
    if not callable(function):
        raise TypeError(f"A reward must be callable, got {type(function).__name__}.")
    REWARDS[name] = function


class CheckedReward:
    """A reward whose every value is checked to be a finite number (returned as a float)."""

    def __init__(self, function, name):
        self.function = function
        self.name = name

    def __call__(self, completion, reference):
        value = self.function(completion, reference)
        if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
                or not math.isfinite(value)):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise UserError(
                f"reward {self.name} returned {shown} ({type(value).__name__}) for the "
                f"reference {str(reference)[:40]!r}; a reward must return a finite number "
                "(the built-in ones give +1.0 for a correct answer, -1.0 otherwise).")
        return float(value)


def _name_of(function):
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", type(function).__name__)
    return f"{module}:{qualname}" if module else qualname


def get_reward(name):
    """A reward by built-in or registered name, "package.module:function", or a callable;
    wrapped in `CheckedReward`."""
    if isinstance(name, CheckedReward):
        return name
    if callable(name):
        return CheckedReward(name, _name_of(name))
    if name in REWARDS:
        return CheckedReward(REWARDS[name], repr(name))
    if ":" in name:
        module_name, function_name = name.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UserError(f"Cannot import the reward module of {name!r} ({error}); is it "
                            "on PYTHONPATH?") from None
        function = getattr(module, function_name, None)
        if not callable(function):
            raise UserError(f"{name!r} does not name a callable reward function.")
        return CheckedReward(function, repr(name))
    raise UserError(
        f"Unknown reward {name!r}: use one of {', '.join(REWARDS)} or "
        "'package.module:function' for a callable (completion, reference) -> float."
    )
