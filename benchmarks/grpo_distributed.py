"""GRPO on 4 simulated CPU devices: step time and tokens/s per --distribution, LoRA vs full.

    nice .venv/bin/python benchmarks/grpo_distributed.py

One JAX process with `XLA_FLAGS=--xla_force_host_platform_device_count=4`, pinned to one
core (as every timing benchmark here). Variants, each its own trainer on the same tiny Qwen
(seed 0, the same prompts and sampling seeds), run one GRPO step (rollouts + update) per
round, interleaved round after round; the first round (XLA compilation) is dropped:

- `none`, `data`, `model:2x2`, `model:1x4` (full fine-tuning, float32);
- `none + LoRA r=8` beside `none`: step time and the trainable share.

Then the training state each device holds (weights + Adam's moments, summed over the
shards on that device) for a larger model under each layout, from the arrays' own
shardings after one step. What the numbers do and do not predict is written under them.
"""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ["KERAS_BACKEND"] = "jax"

import common  # noqa: E402

common.setup(backend="jax")

import resource  # noqa: E402

import numpy as np  # noqa: E402

SETTINGS = dict(model="tiny:qwen", task="arithmetic", tiny_layers=2, tiny_hidden_dim=128,
                warm_start_steps=0, prompts_per_step=4, group_size=8, max_prompt_tokens=16,
                max_new_tokens=16, learning_rate=3e-5, num_eval_prompts=4, eval_samples=2,
                seed=0)
FORMS = ["none", "data", "model:2x2", "model:1x4"]


def make_trainer(form, **overrides):
    import keras

    from pipelines.grpo.config import GRPOConfig
    from pipelines.grpo.distribution import (
        build_distribution,
        distribution_scope,
        parse_distribution,
    )
    from pipelines.grpo.models import backbone_class
    from pipelines.grpo.train import GRPOTrainer, build_causal_lm, load_problems

    config = GRPOConfig(**{**SETTINGS, "distribution": form, **overrides})
    spec = parse_distribution(form)
    distribution = build_distribution(
        spec, backbone_class(config.model) if spec.kind == "model" else None)
    with distribution_scope(distribution):
        keras.utils.set_random_seed(config.seed)
        causal_lm = build_causal_lm(config)
        train, test = load_problems(config)
        trainer = GRPOTrainer(config, causal_lm, train, test, distribution)
        trainer.prepare_sampling()
    return trainer, distribution


def step_runner(trainer, distribution):
    from pipelines.grpo.distribution import distribution_scope

    def run():
        with distribution_scope(distribution):
            metrics = trainer.train_one_step()
        tokens = metrics["tokens_per_s"] * metrics["step_seconds"]
        return (metrics["step_seconds"], metrics["rollout_seconds"],
                metrics["update_seconds"], tokens)

    return run


def state_bytes_per_device(trainer):
    """Bytes of weights and optimizer variables on each device, from the shards."""
    per_device = {}
    for variable in trainer.causal_lm.weights + trainer.optimizer.variables:
        for shard in variable.value.addressable_shards:
            per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
    return per_device


def main():
    parser = common.parser(__doc__, cpu=1)
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds (after 1 warm-up)")
    parser.add_argument("--memory-hidden-dim", type=int, default=512)
    parser.add_argument("--memory-layers", type=int, default=4)
    args = parser.parse_args()
    common.pin(args.cpu)
    import jax

    from pipelines.grpo.distribution import count_parameters

    variants, trainers = {}, {}
    for form in FORMS:
        trainers[form] = make_trainer(form)
        variants[form] = step_runner(*trainers[form])
    trainers["none + LoRA r=8"] = make_trainer("none", lora_rank=8)
    variants["none + LoRA r=8"] = step_runner(*trainers["none + LoRA r=8"])
    results = common.interleave(variants, rounds=args.rounds + 1, order="alternate")

    rows = []
    base = None
    for name, values in results.items():
        timed = values[1:]  # round 1 compiles
        step = [v[0] for v in timed]
        tokens = [v[3] / v[0] for v in timed]
        q1, median, q3 = common.quartiles(step)
        base = base or median
        rows.append([name, f"{median:.2f} ({q1:.2f}-{q3:.2f})",
                     f"{np.median([v[1] for v in timed]):.2f}",
                     f"{np.median([v[2] for v in timed]):.2f}",
                     f"{np.median(tokens):.0f}", f"{median / base:.2f}"])
    trainer = trainers["none"][0]
    total, trainable = count_parameters(trainer.causal_lm)
    lora_total, lora_trainable = count_parameters(trainers["none + LoRA r=8"][0].causal_lm)
    c = trainer.config
    sections = [
        f"Devices: {len(jax.devices())} simulated CPU devices "
        f"({jax.devices()[0].platform}); tiny Qwen, {c.tiny_layers} layers, hidden "
        f"{c.tiny_hidden_dim}, {total:,} parameters; batch {c.prompts_per_step} prompts x "
        f"{c.group_size} samples, {c.max_prompt_tokens} prompt + {c.max_new_tokens} new "
        f"tokens; float32; {args.rounds} timed rounds after 1 warm-up round (compilation), "
        "interleaved (order alternating); seed 0.",
        "## Step time per layout\n\n" + common.table(
            ["variant", "step s, median (IQR)", "rollout s", "update s",
             "response tokens/s", "step vs none"], rows),
        "## LoRA vs full fine-tuning\n\n" + common.table(
            ["", "parameters", "trainable", "trainable share"],
            [["full", f"{total:,}", f"{trainable:,}", f"{trainable / total:.1%}"],
             ["LoRA r=8 (query, value)", f"{lora_total:,}", f"{lora_trainable:,}",
              f"{lora_trainable / lora_total:.2%}"]]),
    ]

    # Training state per device for a larger model, under each layout.
    memory_rows = []
    for form in FORMS:
        trainer, distribution = make_trainer(
            form, tiny_hidden_dim=args.memory_hidden_dim, tiny_layers=args.memory_layers,
            prompts_per_step=2, group_size=4)
        step_runner(trainer, distribution)()
        per_device = state_bytes_per_device(trainer)
        total_params, _ = count_parameters(trainer.causal_lm)
        memory_rows.append([form, f"{total_params:,}",
                            f"{max(per_device.values()) / 2**20:.1f}",
                            f"{min(per_device.values()) / 2**20:.1f}",
                            f"{sum(per_device.values()) / 2**20:.1f}"])
        print(form, per_device, flush=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    sections.append(
        f"## Training state per device (hidden {args.memory_hidden_dim}, "
        f"{args.memory_layers} layers)\n\n"
        "Weights and Adam's two moments, float32, summed over the shards each device holds "
        "after one step (`variable.value.addressable_shards`). Activations and XLA's "
        "temporary buffers are not in it; on simulated CPU devices they share the host's "
        f"memory, whose peak for this whole process was {peak_rss:,.0f} MiB (ru_maxrss).\n\n"
        + common.table(["layout", "parameters", "MiB on the fullest device",
                        "MiB on the emptiest", "MiB summed over devices"], memory_rows))
    common.write_results(args.name, "GRPO on 4 simulated devices", sections)


if __name__ == "__main__":
    sys.exit(main())
