"""Config flags built from a dataclass: types, None, tuples, booleans, absent flags."""

import argparse
import dataclasses

import pytest

from pipelines.common.cli import add_config_flags, given_config_flags


@dataclasses.dataclass
class Config:
    learning_rate: float = 0.1
    data_dir: str | None = None
    hidden_sizes: tuple = (64, 64)
    era: bool = True
    agent: str = "era"


def parse(argv):
    parser = add_config_flags(argparse.ArgumentParser(), Config, choices={"agent": ("era", "sac")})
    return given_config_flags(parser.parse_args(argv), Config)


def test_only_given_flags_come_back_typed():
    assert parse([]) == {}
    assert parse(["--learning-rate", "3e-4", "--hidden-sizes", "8", "16", "--no-era"]) == {
        "learning_rate": 3e-4, "hidden_sizes": [8, 16], "era": False,
    }
    assert parse(["--data-dir", "none"]) == {"data_dir": None}
    assert parse(["--data-dir", "/data"]) == {"data_dir": "/data"}


def test_bad_values_are_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        parse(["--agent", "ppo"])
    assert "invalid choice: 'ppo'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--learning-rate", "fast"])
    assert "invalid float value" in capsys.readouterr().err
