"""Command line: `python -m pipelines.grpo [--option value ...]`; a flag per GRPOConfig field.

The Keras backend is TensorFlow unless KERAS_BACKEND says otherwise (JAX also works).
"""

import argparse
import dataclasses
import json
import os
import sys

from pipelines.common.cli import add_config_flags, given_config_flags
from pipelines.common.errors import run_cli
from pipelines.common.native_logs import import_tensorflow

HELP = {
    "model": "keras-hub preset name or preset directory, a Hugging Face transformers "
             "directory (config.json, safetensors, tokenizer files: Qwen2/2.5, Qwen3, "
             "Gemma, Gemma 3, Llama 3), or tiny:qwen|qwen3|gemma|gemma3 (random init, "
             "tokenizer built offline)",
    "chat_template": "prompts given as chat messages: auto (the checkpoint's own chat "
                     "template), none, or a Jinja template file",
    "task": "built-in task (arithmetic: one exact answer; digit_sum, digit_sum_wide: many "
            "answers) or a "
            "JSONL file (GSM8K / MATH / DAPO-Math fields)",
    "eval_data": "JSONL file of held-out problems (default: a hash split of --task)",
    "reward": "reward name (math, digit_sum) or package.module:function; default: the task's",
    "warm_start_steps": "supervised warm-start steps before GRPO (built-in tasks; 0: none)",
    "era": "logit ERA on (--no-era: the vanilla GRPO baseline)",
    "omega_low": "ERA: responses with H_resp below this (and A > 0) get logits x k; choose it "
                 "from the logged H_resp distribution (authors: 0.45 for a ~150k vocabulary)",
    "omega_high": "ERA: responses with H_resp above this (and A > 0) get logits / k",
    "era_top_k": "renormalise ERA log-probs over the top-k logits (authors' scripts: 20)",
    "scale_advantages": "ERA also rescales advantages (A/k low, kA high); on in the "
                        "authors' shipped script (adv_scale=True)",
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
    from pipelines.grpo.config import RECIPES, GRPOConfig

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.grpo",
        description="GRPO (+ logit ERA) for keras-hub causal LMs, tracked in MLflow.",
    )
    parser.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                        help="start from a preset: era-paper is the ERA authors' shipped "
                             "script (nothingbutbut/era, ERA-LLM/qwen_7b_era_topk_scale.sh); "
                             "--config-json and flags given override it")
    parser.add_argument("--config-json", default=None, metavar="FILE",
                        help="a JSON object of settings; flags given on the command line win")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resulting settings as JSON and exit")
    add_config_flags(parser, GRPOConfig, HELP)
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


def main(argv=None):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import_tensorflow()  # which imports Keras, so after its backend is chosen
    args = _parser().parse_args(argv)
    from pipelines.common.config import load_config_json
    from pipelines.grpo.config import RECIPES, GRPOConfig

    values = dict(RECIPES[args.recipe]) if args.recipe else {}
    if args.config_json:
        values.update(load_config_json(args.config_json, GRPOConfig))
    values.update(given_config_flags(args, GRPOConfig))
    config = GRPOConfig(**values)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=2))
        return 0

    from pipelines.grpo.train import run

    trainer = run(config, tracking_uri=args.tracking_uri, export=args.export,
                  model_name=args.model_name, progress=not args.no_progress)
    last = trainer.history[-1]
    print("held-out:", {k: round(v, 4) for k, v in last.items() if k.startswith("eval/")})
    print(f"MLflow run id: {trainer.run_id}")
    for name, path in trainer.export_paths.items():
        print(f"export ({name}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
