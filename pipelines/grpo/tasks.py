"""Prompts with reference answers: built-in generated tasks and JSONL files.

A `Problem` is a prompt, the reference its reward checks against, the name of that reward,
and, for built-in tasks, one worked solution that the supervised warm start learns from.

Built-in tasks (no download; answers are exact and checkable):

- "arithmetic": "23+48-17=" -> "23+48=71;71-17=54" (one correct answer, reward "math",
  which reads the last number). Each step is written out, so responses are 10+ tokens.
- "digit_sum": "3 digits, sum 12:" -> "12-5=7;7-4=3;543" (many correct answers, reward
  "digit_sum"), with 3 or 4 digits. Collapse here shows up as lost answer diversity and
  pass@k. There are only 57 distinct prompts, so held-out prompts are (digits, sum) pairs
  whose sum the model has seen only with the other digit count.
- "digit_sum_wide": the same with 3, 4 or 5 digits: 99 distinct prompts, so that a
  held-out fraction of 0.45 leaves 44 distinct held-out prompts.

Held-out problems of a built-in task are distinct prompts (as many as exist, up to the
number asked for); training problems repeat.

Each task is split into train and held-out prompts by a hash of the prompt, so held-out
prompts are never trained on.

JSONL files hold one JSON object per line, in GSM8K ("question", "answer" ending in
"#### 42"), MATH ("problem", "solution" with \\boxed{} or "answer") or DAPO-Math
("prompt" as a string or chat messages, "reward_model": {"ground_truth": ...}) style.
"""

import dataclasses
import functools
import json
import pathlib
import random
import zlib

from pipelines.common.errors import UserError
from pipelines.grpo.rewards import last_boxed

BUILTIN_TASKS = ("arithmetic", "digit_sum", "digit_sum_wide")


@dataclasses.dataclass(frozen=True)
class Problem:
    prompt: str
    reference: str
    reward: str = "math"
    solution: str | None = None


def is_held_out(prompt, held_out_fraction):
    return zlib.crc32(prompt.encode()) % 1000 < held_out_fraction * 1000


def arithmetic_problem(rng, num_operands=3, max_operand=50):
    operands = [rng.randint(1, max_operand) for _ in range(num_operands)]
    operators = [rng.choice("+-") for _ in range(num_operands - 1)]
    prompt = str(operands[0])
    for operator, operand in zip(operators, operands[1:]):
        prompt += f"{operator}{operand}"
    steps, value = [], operands[0]
    for operator, operand in zip(operators, operands[1:]):
        result = value + operand if operator == "+" else value - operand
        steps.append(f"{value}{operator}{operand}={result}")
        value = result
    return Problem(f"{prompt}=", str(value), "math", ";".join(steps))


@functools.lru_cache(maxsize=None)
def digit_sum_answers(digits, total):
    """Every number with `digits` digits (no leading zero) whose digits sum to `total`."""
    return tuple(
        str(n) for n in range(10 ** (digits - 1), 10**digits)
        if sum(map(int, str(n))) == total
    )


def digit_sum_problem(rng, digit_counts=(3, 4)):
    digits = rng.choice(digit_counts)
    total = rng.randint(2, 9 * digits - 2)
    answer = rng.choice(digit_sum_answers(digits, total))
    # The working takes each digit off what is left: "12-5=7;7-4=3;543".
    steps, left = [], total
    for digit in answer[:-1]:
        steps.append(f"{left}-{digit}={left - int(digit)}")
        left -= int(digit)
    return Problem(f"{digits} digits, sum {total}:", f"{digits}:{total}", "digit_sum",
                   ";".join(steps + [answer]))


_GENERATORS = {
    "arithmetic": arithmetic_problem,
    "digit_sum": digit_sum_problem,
    "digit_sum_wide": functools.partial(digit_sum_problem, digit_counts=(3, 4, 5)),
}


def builtin_problems(task, split, count, seed=0, held_out_fraction=0.2):
    """`count` problems of a built-in task from one split ("train" or "test")."""
    if task not in _GENERATORS:
        raise UserError(
            f"Unknown built-in task {task!r}; choose one of {', '.join(BUILTIN_TASKS)}, "
            "or pass a JSONL file."
        )
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    rng = random.Random(f"{task}-{split}-{seed}")
    want_held_out = split == "test"
    problems, seen = [], set()
    for _ in range(count * 1000):
        problem = _GENERATORS[task](rng)
        if is_held_out(problem.prompt, held_out_fraction) != want_held_out:
            continue
        if want_held_out and problem.prompt in seen:  # evaluate on distinct prompts
            continue
        seen.add(problem.prompt)
        problems.append(problem)
        if len(problems) == count:
            return problems
    if want_held_out and problems:  # every distinct held-out prompt there is
        return problems
    raise UserError(f"Could not draw {count} {split} problems of task {task!r}.")


def _prompt_of(record):
    prompt = record.get("prompt", record.get("question", record.get("problem")))
    if isinstance(prompt, list):  # chat messages: the last user turn
        users = [m.get("content") for m in prompt if isinstance(m, dict)
                 and m.get("role") == "user"]
        prompt = users[-1] if users else None
    return prompt


def _reference_of(record):
    reward_model = record.get("reward_model")
    if isinstance(reward_model, dict) and "ground_truth" in reward_model:
        return reward_model["ground_truth"]
    answer = record.get("answer")
    if isinstance(answer, str) and "####" in answer:  # GSM8K: reasoning, then "#### 42"
        return answer.split("####")[-1].strip()
    if answer is not None:
        return answer
    if isinstance(record.get("solution"), str):
        return last_boxed(record["solution"])
    return None


def load_jsonl(path, reward="math"):
    """Problems from a JSONL file; any malformed line is an error naming file and line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"JSONL file {str(path)!r} does not exist.")
    problems = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{where}: not valid JSON ({error.msg}).") from None
            if not isinstance(record, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}.")
            prompt, reference = _prompt_of(record), _reference_of(record)
            if not isinstance(prompt, str) or not prompt.strip():
                raise UserError(
                    f"{where}: no prompt. Expected a non-empty string in 'prompt', "
                    "'question' or 'problem' (or chat messages with a user turn in 'prompt')."
                )
            if reference is None or str(reference).strip() == "":
                raise UserError(
                    f"{where}: no reference answer. Expected 'answer' (GSM8K: '... #### 42'), "
                    "'reward_model': {'ground_truth': ...}, or a 'solution' with \\boxed{}."
                )
            problems.append(Problem(prompt, str(reference).strip(), reward))
    if not problems:
        raise UserError(f"JSONL file {str(path)!r} holds no problems.")
    return problems


def split_problems(problems, held_out_fraction=0.2):
    """(train, test) by a hash of each prompt."""
    train = [p for p in problems if not is_held_out(p.prompt, held_out_fraction)]
    test = [p for p in problems if is_held_out(p.prompt, held_out_fraction)]
    if not train or not test:
        raise UserError(
            f"Splitting {len(problems)} problems at held_out_fraction={held_out_fraction} "
            "left one side empty; pass more problems or a separate --eval-data file."
        )
    return train, test
