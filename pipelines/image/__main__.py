"""CLI: `python -m pipelines.image [--flags]`, one flag per ImageConfig field.

Settings come from, in order: ImageConfig's defaults (the embedded default run), then
`--preset NAME` (the authors' ResNet-50 settings, see `pipelines.image.presets`), then
`--config-json FILE`, then the flags given on the command line (`--print-config` shows
the result). A user error (a bad value, an unknown dataset or preset, a corrupt
checkpoint, a run dir in use) ends with one `error:` line and exit status 2.
"""

import argparse
import json
import sys

from pipelines.common.cli import add_config_flags, add_run_flags, given_config_flags, print_config
from pipelines.common.config import layered_values
from pipelines.common.errors import run_cli
from pipelines.image.config import ImageConfig
from pipelines.image.presets import PRESETS


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.image",
        description="Train an image classifier (optionally with an ERA head) on a TFDS "
        "dataset, track it in MLflow and export it for TF Serving.",
    )
    add_run_flags(parser, PRESETS, preset_help="start from the authors' ResNet-50 settings "
                  "(see docs/image.md)")
    add_config_flags(parser, ImageConfig)
    return parser


def config_from_args(argv=None):
    """(ImageConfig, print_config) from a command line; nothing is checked yet but types."""
    args = build_parser().parse_args(argv)
    values = layered_values(ImageConfig, PRESETS, args.preset, args.config_json,
                            given_config_flags(args, ImageConfig))
    return ImageConfig.from_dict(values), args.print_config


def main(argv=None):
    config, show = config_from_args(argv)
    if show:
        config.check()  # what can be known without the dataset, as the other pipelines do
        print_config(config)
        return 0
    from pipelines.image.training import train

    summary = train(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
