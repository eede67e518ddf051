"""The GRPO(+ERA) run: the algorithm (`GRPOTrainer`) inside the shared run lifecycle.

One step (`GRPOTrainer.train_one_step`): `sampling.GroupSampler` draws the step's prompts,
samples a group of completions of each, rewards them and computes advantages within each
group; `update.PolicyUpdate` optimises the GRPO(+ERA) loss on them; `metrics.step_metrics`
says what happened. Held-out evaluation is `evaluate.evaluate`.

`run(config)` wraps it in `pipelines.common.lifecycle.RunLifecycle`: the config, the
tracking store and the run dir are checked before any training; the run dir is locked;
a killed run resumes from its newest readable checkpoint (`checkpoint.py`) in the same
MLflow run, logging each metric once per step; log, eval and checkpoint fire on interval
triggers; the end exports the policy (`export.py`; always through TensorFlow).
Everything runs under the configured distribution (`--distribution`), on one process or
several (`--processes`, see `processes.py`): every process runs this loop; process 0
alone writes MLflow, checkpoints and exports.
"""

import pathlib
import time

import keras
import keras_hub
import mlflow

from pipelines.common.errors import UserError
from pipelines.common.lifecycle import IntervalTrigger, RunLifecycle, run_name
from pipelines.common.metrics import grouped
from pipelines.common.run_dir import write_json_atomic
from pipelines.grpo import processes
from pipelines.grpo.chat import render_chat_prompts
from pipelines.grpo.checkpoint import (
    copy_policy,
    load_reference,
    restore_checkpoint,
    save_checkpoint,
    save_lora_base,
    save_reference,
)
from pipelines.grpo.distribution import (
    build_distribution,
    describe,
    distribution_scope,
    parse_distribution,
    shard_batch,
)
from pipelines.grpo.evaluate import evaluate
from pipelines.grpo.hf import export_run_hf_dir
from pipelines.grpo.metrics import log_plots, step_metrics
from pipelines.grpo.models import backbone_class, enable_lora, load_causal_lm, tiny_causal_lm
from pipelines.grpo.optim import build_optimizer
from pipelines.grpo.rewards import get_reward
from pipelines.grpo.rollout import RolloutGenerator
from pipelines.grpo.sampling import GroupSampler
from pipelines.grpo.tasks import BUILTIN_TASKS, builtin_problems, read_problems, split_problems
from pipelines.grpo.update import PolicyUpdate, make_era
from pipelines.grpo.warm_start import warm_start, warm_start_examples


def load_problems(config):
    """(train, test) problems of the configured task."""
    if config.task in BUILTIN_TASKS:
        train = builtin_problems(config.task, "train", 4096, config.seed, config.held_out_fraction)
        test = builtin_problems(config.task, "test", config.num_eval_prompts, config.seed + 1,
                                config.held_out_fraction)
        return train, test
    reward = config.reward or "math"
    problems = read_problems(config.task, reward)
    if config.eval_data:
        return problems, read_problems(config.eval_data, reward)[: config.num_eval_prompts]
    train, test = split_problems(problems, config.held_out_fraction)
    return train, test[: config.num_eval_prompts]


def build_causal_lm(config):
    if config.model.startswith("tiny:"):
        return tiny_causal_lm(
            config.model[len("tiny:"):], num_layers=config.tiny_layers,
            hidden_dim=config.tiny_hidden_dim, seed=config.seed,
            sequence_length=config.max_prompt_tokens + config.max_new_tokens,
            dtype=config.dtype,
        )
    return load_causal_lm(config.model, dtype=config.dtype)


