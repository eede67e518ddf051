"""Runs GRPO updates under Keras distributions in a process of its own (JAX, 4 CPU devices).

The device count of a JAX process is fixed when JAX starts, so tests drive this script
in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=4`:

    python tests/grpo/scale_worker.py update OUT.npz none data model:2x2
    python tests/grpo/scale_worker.py save OUT.npz model:2x2 CHECKPOINT_DIR
    python tests/grpo/scale_worker.py restore OUT.npz none CHECKPOINT_DIR

`update`: for each distribution, the same tiny Qwen (seed 0) decodes 4 prompts greedily
(keras-hub's generate, prompts laid out on "batch"), then takes one GRPO+ERA update on
the same rollouts; writes the tokens, the loss, every weight after the update, and where
each weight lives.
`save`: one update, a checkpoint, then a second update; `restore`: the checkpoint restored
under another distribution, then the same second update. Both write the weights and
optimizer variables right after the checkpoint and after the second update.
"""

import os
import sys

import numpy as np

FAMILY = os.environ.get("SCALE_WORKER_FAMILY", "qwen")


def config(**overrides):
    from pipelines.grpo.config import GRPOConfig

    # omega_low above every entropy: ERA scales every positive-advantage token, so the
    # ERA path is part of what is compared. A large learning rate makes the update visible.
    settings = dict(model=f"tiny:{FAMILY}", task="arithmetic", tiny_layers=1,
                    tiny_hidden_dim=32, warm_start_steps=0, prompts_per_step=2,
                    group_size=4, max_prompt_tokens=8, max_new_tokens=8, learning_rate=1e-2,
                    omega_low=10.0, omega_high=20.0, num_eval_prompts=4, eval_samples=2)
    settings.update(overrides)
    return GRPOConfig(**settings)


def rollout(seed, vocabulary_size, batch=8, prompt=8, new=8, equal_lengths=False):
    """Fixed rollouts: random tokens, responses of random lengths (or all `new` long),
    +1/-1 rewards."""
    from pipelines.grpo.loss import group_advantages
    from pipelines.grpo.rollout import Rollout

    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, vocabulary_size - 8, (batch, prompt + new)).astype("int32")
    lengths = np.full(batch, new) if equal_lengths else rng.integers(2, new + 1, batch)
    positions = np.arange(prompt + new)[None, :]
    response_mask = (positions >= prompt) & (positions < prompt + lengths[:, None])
    padding_mask = positions < prompt + lengths[:, None]
    rewards = np.tile([1.0, -1.0, -1.0, 1.0], batch // 4).astype("float32")
    return (Rollout([""] * batch, token_ids, padding_mask, response_mask, [""] * batch),
            group_advantages(rewards, 4))


def trainer_for(form, **overrides):
    """(config, distribution) of `form`."""
    from pipelines.grpo.distribution import build_distribution, parse_distribution
    from pipelines.grpo.models import backbone_class

    c = config(distribution=form, **overrides)
    spec = parse_distribution(form)
    distribution = build_distribution(spec, backbone_class(c.model))
    return c, distribution


def weights(causal_lm):
    from pipelines.grpo.processes import to_numpy

    return {f"w/{v.path}": to_numpy(v.value) for v in causal_lm.weights}


def optimizer_state(optimizer):
    return {f"o/{i}": np.asarray(v.value) for i, v in enumerate(optimizer.variables)}


def shardings(causal_lm):
    from pipelines.grpo.distribution import variable_sharding

    out = {}
    for v in causal_lm.weights:
        spec = variable_sharding(v)
        out[f"s/{v.path}"] = np.array([str(a) for a in spec])
        shard = v.value.addressable_shards[0].data.shape
        out[f"shard/{v.path}"] = np.array(shard, dtype="int64")
    return out


def main(task, out, *args):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    from pipelines.grpo.checkpoint import restore_checkpoint
    from pipelines.grpo.distribution import distribution_scope
    from pipelines.grpo.train import GRPOTrainer, build_causal_lm

    results = {}
    if task == "update":
        for form in args:
            c, distribution = trainer_for(form)
            with distribution_scope(distribution):
                keras.utils.set_random_seed(0)
                causal_lm = build_causal_lm(c)
                trainer = GRPOTrainer(c, causal_lm, [], [], distribution)
                trainer.prepare_sampling()
                before = weights(causal_lm)
                greedy = trainer.generator.generate(["12+3=", "7*8=", "1+1=", "9-4="], "greedy")
                results[f"{form}/greedy"] = greedy.token_ids
                batch, advantages = rollout(0, causal_lm.backbone.vocabulary_size)
                info = trainer.update(batch, advantages)
                results[f"{form}/loss"] = np.asarray(info.loss)
                results.update({f"{form}/{k}": v for k, v in weights(causal_lm).items()})
                results.update({f"{form}/{k}": v for k, v in shardings(causal_lm).items()})
                if form == "none":
                    results.update({f"before/{k}": v for k, v in before.items()})
    elif task == "layouts":
        # Qwen3 and Gemma 3: the layout maps written here (keras-hub has none).
        form = args[0]
        for family in ("qwen3", "gemma3"):
            c, distribution = trainer_for(form, model=f"tiny:{family}")
            with distribution_scope(distribution):
                causal_lm = build_causal_lm(c)
                results.update({f"{family}/{k}": v for k, v in shardings(causal_lm).items()})
    elif task in ("save", "restore"):
        form, checkpoint_dir = args
        c, distribution = trainer_for(form)
        with distribution_scope(distribution):
            if task == "save":
                keras.utils.set_random_seed(0)
                causal_lm = build_causal_lm(c)
                trainer = GRPOTrainer(c, causal_lm, [], [], distribution)
                trainer.prepare_sampling()
                trainer.update(*rollout(0, causal_lm.backbone.vocabulary_size))
                trainer.step = 1
                trainer.save_checkpoint(checkpoint_dir)
            else:
                checkpoint = restore_checkpoint(checkpoint_dir)
                causal_lm = checkpoint.causal_lm
                trainer = GRPOTrainer(c, causal_lm, [], [], distribution)
                trainer.prepare_sampling()
                trainer.restore(checkpoint)
            results.update({f"at_checkpoint/{k}": v for k, v in weights(causal_lm).items()})
            results.update({f"at_checkpoint/{k}": v
                            for k, v in optimizer_state(trainer.optimizer).items()})
            info = trainer.update(*rollout(1, causal_lm.backbone.vocabulary_size))
            results["next/loss"] = np.asarray(info.loss)
            results.update({f"next/{k}": v for k, v in weights(causal_lm).items()})
            results.update(shardings(causal_lm))
    else:
        raise SystemExit(f"unknown task {task!r}")
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
