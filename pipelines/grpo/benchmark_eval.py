"""Evaluate a checkpoint on benchmark files without training: the baseline row.

    python -m pipelines.grpo.evaluate --model MODEL --data [NAME=]FILE [--data ...]
        [--eval-protocol era-paper] [--output-dir DIR]

`--model` is a Hugging Face transformers directory or a keras-hub preset (a name or a
directory; `models.load_causal_lm` reads both), a GRPO run directory (its exported preset,
else its newest readable checkpoint), or "tiny:<family>" (random init, for smoke tests).
Each `--data [NAME=]FILE` is one benchmark, read by `tasks.read_problems` (JSONL, JSON or
parquet in the layouts it documents); NAME defaults to the file's stem.

Without a protocol, every benchmark is sampled `--samples` times (1) at `--temperature`
(0: greedy) and `--top-p`, with up to `--max-new-tokens` new tokens. `--eval-protocol
era-paper` is the ERA authors' evaluation (arXiv 2510.08549; nothingbutbut/era,
ERA-LLM/eval/sh/eval.sh): AIME 2024, AIME 2025 and AMC23 sampled 16 times at temperature
0.7, top-p 0.95 (avg@16 and pass@16), MATH-500, Minerva and OlympiadBench greedy, all with
3000 new tokens and the authors' prompt (`era_paper_problem`). Benchmarks are named
aime24, aime25, amc23, math500, minerva (or minerva_math) and olympiadbench; any subset
may be given. `--samples` (for the sampled ones) and `--max-new-tokens` still override it
(say, for a smoke test); the tables say what ran.

Answers are graded by `--reward` (default "math": math-verify, see `math_grader`).
Metrics per benchmark: `accuracy` (one sample per problem: the greedy accuracy) or
`avg_at_<n>` (the mean over all n samples) and `pass_at_<k>` (unbiased, k = 1, 2, 4, ...,
n); `response_tokens` and `truncated_share`. They go to an MLflow run of their own
(experiment "grpo-eval" unless `--experiment`) as `<benchmark>/<metric>`, with one table
per benchmark (`tables/<benchmark>.json`: a row per problem) and a summary table, and to
`--output-dir`: `summary.md` / `summary.json` (a row per benchmark), `<benchmark>.md`
(its metrics and a row per problem) and `<benchmark>.jsonl` (every completion, graded).
"""

import argparse
import dataclasses
import json
import os
import pathlib

import numpy as np

from pipelines.common.config import Problems
from pipelines.common.errors import UserError