class GRPOTrainer:
    """The GRPO(+ERA) algorithm of one run: its policy, optimizer, sampler and update."""

    def __init__(self, config, causal_lm, train_problems, eval_problems, distribution=None):
        self.config = config
        self.distribution = distribution
        self.causal_lm = causal_lm
        self.eval_problems = eval_problems
        names = {p.reward for p in train_problems + eval_problems}
        self.reward_fns = {n: get_reward(config.reward or n) for n in names}
        self.era = make_era(config)
        self.optimizer = build_optimizer(config)
        self.generator = RolloutGenerator(
            causal_lm, config.max_prompt_tokens, config.max_new_tokens,
            samplers={
                "train": keras_hub.samplers.TopPSampler(p=config.top_p,
                                                        temperature=config.temperature,
                                                        seed=config.seed),
                "eval": keras_hub.samplers.TopPSampler(p=config.eval_top_p,
                                                       temperature=config.eval_temperature,
                                                       seed=config.seed),
                "greedy": keras_hub.samplers.GreedySampler(),
            },
            shard=lambda arrays: shard_batch(self.distribution, arrays),
        )
        self.sampler = GroupSampler(config, train_problems, self.generator, self.reward_fns)
        self.policy_update = PolicyUpdate(config, causal_lm, self.optimizer, self.era,
                                          distribution)
        self.step = 0
        self.history = []
        self._warm_start_examples = None

    @property
    def train_problems(self):
        return self.sampler.problems

    @property
    def reference(self):
        """The frozen KL reference policy (with --kl-coef > 0), or None."""
        return self.policy_update.reference

    # --- setup ---------------------------------------------------------------------
    def check_lengths(self, warm_start=True):
        """Every prompt fits `max_prompt_tokens` and (for the warm start) every worked
        solution fits `max_new_tokens`; checked before the run starts, not hours into it."""
        prompts = sorted({p.prompt for p in self.train_problems + self.eval_problems})
        for start in range(0, len(prompts), 1024):
            self.generator.encode_prompts(prompts[start:start + 1024])  # raises, naming it
        if warm_start and self.config.warm_start_steps:
            self._warm_start_examples = self.warm_start_examples()

    def warm_start_examples(self):
        c = self.config
        problems = builtin_problems(c.task, "train", c.warm_start_steps * c.warm_start_batch_size,
                                    c.seed + 7, c.held_out_fraction)
        return warm_start_examples(self.causal_lm, problems,
                                   c.max_prompt_tokens + c.max_new_tokens)

    def run_warm_start(self, verbose="auto"):
        c = self.config
        examples = self._warm_start_examples or self.warm_start_examples()
        self._warm_start_examples = None
        return warm_start(self.causal_lm, examples, c.warm_start_batch_size,
                          c.warm_start_learning_rate, seed=c.seed, verbose=verbose)

    def prepare_sampling(self, run_dir=None):
        """Set up the KL reference policy, LoRA and the optimizer.

        The reference is the policy GRPO starts from (after the warm start). It is saved
        in the run dir on a fresh start and loaded from there on resume, never rebuilt from
        the resumed weights.
        """
        c = self.config
        if c.kl_coef > 0 and self.policy_update.reference is None:
            reference = load_reference(run_dir) if run_dir is not None else None
            if reference is None:
                reference = copy_policy(self.causal_lm)
                if run_dir is not None and processes.is_chief():
                    save_reference(run_dir, reference)
            self.policy_update.reference = reference
        if c.lora_rank:
            enable_lora(self.causal_lm, c.lora_rank)
        self.optimizer.build(self.causal_lm.trainable_variables)

    # --- one GRPO step -------------------------------------------------------------
    def update(self, rollout, advantages):
        """The policy update on one rollout (see `update.PolicyUpdate`); its loss info."""
        return self.policy_update(rollout, advantages, step=self.step + 1)

    def evaluate(self):
        """Held-out metrics (`eval/...`) of the current policy."""
        c = self.config
        metrics = evaluate(self.generator, self.eval_problems, self.reward_fns,
                           c.eval_samples, seed=c.seed * 7919 + self.step)
        return grouped("eval", metrics)

    def train_one_step(self):
        """Sample, score and update for step `self.step + 1`; returns its metrics."""
        start = time.perf_counter()
        batch = self.sampler.sample(self.step + 1)
        sampled = time.perf_counter()
        info = self.update(batch.rollout, batch.advantages)
        seconds = {"rollout": sampled - start, "update": time.perf_counter() - sampled}
        self.step += 1
        return step_metrics(self.config, batch, info, seconds)

    # --- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, run_dir):
        """Process 0 writes the checkpoint (the others hold the same state)."""
        with processes.whole_on_every_process(self.causal_lm.weights + self.optimizer.variables):
            if not processes.is_chief():
                return None
            return save_checkpoint(run_dir, self.step, self.causal_lm, self.optimizer, {
                "history": self.history,
                "entropy_control": self.policy_update.entropy_coef.state()})

    def restore(self, checkpoint):
        """Continue from a restored checkpoint (after `prepare_sampling` built the optimizer)."""
        self.optimizer.load_own_variables(checkpoint.optimizer_variables)
        self.step = checkpoint.step
        self.history = list(checkpoint.state["history"])
        if "entropy_control" in checkpoint.state:  # absent in checkpoints of older versions
            self.policy_update.entropy_coef.load_state(checkpoint.state["entropy_control"])


# Fields a resumed run may change: how long it trains, how often it checkpoints, and the
# devices and processes it runs on (checkpoints restore on any mesh).
MAY_CHANGE = ("steps", "checkpoint_every", "distribution", "processes", "process_id",
              "coordinator_address", "peer_timeout")


def default_run_name(config):
    """pipeline, model, task, arm and seed, e.g. "grpo tiny:qwen digit_sum era seed 0"."""
    return run_name("grpo", config.model, pathlib.Path(config.task).name,
                    "era" if config.era else "vanilla", seed=config.seed)


