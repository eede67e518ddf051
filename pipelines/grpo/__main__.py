"""Command line: `python -m pipelines.grpo [--option value ...]`; every GRPOConfig field is an option.

The Keras backend is TensorFlow unless KERAS_BACKEND says otherwise (JAX also works).
"""

import argparse
import os
import sys

from pipelines.common.cli import add_config_flags

HELP = {
    "model": "keras-hub preset name or preset directory, or tiny:qwen|qwen3|gemma|gemma3 "
             "(random init, tokenizer built offline)",
    "task": "built-in task (arithmetic: one exact answer; digit_sum: many answers) or a "
            "JSONL file (GSM8K / MATH / DAPO-Math fields)",
    "eval_data": "JSONL file of held-out problems (default: a hash split of --task)",
    "reward": "reward name (math, digit_sum) or package.module:function; default: the task's",
    "warm_start_steps": "supervised warm-start steps before GRPO (built-in tasks; 0: none)",
    "era": "logit ERA on (--no-era: the vanilla GRPO baseline)",
    "omega_low": "ERA: responses with H_resp below this (and A > 0) get logits x k; choose it "
                 "from the logged H_resp distribution (authors: 0.45 for a ~150k vocabulary)",
    "omega_high": "ERA: responses with H_resp above this (and A > 0) get logits / k",
    "era_top_k": "renormalise ERA log-probs over the top-k logits (authors' scripts: 20)",
    "scale_advantages": "ERA also rescales advantages (A/k low, kA high); the authors' "
                        "scripts ship with it off",
    "kl_coef": "weight of the KL penalty to the initial (post warm start) model",
    "updates_per_rollout": "optimizer steps per batch of rollouts (PPO epochs)",
    "distribution": "none | data | model:BxM (KERAS_BACKEND=jax): data parallel over every "
                    "device, or weights sharded by the backbone's layout map on a "
                    "(batch B, model M) mesh with B x M = the device count",
    "lora_rank": "train rank-R LoRA pairs on the attention's query/value projections only "
                 "(0: full fine-tuning); the export merges them into a full preset",
    "dtype": "float32 | bfloat16 (weights and compute) | mixed_bfloat16 (float32 weights); "
             "the loss's log-softmax and entropies run in float32",
    "grad_accum_steps": "split each update's batch into N micro-batches and average their "
                        "gradients (N must divide prompts_per_step x group_size)",
    "lr_schedule": "constant | cosine (to 0 at the last update), after --warmup-steps",
    "warmup_steps": "optimizer updates of linear learning-rate warm-up",
    "run_dir": "checkpoints, history and exports; rerun with the same --run-dir to resume",
}


def _parser():
    from pipelines.grpo.config import GRPOConfig

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.grpo",
        description="GRPO (+ logit ERA) for keras-hub causal LMs, tracked in MLflow.",
    )
    add_config_flags(parser, GRPOConfig, HELP)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                             "sqlite:///mlflow.db)")
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                        help="export a keras-hub preset, a scoring and a generate SavedModel at the end")
    parser.add_argument("--model-name", default="grpo_policy",
                        help="model name in the TF Serving layout")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = vars(_parser().parse_args(argv))
    from pipelines.grpo.config import GRPOConfig
    from pipelines.grpo.train import run

    options = {k: args.pop(k) for k in ("tracking_uri", "export", "model_name", "no_progress")}
    try:
        config = GRPOConfig(**args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    trainer = run(config, tracking_uri=options["tracking_uri"], export=options["export"],
                  model_name=options["model_name"], progress=not options["no_progress"])
    last = trainer.history[-1]
    print({k: round(v, 4) for k, v in last.items() if k.startswith("eval_")})


if __name__ == "__main__":
    main()
