"""ImageConfig is the one place a setting, its default and its help are written: the CLI,
--help, --print-config, the docs' table and the MLproject's image entry come from it."""

import dataclasses
import pathlib

import pytest
from mlflow.projects._project_spec import load_project

from pipelines.common.cli import options_table
from pipelines.common.config import field_help
from pipelines.image.__main__ import build_parser, config_from_args
from pipelines.image.config import ImageConfig
from pipelines.image.heads import HeadConfig
from pipelines.image.presets import PRESETS

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_every_field_has_its_help_and_help_shows_it():
    # argparse wraps lines at spaces and hyphens: compare without whitespace.
    text = "".join(build_parser().format_help().split())
    for field in dataclasses.fields(ImageConfig):
        assert field_help(field), field.name
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        assert "".join(field_help(field).split()) in text, field.name


def test_the_docs_options_table_is_the_generated_one():
    docs = (REPO / "docs" / "image.md").read_text()
    assert options_table(ImageConfig) in docs


def test_the_era_target_is_written_once():
    """The head's defaults are HeadConfig's; ImageConfig and the presets read them."""
    assert ImageConfig().target_entropy == HeadConfig().target_entropy
    assert ImageConfig().head_config() == HeadConfig()
    for name, values in PRESETS.items():
        assert values["target_entropy"] == HeadConfig().target_entropy, name


def test_the_mlproject_image_entry_has_the_config_defaults():
    """MLproject parameters must carry a default to be optional; each is the config's."""
    point = load_project(str(REPO / "mlflow_project")).get_entry_point("image")
    defaults = ImageConfig()
    assert point.parameters
    for name, parameter in point.parameters.items():
        default = getattr(defaults, name)
        if isinstance(default, str):
            assert parameter.default == default, name
        else:
            assert float(parameter.default) == default, name


def test_print_config_layers_are_the_shared_ones():
    """--preset, then --config-json, then flags (the names every pipeline has)."""
    config, show = config_from_args(["--preset", "imagenet-resnet50", "--seed", "4",
                                     "--print-config"])
    assert show and config.seed == 4 and config.dataset == "imagenet2012"
    assert config.epochs == PRESETS["imagenet-resnet50"]["epochs"]
    with pytest.raises(SystemExit):
        config_from_args(["--recipe", "cifar10-resnet50"])  # one name: --preset


def test_print_config_refuses_settings_that_cannot_run(capsys):
    """What can be known without the dataset is checked before the config is printed."""
    from pipelines.common.errors import run_cli
    from pipelines.image.__main__ import main

    assert run_cli(main, ["--head", "nope", "--label-noise", "1.0", "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("error: invalid image config: head='nope'")
    assert "label_noise must be in [0.0, 1.0) (got 1.0)" in error