DEFAULT_EXPERIMENT = "grpo-eval"


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How one benchmark is generated: `samples` per problem; temperature 0 is greedy."""

    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024

    @property
    def greedy(self):
        return self.temperature == 0


# The ERA authors' evaluation (ERA-LLM/eval/sh/eval.sh in nothingbutbut/era).
_ERA_SAMPLED = Sampling(samples=16, temperature=0.7, top_p=0.95, max_new_tokens=3000)
_ERA_GREEDY = Sampling(samples=1, temperature=0.0, top_p=1.0, max_new_tokens=3000)
PROTOCOLS = {
    "era-paper": {
        "aime24": _ERA_SAMPLED, "aime25": _ERA_SAMPLED, "amc23": _ERA_SAMPLED,
        "math500": _ERA_GREEDY, "minerva": _ERA_GREEDY, "olympiadbench": _ERA_GREEDY,
    },
}
ALIASES = {"minerva_math": "minerva"}  # the authors' name for it

# Their math_eval.py: the question in the "qwen25-math-cot" prompt, as the user turn under
# this system prompt (with --apply_chat_template, which eval.sh passes); without a chat
# template the model gets the qwen25-math-cot text itself.
ERA_PAPER_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it step by step. The assistant first thinks about the reasoning process in the "
    "mind and then provides the user with the answer, i.e., reasoning process here ... the "
    "answer is \\boxed{answer}\n\n")
QWEN25_MATH_COT = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within "
    "\\boxed{{}}.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


def era_paper_problem(problem):
    """`problem` as the authors prompt it: the qwen25-math-cot text as `prompt`, and as
    `messages` their system prompt and that text (stripped, as they strip it)."""
    text = QWEN25_MATH_COT.format(question=problem.prompt.strip())
    messages = (("system", ERA_PAPER_SYSTEM_PROMPT), ("user", text.strip()))
    return dataclasses.replace(problem, prompt=text, messages=messages)


@dataclasses.dataclass
class EvalConfig:
    model: str
    data: dict  # benchmark name -> file
    eval_protocol: str | None = None
    samples: int | None = None  # None: the protocol's (no protocol: 1)
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int | None = None  # None: the protocol's (no protocol: 1024)
    max_prompt_tokens: int | None = None  # None: the longest prompt
    batch_size: int = 16
    reward: str = "math"
    seed: int = 0
    dtype: str = "float32"
    chat_template: str = "auto"  # as GRPO's --chat-template: auto | none | a Jinja file
    output_dir: str = "runs/eval"
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None

    def __post_init__(self):
        from pipelines.grpo.config import DTYPES

        problems = Problems("evaluation settings")
        if not self.data:
            problems.add("give at least one benchmark file: --data [NAME=]FILE")
        if self.eval_protocol is not None:
            if problems.choice("eval_protocol", self.eval_protocol, tuple(PROTOCOLS)):
                known = PROTOCOLS[self.eval_protocol]
                for name in self.data:
                    problems.check(
                        ALIASES.get(name, name) in known,
                        f"benchmark {name!r} is not part of the {self.eval_protocol} protocol; "
                        f"name each file one of {', '.join(known)} (as --data NAME=FILE)")
        for name in ("samples", "max_new_tokens", "max_prompt_tokens"):
            if getattr(self, name) is not None:
                problems.at_least(name, getattr(self, name), 1)
        problems.at_least("batch_size", self.batch_size, 1)
        problems.at_least("temperature", self.temperature, 0)
        problems.in_range("top_p", self.top_p, 0, 1, low_open=True)
        problems.check(self.eval_protocol is not None or self.temperature > 0
                       or self.samples in (None, 1),
                       f"samples={self.samples} needs temperature > 0: greedy decoding gives "
                       "one answer per problem")
        problems.choice("dtype", self.dtype, DTYPES)
        problems.raise_if_any()

    def sampling(self, name):
        """The Sampling of benchmark `name`: the protocol's, with the overrides given
        (`samples` only where it samples: a greedy benchmark has one answer per problem)."""
        if self.eval_protocol is None:
            base = Sampling(1, self.temperature, self.top_p, 1024)
        else:
            base = PROTOCOLS[self.eval_protocol][ALIASES.get(name, name)]
        overrides = {}
        if self.samples is not None and not base.greedy:
            overrides["samples"] = self.samples
        if self.max_new_tokens is not None:
            overrides["max_new_tokens"] = self.max_new_tokens
        return dataclasses.replace(base, **overrides)


def parse_data(values):
    """{"name": "file"} from `--data [NAME=]FILE` values; a name given twice is an error."""
    data = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = pathlib.Path(value).stem, value
        if not name or not path:
            raise UserError(f"--data {value!r}: expected FILE or NAME=FILE.")
        if name in data:
            raise UserError(f"benchmark {name!r} is given twice (--data {data[name]!r} and "
                            f"{path!r}); name them apart with --data NAME=FILE.")
        data[name] = path
    return data


# --- the model ----------------------------------------------------------------------------
def is_run_dir(path):
    path = pathlib.Path(path)
    return (path / "checkpoints").is_dir() or (path / "export" / "preset").is_dir()


def load_model(config):
    """The CausalLM that `--model` names (see the module docstring)."""
    from pipelines.grpo.models import TINY_FAMILIES, load_causal_lm, tiny_causal_lm

    if config.model.startswith("tiny:"):
        family = config.model[len("tiny:"):]
        if family not in TINY_FAMILIES:
            raise UserError(f"tiny model family must be one of {', '.join(TINY_FAMILIES)} "
                            f"(got {config.model!r}).")
        return tiny_causal_lm(family, seed=config.seed, dtype=config.dtype)
    if is_run_dir(config.model):
        exported = pathlib.Path(config.model) / "export" / "preset"
        if (exported / "config.json").is_file():
            return load_causal_lm(str(exported), dtype=config.dtype)
        from pipelines.grpo.checkpoint import restore_checkpoint

        checkpoint = restore_checkpoint(config.model)
        if checkpoint is None:
            raise UserError(f"run dir {config.model!r} has neither an exported preset "
                            "(export/preset) nor a complete checkpoint yet.")
        return checkpoint.causal_lm
    return load_causal_lm(config.model, dtype=config.dtype)


def model_prompts(problems):
    """The text each problem is given to the model as."""
    return [problem.prompt for problem in problems]


def longest_prompt_tokens(causal_lm, prompts):
    """Tokens of the longest prompt, start token included, rounded up to a multiple of 8."""
    tokenizer = causal_lm.preprocessor.tokenizer
    longest = 0
    for start in range(0, len(prompts), 256):
        ids = tokenizer(prompts[start:start + 256])
        lengths = (np.asarray(ids.row_lengths()) if hasattr(ids, "row_lengths")
                   else [len(row) for row in ids])
        longest = max(longest, int(np.max(lengths)))
    return -(-(longest + 1) // 8) * 8


# --- generating and grading ---------------------------------------------------------------
@dataclasses.dataclass
class Graded:
    """One benchmark's completions, (problems, samples) at a time."""

    name: str
    problems: list
    sampling: Sampling
    completions: list  # problem i, sample j at i * samples + j
    response_tokens: np.ndarray  # (problems, samples)
    truncated: np.ndarray  # (problems, samples)
    correct: np.ndarray  # (problems, samples)

    def metrics(self):
        from pipelines.grpo.evaluate import pass_at_k_metrics

        n = self.sampling.samples
        metrics = {"accuracy" if n == 1 else f"avg_at_{n}": float(self.correct.mean())}
        if n > 1:
            metrics.update(pass_at_k_metrics(self.correct))
        metrics["response_tokens"] = float(self.response_tokens.mean())
        metrics["truncated_share"] = float(self.truncated.mean())
        return metrics


