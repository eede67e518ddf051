"""Verifiable rewards: +1 for a correct final answer, -1 otherwise (as in arXiv 2510.08549).

A reward is any callable `reward(completion: str, reference: str) -> float`. Built-in:

- `math_reward`: the final answer is the last `\\boxed{...}` in the completion, or else
  its last number; it is correct when it equals the reference as a number (integers,
  decimals, fractions "3/4", "\\frac{3}{4}", thousands separators) or, when either side is
  not a number, as a whitespace-insensitive string.
- `digit_sum_reward`: for the many-answers task; the reference "<digits>:<sum>" accepts
  any number with that many digits (no leading zero) whose digits add up to the sum.

`get_reward("math")` looks a reward up by name (built-in or added with `register_reward`);
"package.module:function" imports one.
"""

import fractions
import importlib
import re

import numpy as np

from pipelines.common.errors import UserError

CORRECT, INCORRECT = 1.0, -1.0

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")


def last_boxed(text):
    """Contents of the last \\boxed{...} (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index]
            depth -= 1
    return None


def extract_answer(text):
    """The final answer of a completion: last \\boxed{} contents, else last number, else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def parse_number(text):
    """A `fractions.Fraction` for numeric text ("-12", "1,000", "0.5", "3/4", "\\frac{3}{4}")."""
    if text is None:
        return None
    cleaned = text.strip().strip("$").replace(" ", "").replace("\\!", "")
    cleaned = _FRAC.sub(r"(\1)/(\2)", cleaned).replace("(", "").replace(")", "")
    cleaned = cleaned.replace(",", "")
    try:
        if "/" in cleaned:
            numerator, denominator = cleaned.split("/")
            return fractions.Fraction(numerator) / fractions.Fraction(denominator)
        return fractions.Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted, reference):
    if predicted is None:
        return False
    predicted_value, reference_value = parse_number(predicted), parse_number(reference)
    if predicted_value is not None and reference_value is not None:
        return predicted_value == reference_value
    return "".join(predicted.split()) == "".join(str(reference).split())


def math_reward(completion, reference):
    """+1 when the completion's final answer equals `reference`, else -1."""
    return CORRECT if answers_match(extract_answer(completion), reference) else INCORRECT


def digit_sum_reward(completion, reference):
    """+1 when the last number has `digits` digits (no leading zero) summing to `sum`."""
    digits, total = (int(part) for part in reference.split(":"))
    numbers = re.findall(r"\d+", completion)
    if not numbers:
        return INCORRECT
    answer = numbers[-1]
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


def get_reward(name):
    """A reward by built-in name, or "package.module:function" for your own."""
    if callable(name):
        return name
    if name in REWARDS:
        return REWARDS[name]
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
        return function
    raise UserError(
        f"Unknown reward {name!r}: use one of {', '.join(REWARDS)} or "
        "'package.module:function' for a callable (completion, reference) -> float."
    )