def run(config, tracking_uri=None, export=True, model_name="grpo_policy", progress=True):
    """Train (or resume) a GRPO run as configured; returns the run's summary.

    The summary is the one every pipeline returns (`RunLifecycle.finish`): `run_id`,
    `run_dir`, `step`, `exports` and the last step's `metrics` (as in finished.json), and
    the `history` of every step's metrics (as in history.json).
    """
    spec = parse_distribution(config.distribution)
    if processes.wanted(config) and spec.kind == "none":
        raise UserError(f"--processes {config.processes}: a run across processes needs a mesh "
                        "over their devices; use --distribution data or model:BxM.")
    processes.initialize(config)  # before JAX computes anything
    distribution = build_distribution(
        spec, backbone_class(config.model) if spec.kind == "model" else None)
    chief = processes.is_chief()
    lifecycle = RunLifecycle(config, config.experiment, config.run_name or default_run_name(config),
                             tracking_uri=tracking_uri, may_change=MAY_CHANGE, chief=chief)
    with lifecycle, distribution_scope(distribution):
        return _run(config, lifecycle, spec, distribution, export, model_name, progress)


def _run(config, lifecycle, spec, distribution, export, model_name, progress):
    from tqdm.auto import tqdm

    keras.utils.set_random_seed(config.seed)
    chief = lifecycle.chief
    lifecycle.check_store()
    train_problems, eval_problems = load_problems(config)
    # Process 0 decides (before it writes anything), so a peer that starts late does not
    # take process 0's fresh claim for a run to resume.
    resuming = bool(processes.from_chief(lifecycle.run_dir.saved_config() is not None))
    if resuming:  # refuse another run's settings before loading anything big
        lifecycle.start()
    checkpoint = restore_checkpoint(lifecycle.run_dir) if resuming else None
    processes.check_same_on_every_process(
        -1 if checkpoint is None else checkpoint.step, "the checkpoint step to resume from")
    causal_lm = checkpoint.causal_lm if checkpoint is not None else build_causal_lm(config)
    train_problems, eval_problems = render_chat_prompts(config, causal_lm, train_problems,
                                                        eval_problems)
    trainer = GRPOTrainer(config, causal_lm, train_problems, eval_problems, distribution)
    trainer.check_lengths(warm_start=checkpoint is None)
    if not resuming:
        lifecycle.start()
    run_dir = lifecycle.run_dir.path
    log_trigger = IntervalTrigger(1, config.steps)
    eval_trigger = IntervalTrigger(config.eval_every, config.steps)
    checkpoint_trigger = IntervalTrigger(config.checkpoint_every, config.steps)
    exports = {}
    with lifecycle.tracking():
        if checkpoint is None:
            if config.warm_start_steps:
                history = trainer.run_warm_start(verbose="auto" if progress else 0)
                lifecycle.log_metrics({"train/warm_start_loss": history["loss"][-1]}, step=0)
            if config.lora_rank and chief:
                save_lora_base(run_dir, causal_lm)
            trainer.prepare_sampling(run_dir)
            trainer.history.append({"step": 0, **trainer.evaluate()})
            lifecycle.log_metrics(trainer.history[0], step=0)
            trainer.save_checkpoint(run_dir)
        else:
            trainer.prepare_sampling(run_dir)
            trainer.restore(checkpoint)
            lifecycle.announce_resume(f"step {trainer.step}")
            if chief:
                mlflow.set_tag("resumed_from_step", trainer.step)
        if chief:  # tags, not params: a run may resume on another mesh
            layout = describe(spec, distribution, trainer.causal_lm)
            layout["processes"] = processes.process_count()
            mlflow.set_tags({f"layout.{k}": v for k, v in layout.items()})
        bar = tqdm(total=config.steps, initial=trainer.step, desc="GRPO" + (
            "+ERA" if config.era else ""), unit="step", disable=not (progress and chief))
        while trainer.step < config.steps:
            previous = trainer.step
            metrics = trainer.train_one_step()
            if eval_trigger(previous, trainer.step):
                metrics.update(trainer.evaluate())
            trainer.history.append({"step": trainer.step, **metrics})
            if log_trigger(previous, trainer.step):
                # Sampling is seeded by (seed, step): a step trained again after a kill
                # draws the same prompts and samples; MLflow keeps its first values.
                lifecycle.log_metrics(metrics, step=trainer.step)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['train/reward']:+.2f}",
                            H=f"{metrics['entropy/h_resp_p50']:.2f}")
            if checkpoint_trigger(previous, trainer.step):
                trainer.save_checkpoint(run_dir)
        bar.close()
        if chief:
            log_plots(trainer.history, config)
            write_json_atomic(run_dir / "history.json", trainer.history)
            mlflow.log_artifact(str(run_dir / "history.json"))
        if export:
            with processes.whole_on_every_process(trainer.causal_lm.weights):
                if chief:
                    from pipelines.grpo.export import export_all

                    exports = export_all(trainer.causal_lm, run_dir / "export", model_name)
                    exports.update(export_run_hf_dir(trainer.causal_lm, config,
                                                     run_dir / "export" / "hf"))
                    mlflow.set_tags({f"export.{k}": str(v) for k, v in exports.items()})
    last = trainer.history[-1]
    summary = lifecycle.finish(trainer.step, exports,
                               metrics={k: v for k, v in last.items() if k != "step"})
    return {**summary, "history": trainer.history}  # history.json holds it too