def generate(generator, sampler, prompts, batch_size, seed, progress):
    """(completions, response tokens, truncated) of `prompts`, `batch_size` at a time.

    The last batch is padded with its last prompt, so every batch has one shape and the
    generate function is traced once.
    """
    from tqdm.auto import tqdm

    completions, tokens, truncated = [], [], []
    for index, start in enumerate(tqdm(range(0, len(prompts), batch_size), disable=not progress,
                                       unit="batch", leave=False)):
        batch = prompts[start:start + batch_size]
        padded = batch + [batch[-1]] * (batch_size - len(batch))
        rollout = generator.generate(padded, sampler, seed=seed, stream=index)
        completions += rollout.completions[:len(batch)]
        tokens += list(rollout.response_lengths[:len(batch)])
        truncated += list(rollout.truncated[:len(batch)])
    return completions, np.asarray(tokens), np.asarray(truncated, dtype=bool)


def evaluate_benchmark(name, problems, sampling, causal_lm, reward_fns, config,
                       max_prompt_tokens, progress=True):
    import keras_hub

    from pipelines.grpo.evaluate import correct_matrix
    from pipelines.grpo.rollout import RolloutGenerator

    n = sampling.samples
    sampler = (keras_hub.samplers.GreedySampler() if sampling.greedy else
               keras_hub.samplers.TopPSampler(p=sampling.top_p,
                                              temperature=sampling.temperature,
                                              seed=config.seed))
    generator = RolloutGenerator(causal_lm, max_prompt_tokens, sampling.max_new_tokens,
                                 samplers={"eval": sampler})
    prompts = [prompt for prompt in model_prompts(problems) for _ in range(n)]
    completions, tokens, truncated = generate(generator, "eval", prompts, config.batch_size,
                                              None if sampling.greedy else config.seed,
                                              progress)
    return Graded(name, problems, sampling, completions, tokens.reshape(-1, n),
                  truncated.reshape(-1, n),
                  correct_matrix(problems, completions, reward_fns, n))


