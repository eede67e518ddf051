"""Command line: a preset, then any SacConfig field as `--field-name value`."""

import argparse
import os
import sys

from pipelines.common.cli import add_config_flags, given_config_flags
from pipelines.common.errors import run_cli
from pipelines.sac.config import (
    ACTIVATIONS,
    AGENTS,
    PRESETS,
    SQUASHES,
    SacConfig,
    from_preset,
)


def _check_environment():
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise RuntimeError(
            "TF-Agents needs TF_USE_LEGACY_KERAS=1 before TensorFlow is imported; "
            "start the pipeline with `python -m pipelines.sac`."
        )


HELP = {
    "squash": "ERA: 'truncated' normal on (-1, 1) around tanh(mu) (the authors'), or 'tanh'",
    "target_entropy_per_dim": "ERA's floor H0 / D on the Gaussian before squashing, nats",
    "executed_target_entropy_per_dim": "what delta steers the executed action's entropy to, "
    "nats per dim (none: H0 / D); at most log 2 = 0.693 on (-1, 1)",
    "mean_bound": "tanh only: mu = m tanh(mu_raw / m), so the executed entropy keeps a floor "
    "(0: unbounded)",
    "delta": "ERA's initial (or constant) entropy compensation, nats",
    "auto_delta": "tune delta on the executed entropy",
    "delta_lr": "Adam's learning rate on log(delta)",
    "sac_target_entropy_per_dim": "standard SAC: alpha's target entropy per dim",
    "initial_log_alpha": "standard SAC: log(alpha_0)",
    "env": "gymnasium id, DMC '<domain>-<task>', or '<module>:<id>'",
    "run_dir": "claimed once the settings are valid; running again resumes it",
    "num_envs": "environments stepped together; updates_per_step updates per env step",
    "activation": "hidden layers of actor and critic ('relu': as Stable-Baselines3)",
    "critic_layer_norm": "LayerNorm after each critic hidden layer (the authors')",
}


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
    add_config_flags(parser, SacConfig, help_texts=HELP,
                     choices={"agent": AGENTS, "squash": SQUASHES,
                              "activation": ACTIVATIONS},
                     default_label="paper default")
    return parser


def main(argv=None):
    """Train one run; user errors raise UserError (`run_cli` prints them in one line)."""
    args = build_parser().parse_args(argv)
    config = from_preset(args.preset, **given_config_flags(args, SacConfig))
    _check_environment()
    from pipelines.sac.train import train

    result = train(config, tracking_uri=args.tracking_uri, run_name=args.run_name)
    import mlflow

    # Under `mlflow run` the run is in the experiment mlflow run chose (Default unless
    # --experiment-name), not necessarily in "sac".
    experiment = mlflow.get_experiment(mlflow.get_run(result["run_id"]).info.experiment_id)
    print(f"MLflow run {result['run_id']} (experiment {experiment.name}); eval return "
          f"{result.get('eval/return', float('nan')):.1f} after {result['env_steps']} env steps")
    print(f"policy exported to {result['export_dir']} (TF Serving: {result['models_config']})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
