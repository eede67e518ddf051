"""Prompts with reference answers: built-in generated tasks and data files.

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

Data files (`read_problems`): JSONL (one object per line), JSON (JSONL, or one array of
objects) or parquet (read with pyarrow; only the columns below are loaded). Field names
are matched case-insensitively (AIME files write "Problem", "Answer"). The prompt is the
first of:

- "prompt": text, or chat messages ([{"role": ..., "content": ...}], DAPO-Math-17k and
  verl's parquet files), kept whole in `Problem.messages` up to the last user turn (system
  turns included); `Problem.prompt` is then that user turn's text;
- "messages": chat messages, the same way;
- "question" (GSM8K, AIME 2025, OlympiadBench), "problem" (MATH, MATH-500, Minerva,
  AIME 2024, AMC): text.

The reference answer is the first of:

- "reward_model": {"ground_truth": ...} (DAPO-Math-17k, verl);
- "answer": GSM8K's "reasoning #### 42" gives "42"; any other text or number as it is
  (MATH-500 "\\frac{1}{2}", AIME 204, AMC 27.0);
- "final_answer" (OlympiadBench): a list of answers, joined by ", ", "$" stripped;
- the last \\boxed{} of "solution" (MATH, Minerva).

Other fields (id, year, url, level, subject, ...) are ignored. A problem that occurs
several times (same prompt, messages and reference) is kept once, in the order of its
first occurrence: some published files repeat every problem many times.
"""

import dataclasses
import functools
import json
import pathlib
import random
import zlib

from pipelines.common.errors import UserError
from pipelines.grpo.math_grader import last_boxed

BUILTIN_TASKS = ("arithmetic", "digit_sum", "digit_sum_wide")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
# Fields read, by lower-cased name, in this order of preference.
PROMPT_FIELDS = ("prompt", "messages", "question", "problem")
REFERENCE_FIELDS = ("reward_model", "answer", "final_answer", "solution")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One prompt and the reference its reward checks.

    `prompt` is text: the whole prompt, or the last user turn when the data gives chat
    messages, which `messages` then keeps whole ((role, content) pairs, system turns
    included) for a chat template to render.
    """

    prompt: str
    reference: str
    reward: str = "math"
    solution: str | None = None
    messages: tuple | None = None


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
            "or pass a data file (.jsonl, .json, .parquet)."
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


def is_data_file(task):
    """Whether `task` names a data file (by its suffix) rather than a built-in task."""
    return str(task).lower().endswith(DATA_SUFFIXES)


def read_problems(path, reward="math"):
    """Problems from a JSONL, JSON or parquet file in one of the layouts above.

    Anything unreadable is an error naming the file, the line or row, the fields found
    and the fields accepted.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist.")
    problems = {}  # insertion-ordered: each distinct problem once, in file order
    for where, record in _records(path):
        problems.setdefault(_problem(where, record, reward))
    if not problems:
        raise UserError(f"data file {str(path)!r} holds no problems.")
    return list(problems)


def _records(path):
    """(where, record) for each record of the file: "file:line" or "file row N"."""
    if path.suffix.lower() == ".parquet":
        yield from _parquet_records(path)
        return
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one JSON array
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}).") \
                from None
        for number, item in enumerate(items, start=1):
            yield f"{path} item {number}", item
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: not valid JSON ({error.msg}).") from None


def _parquet_records(path):
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
        # Only the columns a problem is read from, a batch of rows at a time.
        wanted = [n for n in names if n.lower() in PROMPT_FIELDS + REFERENCE_FIELDS]
        batches = file.iter_batches(batch_size=65536, columns=wanted) if wanted else []
        absent = dict.fromkeys(n for n in names if n not in wanted)  # named in errors
        if not wanted and file.metadata.num_rows:  # row 1 says which columns there are
            yield f"{path} row 1", absent
        number = 0
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield f"{path} row {number}", {**absent, **record}
    except UserError:
        raise
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
        raise UserError(f"{path}: not a readable parquet file ({type(error).__name__}: "
                        f"{' '.join(str(error).split())}).") from None


def _fields(where, record):
    """The record's fields by lower-cased name (AIME files spell them "Problem", "Answer")."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object of named fields, got "
                        f"{type(record).__name__}.")
    return {str(key).lower(): value for key, value in record.items()}


def _found(fields):
    names = sorted(fields)
    shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
    return f"found {shown}" if names else "found no fields"


def _chat(where, field, value):
    """(role, content) pairs up to the last user turn (a trailing answer is not prompt)."""
    turns = []
    for turn in value:
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str)
                and isinstance(turn.get("content"), str)):
            raise UserError(f"{where}: {field!r} holds chat messages, but {str(turn)[:60]!r} "
                            "is not a message {'role': ..., 'content': '<text>'}.")
        turns.append((turn["role"], turn["content"]))
    users = [i for i, (role, _) in enumerate(turns) if role == "user"]
    if not users:
        raise UserError(f"{where}: the chat messages in {field!r} have no user turn (roles: "
                        f"{', '.join(role for role, _ in turns) or 'none'}).")
    return tuple(turns[: users[-1] + 1])


def _prompt(where, fields):
    """(prompt text, messages or None)."""
    for name in PROMPT_FIELDS:
        value = fields.get(name)
        if isinstance(value, (list, tuple)) and name in ("prompt", "messages"):
            messages = _chat(where, name, value)
            return messages[-1][1], messages
        if isinstance(value, str) and value.strip():
            return value, None
    raise UserError(
        f"{where}: no prompt ({_found(fields)}); a prompt is read from 'prompt' (text or chat "
        "messages), 'messages' (chat messages), 'question' or 'problem'.")


def _reference(where, fields):
    reward_model = fields.get("reward_model")
    if isinstance(reward_model, dict) and reward_model.get("ground_truth") is not None:
        return _text(reward_model["ground_truth"])
    answer = fields.get("answer")
    if isinstance(answer, str) and "####" in answer:  # GSM8K: reasoning, then "#### 42"
        return answer.split("####")[-1].strip()
    if answer is not None and _text(answer):
        return _text(answer)
    final = fields.get("final_answer")  # OlympiadBench: a list of answers
    if isinstance(final, (list, tuple)) and final:
        return ", ".join(_text(item) for item in final)
    if final is not None and _text(final):
        return _text(final)
    if isinstance(fields.get("solution"), str) and last_boxed(fields["solution"]):
        return last_boxed(fields["solution"]).strip()
    raise UserError(
        f"{where}: no reference answer ({_found(fields)}); accepted: 'reward_model': "
        "{'ground_truth': ...} (DAPO-Math, verl), 'answer' (GSM8K '... #### 42', MATH, "
        "AIME), 'final_answer' (OlympiadBench) or a 'solution' with \\boxed{} (MATH, "
        "Minerva).")


def _text(value):
    """A reference as text: "$2$" -> "2", 27.0 -> "27.0", 204 -> "204"."""
    return str(value).strip().strip("$").strip()


def _problem(where, record, reward):
    fields = _fields(where, record)
    prompt, messages = _prompt(where, fields)
    return Problem(prompt, _reference(where, fields), reward, messages=messages)


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
