"""The SAC command line and settings, without training: presets, --help, --config-json,
--print-config, one-line errors, the docs' option table, and the run dir refusals that come
before any env step."""

import json
import pathlib
import re

import pytest

from pipelines.common.cli import options_table
from pipelines.common.errors import ConfigError, UserError, run_cli
from pipelines.sac import cli
from pipelines.sac.config import PRESETS, SacConfig, from_preset

REPO = pathlib.Path(__file__).resolve().parents[2]


def one_error_line(capsys):
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: "), error
    assert "Traceback" not in error
    return error


def help_of(flag, preset=None):
    """The help entry of `flag` (its options section, not the usage line), on one line."""
    text = cli.build_parser(*([preset] if preset else [])).format_help()
    entry = text.split(f"\n  {flag}", 1)[1].split("\n  -", 1)[0]
    return re.sub(r"\s+", " ", entry)


def test_help_shows_the_values_of_the_preset_that_runs(capsys):
    # No --preset runs `quick`; its values are what --help shows.
    assert "(default: (64, 64))" in help_of("--hidden-sizes")
    assert f"(default: {PRESETS['quick']['total_env_steps']})" in help_of("--total-env-steps")
    assert "(default: Pendulum-v1)" in help_of("--env")
    assert "(default: 0.25)" in help_of("--target-entropy-per-dim")  # not in the preset
    # `--preset paper --help` shows the paper's.
    assert "(default: (512, 512))" in help_of("--hidden-sizes", "paper")
    with pytest.raises(SystemExit) as done:
        cli.main(["--preset", "paper", "--help"])
    assert done.value.code == 0
    assert "(default: 1000000)" in re.sub(r"\s+", " ", capsys.readouterr().out)


def test_every_field_carries_its_help():
    import dataclasses

    for field in dataclasses.fields(SacConfig):
        assert field.metadata.get("help"), field.name


def test_print_config_layers_preset_json_and_flags(tmp_path, capsys):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"hidden_sizes": [32, 32], "batch_size": 16, "seed": 3}))
    assert run_cli(cli.main, ["--config-json", str(settings), "--seed", "7",
                              "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["env"] == "Pendulum-v1"  # the quick preset
    assert printed["hidden_sizes"] == [32, 32] and printed["batch_size"] == 16  # the file
    assert printed["seed"] == 7  # the flag wins over the file
    assert run_cli(cli.main, ["--preset", "paper", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["hidden_sizes"] == [512, 512]


def test_a_bad_config_json_is_one_line_naming_every_problem(tmp_path, capsys):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"batch_size": "big", "tua": 0.1}))
    assert run_cli(cli.main, ["--config-json", str(settings), "--print-config"]) == 2
    error = one_error_line(capsys)
    assert "batch_size must be int" in error and "unknown field 'tua'" in error


def test_integer_settings_take_integral_floats_and_nothing_else(capsys):
    # MLflow's float parameters arrive as typed: `-P total_env_steps=1e3`.
    assert run_cli(cli.main, ["--total-env-steps", "1e3", "--log-every", "250.0",
                              "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["total_env_steps"] == 1000 and printed["log_every"] == 250
    assert isinstance(printed["total_env_steps"], int)
    for bad in ("2.5", "1e400", "many"):
        assert run_cli(cli.main, ["--total-env-steps", bad, "--print-config"]) == 2
        error = one_error_line(capsys)
        assert f"--total-env-steps: invalid int value: '{bad}'" in error


def test_every_bad_setting_is_reported_in_one_line(tmp_path, capsys):
    assert run_cli(cli.main, ["--batch-size", "0", "--tau", "2", "--squash", "truncated",
                              "--mean-bound", "0.5", "--hidden-sizes", "0",
                              "--run-dir", str(tmp_path / "r")]) == 2
    error = one_error_line(capsys)
    assert error.startswith("error: invalid SAC settings: ")
    for problem in ("batch_size must be >= 1", "tau must be in (0.0, 1.0]",
                    "mean_bound applies to squash='tanh' only", "hidden_sizes must be"):
        assert problem in error, problem
    assert not (tmp_path / "r").exists()
    # A bad setting and an unknown env: both, in the one line.
    assert run_cli(cli.main, ["--batch-size", "0", "--env", "Cheetah-v9"]) == 2
    error = one_error_line(capsys)
    assert "batch_size must be >= 1" in error and "Unknown environment id 'Cheetah-v9'" in error
    assert run_cli(cli.main, ["--agent", "ppo"]) == 2
    assert "invalid choice: 'ppo'" in one_error_line(capsys)
    assert run_cli(cli.main, ["--preset", "fast"]) == 2
    assert "invalid choice: 'fast'" in one_error_line(capsys)
    with pytest.raises(UserError, match="unknown preset 'fast'"):
        from_preset("fast")
    with pytest.raises(ConfigError, match="run_dir must be a directory path"):
        SacConfig(run_dir="")


def test_docs_option_table_is_the_generated_one():
    docs = (REPO / "docs" / "sac.md").read_text()
    assert options_table(SacConfig) in docs


# --- refusals before any env step: each builds the run (env, agent), trains nothing ---------

NO_TRAINING = ["--env", "Pendulum-v1", "--hidden-sizes", "8", "--batch-size", "8",
               "--total-env-steps", "20", "--warmup-steps", "20", "--log-every", "10",
               "--eval-every", "20", "--eval-episodes", "1", "--checkpoint-every", "20"]


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, tracking_uri, capsys):
    (tmp_path / "taken").write_text("not a directory")
    assert run_cli(cli.main, [*NO_TRAINING, "--run-dir", str(tmp_path / "taken")]) == 2
    assert "is not a directory" in one_error_line(capsys)


def test_a_read_only_run_dir_is_one_line(tmp_path, tracking_uri, capsys):
    from tests.common.test_lifecycle import read_only_directory

    with read_only_directory(tmp_path) as read_only:
        assert run_cli(cli.main, [*NO_TRAINING, "--run-dir", str(read_only / "run")]) == 2
        assert "cannot be written" in one_error_line(capsys)


def test_an_unreachable_tracking_store_is_one_line_and_claims_nothing(tmp_path, capsys):
    assert run_cli(cli.main, [*NO_TRAINING, "--run-dir", str(tmp_path / "run"),
                              "--tracking-uri", "http://127.0.0.1:9"]) == 2
    error = one_error_line(capsys)
    assert "http://127.0.0.1:9 cannot be reached" in error
    assert not (tmp_path / "run").exists()


def test_checkpoints_of_the_old_layout_are_refused_not_ignored(tmp_path):
    from pipelines.sac.train import SacRun

    old = tmp_path / "run" / "checkpoints"
    old.mkdir(parents=True)
    (old / "ckpt-300.index").write_bytes(b"")
    run = SacRun(from_preset(hidden_sizes=(8,), batch_size=8, run_dir=str(tmp_path / "run")))
    with pytest.raises(UserError, match=r"older layout \(ckpt-300.index"):
        run.restore()
