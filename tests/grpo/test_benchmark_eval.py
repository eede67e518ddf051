"""`python -m pipelines.grpo.evaluate`: the ERA authors' protocol, a tiny checkpoint from
each kind of --model, tables in MLflow and the output dir, and one line for bad input."""

import json

import keras
import mlflow
import numpy as np
import pytest

from pipelines.common.errors import UserError, run_cli
from pipelines.grpo.benchmark_eval import (
    ERA_PAPER_SYSTEM_PROMPT,
    EvalConfig,
    Sampling,
    era_paper_problem,
    load_model,
    main,
    parse_data,
)
from pipelines.grpo.tasks import Problem


def odd_first_character(completion, reference):
    """A reward a random-init model earns about half the time (reached by import path)."""
    return 1.0 if completion and ord(completion[0]) % 2 else -1.0


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def benchmark_files(tmp_path):
    aime = _jsonl(tmp_path / "aime24.jsonl", [
        {"id": 60, "problem": "What is 2+2?", "answer": 4, "url": "u"},
        {"id": 61, "problem": "What is 3*3?", "answer": 9, "url": "u"},
        {"id": 62, "problem": "Half of 1?", "answer": "\\frac{1}{2}", "url": "u"}])
    math500 = _jsonl(tmp_path / "math500.jsonl", [
        {"problem": "1+1?", "solution": "\\boxed{2}", "answer": "2", "unique_id": "a"},
        {"problem": "5-3?", "solution": "\\boxed{2}", "answer": "2", "unique_id": "b"}])
    return {"aime24": aime, "math500": math500}


def test_the_era_paper_protocol_is_the_authors_settings():
    config = EvalConfig(model="tiny:qwen", data={"aime24": "a", "amc23": "b", "aime25": "c",
                                                 "math500": "d", "minerva_math": "e",
                                                 "olympiadbench": "f"},
                        eval_protocol="era-paper")
    sampled = Sampling(samples=16, temperature=0.7, top_p=0.95, max_new_tokens=3000)
    greedy = Sampling(samples=1, temperature=0.0, top_p=1.0, max_new_tokens=3000)
    for name in ("aime24", "aime25", "amc23"):
        assert config.sampling(name) == sampled
    for name in ("math500", "minerva_math", "olympiadbench"):
        assert config.sampling(name) == greedy and greedy.greedy
    smoke = EvalConfig(model="tiny:qwen", data={"aime24": "a", "math500": "b"},
                       eval_protocol="era-paper", samples=2, max_new_tokens=8)
    assert smoke.sampling("aime24") == Sampling(2, 0.7, 0.95, 8)
    assert smoke.sampling("math500") == Sampling(1, 0.0, 1.0, 8)  # greedy: one answer
    plain = EvalConfig(model="tiny:qwen", data={"x": "x.jsonl"}, samples=4, temperature=0.6)
    assert plain.sampling("x") == Sampling(4, 0.6, 1.0, 1024)


def test_the_authors_prompt_is_their_qwen25_math_cot_text_under_their_system_prompt():
    problem = era_paper_problem(Problem("  What is 2+2?\n", "4"))
    assert problem.prompt == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert problem.messages == (("system", ERA_PAPER_SYSTEM_PROMPT),
                                ("user", problem.prompt.strip()))
    assert ERA_PAPER_SYSTEM_PROMPT.endswith("the answer is \\boxed{answer}\n\n")
    assert problem.reference == "4"


def test_data_names_default_to_the_file_stem():
    assert parse_data(["dir/aime24.jsonl", "m=MATH-500.parquet"]) == {
        "aime24": "dir/aime24.jsonl", "m": "MATH-500.parquet"}
    with pytest.raises(UserError, match="'aime24' is given twice"):
        parse_data(["a/aime24.jsonl", "b/aime24.jsonl"])


