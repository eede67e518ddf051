"""ERA's share of a GRPO update at Qwen2.5's real vocabulary (151,936 tokens).

    nice .venv/bin/python benchmarks/grpo_era_vocab.py [--layers 2] [--rounds 5]

One whole policy update of the pipeline (`pipelines.grpo.update.PolicyUpdate`: forward,
the GRPO loss, backward, Adam), on a random-init keras-hub Qwen2 (`QwenBackbone`) with
Qwen2.5-0.5B's vocabulary (151,936, tied embeddings), hidden size (896), heads (14 query,
2 key-value) and MLP width (4,864), but `--layers` transformer layers instead of 24 (on
one CPU core the 24 layers take over half a minute a step; the embedding/LM head, where
all of ERA's work is, is complete). Variants, interleaved round by round on one model:

- "GRPO": the pipeline's vanilla arm (`--no-era`: the same loss with k = 1, the token
  entropy computed for logging H_resp), no top-k;
- "GRPO+ERA": logit ERA, k = 2, the authors' band (0.45, 3.0), no top-k;
- "GRPO+ERA top-k 20": the same with the authors' top-k renormalisation (top_k = 20).

A random-init model's tokens are near uniform (H_resp ~ log 151,936 = 11.9 nats), so ERA
fires on every response with a positive advantage (half of them here), as it would on a
real model above omega_high.

ERA's share of a Qwen2.5-Math-7B step is extrapolated from a FLOP model: the 7B model's
forward + backward costs 6 * N * tokens FLOPs (N = 7.07e9 weights in matmuls: 7.62e9 less
the 0.545e9 of the input embedding, a lookup), at this core's float32 matmul rate measured
here on a 7B-shaped product ((tokens, 3584) x (3584, 3584), compiled); ERA's extra time
per token is what the update measured here (it sees only the logits, so it does not grow
with the hidden size; 7B's head is 152,064 wide, 0.08% more). The 6N time leaves out
attention scores, norms and the optimizer, so it underestimates a step and overestimates
ERA's share; the same model's prediction for the small model is printed next to its
measured step for comparison.

Each backend (TensorFlow, JAX) runs in its own process, pinned to one core (--cpu 1).
Writes benchmarks/results/grpo_era_vocab.md.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

import common

VOCABULARY = 151_936  # Qwen2.5's (0.5B); Qwen2.5-Math-7B's LM head is 152,064 wide
HIDDEN, INTERMEDIATE, QUERY_HEADS, KV_HEADS = 896, 4864, 14, 2  # Qwen2.5-0.5B
MATMUL_WEIGHTS_7B = 7.62e9 - 152_064 * 3584  # Qwen2.5-Math-7B less its input embedding
HIDDEN_7B = 3584
VARIANTS = {  # name: (era, era_top_k)
    "GRPO": (False, None),
    "GRPO+ERA": (True, None),
    "GRPO+ERA top-k 20": (True, 20),
}


def matmul_rate(tokens, repeats=5):
    """Float32 FLOP/s of a compiled (tokens, 3584) x (3584, 3584) product on this core."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((tokens, HIDDEN_7B)), "float32")
    b = keras.ops.convert_to_tensor(rng.standard_normal((HIDDEN_7B, HIDDEN_7B)), "float32")
    if keras.backend.backend() == "jax":
        import jax

        product = jax.jit(keras.ops.matmul)
    else:
        import tensorflow as tf

        product = tf.function(keras.ops.matmul, jit_compile=True)
    keras.ops.convert_to_numpy(product(a, b))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(product(a, b))
        times.append(time.perf_counter() - start)
    return 2.0 * tokens * HIDDEN_7B * HIDDEN_7B / float(np.median(times))


def build_model(layers):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.QwenBackbone(
        vocabulary_size=VOCABULARY, num_layers=layers, num_query_heads=QUERY_HEADS,
        num_key_value_heads=KV_HEADS, hidden_dim=HIDDEN, intermediate_dim=INTERMEDIATE,
        tie_word_embeddings=True, dtype="float32")
    return keras_hub.models.QwenCausalLM(backbone=backbone, preprocessor=None)


def random_rollout(batch, prompt_tokens, response_tokens):
    """Random tokens: `prompt_tokens` of prompt, then `response_tokens` of response per row."""
    import numpy as np

    from pipelines.grpo.rollout import Rollout

    rng = np.random.default_rng(0)
    width = prompt_tokens + response_tokens
    token_ids = rng.integers(1, VOCABULARY, (batch, width)).astype("int32")
    response_mask = np.zeros((batch, width), bool)
    response_mask[:, prompt_tokens:] = True
    return Rollout(["prompt"] * batch, token_ids, np.ones((batch, width), bool),
                   response_mask, ["response"] * batch)


