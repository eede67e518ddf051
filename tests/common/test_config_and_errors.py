"""Config problems are collected and reported together; CLIs fail on user errors with exit 2."""

import dataclasses
import json

import pytest

from pipelines.common.config import Problems, load_config_json
from pipelines.common.errors import ConfigError, UserError, run_cli


@dataclasses.dataclass
class Settings:
    epochs: int = 5
    learning_rate: float = 0.1
    steps_per_epoch: int | None = None
    sizes: tuple = (8, 8)
    name: str = "x"
    flip: bool = False


def test_problems_are_collected_and_raised_together():
    problems = Problems("image config")
    problems.at_least("epochs", 0, 1)
    problems.choice("head", "softmx", ("softmax", "era"))
    problems.in_range("top_p", 1.5, 0, 1, low_open=True)
    problems.check(True, "never shown")
    with pytest.raises(ConfigError) as error:
        problems.raise_if_any()
    assert error.value.problems == [
        "epochs must be >= 1 (got 0)",
        "head='softmx' is not one of ('softmax', 'era')",
        "top_p must be in (0, 1] (got 1.5)",
    ]
    assert str(error.value).startswith("invalid image config: epochs must be >= 1")


def test_a_problem_that_is_a_sentence_joins_without_a_stray_full_stop():
    error = ConfigError("config", ["Dataset 'x' is not prepared. Prepare it first.", "epochs"])
    assert str(error) == "invalid config: Dataset 'x' is not prepared. Prepare it first; epochs."


def test_no_problem_raises_nothing():
    Problems("config").raise_if_any()


def test_config_json_is_checked_field_by_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": "two", "sizes": 3, "flip": 1, "colour": "red"}))
    with pytest.raises(ConfigError) as error:
        load_config_json(path, Settings)
    assert error.value.problems == [
        "unknown field 'colour' (known: epochs, flip, learning_rate, name, sizes, steps_per_epoch)",
        "epochs must be int, got 'two'",
        "flip must be bool, got 1",
        "sizes must be a list, got 3",
    ]


def test_config_json_accepts_what_the_dataclass_accepts(tmp_path):
    path = tmp_path / "config.json"
    values = {"epochs": 3, "learning_rate": 1, "steps_per_epoch": None, "sizes": [4, 4]}
    path.write_text(json.dumps(values))
    assert load_config_json(path, Settings) == values


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "is not valid JSON (Expecting value at line 1, column 1)"),
        ("[1, 2]", "must hold a JSON object of Settings fields, got list"),
    ],
)
def test_unreadable_config_json_names_the_file(tmp_path, text, expected):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        load_config_json(path, Settings)
    assert str(error.value) == f"config file {path} {expected}"


def test_a_missing_config_json_names_the_file(tmp_path):
    with pytest.raises(UserError, match=r"cannot read config file .*missing\.json"):
        load_config_json(tmp_path / "missing.json", Settings)


def test_run_cli_turns_user_errors_into_one_line_and_exit_2(capsys):
    def main(argv):
        raise UserError(f"unknown env {argv[0]!r}; known: Pendulum-v1")

    assert run_cli(main, ["Nope-v0"]) == 2
    assert capsys.readouterr().err == "error: unknown env 'Nope-v0'; known: Pendulum-v1\n"


def test_run_cli_lets_bugs_keep_their_traceback():
    def main(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_cli(main, [])


def test_run_cli_returns_the_main_status():
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: 3, []) == 3
