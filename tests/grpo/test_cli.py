"""The GRPO command line: user errors are one line and exit status 2, and claim no run dir."""

import json
import subprocess
import sys

from pipelines.common.errors import run_cli
from pipelines.grpo.__main__ import main


def _fails(capsys, *argv):
    """Run the CLI in-process; return its one-line error (and check the exit status)."""
    assert run_cli(main, list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_a_preset_typo_is_one_line_and_exit_status_2_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.grpo", "--model", "no_such_lm", "--run-dir",
         str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: Could not load keras-hub CausalLM preset 'no_such_lm'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()  # nothing claimed


def test_every_config_problem_is_reported_together(capsys, tmp_path):
    err = _fails(capsys, "--group-size", "1", "--model", "tiny:llama", "--run-dir",
                 str(tmp_path / "run"))
    assert "group_size must be >= 2" in err and "tiny model family must be one of" in err


def test_bad_jsonl_line_names_file_and_line_and_claims_nothing(capsys, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"\n')
    err = _fails(capsys, "--task", str(data), "--warm-start-steps", "0",
                 "--run-dir", str(tmp_path / "run"))
    assert f"{data}:2: not valid JSON" in err
    assert not (tmp_path / "run").exists()


def test_missing_files_and_directories_are_named(capsys, tmp_path):
    err = _fails(capsys, "--model", str(tmp_path / "no_preset_dir"), "--run-dir",
                 str(tmp_path / "run"))
    assert "no_preset_dir" in err and "does not exist" in err
    err = _fails(capsys, "--task", str(tmp_path / "missing.jsonl"), "--warm-start-steps", "0",
                 "--run-dir", str(tmp_path / "run"))
    assert "missing.jsonl" in err and "does not exist" in err
    err = _fails(capsys, "--config-json", str(tmp_path / "nope.json"))
    assert "nope.json" in err


def test_too_small_max_new_tokens_is_refused_before_the_run_dir_is_claimed(capsys, tmp_path):
    err = _fails(capsys, "--task", "digit_sum", "--tiny-layers", "1", "--tiny-hidden-dim", "16",
                 "--warm-start-steps", "1", "--max-new-tokens", "4",
                 "--run-dir", str(tmp_path / "run"))
    assert "raise --max-new-tokens" in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_config_json_is_layered_under_flags_and_print_config_shows_the_result(capsys, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"learning_rate": 1e-4, "group_size": 4}))
    assert run_cli(main, ["--config-json", str(settings), "--group-size", "16",
                          "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["learning_rate"] == 1e-4 and printed["group_size"] == 16
    settings.write_text(json.dumps({"group_size": "eight"}))
    err = _fails(capsys, "--config-json", str(settings))
    assert "group_size must be int" in err