def _one_line_error(capsys, *argv):
    assert run_cli(main, list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_bad_input_is_one_line(capsys, tmp_path, benchmark_files, tracking_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(capsys, "--model", "tiny:qwen", "--eval-protocol", "era-paper",
                          "--data", f"gsm8k={benchmark_files['aime24']}")
    assert "benchmark 'gsm8k' is not part of the era-paper protocol" in err
    assert "aime24, aime25, amc23, math500, minerva, olympiadbench" in err
    err = _one_line_error(capsys, "--model", "tiny:qwen", "--eval-protocol", "paper",
                          "--data", benchmark_files["aime24"])
    assert "eval_protocol='paper' is not one of ('era-paper',)" in err
    err = _one_line_error(capsys, "--model", "tiny:qwen",
                          "--data", str(tmp_path / "missing.jsonl"))
    assert "missing.jsonl' does not exist" in err
    (tmp_path / "empty.jsonl").write_text("")
    err = _one_line_error(capsys, "--model", "tiny:qwen", "--data", str(tmp_path / "empty.jsonl"))
    assert "holds no problems" in err
    err = _one_line_error(capsys, "--model", "tiny:qwen")
    assert "give at least one benchmark file" in err
    err = _one_line_error(capsys, "--model", "tiny:qwen", "--data", benchmark_files["aime24"],
                          "--samples", "4")
    assert "samples=4 needs temperature > 0" in err
    err = _one_line_error(capsys, "--model", str(tmp_path / "no_such_model"),
                          "--data", benchmark_files["aime24"])
    assert "no_such_model" in err and "does not exist" in err
    assert not list(tmp_path.glob("runs"))  # nothing was written


def test_a_run_dir_is_evaluated_from_its_exported_preset_or_newest_checkpoint(tmp_path):
    from pipelines.grpo.checkpoint import save_checkpoint
    from pipelines.grpo.models import tiny_causal_lm

    policy = tiny_causal_lm("qwen", num_layers=1, hidden_dim=16, seed=3)
    optimizer = keras.optimizers.Adam()
    optimizer.build(policy.trainable_variables)
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir, 4, policy, optimizer, {"history": []})
    expected = [w.numpy() for w in policy.backbone.weights]

    def loaded():
        model = load_model(EvalConfig(model=str(run_dir), data={"x": "x.jsonl"}))
        return [w.numpy() for w in model.backbone.weights]

    assert all(np.array_equal(a, b) for a, b in zip(loaded(), expected))
    exported = tiny_causal_lm("qwen", num_layers=1, hidden_dim=16, seed=4)
    exported.save_to_preset(str(run_dir / "export" / "preset"))
    assert all(np.array_equal(a, b.numpy())
               for a, b in zip(loaded(), exported.backbone.weights))  # the export wins
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="neither an exported preset .* nor a complete checkpoint"):
        load_model(EvalConfig(model=str(tmp_path / "fresh"), data={"x": "x.jsonl"}))


def test_a_tiny_checkpoint_is_evaluated_under_the_protocol_into_mlflow_and_tables(
        tmp_path, benchmark_files, tracking_uri, capsys):
    out = tmp_path / "out"
    code = run_cli(main, [
        "--model", "tiny:qwen", "--eval-protocol", "era-paper",
        "--data", f"aime24={benchmark_files['aime24']}",
        "--data", f"math500={benchmark_files['math500']}",
        "--samples", "4", "--max-new-tokens", "6", "--batch-size", "4",
        "--reward", "tests.grpo.test_benchmark_eval:odd_first_character",
        "--output-dir", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = {row["benchmark"]: row for row in json.loads((out / "summary.json").read_text())}
    assert summary["aime24"]["samples"] == 4 and summary["aime24"]["temperature"] == 0.7
    assert summary["math500"]["samples"] == 1 and summary["math500"]["temperature"] == 0.0
    for name, n in (("aime24", 4), ("math500", 1)):
        graded = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert [len(g["completions"]) for g in graded] == [n] * len(graded)
        # The flags are the reward of each completion, and the metrics are their means.
        flags = np.array([g["correct"] for g in graded])
        assert flags.tolist() == [[odd_first_character(c, "") > 0 for c in g["completions"]]
                                  for g in graded]
        if n > 1:
            assert 0 < flags.mean() < 1  # both verdicts occur
        metric = "accuracy" if n == 1 else f"avg_at_{n}"
        assert summary[name][metric] == pytest.approx(flags.mean())
        if n > 1:
            assert summary[name][f"pass_at_{n}"] == pytest.approx(flags.any(axis=1).mean())
        assert graded[0]["prompt"].startswith("<|im_start|>system\nPlease reason step by step")
        assert (out / f"{name}.md").read_text().startswith(f"# {name}\n")
    assert "| aime24 |" in (out / "summary.md").read_text()

    experiment = mlflow.get_experiment_by_name("grpo-eval")
    (run,) = mlflow.search_runs([experiment.experiment_id], output_format="list")
    metrics = run.data.metrics
    assert metrics["aime24/avg_at_4"] == pytest.approx(summary["aime24"]["avg_at_4"])
    assert metrics["aime24/pass_at_4"] == pytest.approx(summary["aime24"]["pass_at_4"])
    assert metrics["math500/accuracy"] == pytest.approx(summary["math500"]["accuracy"])
    assert run.data.params["eval_protocol"] == "era-paper"
    assert run.data.tags["eval_protocol"] == "era-paper"
    client = mlflow.tracking.MlflowClient()
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "tables")}
    assert tables == {"tables/aime24.json", "tables/math500.json", "tables/summary.json"}
    table = json.loads(open(client.download_artifacts(run.info.run_id, "tables/aime24.json",
                                                      str(tmp_path))).read())
    assert len(table["data"]) == 3 and "reference" in table["columns"]
