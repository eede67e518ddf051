"""Command line: `python -m pipelines.grpo [--option value ...]`; a flag per GRPOConfig field.

The Keras backend is TensorFlow unless KERAS_BACKEND says otherwise (JAX also works).
"""

import argparse
import os
import sys

from pipelines.common.cli import add_config_flags, add_run_flags, given_config_flags
from pipelines.common.errors import run_cli
from pipelines.common.native_logs import import_tensorflow


def _parser():
    from pipelines.grpo.config import PRESETS, GRPOConfig

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.grpo",
        description="GRPO (+ logit ERA) for keras-hub causal LMs, tracked in MLflow.",
    )
    add_run_flags(parser, PRESETS,
                  preset_help="start from a preset: era-paper is the ERA authors' shipped "
                              "script (nothingbutbut/era, ERA-LLM/qwen_7b_era_topk_scale.sh)")
    add_config_flags(parser, GRPOConfig)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                             "sqlite:///mlflow.db)")
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                        help="export a keras-hub preset, a scoring and a generate SavedModel "
                             "and a Hugging Face directory at the end")
    parser.add_argument("--model-name", default="grpo_policy",
                        help="model name in the TF Serving layout")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def print_methods(config):
    """The registered methods with their settings in `config`, on stderr (stdout stays the
    JSON that `--config-json` takes back)."""
    from pipelines.grpo import registry

    chosen = {"policy_loss": config.policy_loss, "advantage_estimator": config.scale_rewards}
    for kind, methods in registry.describe(config).items():
        print(f"registered {kind}s:", file=sys.stderr)
        for name, params in methods.items():
            mark = "*" if chosen.get(kind) == name else " "
            settings = ", ".join(f"{k}={v!r}" for k, v in params.items())
            print(f"  {mark} {name}({settings})", file=sys.stderr)


def main(argv=None):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import_tensorflow()  # which imports Keras, so after its backend is chosen
    args = _parser().parse_args(argv)
    from pipelines.common.cli import print_config
    from pipelines.common.config import layered_values, make_config
    from pipelines.grpo.config import PRESETS, GRPOConfig

    config = make_config(GRPOConfig, layered_values(
        GRPOConfig, PRESETS, args.preset, args.config_json, given_config_flags(args, GRPOConfig)))
    if args.print_config:
        print_config(config)
        print_methods(config)
        return 0

    from pipelines.grpo.train import run

    summary = run(config, tracking_uri=args.tracking_uri, export=args.export,
                  model_name=args.model_name, progress=not args.no_progress)
    if summary["run_id"] is not None:  # process 0 (the one that tracks) reports the run
        print("held-out:", {k: round(v, 4) for k, v in summary["metrics"].items()
                            if k.startswith("eval/")})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
