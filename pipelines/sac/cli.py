"""Command line: a preset (`quick` unless `--preset paper`), a JSON config, then any
SacConfig field as `--field-name value`; `--help` shows the values of the preset given.
"""

import argparse
import os
import sys

from pipelines.common.cli import (
    add_config_flags,
    add_run_flags,
    given_config_flags,
    print_config,
)
from pipelines.common.config import layered_values, make_config
from pipelines.common.errors import ConfigError, UserError, run_cli
from pipelines.sac.config import (
    ACTIVATIONS,
    AGENTS,
    DEFAULT_PRESET,
    PRESETS,
    SQUASHES,
    SacConfig,
)


def _check_environment():
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise RuntimeError(
            "TF-Agents needs TF_USE_LEGACY_KERAS=1 before TensorFlow is imported; "
            "start the pipeline with `python -m pipelines.sac`."
        )


class _Parser(argparse.ArgumentParser):
    """A bad flag is a UserError too, so `run_cli` reports it in one line with exit 2."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def _preset_given(argv):
    """The `--preset` of a command line, read before the parser that depends on it."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", default=DEFAULT_PRESET)
    preset = early.parse_known_args(argv)[0].preset
    return preset if preset in PRESETS else DEFAULT_PRESET


def build_parser(preset=DEFAULT_PRESET):
    """The parser; its `--help` shows the values `preset` starts from."""
    parser = _Parser(
        prog="python -m pipelines.sac",
        description="SAC with Gaussian ERA (or standard SAC) on gymnasium MuJoCo / DeepMind "
        f"Control tasks, tracked in MLflow. Defaults shown: --preset {preset}.",
    )
    add_run_flags(parser, PRESETS, preset_help=(
        f"quick (default): tiny nets, {PRESETS['quick']['total_env_steps']} steps on "
        f"{PRESETS['quick']['env']} (a minute or two on a CPU); paper: the authors' settings "
        "(arXiv 2510.08549); `--preset paper --help` shows them"))
    parser.set_defaults(preset=DEFAULT_PRESET)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--run-name", default=None, help="MLflow run name")
    add_config_flags(parser, SacConfig,
                     choices={"agent": AGENTS, "squash": SQUASHES, "activation": ACTIVATIONS},
                     defaults=PRESETS[preset])
    return parser


def config_from_args(args):
    """The SacConfig a parsed command line asks for: preset, then JSON, then flags.

    Invalid settings are one ConfigError that also says whether the env exists, so a
    command line with a typo in both is fixed in one go.
    """
    values = layered_values(SacConfig, PRESETS, args.preset, args.config_json,
                            given_config_flags(args, SacConfig))
    try:
        return make_config(SacConfig, values)
    except ConfigError as error:
        unknown_env = _env_problem(values.get("env", SacConfig.env))
        if unknown_env is None:
            raise
        raise ConfigError("SAC settings", [*error.problems, unknown_env]) from None


def _env_problem(env_id):
    """Why `env_id` cannot be loaded, or None (the env is loaded once and closed)."""
    _check_environment()
    from pipelines.sac import envs

    try:
        envs.load_environment(env_id).close()
    except envs.EnvError as error:
        return str(error)
    return None


def main(argv=None):
    """Train one run; user errors raise UserError (`run_cli` prints them in one line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_preset_given(argv)).parse_args(argv)
    config = config_from_args(args)
    if args.print_config:
        print_config(config)
        return 0
    _check_environment()
    from pipelines.sac.train import train

    summary = train(config, tracking_uri=args.tracking_uri, run_name=args.run_name)
    metrics = summary["metrics"]
    print(f"eval return {metrics.get('eval/return', float('nan')):.1f} after "
          f"{summary['step']} env steps; MLflow experiment {summary['experiment']!r}; "
          f"TF Serving config {summary['models_config']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
