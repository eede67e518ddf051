"""Command line: a preset, then any SacConfig field as `--field-name value`."""

import argparse
import json
import os

from pipelines.common.cli import add_config_flags, given_config_flags

from pipelines.sac.config import AGENTS, PRESETS, SQUASHES, SacConfig, from_preset


def _check_environment():
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise SystemExit(
            "TF-Agents needs TF_USE_LEGACY_KERAS=1 before TensorFlow is imported; "
            "start the pipeline with `python -m pipelines.sac`."
        )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.sac",
        description="SAC with Gaussian ERA (or standard SAC) on gymnasium MuJoCo / DeepMind "
        "Control tasks, tracked in MLflow. Every option defaults to the preset's value.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="quick: tiny nets, 3k steps on Pendulum-v1 (a minute or two on a "
                        "CPU); paper: the authors' settings (arXiv 2510.08549). Default: quick")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--run-name", default=None, help="MLflow run name")
    add_config_flags(parser, SacConfig, choices={"agent": AGENTS, "squash": SQUASHES},
                     default_label="paper default")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    overrides = given_config_flags(args, SacConfig)
    try:
        config = from_preset(args.preset, **overrides)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    _check_environment()
    from pipelines.sac.train import train

    try:
        result = train(config, tracking_uri=args.tracking_uri, run_name=args.run_name)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    print(json.dumps(result, indent=2, default=str))
    return 0
