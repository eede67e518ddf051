"""The GRPO(+ERA) loop: sample groups, score them, update the policy; track and checkpoint.

One step: draw `prompts_per_step` training prompts, sample `group_size` completions each
(keras-hub generation, top-p sampling at `temperature`), reward them (+1/-1, plus DAPO's
overlong penalty when asked), keep only groups with signal (dynamic sampling, when asked),
turn rewards into advantages within each group, and take `updates_per_rollout` optimizer
steps on `grpo_loss` (ERA on unless `era=False`, which makes this the vanilla GRPO
baseline: the same code with k = 1).

The pieces live beside this module: `step.py` holds the backend-specific update step
(TensorFlow GradientTape under XLA, or JAX `stateless_call`), `checkpoint.py` the
checkpoints (a run killed at any moment resumes from the newest whole one and continues
the same MLflow run). Sampling is seeded by (seed, step), so a resumed run draws the same
prompts and samples it would have. The SavedModel export always uses TensorFlow.
"""

import pathlib
import time

import keras
import keras_hub
import numpy as np
from keras import ops

import era_keras
from pipelines.common.metrics import grouped, metric_history
from pipelines.common.run_dir import RunDir
from pipelines.common.tracking import log_curves, tracked_run, write_json
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
from pipelines.grpo.loss import group_advantages, grpo_loss, next_token_targets, vanilla_era
from pipelines.grpo.models import backbone_class, enable_lora, load_causal_lm, tiny_causal_lm
from pipelines.grpo.optim import build_optimizer
from pipelines.grpo.rewards import get_reward, overlong_penalty
from pipelines.grpo.rollout import Rollout, RolloutGenerator
from pipelines.grpo.step import make_train_step
from pipelines.grpo.tasks import BUILTIN_TASKS, builtin_problems, load_jsonl, split_problems
from pipelines.grpo.warm_start import warm_start, warm_start_examples


def load_problems(config):
    """(train, test) problems of the configured task."""
    if config.task in BUILTIN_TASKS:
        train = builtin_problems(config.task, "train", 4096, config.seed, config.held_out_fraction)
        test = builtin_problems(config.task, "test", config.num_eval_prompts, config.seed + 1,
                                config.held_out_fraction)
        return train, test
    reward = config.reward or "math"
    problems = load_jsonl(config.task, reward)
    if config.eval_data:
        return problems, load_jsonl(config.eval_data, reward)[: config.num_eval_prompts]
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


def merge_infos(infos):
    """One GRPOLossInfo from the micro-batches of an update: scalars averaged (as the
    accumulated gradient is), per-response arrays concatenated."""
    if len(infos) == 1:
        return infos[0]
    extra = {}
    for key in infos[0].extra:
        values = [ops.convert_to_numpy(info.extra[key]) for info in infos]
        extra[key] = (np.concatenate(values) if values[0].ndim else np.mean(values))
    loss = np.mean([ops.convert_to_numpy(info.loss) for info in infos])
    return type(infos[0])(loss, extra)