def run_backend(args):
    """Child process: one backend; prints its JSON results."""
    import keras
    import numpy as np

    from pipelines.grpo.config import PRESETS, GRPOConfig
    from pipelines.grpo.optim import build_optimizer
    from pipelines.grpo.update import PolicyUpdate, make_era

    backend = keras.backend.backend()
    tokens = args.batch * (args.prompt_tokens + args.response_tokens)
    rate = matmul_rate(tokens)
    model = build_model(args.layers)
    rollout = random_rollout(args.batch, args.prompt_tokens, args.response_tokens)
    # Half the responses gain, half lose: ERA scales the gaining ones.
    advantages = np.where(np.arange(args.batch) % 2 == 0, 1.0, -1.0).astype("float32")
    # The authors' settings (era-paper preset), with a learning rate too small to move
    # the weights: every variant's rounds see the same model.
    settings = {**PRESETS["era-paper"], "learning_rate": 1e-12,
                "max_prompt_tokens": args.prompt_tokens,
                "max_new_tokens": args.response_tokens}
    optimizer = None
    updates = {}
    for name, (era, top_k) in VARIANTS.items():
        config = GRPOConfig(**{**settings, "era": era, "era_top_k": top_k})
        if optimizer is None:  # one optimizer, shared (built as the trainer builds it)
            optimizer = build_optimizer(config)
            optimizer.build(model.trainable_variables)
        updates[name] = PolicyUpdate(config, model, optimizer, make_era(config))
    for update in updates.values():
        for _ in range(2):  # compile and warm up
            update(rollout, advantages)

    clock = common.clock(args.clock)

    def timed(update):
        start = clock()
        update(rollout, advantages)  # returns numpy values: the step has finished
        return clock() - start

    times = common.interleave({name: lambda u=u: timed(u) for name, u in updates.items()},
                              args.rounds, order="alternate", progress=False)
    weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    embedding = VOCABULARY * HIDDEN  # tied: one lookup (no FLOPs) and the LM head matmul
    print("RESULT " + json.dumps({
        "backend": f"{backend} {importlib.import_module(backend).__version__}, "
                   f"keras {keras.__version__}",
        "tokens": tokens, "loss_tokens": args.batch * (tokens // args.batch - 1),
        "matmul_rate": rate, "weights": weights,
        "embedding": embedding, "times": {k: list(map(float, v)) for k, v in times.items()},
    }))


def format_backend(res, layers):
    import numpy as np

    times = {name: np.array(t) for name, t in res["times"].items()}
    base = times["GRPO"]
    tokens, rate = res["tokens"], res["matmul_rate"]
    small_predicted = 6.0 * res["weights"] * tokens / rate
    step_7b = 6.0 * MATMUL_WEIGHTS_7B * tokens / rate
    lines = [
        f"## Backend: {res['backend']}", "",
        f"Model: {layers} layers, {res['weights'] / 1e6:.0f}M weights "
        f"({res['embedding'] / 1e6:.0f}M of them the tied embedding / LM head); "
        f"{tokens} tokens per update ({res['loss_tokens']} scored by the loss). "
        f"Matmul rate on this core: {rate / 1e9:.1f} GFLOP/s (float32).", "",
        "| variant | median s | ratio | ratio 25-75% | extra s (median of rounds) | "
        "extra 25-75% | ERA share of a 7B step |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in times.items():
        ratio_q = common.quartiles(t / base)
        extra = t - base
        extra_q = common.quartiles(extra)
        share = extra_q[1] / (step_7b + extra_q[1]) if name != "GRPO" else 0.0
        lines.append(
            f"| {name} | {np.median(t):.3f} | {np.median(t) / np.median(base):.3f} "
            f"| {ratio_q[0]:.3f}-{ratio_q[2]:.3f} | {extra_q[1]:+.3f} "
            f"| {extra_q[0]:+.3f} to {extra_q[2]:+.3f} | "
            + ("-" if name == "GRPO" else f"{100 * share:.2f}%") + " |")
    lines += [
        "",
        f"FLOP model: 6 x N x {tokens} tokens at {rate / 1e9:.1f} GFLOP/s. This model "
        f"(N = {res['weights'] / 1e6:.0f}M): {small_predicted:.2f} s predicted, "
        f"{np.median(base):.2f} s measured (GRPO). Qwen2.5-Math-7B "
        f"(N = {MATMUL_WEIGHTS_7B / 1e9:.2f}e9): {step_7b:.1f} s for the same tokens, "
        "the denominator of the share (ERA's extra / (7B step + extra)).",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = common.parser(__doc__, cpu=1)
    parser.add_argument("--layers", type=int, default=2,
                        help="transformer layers (Qwen2.5-0.5B has 24)")
    parser.add_argument("--batch", type=int, default=2, help="responses per update")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--response-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="tensorflow,jax")
    common.add_clock_argument(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_backend(args)
        return
    common.pin(args.cpu)  # the backend subprocesses inherit the pinning
    sections = ["No GPU. Variants ran interleaved round by round (the order reversed every "
                "other round); ratios are to GRPO's median, extras are per-round differences "
                "from GRPO in the same round."]
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                   ERA_KERAS_COMPILATION_CACHE="off")
        out = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]],
                             env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
        sections.append(format_backend(json.loads(out.split("RESULT ", 1)[1]), args.layers))
    common.write_results(args.name, "ERA's share of a GRPO update at V = 151,936", sections)


if __name__ == "__main__":
    main()