# --- tables ---------------------------------------------------------------------------------
def problem_rows(graded):
    """One row per problem: its reference, how many samples were right, the first answer."""
    from pipelines.grpo.rewards import extract_answer

    n = graded.sampling.samples
    return [{
        "problem": i + 1,
        "reference": problem.reference,
        "correct": int(graded.correct[i].sum()),
        "samples": n,
        "first_answer": extract_answer(graded.completions[i * n]) or "",
        "response_tokens": float(graded.response_tokens[i].mean()),
        "truncated": int(graded.truncated[i].sum()),
    } for i, problem in enumerate(graded.problems)]


def summary_row(graded, path):
    s = graded.sampling
    return {"benchmark": graded.name, "file": str(path), "problems": len(graded.problems),
            "samples": s.samples, "temperature": s.temperature, "top_p": s.top_p,
            "max_new_tokens": s.max_new_tokens, **graded.metrics()}


def markdown_table(rows):
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value):
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(output_dir, graded, path):
    """`<name>.md` (metrics, then a row per problem) and `<name>.jsonl` (every completion)."""
    output_dir = pathlib.Path(output_dir)
    rows = problem_rows(graded)
    summary = summary_row(graded, path)
    (output_dir / f"{graded.name}.md").write_text(
        f"# {graded.name}\n\n" + markdown_table([summary]) + "\n" + markdown_table(rows))
    n = graded.sampling.samples
    with (output_dir / f"{graded.name}.jsonl").open("w", encoding="utf-8") as out:
        for i, problem in enumerate(graded.problems):
            out.write(json.dumps({
                "problem": i + 1, "prompt": problem.prompt, "reference": problem.reference,
                "completions": graded.completions[i * n:(i + 1) * n],
                "correct": [bool(c) for c in graded.correct[i]],
            }) + "\n")
    return rows, summary