class GRPOTrainer:
    """Owns the policy, its optimizer and the rollout machinery of one run."""

    def __init__(self, config, causal_lm, train_problems, eval_problems, distribution=None):
        self.config = config
        self.distribution = distribution
        self.causal_lm = causal_lm
        self.train_problems = train_problems
        self.eval_problems = eval_problems
        names = {p.reward for p in train_problems + eval_problems}
        self.reward_fns = {n: get_reward(config.reward or n) for n in names}
        # Vanilla GRPO is ERA with k = 1: one code path, so the arms differ by ERA alone.
        self.era = (
            era_keras.LogitERA(
                k=config.era_k, omega_low=config.omega_low, omega_high=config.omega_high,
                top_fraction=config.top_fraction, temperature=config.temperature,
                top_k=config.era_top_k, scale_advantages=config.scale_advantages,
            )
            if config.era else
            vanilla_era(config.temperature, config.top_fraction, config.era_top_k)
        )
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
        self.step = 0
        self.history = []
        self.reference = None
        self._train_step = None

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

    def prepare_sampling(self, run_dir=None):
        """Set up the KL reference policy, LoRA and the optimizer.

        The reference is the policy GRPO starts from (after the warm start). It is saved
        in the run dir on a fresh start and loaded from there on resume, never rebuilt from
        the resumed weights.
        """
        c = self.config
        if c.kl_coef > 0 and self.reference is None:
            self.reference = load_reference(run_dir) if run_dir is not None else None
            if self.reference is None:
                self.reference = copy_policy(self.causal_lm)
                if run_dir is not None:
                    save_reference(run_dir, self.reference)
        if c.lora_rank:
            enable_lora(self.causal_lm, c.lora_rank)
        self.optimizer.build(self.causal_lm.trainable_variables)

    def run_warm_start(self, verbose="auto"):
        c = self.config
        examples = getattr(self, "_warm_start_examples", None) or self.warm_start_examples()
        self._warm_start_examples = None
        return warm_start(self.causal_lm, examples, c.warm_start_batch_size,
                          c.warm_start_learning_rate, seed=c.seed, verbose=verbose)

    # --- one GRPO step -------------------------------------------------------------
    def sample_prompts(self, step, sampling_round=1):
        """The prompts of one sampling round of `step`, seeded by (seed, step[, round])."""
        key = [self.config.seed, step] + ([sampling_round] if sampling_round > 1 else [])
        rng = np.random.default_rng(key)
        picks = rng.choice(len(self.train_problems), self.config.prompts_per_step,
                           replace=len(self.train_problems) < self.config.prompts_per_step)
        return [self.train_problems[i] for i in picks]

    def sample_groups(self, step, sampling_round=1):
        """(rollout, task rewards) of `prompts_per_step` groups of `group_size` samples."""
        c = self.config
        problems = self.sample_prompts(step, sampling_round)
        grouped = [p for p in problems for _ in range(c.group_size)]
        rollout = self.generator.generate([p.prompt for p in grouped], "train",
                                          seed=c.seed * 1_000_003 + step,
                                          stream=sampling_round - 1)
        rewards = np.array([self.reward_fns[p.reward](text, p.reference)
                            for p, text in zip(grouped, rollout.completions)], "float32")
        return rollout, rewards

    def rollout(self, step):
        """One step's batch: rollout, rewards, advantages and how it was sampled.

        With dynamic sampling (DAPO), groups whose task rewards are all equal carry no
        signal and are dropped; further rounds are sampled until `prompts_per_step` groups
        remain or `max_sampling_rounds` ran, and the batch is then filled up with dropped
        groups (advantage 0), so its shape never changes. The overlong penalty is added to
        the task rewards before the advantages are computed.
        """
        c = self.config
        rounds = c.max_sampling_rounds if c.dynamic_sampling else 1
        kept, dropped, sampled_groups = [], [], 0
        for sampling_round in range(1, rounds + 1):
            rollout, rewards = self.sample_groups(step, sampling_round)
            for g in range(c.prompts_per_step):
                rows = range(g * c.group_size, (g + 1) * c.group_size)
                group = (rollout.select(rows), rewards[list(rows)])
                same = np.all(group[1] == group[1][0])
                (dropped if c.dynamic_sampling and same else kept).append(group)
            sampled_groups += c.prompts_per_step
            if len(kept) >= c.prompts_per_step:
                break
        groups = (kept + dropped)[: c.prompts_per_step]
        rollout = Rollout.concatenate([g[0] for g in groups])
        task_rewards = np.concatenate([g[1] for g in groups])
        penalty = overlong_penalty(rollout.response_lengths, c.max_new_tokens,
                                   c.overlong_buffer_len, c.overlong_penalty_factor)
        rewards = task_rewards + penalty
        sampling = {"sampling_rounds": sampling_round,
                    "share_groups_dropped": len(dropped) / sampled_groups,
                    "overlong_penalty": penalty.mean()}
        return (rollout, rewards, task_rewards,
                group_advantages(rewards, c.group_size, c.scale_rewards), sampling)

    def _loss(self, model, batch, old_log_probs=None, reference_log_probs=None):
        """The GRPO(+ERA) loss of `model` on a batch of rollouts (see `loss.grpo_loss`)."""
        logits = model({"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]},
                       training=True)
        logits, tokens, mask = next_token_targets(logits, batch["token_ids"],
                                                  batch["response_mask"])
        c = self.config
        decision = None
        if "logit_scale" in batch:  # fixed once per rollout (several updates per rollout)
            decision = {key: batch[key] for key in
                        ("logit_scale", "era_advantages", "response_entropy")}
            decision["advantages"] = decision.pop("era_advantages")
        return grpo_loss(
            logits, tokens, mask, batch["advantages"], old_log_probs=old_log_probs,
            era=self.era, era_decision=decision, temperature=c.temperature,
            clip_epsilon=c.clip_epsilon, clip_epsilon_high=c.clip_epsilon_high,
            dual_clip=c.dual_clip, reference_log_probs=reference_log_probs, kl_coef=c.kl_coef,
            top_fraction=c.top_fraction, loss_type=c.loss_type,
            max_response_tokens=c.max_new_tokens, batch_tokens=batch["batch_tokens"][0],
        )

    def _policy_outputs(self, model, batch):
        """(logits, tokens, mask) of `model` at the response positions, without gradient."""
        logits = model({"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]})
        logits, tokens, mask = next_token_targets(logits, batch["token_ids"],
                                                  batch["response_mask"])
        return ops.stop_gradient(logits), tokens, mask

    def update(self, rollout, advantages):
        """`updates_per_rollout` optimizer updates on one rollout, each over
        `grad_accum_steps` micro-batches (laid out on the mesh's "batch" axis); returns
        the loss info of the last update.

        With more than one update, pi_old is the rollout policy, and ERA decides once, on
        its logits: the scales and A' it picks are used for the old and the new log-probs
        alike, so the ratio compares one distribution at two parameter values.
        """
        c = self.config
        if self._train_step is None:
            self._train_step = make_train_step(self.causal_lm, self.optimizer, self._loss)
        response_mask = rollout.response_mask.astype("float32")
        if c.mask_truncated_completions:  # a cut-off response has no verdict to learn from
            response_mask = response_mask * ~rollout.truncated[:, None]
        pieces = c.grad_accum_steps
        # "dapo" divides by the whole batch's tokens; Keras averages the micro-batches'
        # gradients, so each micro-batch divides by that count / pieces (one per row).
        batch_tokens = max(float(response_mask[:, 1:].sum()), 1.0) / pieces
        batch = {
            "token_ids": rollout.token_ids,
            "padding_mask": rollout.padding_mask,
            "response_mask": response_mask,
            "advantages": advantages.astype("float32"),
            "batch_tokens": np.full(len(advantages), batch_tokens, "float32"),
        }
        sharded = shard_batch(self.distribution, batch)
        old = ref = None
        if c.updates_per_rollout > 1:
            logits, tokens, mask = self._policy_outputs(self.causal_lm, sharded)
            decision = self.era((logits, tokens, sharded["advantages"], mask))
            old = ops.convert_to_numpy(decision["log_probs"])
            batch.update({key: ops.convert_to_numpy(decision[name]) for key, name in (
                ("logit_scale", "logit_scale"), ("era_advantages", "advantages"),
                ("response_entropy", "response_entropy"))})
            sharded = shard_batch(self.distribution, batch)
        if self.reference is not None:
            logits, tokens, _ = self._policy_outputs(self.reference, sharded)
            ref = ops.convert_to_numpy(
                era_keras.token_log_probs(logits, tokens, temperature=c.temperature))
        size = len(rollout.token_ids) // pieces

        def piece(i, value):
            if value is None:
                return None
            return shard_batch(self.distribution, {"x": value[i * size:(i + 1) * size]})["x"]

        micro_batches = [
            ({k: piece(i, v) for k, v in batch.items()}, piece(i, old), piece(i, ref))
            for i in range(pieces)
        ] if pieces > 1 else [(sharded, piece(0, old), piece(0, ref))]
        for _ in range(c.updates_per_rollout):
            infos = [self._train_step(*micro) for micro in micro_batches]
        return merge_infos(infos)

    def train_step_metrics(self, rollout, rewards, task_rewards, advantages, sampling, info,
                           seconds):
        """One step's metrics, named `train/`, `entropy/` and `perf/` (see docs/grpo.md)."""
        h = np.asarray(info.extra["response_entropy"])
        c = self.config
        groups = task_rewards.reshape(-1, c.group_size)
        tokens = float(rollout.response_mask.sum())
        # The loss sees tokens 1.. of each row (next-token targets): count the same ones.
        response_tokens = rollout.response_mask[:, 1:]
        positive_tokens = float((response_tokens * (advantages[:, None] > 0)).sum())
        return {
            **grouped("train", {
                "reward": rewards.mean(),
                "accuracy": (task_rewards > 0).mean(),
                "truncated_share": rollout.truncated.mean(),
                **sampling,
                "groups_with_signal": (groups.std(axis=1) > 0).mean(),
                "response_length": rollout.response_lengths.mean(),
                "loss": info.loss,
                "policy_loss": info.extra["policy_loss"],
                "kl": info.extra["kl"],
                "clip_fraction": info.extra["clip_fraction"],
            }),
            **grouped("entropy", {
                "h_resp_mean": h.mean(),
                "h_resp_p10": np.quantile(h, 0.1),
                "h_resp_p50": np.quantile(h, 0.5),
                "h_resp_p90": np.quantile(h, 0.9),
                "share_below_omega_low": (h < c.omega_low).mean(),
                "share_above_omega_high": (h > c.omega_high).mean(),
                "share_tokens_scaled_up": info.extra["share_scaled_up"],
                "share_tokens_scaled_down": info.extra["share_scaled_down"],
                "share_tokens_positive_advantage":
                    positive_tokens / max(float(response_tokens.sum()), 1.0),
            }),
            **grouped("perf", {"tokens_per_s": tokens / seconds, "step_seconds": seconds}),
        }

    def evaluate(self):
        """Held-out metrics (`eval/...`) of the current policy."""
        c = self.config
        metrics = evaluate(self.generator, self.eval_problems, self.reward_fns,
                           c.eval_samples, seed=c.seed * 7919 + self.step)
        return grouped("eval", metrics)

    def train_one_step(self):
        """Rollout, rewards, update for step `self.step + 1`; returns its metrics."""
        step = self.step + 1
        start = time.perf_counter()
        rollout, rewards, task_rewards, advantages, sampling = self.rollout(step)
        sampled = time.perf_counter()
        info = self.update(rollout, advantages)
        info = type(info)(ops.convert_to_numpy(info.loss),
                          {k: ops.convert_to_numpy(v) for k, v in info.extra.items()})
        end = time.perf_counter()
        metrics = self.train_step_metrics(rollout, rewards, task_rewards, advantages, sampling,
                                          info, end - start)
        metrics.update(grouped("perf", {"rollout_seconds": sampled - start,
                                        "update_seconds": end - sampled}))
        self.step = step
        return metrics

    # --- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, run_dir):
        return save_checkpoint(run_dir, self.step, self.causal_lm, self.optimizer,
                               {"history": self.history})

    def restore(self, checkpoint):
        """Continue from a restored checkpoint (after `prepare_sampling` built the optimizer)."""
        self.optimizer.load_own_variables(checkpoint.optimizer_variables)
        self.step, self.history = checkpoint.step, checkpoint.state["history"]

    # --- plots -------------------------------------------------------------------------
    def log_plots(self):
        rows = self.history
        if not rows:
            return
        steps = [r["step"] for r in rows]

        def series(key):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            return ([p[0] for p in pts], [p[1] for p in pts])

        entropy = {f"H_resp/{q}": series(f"entropy/h_resp_{q}") for q in ("p10", "p50", "p90")}
        entropy["H_resp/omega_low"] = (steps, [self.config.omega_low] * len(steps))
        entropy["ERA share of tokens/scaled up"] = series("entropy/share_tokens_scaled_up")
        entropy["ERA share of tokens/scaled down"] = series("entropy/share_tokens_scaled_down")
        log_curves(entropy, "plots/entropy.png", title="Response entropy (nats)")
        k = self.config.eval_samples
        log_curves({
            "reward/train": series("train/reward"),
            "accuracy/train": series("train/accuracy"),
            "accuracy/eval greedy": series("eval/greedy_accuracy"),
            "accuracy/eval mean": series("eval/mean_accuracy"),
            f"accuracy/eval pass@{k}": series(f"eval/pass_at_{k}"),
            "distinct correct answers/eval": series("eval/distinct_correct"),
        }, "plots/reward.png", title="Reward and accuracy")


# Fields a resumed run may change: how long it trains, how often it checkpoints, and the
# devices it runs on (checkpoints restore on any mesh).
MAY_CHANGE = ("steps", "checkpoint_every", "distribution")


def default_run_name(config):
    """pipeline, model, task, arm and seed, e.g. "grpo tiny:qwen digit_sum era seed 0"."""
    task = pathlib.Path(config.task).name
    return f"grpo {config.model} {task} {'era' if config.era else 'vanilla'} seed {config.seed}"


def logged_steps(run_id):
    """The last step whose metrics a run logged to MLflow (0 when none)."""
    steps, _ = metric_history(run_id, ["train/reward"])["train/reward"]
    return max(steps, default=0)


def run(config, tracking_uri=None, export=True, model_name="grpo_policy", progress=True):
    """Train (or resume) a GRPO run as configured; returns the trainer.

    Everything runs under the configured distribution (`--distribution`): the model is
    built or restored under it, so its variables are created on the mesh.
    """
    spec = parse_distribution(config.distribution)
    distribution = build_distribution(
        spec, backbone_class(config.model) if spec.kind == "model" else None)
    with distribution_scope(distribution):
        return _run(config, spec, distribution, tracking_uri, export, model_name, progress)


def _run(config, spec, distribution, tracking_uri, export, model_name, progress):
    """The run itself (see `run`).

    The run dir is claimed only once the task, the model and the lengths have been checked,
    so a typo never blocks it; a resumed run must have the same settings (but `steps`,
    `checkpoint_every` and `distribution`). Metrics of steps that MLflow already holds
    (steps after the last checkpoint, trained again after a kill) are not logged twice.
    """
    import mlflow
    from tqdm.auto import tqdm

    keras.utils.set_random_seed(config.seed)
    run_dir = RunDir(config.run_dir)
    train_problems, eval_problems = load_problems(config)
    resuming = run_dir.saved_config() is not None
    if resuming:  # refuse other settings before any work
        run_dir.claim(config, may_change=MAY_CHANGE)
    checkpoint = restore_checkpoint(run_dir) if resuming else None
    causal_lm = checkpoint.causal_lm if checkpoint is not None else build_causal_lm(config)
    train_problems, eval_problems = render_chat_prompts(config, causal_lm, train_problems,
                                                        eval_problems)
    trainer = GRPOTrainer(config, causal_lm, train_problems, eval_problems, distribution)
    trainer.check_lengths(warm_start=checkpoint is None)
    if not resuming:
        run_dir.claim(config, may_change=MAY_CHANGE)
    trainer.run_name = config.run_name or default_run_name(config)
    with tracked_run(config.experiment, config, run_dir=run_dir, tracking_uri=tracking_uri,
                     run_name=trainer.run_name) as active:
        trainer.run_id = active.info.run_id
        already_logged = 0
        if checkpoint is None:
            if config.warm_start_steps:
                history = trainer.run_warm_start(verbose="auto" if progress else 0)
                mlflow.log_metric("train/warm_start_loss", history["loss"][-1])
            if config.lora_rank:
                save_lora_base(run_dir.path, causal_lm)
            trainer.prepare_sampling(run_dir.path)
            trainer.history.append({"step": 0, **trainer.evaluate()})
            mlflow.log_metrics({k: v for k, v in trainer.history[0].items() if k != "step"}, step=0)
            trainer.save_checkpoint(run_dir)
        else:
            trainer.prepare_sampling(run_dir.path)
            trainer.restore(checkpoint)
            run_dir.announce_resume(f"step {trainer.step}")
            mlflow.set_tag("resumed_from_step", trainer.step)
            already_logged = logged_steps(trainer.run_id)
        # Tags, not params: a run may resume on another mesh.
        mlflow.set_tags({f"layout.{k}": v
                         for k, v in describe(spec, distribution, trainer.causal_lm).items()})
        bar = tqdm(total=config.steps, initial=trainer.step, desc="GRPO" + (
            "+ERA" if config.era else ""), unit="step", disable=not progress)
        while trainer.step < config.steps:
            metrics = trainer.train_one_step()
            if trainer.step % config.eval_every == 0 or trainer.step == config.steps:
                metrics.update(trainer.evaluate())
            trainer.history.append({"step": trainer.step, **metrics})
            # Sampling is seeded by (seed, step): a step trained again after a kill draws
            # the same prompts and samples, and MLflow keeps what it logged the first time.
            if trainer.step > already_logged:
                mlflow.log_metrics(metrics, step=trainer.step)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['train/reward']:+.2f}",
                            H=f"{metrics['entropy/h_resp_p50']:.2f}")
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                trainer.save_checkpoint(run_dir)
        bar.close()
        trainer.log_plots()
        write_json(run_dir / "history.json", trainer.history)
        mlflow.log_artifact(str(run_dir / "history.json"))
        trainer.export_paths = {}
        if export:
            from pipelines.grpo.export import export_all

            trainer.export_paths = export_all(trainer.causal_lm, run_dir / "export", model_name)
            trainer.export_paths.update(export_run_hf_dir(trainer.causal_lm, config,
                                                          run_dir / "export" / "hf"))
            mlflow.set_tags({f"export.{k}": str(v) for k, v in trainer.export_paths.items()})
    run_dir.finish({
        "run_id": trainer.run_id, "step": trainer.step,
        "export": {k: str(v) for k, v in trainer.export_paths.items()},
        "eval": {k: v for k, v in trainer.history[-1].items() if k.startswith("eval/")},
    })
    return trainer
