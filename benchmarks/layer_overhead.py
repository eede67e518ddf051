"""Forward+backward cost of each ERA layer against the plain head it replaces.

Usage (one backend per process; the script runs both and writes one table):

    python benchmarks/layer_overhead.py [--repeats 30] [--resnet-batch 16]

For every head: a compiled (XLA on TensorFlow, jax.jit on JAX) function returning the
loss and its gradient with respect to the head's inputs. Variants of one case run
interleaved, round after round, so machine noise hits them alike; the table gives the
median time and the ratio of medians with the 25-75% range of per-round ratios.
Then a ResNet-50 training step (keras.applications, weights=None, 1000 classes) with the
plain softmax head and with SoftmaxERA, interleaved, to give ERA's share of a real step.
Pinned to one core (--cpu 1) with the backend subprocesses. Writes
benchmarks/results/layer_overhead.md.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

import common


def logged(loss_fn):
    """Mark a loss function that returns (loss, logged values): the values are returned
    with the loss and gradient, so the compiler cannot drop the work that made them."""
    loss_fn.logs = True
    return loss_fn


def forward_only(fn):
    """Mark a function timed without a gradient (its outputs are returned)."""
    fn.forward_only = True
    return fn


def compile_value_and_grad(loss_fn):
    """The compiled loss (and logged values) and gradient w.r.t. the first argument."""
    import keras

    has_logs = getattr(loss_fn, "logs", False)
    if keras.backend.backend() == "jax":
        import jax

        if getattr(loss_fn, "forward_only", False):
            return jax.jit(loss_fn)
        return jax.jit(jax.value_and_grad(loss_fn, argnums=0, has_aux=has_logs))
    import tensorflow as tf

    if getattr(loss_fn, "forward_only", False):
        return tf.function(loss_fn, jit_compile=True)

    @tf.function(jit_compile=True)
    def step(*args):
        with tf.GradientTape() as tape:
            tape.watch(args[0])
            value = loss_fn(*args)
        loss = value[0] if has_logs else value
        return value, tape.gradient(loss, args[0])

    return step


def block(result):
    import keras

    for leaf in keras.tree.flatten(result):
        keras.ops.convert_to_numpy(leaf)


def head_cases():
    """(case, batch description, {variant: (loss_fn, args)}), at domain-typical sizes."""
    import numpy as np
    from keras import ops

    import era_keras

    rng = np.random.default_rng(0)
    cases = []

    for batch, classes in [(256, 10), (256, 1000)]:
        logits = ops.convert_to_tensor(rng.standard_normal((batch, classes)), "float32")
        labels = ops.convert_to_tensor(rng.integers(0, classes, batch), "int32")

        def ce(z, y):
            return ops.mean(ops.sparse_categorical_crossentropy(y, z, from_logits=True))

        variants = {"softmax CE": (ce, (logits, labels))}
        for inverse in ("exact", "approx"):
            def era_ce(z, y, inverse=inverse):
                return ce(era_keras.softmax_era(z, 0.6, inverse=inverse), y)
            variants[f"SoftmaxERA ({inverse})"] = (era_ce, (logits, labels))
        cases.append((f"classification D={classes}", f"batch {batch}", variants))

    for batch, dim in [(256, 6), (256, 61)]:
        mu = ops.convert_to_tensor(rng.standard_normal((batch, dim)), "float32")
        raw = ops.convert_to_tensor(rng.standard_normal((batch, dim)), "float32")
        noise = ops.convert_to_tensor(rng.standard_normal((batch, dim)), "float32")

        def sample_loss(mu, std, noise):
            # reparameterised tanh sample and a stand-in critic: what SAC's actor differentiates
            return ops.mean(ops.square(ops.tanh(mu + std * noise)))

        def clipped(raw, mu, noise):
            return sample_loss(mu, ops.exp(ops.clip(raw, -8.0, 0.0)), noise)

        def era(raw, mu, noise, dim=dim):  # bind this case's dim, not the loop's last
            _, std = era_keras.gaussian_era(mu, raw, 0.25 * dim)
            return sample_loss(mu, std, noise)

        cases.append((
            f"Gaussian policy D={dim}", f"batch {batch}",
            {"clipped log-std": (clipped, (raw, mu, noise)),
             "GaussianERA": (era, (raw, mu, noise))},
        ))

    for batch, length, vocab in [(8, 128, 8192), (2, 128, 151936)]:
        cases.append(token_loss_case(rng, batch, length, vocab))
    return cases


def token_loss_case(rng, batch, length, vocab):
    """GRPO's token loss: log pi(a_t) times the advantage, with the entropy logged.

    The plain variant is what a GRPO library without ERA computes (TRL and verl log the
    token entropy); at V=151,936 (Qwen2.5's vocabulary) the top-k renormalisation the
    authors' script uses (top_k=20) is timed with ERA and on its own.
    """
    from keras import ops

    import era_keras

    logits = ops.convert_to_tensor(rng.standard_normal((batch, length, vocab)), "float32")
    tokens = ops.convert_to_tensor(rng.integers(0, vocab, (batch, length)), "int32")
    advantages = ops.convert_to_tensor(rng.standard_normal(batch), "float32")
    mask = ops.ones((batch, length))

    def pg_loss(log_probs, adv):
        return -ops.sum(log_probs * adv) / ops.sum(mask)

    @logged
    def plain(z, t, a):
        entropy = era_keras.token_entropy(ops.stop_gradient(z))
        return pg_loss(era_keras.token_log_probs(z, t), a[:, None]), ops.mean(entropy)

    def era_variant(layer):
        @logged
        def era(z, t, a):
            out = layer((z, t, a, mask))
            return pg_loss(out["log_probs"], out["advantages"]), out["response_entropy"]
        return era

    variants = {"log-softmax PG + entropy": (plain, (logits, tokens, advantages))}
    if vocab > 100_000:
        variants["LogitERA top-k 20"] = (
            era_variant(era_keras.LogitERA(k=2.0, top_fraction=0.2, top_k=20)),
            (logits, tokens, advantages))
    variants["LogitERA"] = (era_variant(era_keras.LogitERA(k=2.0, top_fraction=0.2)),
                            (logits, tokens, advantages))
    if vocab > 100_000:
        from era_keras.topk import kth_largest

        variants["top-k 20 alone (forward)"] = (
            forward_only(lambda z: kth_largest(z, 20)), (logits,))
    return f"GRPO token loss V={vocab}", f"{batch}x{length} tokens", variants


def time_interleaved(variants, repeats, clock=time.perf_counter):
    import numpy as np

    compiled = {name: compile_value_and_grad(fn) for name, (fn, _) in variants.items()}
    for name, (_, args) in variants.items():
        for _ in range(3):  # compile and warm up
            block(compiled[name](*args))

    def timed(name):
        args = variants[name][1]
        start = clock()
        block(compiled[name](*args))
        return clock() - start

    times = common.interleave({name: lambda name=name: timed(name) for name in variants},
                              repeats, progress=False)
    return {name: np.array(t) for name, t in times.items()}


def resnet_step_times(batch, repeats, image_size=160):
    import keras
    import numpy as np

    import era_keras

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, image_size, image_size, 3)).astype("float32")
    y = rng.integers(0, 1000, batch)
    models = {}
    for name in ("softmax head", "SoftmaxERA head"):
        keras.utils.set_random_seed(0)
        base = keras.applications.ResNet50(
            weights=None, include_top=False, pooling="avg", input_shape=x.shape[1:]
        )
        logits = keras.layers.Dense(1000)(base.output)
        if name == "SoftmaxERA head":
            logits = era_keras.SoftmaxERA(0.6)(logits)
        model = keras.Model(base.input, logits)
        model.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        for _ in range(2):
            model.train_on_batch(x, y)
        models[name] = model
    def timed(model):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        return time.perf_counter() - start

    times = common.interleave({name: lambda m=model: timed(m) for name, model in models.items()},
                              repeats, progress=False)
    return {name: np.array(t) for name, t in times.items()}


def summarise(times):
    import numpy as np

    names = list(times)
    base = names[0]
    rows = []
    for name in names:
        q25, _, q75 = common.quartiles(times[name] / times[base])
        rows.append({
            "variant": name,
            "median_ms": float(np.median(times[name]) * 1e3),
            "ratio": float(np.median(times[name]) / np.median(times[base])),
            "ratio_q25": q25,
            "ratio_q75": q75,
        })
    return rows


def run_backend(args):
    """Child process: one backend, prints JSON results."""
    import keras

    backend = keras.backend.backend()
    version = importlib.import_module(backend).__version__
    results = {"backend": f"{backend} {version}, keras {keras.__version__}", "heads": [],
               "resnet": None}
    for case, size, variants in head_cases():
        if args.cases and not any(part in case for part in args.cases.split(",")):
            continue
        rows = summarise(time_interleaved(variants, args.repeats, common.clock(args.clock)))
        results["heads"].append({"case": case, "size": size, "rows": rows})
    if args.resnet_batch:
        results["resnet"] = {
            "size": f"batch {args.resnet_batch}, 160x160x3, 1000 classes",
            "rows": summarise(resnet_step_times(args.resnet_batch, args.resnet_repeats)),
        }
    print("RESULT " + json.dumps(results))


def args_batch(result):
    return int(result["resnet"]["size"].split()[1].rstrip(","))


def format_sections(all_results):
    lines = [
        "No GPU. Variants of a case ran interleaved round by round; `ratio` is the ratio of",
        "medians to the case's first (plain) variant, with the 25-75% range of per-round ratios.",
        "",
    ]
    for res in all_results:
        lines += [f"## Backend: {res['backend']}", "",
                  "| case | size | variant | median ms | ratio | ratio 25-75% |",
                  "|---|---|---|---|---|---|"]
        for head in res["heads"]:
            for row in head["rows"]:
                lines.append(
                    f"| {head['case']} | {head['size']} | {row['variant']} "
                    f"| {row['median_ms']:.3f} | {row['ratio']:.2f} "
                    f"| {row['ratio_q25']:.2f}-{row['ratio_q75']:.2f} |"
                )
        if res["resnet"]:
            # The direct A/B of whole steps is as noisy as the machine; the head-only
            # difference, scaled to the step's batch, bounds ERA's share more tightly.
            heads = {h["case"]: h["rows"] for h in res["heads"]}.get("classification D=1000")
        if res["resnet"] and heads:
            extra_ms = (heads[1]["median_ms"] - heads[0]["median_ms"]) * args_batch(res) / 256
            step_ms = res["resnet"]["rows"][0]["median_ms"]
            lines += ["", f"Head-only estimate: the exact SoftmaxERA head adds {extra_ms:.3f} ms "
                      f"at batch {args_batch(res)} (D = 1000), {100 * extra_ms / step_ms:.4f}% of "
                      f"the {step_ms:.0f} ms ResNet-50 step below."]
        if res["resnet"]:
            lines += ["", f"ResNet-50 training step ({res['resnet']['size']}, SGD, XLA/jit):", "",
                      "| head | median ms | ratio | ratio 25-75% |", "|---|---|---|---|"]
            for row in res["resnet"]["rows"]:
                lines.append(
                    f"| {row['variant']} | {row['median_ms']:.1f} | {row['ratio']:.3f} "
                    f"| {row['ratio_q25']:.3f}-{row['ratio_q75']:.3f} |"
                )
        lines.append("")
    return "\n".join(lines)


def main():
    parser = common.parser(__doc__, cpu=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--resnet-batch", type=int, default=16, help="0 skips the ResNet-50 step")
    parser.add_argument("--resnet-repeats", type=int, default=8)
    parser.add_argument("--backends", default="tensorflow,jax")
    common.add_clock_argument(parser)
    parser.add_argument("--cases", default="",
                        help="comma-separated parts of case names to run (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_backend(args)
        return
    common.pin(args.cpu)  # the backend subprocesses inherit the pinning
    all_results = []
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        out = subprocess.run(
            [sys.executable, __file__, "--child", *sys.argv[1:]],
            env=env, capture_output=True, text=True, check=True,
        ).stdout
        all_results.append(json.loads(out.split("RESULT ", 1)[1]))
    common.write_results(args.name, "ERA layer overhead (forward + backward)",
                         [format_sections(all_results)])


if __name__ == "__main__":
    main()