# --- the command ----------------------------------------------------------------------------
def run(config, tracking_uri=None, progress=True):
    """Evaluate `config.model` on every benchmark; returns the summary rows."""
    import keras
    import mlflow

    from pipelines.common.tracking import tracked_run
    from pipelines.grpo.chat import render_chat_prompts
    from pipelines.grpo.rewards import get_reward
    from pipelines.grpo.tasks import read_problems

    keras.utils.set_random_seed(config.seed)
    benchmarks = {}
    for name, path in config.data.items():  # every file read before the model loads
        problems = read_problems(path, reward=config.reward)
        if config.eval_protocol == "era-paper":
            problems = [era_paper_problem(p) for p in problems]
        benchmarks[name] = problems
    reward_fns = {config.reward: get_reward(config.reward)}
    causal_lm = load_model(config)
    benchmarks = dict(zip(benchmarks, render_chat_prompts(config, causal_lm,
                                                          *benchmarks.values())))
    max_prompt_tokens = config.max_prompt_tokens or longest_prompt_tokens(
        causal_lm, [t for problems in benchmarks.values() for t in model_prompts(problems)])
    output_dir = pathlib.Path(config.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write to --output-dir {str(output_dir)!r} ({error}).") from None
    run_name = config.run_name or (
        f"eval {config.model} {config.eval_protocol or ', '.join(benchmarks)}")
    summaries = []
    with tracked_run(config.experiment, config, tracking_uri=tracking_uri,
                     run_name=run_name) as active:
        mlflow.set_tag("eval_protocol", config.eval_protocol or "none")
        for name, problems in benchmarks.items():
            graded = evaluate_benchmark(name, problems, config.sampling(name), causal_lm,
                                        reward_fns, config, max_prompt_tokens, progress)
            rows, summary = write_outputs(output_dir, graded, config.data[name])
            summaries.append(summary)
            mlflow.log_metrics({f"{name}/{k}": v for k, v in graded.metrics().items()}, step=0)
            mlflow.log_table({key: [row[key] for row in rows] for key in rows[0]},
                             artifact_file=f"tables/{name}.json")
            for suffix in ("md", "jsonl"):
                mlflow.log_artifact(str(output_dir / f"{name}.{suffix}"), "eval")
            if progress:
                print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in graded.metrics().items()))
        (output_dir / "summary.md").write_text(
            f"# {config.model}: {config.eval_protocol or 'evaluation'}\n\n"
            + markdown_table(summaries))
        (output_dir / "summary.json").write_text(json.dumps(summaries, indent=2))
        mlflow.log_table({key: [row.get(key) for row in summaries]
                          for key in dict.fromkeys(k for row in summaries for k in row)},
                         artifact_file="tables/summary.json")
        for file in ("summary.md", "summary.json"):
            mlflow.log_artifact(str(output_dir / file), "eval")
        run_id = active.info.run_id
    return run_id, summaries


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.grpo.evaluate",
        description="Evaluate a checkpoint on benchmark files without training (tracked in "
                    "MLflow): the baseline row.")
    parser.add_argument("--model", required=True,
                        help="Hugging Face directory, keras-hub preset (name or directory), "
                             "GRPO run directory, or tiny:qwen|qwen3|gemma|gemma3")
    parser.add_argument("--data", action="append", metavar="[NAME=]FILE",
                        help="a benchmark file (.jsonl, .json, .parquet); repeat for several "
                             "(name: the file's stem unless given)")
    parser.add_argument("--eval-protocol", default=None, metavar="PROTOCOL",
                        help="era-paper: the ERA authors' evaluation (benchmarks aime24, "
                             "aime25, amc23: 16 samples at T 0.7, top-p 0.95; math500, "
                             "minerva, olympiadbench: greedy; 3000 new tokens)")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per problem (default 1, or the protocol's)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature, 0: greedy (without a protocol)")
    parser.add_argument("--top-p", type=float, default=1.0, help="top-p (without a protocol)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="new tokens per answer (default 1024, or the protocol's)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="prompt length (default: the longest prompt's)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="sequences generated at once")
    parser.add_argument("--reward", default="math",
                        help="reward name (math, digit_sum) or package.module:function")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32",
                        help="float32 | bfloat16 | mixed_bfloat16")
    parser.add_argument("--chat-template", default="auto",
                        help="prompts given as chat messages (the era-paper protocol's are): "
                             "auto (the checkpoint's own template), none, or a Jinja file")
    parser.add_argument("--output-dir", default="runs/eval",
                        help="where the tables and graded completions are written")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment")
    parser.add_argument("--run-name", default=None, help="MLflow run name")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                             "sqlite:///mlflow.db)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv=None):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from pipelines.common.native_logs import import_tensorflow

    import_tensorflow()  # which imports Keras, so after its backend is chosen
    args = _parser().parse_args(argv)
    config = EvalConfig(
        model=args.model, data=parse_data(args.data), eval_protocol=args.eval_protocol,
        samples=args.samples, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
        batch_size=args.batch_size, reward=args.reward, seed=args.seed, dtype=args.dtype,
        chat_template=args.chat_template, output_dir=args.output_dir,
        experiment=args.experiment, run_name=args.run_name)
    run_id, _ = run(config, tracking_uri=args.tracking_uri, progress=not args.no_progress)
    print(f"tables: {config.output_dir}/summary.md")
    print(f"MLflow run id: {run_id}")
    return 0
