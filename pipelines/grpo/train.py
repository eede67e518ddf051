"""The GRPO(+ERA) loop: sample groups, score them, update the policy; track and checkpoint.

One step: draw `prompts_per_step` training prompts, sample `group_size` completions each
(keras-hub generation, top-p sampling at `temperature`), reward them (+1/-1), normalise
rewards within each group into advantages, and take `updates_per_rollout` optimizer steps
on `grpo_loss` (ERA on unless `era=False`, which makes this the vanilla GRPO baseline).

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
from pipelines.common.tracking import log_curves, tracked_run, write_json
from pipelines.grpo.checkpoint import restore_checkpoint, save_checkpoint, save_lora_base
from pipelines.grpo.distribution import (
    build_distribution,
    describe,
    distribution_scope,
    parse_distribution,
    shard_batch,
)
from pipelines.grpo.evaluate import evaluate
from pipelines.grpo.loss import group_advantages, grpo_loss, next_token_targets
from pipelines.grpo.models import backbone_class, enable_lora, load_causal_lm, tiny_causal_lm
from pipelines.grpo.optim import build_optimizer
from pipelines.grpo.rewards import get_reward
from pipelines.grpo.rollout import RolloutGenerator
from pipelines.grpo.step import make_train_step
from pipelines.grpo.tasks import BUILTIN_TASKS, builtin_problems, load_jsonl, split_problems
from pipelines.grpo.warm_start import warm_start


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
        self.era = (
            era_keras.LogitERA(
                k=config.era_k, omega_low=config.omega_low, omega_high=config.omega_high,
                top_fraction=config.top_fraction, temperature=config.temperature,
                top_k=config.era_top_k, scale_advantages=config.scale_advantages,
            )
            if config.era else None
        )
        self.optimizer = build_optimizer(config)
        self.step = 0
        self.history = []
        self.reference = None
        self._train_step = None
        self._forward = None

    # --- setup ---------------------------------------------------------------------
    def prepare_sampling(self):
        c = self.config
        self.generator = RolloutGenerator(
            self.causal_lm, c.max_prompt_tokens, c.max_new_tokens,
            samplers={
                "train": keras_hub.samplers.TopPSampler(p=c.top_p, temperature=c.temperature,
                                                        seed=c.seed),
                "eval": keras_hub.samplers.TopPSampler(p=c.eval_top_p,
                                                       temperature=c.eval_temperature,
                                                       seed=c.seed),
                "greedy": keras_hub.samplers.GreedySampler(),
            },
            shard=lambda arrays: shard_batch(self.distribution, arrays),
        )
        if c.kl_coef > 0 and self.reference is None:
            backbone = self.causal_lm.backbone
            reference_backbone = backbone.__class__.from_config(backbone.get_config())
            # With LoRA on, the reference is the frozen base: every weight but the LoRA pairs.
            reference_backbone.set_weights(
                [w.numpy() for w in backbone.weights if "lora_kernel" not in w.path])
            self.reference = self.causal_lm.__class__(backbone=reference_backbone,
                                                      preprocessor=None)
        if c.lora_rank:
            enable_lora(self.causal_lm, c.lora_rank)
        self.optimizer.build(self.causal_lm.trainable_variables)

    def run_warm_start(self, verbose="auto"):
        c = self.config
        if c.task not in BUILTIN_TASKS:
            raise ValueError(
                "The supervised warm start needs worked solutions, which only the built-in "
                f"tasks ({', '.join(BUILTIN_TASKS)}) have; pass --warm-start-steps 0 for JSONL "
                "data (and a model that already solves some of it)."
            )
        problems = builtin_problems(c.task, "train", c.warm_start_steps * c.warm_start_batch_size,
                                    c.seed + 7, c.held_out_fraction)
        return warm_start(self.causal_lm, problems, c.warm_start_batch_size,
                          c.warm_start_learning_rate,
                          c.max_prompt_tokens + c.max_new_tokens, seed=c.seed, verbose=verbose)

    # --- one GRPO step -------------------------------------------------------------
    def sample_prompts(self, step):
        rng = np.random.default_rng([self.config.seed, step])
        picks = rng.choice(len(self.train_problems), self.config.prompts_per_step,
                           replace=len(self.train_problems) < self.config.prompts_per_step)
        return [self.train_problems[i] for i in picks]

    def rollout(self, step):
        c = self.config
        problems = self.sample_prompts(step)
        grouped = [p for p in problems for _ in range(c.group_size)]
        rollout = self.generator.generate([p.prompt for p in grouped], "train",
                                          seed=c.seed * 1_000_003 + step)
        rewards = np.array([self.reward_fns[p.reward](text, p.reference)
                            for p, text in zip(grouped, rollout.completions)], "float32")
        return rollout, rewards, group_advantages(rewards, c.group_size)

    def _loss(self, model, batch, old_log_probs=None, reference_log_probs=None):
        """The GRPO(+ERA) loss of `model` on a batch of rollouts (see `loss.grpo_loss`)."""
        logits = model({"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]},
                       training=True)
        logits, tokens, mask = next_token_targets(logits, batch["token_ids"],
                                                  batch["response_mask"])
        c = self.config
        return grpo_loss(
            logits, tokens, mask, batch["advantages"], old_log_probs=old_log_probs,
            era=self.era, temperature=c.temperature, clip_epsilon=c.clip_epsilon,
            clip_epsilon_high=c.clip_epsilon_high, dual_clip=c.dual_clip,
            reference_log_probs=reference_log_probs, kl_coef=c.kl_coef,
            top_fraction=c.top_fraction,
        )

    def _token_log_probs(self, model, batch, era_scaled):
        """log pi of the response tokens without gradient (for pi_old and the reference)."""
        logits = model({"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]})
        logits, tokens, mask = next_token_targets(logits, batch["token_ids"],
                                                  batch["response_mask"])
        if era_scaled and self.era is not None:
            return self.era((logits, tokens, batch["advantages"], mask))["log_probs"]
        return era_keras.token_log_probs(logits, tokens, temperature=self.config.temperature)

    def update(self, rollout, advantages):
        """`updates_per_rollout` optimizer updates on the rollouts, each over
        `grad_accum_steps` micro-batches (laid out on the mesh's "batch" axis)."""
        if self._train_step is None:
            self._train_step = make_train_step(self.causal_lm, self.optimizer, self._loss)
        batch = {
            "token_ids": rollout.token_ids,
            "padding_mask": rollout.padding_mask,
            "response_mask": rollout.response_mask.astype("float32"),
            "advantages": advantages.astype("float32"),
        }
        sharded = shard_batch(self.distribution, batch)
        old = ref = None
        if self.config.updates_per_rollout > 1:
            old = ops.convert_to_numpy(ops.stop_gradient(
                self._token_log_probs(self.causal_lm, sharded, True)))
        if self.reference is not None:
            ref = ops.convert_to_numpy(self._token_log_probs(self.reference, sharded, False))
        pieces = self.config.grad_accum_steps
        size = len(rollout.token_ids) // pieces

        def piece(i, value):
            if value is None:
                return None
            return shard_batch(self.distribution, {"x": value[i * size:(i + 1) * size]})["x"]

        micro_batches = [
            ({k: piece(i, v) for k, v in batch.items()}, piece(i, old), piece(i, ref))
            for i in range(pieces)
        ] if pieces > 1 else [(sharded, piece(0, old), piece(0, ref))]
        for _ in range(self.config.updates_per_rollout):
            infos = [self._train_step(*micro) for micro in micro_batches]
        return merge_infos(infos)

    def train_step_metrics(self, rollout, rewards, advantages, info, seconds):
        h = np.asarray(info.extra["response_entropy"])
        c = self.config
        groups = rewards.reshape(-1, c.group_size)
        tokens = float(rollout.response_mask.sum())
        # The loss sees tokens 1.. of each row (next-token targets): count the same ones.
        response_tokens = rollout.response_mask[:, 1:]
        positive_tokens = float((response_tokens * (advantages[:, None] > 0)).sum())
        return {
            "reward": float(rewards.mean()),
            "accuracy": float((rewards > 0).mean()),
            "groups_with_signal": float((groups.std(axis=1) > 0).mean()),
            "response_length": float(rollout.response_lengths.mean()),
            "h_resp_mean": float(h.mean()),
            "h_resp_p10": float(np.quantile(h, 0.1)),
            "h_resp_p50": float(np.quantile(h, 0.5)),
            "h_resp_p90": float(np.quantile(h, 0.9)),
            "share_below_omega_low": float((h < c.omega_low).mean()),
            "share_above_omega_high": float((h > c.omega_high).mean()),
            "share_tokens_scaled_up": float(info.extra["share_scaled_up"]),
            "share_tokens_scaled_down": float(info.extra["share_scaled_down"]),
            "share_tokens_positive_advantage": positive_tokens / max(float(response_tokens.sum()), 1.0),
            "loss": float(info.loss),
            "policy_loss": float(info.extra["policy_loss"]),
            "kl": float(info.extra["kl"]),
            "clip_fraction": float(info.extra["clip_fraction"]),
            "tokens_per_s": tokens / seconds,
            "step_seconds": seconds,
        }

    def evaluate(self):
        c = self.config
        metrics = evaluate(self.generator, self.eval_problems, self.reward_fns,
                           c.eval_samples, seed=c.seed * 7919 + self.step)
        return {f"eval_{k}": v for k, v in metrics.items()}

    def train_one_step(self):
        """Rollout, rewards, update for step `self.step + 1`; returns its metrics."""
        step = self.step + 1
        start = time.perf_counter()
        rollout, rewards, advantages = self.rollout(step)
        sampled = time.perf_counter()
        info = self.update(rollout, advantages)
        info = type(info)(ops.convert_to_numpy(info.loss),
                          {k: ops.convert_to_numpy(v) for k, v in info.extra.items()})
        end = time.perf_counter()
        metrics = self.train_step_metrics(rollout, rewards, advantages, info, end - start)
        metrics["rollout_seconds"], metrics["update_seconds"] = sampled - start, end - sampled
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

        entropy = {f"H_resp/{q}": series(f"h_resp_{q}") for q in ("p10", "p50", "p90")}
        entropy["H_resp/omega_low"] = (steps, [self.config.omega_low] * len(steps))
        entropy["ERA share of tokens/scaled up"] = series("share_tokens_scaled_up")
        entropy["ERA share of tokens/scaled down"] = series("share_tokens_scaled_down")
        log_curves(entropy, "plots/entropy.png", title="Response entropy (nats)")
        k = self.config.eval_samples
        log_curves({
            "reward/train": series("reward"),
            "accuracy/train": series("accuracy"),
            "accuracy/eval greedy": series("eval_greedy_accuracy"),
            "accuracy/eval mean": series("eval_mean_accuracy"),
            f"accuracy/eval pass@{k}": series(f"eval_pass_at_{k}"),
            "distinct correct answers/eval": series("eval_distinct_correct"),
        }, "plots/reward.png", title="Reward and accuracy")


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
    import mlflow
    from tqdm.auto import tqdm

    keras.utils.set_random_seed(config.seed)
    run_dir = pathlib.Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_problems, eval_problems = load_problems(config)
    checkpoint = restore_checkpoint(run_dir)
    causal_lm = checkpoint.causal_lm if checkpoint is not None else build_causal_lm(config)
    trainer = GRPOTrainer(config, causal_lm, train_problems, eval_problems, distribution)
    with tracked_run(config.experiment, config, run_dir=run_dir, tracking_uri=tracking_uri,
                     run_name=config.run_name) as active:
        if checkpoint is None:
            if config.warm_start_steps:
                history = trainer.run_warm_start(verbose="auto" if progress else 0)
                mlflow.log_metric("warm_start_loss", history["loss"][-1])
            if config.lora_rank:
                save_lora_base(run_dir, causal_lm)
            trainer.prepare_sampling()
            trainer.history.append({"step": 0, **trainer.evaluate()})
            mlflow.log_metrics({k: v for k, v in trainer.history[0].items() if k != "step"}, step=0)
            trainer.save_checkpoint(run_dir)
        else:
            trainer.prepare_sampling()
            trainer.restore(checkpoint)
            mlflow.set_tag("resumed_from_step", trainer.step)
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
            mlflow.log_metrics(metrics, step=trainer.step)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:+.2f}",
                            H=f"{metrics['h_resp_p50']:.2f}")
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                trainer.save_checkpoint(run_dir)
        bar.close()
        trainer.log_plots()
        write_json(run_dir / "history.json", trainer.history)
        mlflow.log_artifact(str(run_dir / "history.json"))
        if export:
            from pipelines.grpo.export import export_all

            paths = export_all(trainer.causal_lm, run_dir / "export", model_name)
            mlflow.set_tags({f"export.{k}": str(v) for k, v in paths.items()})
        trainer.run_id = active.info.run_id
    return trainer
