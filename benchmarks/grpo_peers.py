"""One GRPO step of era-keras against TRL and Tunix, on the same work and the same core.

    bash scripts/setup.sh --bench     # builds .venv/trl and .venv/tunix once
    nice .venv/bin/python benchmarks/grpo_peers.py [--rounds 10] [--steps-per-round 3]

The matched work, fixed here: 8 prompts x 8 generations of the arithmetic task's prompts,
28 new tokens, one update per rollout, no KL, the "dapo" loss, learning rate 3e-5,
temperature 1, top-p 1, and the same tiny random-init Qwen2 shape in every system (2
layers, hidden 128, 4 heads, 2 KV heads, intermediate 256, vocabulary 258, tied
embeddings). TRL and Tunix read one transformers checkpoint of that shape, written here
with `save_pretrained`, with a byte-level tokenizer whose ids are tiny:qwen's (256 byte
symbols, one merge, `<|endoftext|>` = 257); era-keras builds tiny:qwen (`--no-era`).

Each system runs in a worker process of its own (era-keras on JAX and on TensorFlow in
the project's venv, TRL 1.16 in `.venv/trl`, Tunix 0.1.7 in `.venv/tunix`), all pinned to
the same core (`--cpu`). The workers start, run their first step (reported apart: it
compiles) and warm-up steps, then the rounds are interleaved: each round asks each
system in turn for `--steps-per-round` steps. A step is rollout + update, as each system
runs it; generation and update are also timed apart where the system lets us.

Generated tokens/s are put against the tiny model's compute limit: its forward FLOPs per
token (2 x the matmul weights, plus attention over the context) against this core's
float32 matmul rate, measured here with numpy.

Writes benchmarks/results/grpo_peers.md; the last lines printed are the era-keras / peer
ratios of median seconds per step.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

# The matched settings.
PROMPTS_PER_STEP = 8
GROUP_SIZE = 8
MAX_NEW_TOKENS = 28
MAX_PROMPT_TOKENS = 24  # era-keras's default --max-prompt-tokens
LEARNING_RATE = 3e-5
SEED = 0
SHAPE = dict(num_layers=2, hidden=128, heads=4, kv_heads=2, intermediate=256, vocab=258)
END_TOKEN = "<|endoftext|>"
SYSTEMS = ("era-keras (jax)", "era-keras (tensorflow)", "TRL", "Tunix")


def arithmetic_prompts(count=256):
    """The arithmetic task's training prompts (what era-keras's trainer draws from)."""
    sys.path.insert(0, str(ROOT))
    from pipelines.grpo.tasks import builtin_problems

    return [p.prompt for p in builtin_problems("arithmetic", "train", count, SEED, 0.2)]


# --- the transformers checkpoint (runs in .venv/trl) --------------------------------------

def byte_symbols():
    """(bytes, symbols): GPT-2's byte-to-printable-symbol table in its own order (printable
    bytes first), which is the order of tiny:qwen's vocabulary (keras-hub's
    `bytes_to_unicode`)."""
    order = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
             *range(ord("\u00ae"), ord("\u00ff") + 1)]
    symbols = [chr(b) for b in order]
    for b in range(256):
        if b not in order:
            order.append(b)
            symbols.append(chr(256 + len(symbols) - 188))
    return order, symbols


def build_checkpoint(directory):
    """A random-init Qwen2 of SHAPE and its byte-level tokenizer, with tiny:qwen's ids."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    directory = pathlib.Path(directory)
    order, symbols = byte_symbols()
    vocabulary = {symbol: i for i, symbol in enumerate(symbols)}
    nul = symbols[order.index(0)]
    vocabulary[nul + nul] = len(vocabulary)  # 256: keras-hub needs one merge
    vocabulary[END_TOKEN] = len(vocabulary)  # 257
    bpe = Tokenizer(models.BPE(vocab=vocabulary, merges=[(nul, nul)]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([END_TOKEN])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=END_TOKEN,
                                        pad_token=END_TOKEN)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(directory)
    (directory / "vocab.json").write_text(json.dumps(vocabulary))
    (directory / "merges.txt").write_text(f"#version: 0.2\n{nul} {nul}\n")
    torch.manual_seed(SEED)
    config = Qwen2Config(
        vocab_size=SHAPE["vocab"], hidden_size=SHAPE["hidden"],
        intermediate_size=SHAPE["intermediate"], num_hidden_layers=SHAPE["num_layers"],
        num_attention_heads=SHAPE["heads"], num_key_value_heads=SHAPE["kv_heads"],
        tie_word_embeddings=True, max_position_embeddings=256,
        bos_token_id=vocabulary[END_TOKEN], eos_token_id=vocabulary[END_TOKEN],
        pad_token_id=vocabulary[END_TOKEN], rms_norm_eps=1e-6, rope_theta=10000.0,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    # One token per character, with tiny:qwen's ids.
    assert tokenizer("2+")["input_ids"] == [order.index(ord("2")), order.index(ord("+"))]


# --- workers: each answers "steps N" with one JSON line of per-step seconds ---------------

class Worker:
    """The worker side of the protocol: `ready` once set up, then per request a list of
    {"step", "generation", "update", "tokens"} (seconds; tokens generated)."""

    def __init__(self):
        self.out = sys.stdout
        sys.stdout = sys.stderr  # libraries' prints must not break the protocol

    def send(self, message):
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    def requests(self):
        for line in sys.stdin:
            if line.strip() == "quit":
                return
            yield int(line.split()[1])


def era_keras_worker(backend):
    os.environ["KERAS_BACKEND"] = backend
    sys.path.insert(0, str(ROOT))
    worker = Worker()
    from pipelines.grpo.config import GRPOConfig
    from pipelines.grpo.train import GRPOTrainer, build_causal_lm, load_problems

    config = GRPOConfig(
        model="tiny:qwen", task="arithmetic", prompts_per_step=PROMPTS_PER_STEP,
        group_size=GROUP_SIZE, max_new_tokens=MAX_NEW_TOKENS,
        max_prompt_tokens=MAX_PROMPT_TOKENS, updates_per_rollout=1, kl_coef=0.0,
        loss_type="dapo", learning_rate=LEARNING_RATE, temperature=1.0, top_p=1.0,
        era=False, warm_start_steps=0, seed=SEED, run_dir="/tmp/grpo_peers/era-run")
    train, test = load_problems(config)
    trainer = GRPOTrainer(config, build_causal_lm(config), train, test)
    trainer.prepare_sampling()

    def step():
        m = trainer.train_one_step()
        return {"step": m["perf/step_seconds"], "generation": m["perf/rollout_seconds"],
                "update": m["perf/update_seconds"],
                "tokens": m["train/response_length"] * PROMPTS_PER_STEP * GROUP_SIZE}

    worker.send({"ready": True, "first": step()})
    for count in worker.requests():
        worker.send([step() for _ in range(count)])


def trl_worker(checkpoint):
    worker = Worker()
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    prompts = arithmetic_prompts()
    dataset = datasets.Dataset.from_dict({"prompt": prompts * 64})
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    args = GRPOConfig(
        output_dir="/tmp/grpo_peers/trl", use_cpu=True, report_to="none", seed=SEED,
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP_SIZE,
        num_generations=GROUP_SIZE, max_completion_length=MAX_NEW_TOKENS,
        num_iterations=1, beta=0.0, loss_type="dapo", learning_rate=LEARNING_RATE,
        temperature=1.0, top_p=1.0, max_steps=10**6, logging_steps=10**6,
        save_strategy="no", dataloader_num_workers=0, bf16=False,
        # TRL 1.16 checkpoints activations by default (recomputing the forward pass in
        # the backward one, to save memory); the others do not, so neither does it here.
        gradient_checkpointing=False,
    )
    times = {"generation": 0.0}

    class Timing(TrainerCallback):
        """Steps on request: blocks before a step until the benchmark asks for it."""

        def __init__(self):
            self.pending, self.results, self.requests = 0, [], worker.requests()
            self.first = True

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.first and self.pending == 0:
                self.pending = next(self.requests, 0)
                if self.pending == 0:
                    control.should_training_stop = True
            self.start = time.perf_counter()
            times["generation"], times["tokens"] = 0.0, 0

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - self.start
            result = {"step": seconds, "generation": times["generation"],
                      "update": seconds - times["generation"], "tokens": times["tokens"]}
            if self.first:
                worker.send({"ready": True, "first": result})
                self.first = False
                return
            self.results.append(result)
            self.pending -= 1
            if self.pending == 0:
                worker.send(self.results)
                self.results = []

    def reward(completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Timing()])
    generate = trainer._generate

    def timed_generate(*a, **k):
        start = time.perf_counter()
        out = generate(*a, **k)
        times["generation"] += time.perf_counter() - start
        times["tokens"] += sum(len(ids) for ids in out[1])  # completion ids per row
        return out

    trainer._generate = timed_generate
    trainer.train()


def tunix_worker(checkpoint):
    worker = Worker()
    import jax
    import numpy as np
    import optax
    from transformers import AutoTokenizer
    from tunix.models.qwen2 import model as qwen2_model
    from tunix.models.qwen2 import params as qwen2_params
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo.grpo_learner import GRPOConfig, GRPOLearner
    from tunix.rl.rollout import base_rollout

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
    config = qwen2_model.ModelConfig(
        num_layers=SHAPE["num_layers"], vocab_size=SHAPE["vocab"], embed_dim=SHAPE["hidden"],
        hidden_dim=SHAPE["intermediate"], num_heads=SHAPE["heads"],
        head_dim=SHAPE["hidden"] // SHAPE["heads"], num_kv_heads=SHAPE["kv_heads"],
        rope_theta=10000, norm_eps=1e-6, use_tied_embedding=True)
    model = qwen2_params.create_model_from_safe_tensors(checkpoint, config, mesh)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    training = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optax.adam(LEARNING_RATE), eval_every_n_steps=10**9,
        max_steps=10**6, mini_batch_size=PROMPTS_PER_STEP,
        train_micro_batch_size=PROMPTS_PER_STEP)
    rollout = base_rollout.RolloutConfig(
        max_tokens_to_generate=MAX_NEW_TOKENS, max_prompt_length=MAX_PROMPT_TOKENS,
        kv_cache_size=MAX_PROMPT_TOKENS + MAX_NEW_TOKENS + 8, temperature=1.0, top_p=1.0,
        top_k=None, eos_tokens=[end_id])
    cluster = rl_cluster_lib.RLCluster(
        actor=model, reference=None, tokenizer=tokenizer,
        cluster_config=rl_cluster_lib.ClusterConfig(
            role_to_mesh={role: mesh for role in (rl_cluster_lib.Role.ACTOR,
                                                  rl_cluster_lib.Role.REFERENCE,
                                                  rl_cluster_lib.Role.ROLLOUT)},
            rollout_engine="vanilla", offload_to_cpu=False, training_config=training,
            rollout_config=rollout))
    algorithm = GRPOConfig(num_generations=GROUP_SIZE, num_iterations=1, beta=0.0,
                           loss_agg_mode="token-mean", epsilon=0.2)

    def reward(prompts, completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    learner = GRPOLearner(rl_cluster=cluster, algo_config=algorithm, reward_fns=reward)
    state = {"pending": 0, "results": [], "first": True, "tokens": 0, "generation": 0.0,
             "start": time.perf_counter()}
    requests = worker.requests()

    def batches():
        prompts = arithmetic_prompts()
        for i in range(10**6):
            if not state["first"] and state["pending"] == 0:
                state["pending"] = next(requests, 0)
                if state["pending"] == 0:
                    return
                state["start"] = time.perf_counter()
            start = i * PROMPTS_PER_STEP % len(prompts)
            # A batch as grain gives one: a dict of numpy arrays.
            yield {"prompts": np.array(prompts[start:start + PROMPTS_PER_STEP])}

    generate, update = cluster.generate, cluster.update_actor

    def timed_generate(*a, **k):
        start = time.perf_counter()
        out = generate(*a, **k)
        state["generation"] += time.perf_counter() - start
        state["tokens"] += sum(len(t) for t in out.tokens)
        return out

    def timed_update(*a, **k):
        out = update(*a, **k)
        jax.block_until_ready(jax.tree.leaves(jax.tree.map(lambda x: x, out)))
        now = time.perf_counter()
        seconds = now - state["start"]
        result = {"step": seconds, "generation": state["generation"],
                  "update": seconds - state["generation"], "tokens": state["tokens"]}
        state.update(start=now, generation=0.0, tokens=0)
        if state["first"]:
            state["first"] = False
            worker.send({"ready": True, "first": result})
        else:
            state["results"].append(result)
            state["pending"] -= 1
            if state["pending"] == 0:
                worker.send(state["results"])
                state["results"] = []
        return out

    cluster.generate, cluster.update_actor = timed_generate, timed_update
    learner.train(batches())


# --- the benchmark: start the workers, interleave their rounds, report --------------------

VENVS = {"TRL": ".venv/trl", "Tunix": ".venv/tunix"}
KINDS = {"era-keras (jax)": "era-jax", "era-keras (tensorflow)": "era-tensorflow",
         "TRL": "trl", "Tunix": "tunix"}


def start_worker(system, checkpoint):
    """A running worker of `system` and its first step's timings (once it is ready)."""
    python = ROOT / VENVS.get(system, ".venv") / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"error: {python} is missing; run `bash scripts/setup.sh --bench`.")
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="3", TOKENIZERS_PARALLELISM="false")
    if system.startswith("era-keras"):
        env["PYTHONPATH"] = str(ROOT)
    log = open(f"/tmp/grpo_peers/{KINDS[system]}.log", "w")
    process = subprocess.Popen(
        [str(python), str(pathlib.Path(__file__).resolve()), "--worker", KINDS[system],
         str(checkpoint)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
        text=True, env=env, cwd=str(ROOT))
    ready = json.loads(process.stdout.readline() or "null")
    if not ready:
        raise SystemExit(f"error: the {system} worker died; see {log.name}")
    return process, ready["first"]


def ask(process, steps):
    process.stdin.write(f"steps {steps}\n")
    process.stdin.flush()
    return json.loads(process.stdout.readline())


def matmul_gflops(size=1024, repeats=20):
    """This core's float32 matmul rate (numpy, best of `repeats`)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def forward_flops_per_token(context):
    """2 x the matmul weights (attention projections, MLP, tied output layer) plus the
    attention scores and weighted values over `context` positions."""
    h, kv = SHAPE["hidden"], SHAPE["kv_heads"] * SHAPE["hidden"] // SHAPE["heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * SHAPE["intermediate"]
    weights = SHAPE["num_layers"] * per_layer + SHAPE["vocab"] * h
    return 2 * weights + SHAPE["num_layers"] * 4 * context * h


def parse_args():
    import common

    parser = common.parser(__doc__, cpu=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated subset of: " + ", ".join(SYSTEMS))
    return parser.parse_args()


def main():
    import common
    import numpy as np

    args = parse_args()
    common.pin(args.cpu)
    systems = [name.strip() for name in args.systems.split(",")]
    work = pathlib.Path("/tmp/grpo_peers")
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "checkpoint"
    if not (checkpoint / "model.safetensors").exists():
        subprocess.run([str(ROOT / VENVS["TRL"] / "bin" / "python"), __file__, "--worker",
                        "checkpoint", str(checkpoint)], check=True, env=dict(os.environ,
                                                                          PYTHONPATH=""))
    gflops = matmul_gflops()
    # One at a time, so that no system's compile competes with another's.
    workers, first = {}, {}
    for system in systems:
        workers[system], first[system] = start_worker(system, checkpoint)
        ask(workers[system], args.warmup_steps)
        print(f"{system}: ready, first step {first[system]['step']:.2f} s", flush=True)
    steps = common.interleave(
        {system: (lambda w=workers[system]: ask(w, args.steps_per_round)) for system in systems},
        args.rounds, order="alternate")
    for process in workers.values():
        process.stdin.write("quit\n")
        process.stdin.close()
    for process in workers.values():
        process.wait(timeout=120)

    # Per round: the median step of that round; the table gives the median of all steps.
    flat = {s: [step for r in rounds for step in r] for s, rounds in steps.items()}
    rows, summary = [], {}
    context = MAX_PROMPT_TOKENS // 2 + MAX_NEW_TOKENS // 2  # mean context while decoding
    flops = forward_flops_per_token(context)
    for system in systems:
        values = {key: np.median([x[key] for x in flat[system]]) for key in
                  ("step", "generation", "update", "tokens")}
        round_medians = [np.median([x["step"] for x in r]) for r in steps[system]]
        summary[system] = values
        generated_per_s = values["tokens"] / values["generation"]
        step_per_s = values["tokens"] / values["step"]
        rows.append([
            system, f"{values['step']:.3f}",
            f"{min(round_medians):.3f}-{max(round_medians):.3f}",
            f"{values['generation']:.3f}", f"{values['update']:.3f}",
            f"{first[system]['step']:.2f}", f"{values['tokens']:.0f}",
            f"{generated_per_s:.0f} ({generated_per_s * flops / 1e9 / gflops:.1%})",
            f"{step_per_s:.0f} ({step_per_s * 4 * flops / 1e9 / gflops:.1%})",
        ])
    ratios = []
    for backend in ("jax", "tensorflow"):
        era = f"era-keras ({backend})"
        for peer in ("TRL", "Tunix"):
            if era in summary and peer in summary:
                ratios.append(f"{era} / {peer}: s/step "
                              f"{summary[era]['step'] / summary[peer]['step']:.2f}")
    lines = [
        f"{args.rounds} interleaved rounds (order alternating) of {args.steps_per_round} "
        f"steps per system, after the first step and {args.warmup_steps} warm-up steps; "
        f"every worker pinned to core {args.cpu}. Matched work: {PROMPTS_PER_STEP} prompts x "
        f"{GROUP_SIZE} generations of the arithmetic task, {MAX_NEW_TOKENS} new tokens, one "
        f"update per rollout, no KL, dapo loss (Tunix: token-mean), lr {LEARNING_RATE}, "
        f"temperature 1, top-p 1, prompts padded to at most {MAX_PROMPT_TOKENS} tokens; "
        f"tiny random-init Qwen2 ({SHAPE}); era-keras with --no-era; TRL without "
        "gradient checkpointing.", "",
        common.table(["system", "s / step (median)", "round medians (min-max)",
                      "generation s", "update s", "first step s (compile)",
                      "tokens / step", "generated tokens/s (share of limit)",
                      "tokens/s, whole step (share of limit)"], rows), "",
        f"Compute limit: this core's float32 numpy matmul rate, {gflops:.0f} GFLOP/s, against "
        f"{flops / 1e6:.2f} MFLOP per token for the forward pass (2 x "
        f"{(flops - SHAPE['num_layers'] * 4 * context * SHAPE['hidden']) // 2:,} matmul "
        f"weights plus attention over ~{context} positions); a whole step counts 4 forward "
        "passes per token (generation, then forward and backward of the update).", "",
        "Ratios of median seconds per step:", "", *[f"- {r}" for r in ratios],
    ]
    common.write_results(args.name, "GRPO step: era-keras against TRL and Tunix", [
        "\n".join(lines)])
    for ratio in ratios:
        print(ratio)


def worker_main(kind, checkpoint):
    if kind.startswith("era-"):
        era_keras_worker(kind[len("era-"):])
    elif kind == "trl":
        trl_worker(checkpoint)
    elif kind == "tunix":
        tunix_worker(checkpoint)
    elif kind == "checkpoint":
        build_checkpoint(checkpoint)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        sys.path.insert(0, str(HERE))
        main()
