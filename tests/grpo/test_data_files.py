"""Data files in the layouts of DAPO-Math-17k, MATH / MATH-500, GSM8K, AIME, AMC,
OlympiadBench and Minerva, as JSONL, JSON and parquet; bad files get one line."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.common.errors import UserError
from pipelines.grpo.tasks import is_data_file, read_problems

DAPO_PROMPT = ("Solve the following math problem step by step. The last line of your "
               "response should be of the form Answer: $Answer (without quotes) where "
               "$Answer is the answer to the problem.\n\nWhat is 3*3?\n\nRemember to put "
               "your answer on its own line after \"Answer:\"")

# One row per layout, as the published files have them.
DAPO_ROW = {  # BytedTsinghua-SIA/DAPO-Math-17k (parquet)
    "data_source": "math_dapo",
    "prompt": [{"content": "Reason step by step.", "role": "system"},
               {"content": DAPO_PROMPT, "role": "user"}],
    "ability": "MATH",
    "reward_model": {"ground_truth": "9", "style": "rule-lighteval/MATH_v2"},
    "extra_info": {"index": "a1b2"},
}
MATH500_ROW = {  # HuggingFaceH4/MATH-500
    "problem": "Convert the point $(0,3)$ to polar coordinates.",
    "solution": "We have $r = 3$, so the point is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
    "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
    "subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json",
}
MATH_ROW = {  # MATH (train): the answer only in the solution's last \boxed{}
    "problem": "Half of 1?", "level": "Level 1", "type": "Algebra",
    "solution": "First \\boxed{2} is wrong; it is $\\boxed{\\frac{1}{2}}$.",
}
GSM8K_ROW = {"question": "Natalia sold 48 clips in April and half as many in May. Total?",
             "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = 72\n#### 72"}
AIME24_ROW = {"ID": "2024-I-1", "Problem": "Find the number of minutes the walk takes.",
              "Solution": "... so $\\boxed{204}$.", "Answer": 204}
AIME25_ROW = {"question": "Find the sum of all integer bases $b>9$ ...", "answer": "70",
              "id": 0, "year": 2025}
AMC23_ROW = {"id": 0, "problem": "How many miles from City $A$ will they meet?",
             "answer": 27.0, "url": "https://artofproblemsolving.com/...",
             "question": "How many miles from City $A$ will they meet?"}
OLYMPIAD_ROW = {"id": 1606, "subfield": "Combinatorics", "context": None,
                "question": "How many moves does Sergey need?",
                "solution": ["Sergey can determine Xenia's number in 2 moves."],
                "final_answer": ["$2$"], "is_multiple_answer": False, "unit": None,
                "answer_type": "Numerical", "error": None}
OLYMPIAD_TWO_ANSWERS = {**OLYMPIAD_ROW, "final_answer": ["$3$", "$5$"],
                        "is_multiple_answer": True}
MINERVA_ROW = {"problem": "Find the diameter of the image (in cm).",
               "solution": "$s = \\alpha f$, so $s = \\boxed{1.6}$ cm.",
               "type": "Introduction to Astronomy", "idx": 0}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("write", [_jsonl, _parquet], ids=["jsonl", "parquet"])
def test_dapo_math_keeps_the_chat_messages_whole_and_each_problem_once(tmp_path, write):
    other = {**DAPO_ROW, "reward_model": {"ground_truth": "10", "style": "rule"}}
    path = write(tmp_path / f"dapo.{'jsonl' if write is _jsonl else 'parquet'}",
                 [DAPO_ROW, other, DAPO_ROW, DAPO_ROW])  # the file repeats its problems
    problems = read_problems(path)
    assert [p.reference for p in problems] == ["9", "10"]
    problem = problems[0]
    assert problem.messages == (("system", "Reason step by step."), ("user", DAPO_PROMPT))
    assert problem.prompt == DAPO_PROMPT  # the last user turn, for models without a template
    assert problem.reference == "9" and problem.reward == "math"


@pytest.mark.parametrize("row, prompt, reference", [
    (MATH500_ROW, MATH500_ROW["problem"], MATH500_ROW["answer"]),
    (MATH_ROW, "Half of 1?", "\\frac{1}{2}"),
    (GSM8K_ROW, GSM8K_ROW["question"], "72"),
    (AIME24_ROW, AIME24_ROW["Problem"], "204"),
    (AIME25_ROW, AIME25_ROW["question"], "70"),
    (AMC23_ROW, AMC23_ROW["problem"], "27.0"),
    (OLYMPIAD_ROW, OLYMPIAD_ROW["question"], "2"),
    (OLYMPIAD_TWO_ANSWERS, OLYMPIAD_ROW["question"], "3, 5"),
    (MINERVA_ROW, MINERVA_ROW["problem"], "1.6"),
], ids=["math500", "math", "gsm8k", "aime24", "aime25", "amc23", "olympiadbench",
        "olympiadbench_two_answers", "minerva"])
@pytest.mark.parametrize("write", [_jsonl, _parquet], ids=["jsonl", "parquet"])
def test_each_benchmark_layout_reads_its_prompt_and_reference(tmp_path, write, row, prompt,
                                                              reference):
    suffix = "jsonl" if write is _jsonl else "parquet"
    problems = read_problems(write(tmp_path / f"data.{suffix}", [row]), reward="math")
    assert [(p.prompt, p.reference, p.messages) for p in problems] == [(prompt, reference, None)]


def test_a_json_file_may_be_one_array_and_trailing_assistant_turns_are_dropped(tmp_path):
    chat = {"messages": [{"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4"}], "answer": "4"}
    path = tmp_path / "test.json"  # as OlympiadBench's test.json: a JSON array
    path.write_text(json.dumps([OLYMPIAD_ROW, chat]))
    problems = read_problems(path)
    assert [(p.prompt, p.reference) for p in problems] == [
        (OLYMPIAD_ROW["question"], "2"), ("2+2?", "4")]
    assert problems[1].messages == (("user", "2+2?"),)
    assert is_data_file(path) and is_data_file("x.PARQUET") and not is_data_file("digit_sum")


@pytest.mark.parametrize("line, message", [
    ('{"question": "1+1?", "answer": "2"', r"bad\.jsonl:2: not valid JSON"),
    ('["a list"]', r"bad\.jsonl:2: expected an object of named fields, got list"),
    ('{"answer": "2", "id": 3}',
     r"bad\.jsonl:2: no prompt \(found 'answer', 'id'\); a prompt is read from 'prompt' "
     r"\(text or chat messages\), 'messages' \(chat messages\), 'question' or 'problem'"),
    ('{"question": "1+1?", "year": 2024}',
     r"bad\.jsonl:2: no reference answer \(found 'question', 'year'\); accepted: "
     r"'reward_model'.*'answer'.*'final_answer'.*'solution' with \\boxed"),
    ('{"problem": "1+1?", "solution": "it is two"}', r"bad\.jsonl:2: no reference answer"),
    ('{"prompt": [{"role": "system", "content": "hi"}], "answer": "1"}',
     r"bad\.jsonl:2: the chat messages in 'prompt' have no user turn \(roles: system\)"),
    ('{"prompt": [{"role": "user"}], "answer": "1"}',
     r"bad\.jsonl:2: 'prompt' holds chat messages, but .* is not a message"),
])
def test_a_bad_record_is_one_line_naming_file_line_and_fields(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok?", "answer": "1"}\n' + line + "\n")
    with pytest.raises(UserError, match=message) as error:
        read_problems(path)
    assert "\n" not in str(error.value)


def test_parquet_errors_name_the_row_and_the_columns(tmp_path):
    rows = [GSM8K_ROW, {"question": "No answer here?", "answer": None}]
    with pytest.raises(UserError, match=r"data\.parquet row 2: no reference answer \(found "
                                        r"'answer', 'question'\)"):
        read_problems(_parquet(tmp_path / "data.parquet", rows))
    other = _parquet(tmp_path / "other.parquet", [{"text": "hi", "label": 1}])
    with pytest.raises(UserError, match=r"other\.parquet row 1: no prompt \(found 'label', "
                                        r"'text'\)"):
        read_problems(other)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=r"broken\.parquet: not a readable parquet file"):
        read_problems(broken)


def test_missing_or_empty_files(tmp_path):
    with pytest.raises(UserError, match="'.*absent.jsonl' does not exist"):
        read_problems(tmp_path / "absent.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="holds no problems"):
        read_problems(empty)
    no_rows = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string()),
                             "answer": pa.array([], pa.string())}), no_rows)
    with pytest.raises(UserError, match="holds no problems"):
        read_problems(no_rows)
