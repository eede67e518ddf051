"""CLI: `python -m pipelines.image [--flags]`, one flag per ImageConfig field.

Settings come from, in order: ImageConfig's defaults (the embedded default run), then
`--recipe NAME` (the authors' ResNet-50 settings, see `pipelines.image.recipes`), then
`--config-json FILE`, then the flags given on the command line. A user error (a bad
value, an unknown dataset or recipe, a corrupt checkpoint) ends with one `error:` line
and exit status 2.
"""

import argparse
import json
import sys

from pipelines.common.cli import add_config_flags, given_config_flags
from pipelines.common.config import load_config_json
from pipelines.common.errors import run_cli
from pipelines.image.config import MIXED_PRECISION, OPTIMIZERS, STRATEGIES, ImageConfig
from pipelines.image.heads import HEADS
from pipelines.image.recipes import RECIPES, recipe

HELP = {
    "dataset": "TFDS name (cifar10, cifar100, imagenet2012, mnist, ...) or an offline one: "
    "mnist5k, sklearn_digits",
    "data_dir": "TFDS data_dir; the offline datasets are prepared here on first use",
    "train_split": "TFDS split spec for training",
    "validation_split": "split for per-epoch metrics and temperature fitting",
    "image_size": "resize images to this square size (needed for imagenet2012, e.g. 224)",
    "crop_padding": "random crop after zero-padding this many pixels (0: off; 4 for CIFAR)",
    "flip": "random horizontal flips (use for CIFAR/ImageNet, not digits)",
    "randaugment": "add a RandAugment policy (2 ops, magnitude 0.5)",
    "backbone": "resnet20 (or any resnet<6n+2>), resnet18 (CIFAR-style), "
    "resnet50 (keras.applications)",
    "width": "first-stage filters of the CIFAR-style ResNets (standard: 16 for resnet20, "
    "64 for resnet18)",
    "head": f"one of {', '.join(HEADS)}",
    "label_smoothing": "strength for the *label_smoothing heads",
    "dropout": "dropout rate before the last layer, for the dropout head",
    "target_entropy": "ERA entropy floor in nats (see era_keras.entropy_floor)",
    "era_floor": "tight: the minimum entropy equals the target; "
    "paper: the authors' C = exp(H0 - 1)",
    "era_inverse": "exact W_-1 or the authors' approximation",
    "era_at_inference": "serve the ERA floor's probabilities "
    "(else plain softmax; argmax is the same)",
    "batch_size": "global batch size, across replicas",
    "steps_per_epoch": "default: one pass over the training split",
    "optimizer": f"one of {', '.join(OPTIMIZERS)}",
    "learning_rate": "peak learning rate after warm-up; cosine decay to 0",
    "mixed_precision": f"one of {', '.join(MIXED_PRECISION)}",
    "strategy": f"tf.distribute strategy: one of {', '.join(STRATEGIES)}",
    "run_dir": "checkpoints, config and outputs; rerun with the same --run-dir to resume",
    "tracking_uri": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    "calibrate": "serve probabilities scaled by the temperature fitted on the validation "
    "split (it is always fitted and logged; off: the export serves what was trained)",
    "export_base": "TF Serving base directory (default: <run_dir>/serving)",
    "log_model": "log the Keras model with its signature to MLflow",
    "verbose": "Keras progress: auto, 0, 1 (bar), 2 (a line per epoch)",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.image",
        description="Train an image classifier (optionally with an ERA head) on a TFDS "
        "dataset, track it in MLflow and export it for TF Serving.",
    )
    parser.add_argument(
        "--recipe",
        help=f"start from a named recipe: {', '.join(sorted(RECIPES))} (the authors' "
        "ResNet-50 commands; see docs/image.md)",
    )
    parser.add_argument("--config-json", help="JSON file of ImageConfig fields")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    add_config_flags(parser, ImageConfig, HELP)
    return parser


def config_from_args(argv=None):
    """(ImageConfig, print_config) from a command line; nothing is checked yet but types."""
    args = build_parser().parse_args(argv)
    values = recipe(args.recipe) if args.recipe else {}
    if args.config_json:
        values.update(load_config_json(args.config_json, ImageConfig))
    values.update(given_config_flags(args, ImageConfig))
    return ImageConfig.from_dict(values), args.print_config


def main(argv=None):
    config, print_config = config_from_args(argv)
    if print_config:
        print(config.to_json())
        return 0
    from pipelines.image.training import train

    summary = train(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
