"""Recipe options in the loop: dynamic sampling, truncated completions, one ERA decision per
rollout, the KL reference kept across a resume, and the era-paper preset."""

import json

import numpy as np
import pytest

from pipelines.common.errors import run_cli
from pipelines.grpo import rewards
from pipelines.grpo.__main__ import main
from pipelines.grpo.checkpoint import load_reference, restore_checkpoint
from pipelines.grpo.config import PRESETS, GRPOConfig
from pipelines.grpo.train import GRPOTrainer, build_causal_lm, load_problems, run

TINY = dict(model="tiny:qwen", task="arithmetic", tiny_layers=1, tiny_hidden_dim=32,
            warm_start_steps=0, prompts_per_step=4, group_size=4, num_eval_prompts=4,
            eval_samples=2, max_new_tokens=12, eval_every=2, checkpoint_every=1)


@pytest.fixture
def even_answers_always_right():
    """A reward that is +1 for every sample of a prompt with an even answer (a group with
    no signal) and, for odd answers, +1 for completions of odd length."""
    def reward(completion, reference):
        if int(reference) % 2 == 0:
            return 1.0
        return 1.0 if len(completion) % 2 else -1.0

    rewards.register_reward("even_answers_always_right", reward)
    yield "even_answers_always_right"
    rewards.REWARDS.pop("even_answers_always_right")


def _trainer(tmp_path, **settings):
    config = GRPOConfig(run_dir=str(tmp_path / "run"), **{**TINY, **settings})
    train, test = load_problems(config)
    trainer = GRPOTrainer(config, build_causal_lm(config), train, test)
    trainer.prepare_sampling()
    return trainer


def _even(problems):
    return [int(p.reference) % 2 == 0 for p in problems]


def test_dynamic_sampling_drops_groups_whose_rewards_are_all_equal(
        tmp_path, even_answers_always_right):
    trainer = _trainer(tmp_path, reward=even_answers_always_right, dynamic_sampling=True,
                       max_sampling_rounds=8, group_size=8)
    assert any(_even(trainer.sampler.prompts(1)))  # without filtering, some would be kept
    batch = trainer.sampler.sample(1)
    rollout, task_rewards, advantages, sampling = (
        batch.rollout, batch.task_rewards, batch.advantages, batch.stats)
    groups = task_rewards.reshape(4, 8)
    # Every kept group carries signal; no prompt with an even answer is left in the batch.
    assert np.all(groups.std(axis=1) > 0)
    kept_prompts = {rollout.prompts[g * 8] for g in range(4)}
    even_prompts = {p.prompt for r in range(1, sampling["sampling_rounds"] + 1)
                    for p, even in zip(trainer.sampler.prompts(1, r),
                                       _even(trainer.sampler.prompts(1, r))) if even}
    assert not kept_prompts & even_prompts
    sampled = 4 * sampling["sampling_rounds"]
    # Dropped: at least the even-answer groups drawn (odd ones rarely lack signal).
    assert sampling["share_groups_dropped"] >= len(
        [e for r in range(1, sampling["sampling_rounds"] + 1)
         for e in _even(trainer.sampler.prompts(1, r)) if e]) / sampled - 1e-9
    assert sampling["share_groups_dropped"] > 0 and sampling["sampling_rounds"] >= 1
    assert advantages.shape == (32,)


def test_dynamic_sampling_fills_a_short_batch_with_dropped_groups(
        tmp_path, even_answers_always_right):
    trainer = _trainer(tmp_path, reward=even_answers_always_right, dynamic_sampling=True,
                       max_sampling_rounds=1)
    evens = sum(_even(trainer.sampler.prompts(1)))
    assert evens > 0
    batch = trainer.sampler.sample(1)
    rollout, advantages, sampling = batch.rollout, batch.advantages, batch.stats
    assert rollout.token_ids.shape[0] == 16  # the shape never changes
    assert sampling["sampling_rounds"] == 1
    assert sampling["share_groups_dropped"] >= evens / 4
    # The filling groups carry no signal: advantage 0.
    assert np.sum(np.all(advantages.reshape(4, 4) == 0, axis=1)) >= evens


def test_masked_truncated_completions_give_no_gradient(tmp_path):
    """Truncation is read from the rollout (no end token among the response tokens); with
    every completion marked truncated and masking on, the update leaves the weights
    unchanged (Adam's step is 0 for a zero gradient), and without masking it moves them."""
    for mask, should_change in ((True, False), (False, True)):
        trainer = _trainer(tmp_path / str(mask), max_new_tokens=2, overlong_buffer_len=0,
                           mask_truncated_completions=mask, learning_rate=1e-2,
                           reward="math")
        rollout, advantages = trainer.sampler.sample(1).rollout, None
        stop = trainer.generator.stop_token_ids
        ended = [(np.isin(ids, stop) & m).any() for ids, m in
                 zip(rollout.token_ids, rollout.response_mask)]
        np.testing.assert_array_equal(rollout.truncated, ~np.array(ended))
        rollout.truncated = np.ones_like(rollout.truncated)
        advantages = np.linspace(-1, 1, len(rollout.token_ids)).astype("float32")  # signal
        before = [np.array(v) for v in trainer.causal_lm.trainable_variables]
        trainer.update(rollout, advantages)
        after = [np.array(v) for v in trainer.causal_lm.trainable_variables]
        changed = any(not np.array_equal(a, b) for a, b in zip(before, after))
        assert changed == should_change, mask


def test_several_updates_per_rollout_use_the_rollout_policys_era_decision(tmp_path):
    """H_resp reported by the update is the rollout policy's (ERA decides once per rollout),
    even though three large optimizer steps change the policy in between."""
    trainer = _trainer(tmp_path, updates_per_rollout=3, learning_rate=5e-2, reward="math",
                       omega_low=0.0, omega_high=100.0)
    rollout = trainer.sampler.sample(1).rollout
    advantages = np.linspace(-1, 1, len(rollout.token_ids)).astype("float32")
    batch = {"token_ids": rollout.token_ids, "padding_mask": rollout.padding_mask,
             "response_mask": rollout.response_mask.astype("float32"),
             "advantages": advantages}
    logits, tokens, mask = trainer.policy_update.outputs(trainer.causal_lm, batch)
    before = np.asarray(trainer.era((logits, tokens, advantages, mask))["response_entropy"])
    info = trainer.update(rollout, advantages)
    np.testing.assert_allclose(np.asarray(info.extra["response_entropy"]), before, rtol=1e-5)
    logits, tokens, mask = trainer.policy_update.outputs(trainer.causal_lm, batch)
    after = np.asarray(trainer.era((logits, tokens, advantages, mask))["response_entropy"])
    assert np.max(np.abs(after - before)) > 1e-3  # the policy did move


@pytest.mark.slow
def test_a_resumed_run_keeps_its_kl_reference(tmp_path, tracking_uri):
    settings = dict(TINY, kl_coef=0.1, learning_rate=1e-2, reward="math", eval_every=10)
    run_dir = tmp_path / "run"
    run(GRPOConfig(steps=1, run_dir=str(run_dir), **settings),
        tracking_uri=tracking_uri, export=False, progress=False)
    reference = [np.array(w) for w in load_reference(run_dir).backbone.get_weights()]
    trained = [np.array(w) for w in restore_checkpoint(run_dir).causal_lm.backbone.get_weights()]
    assert any(not np.allclose(a, b) for a, b in zip(reference, trained))
    assert (run_dir / "reference" / "config.json").exists()
    # The resumed run's trainer is built from the run dir, its reference loaded from there.
    config = GRPOConfig(steps=2, run_dir=str(run_dir), **settings)
    checkpoint = restore_checkpoint(run_dir)
    resumed = GRPOTrainer(config, checkpoint.causal_lm, *load_problems(config))
    resumed.prepare_sampling(run_dir)
    for a, b in zip(resumed.reference.backbone.get_weights(), reference):
        np.testing.assert_array_equal(np.array(a), b)
    assert run(config, tracking_uri=tracking_uri, export=False, progress=False)["step"] == 2


def test_era_paper_preset_is_the_authors_script_and_print_config_shows_it(capsys, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    assert run_cli(main, ["--preset", "era-paper", "--task", str(data),
                          "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for key, value in PRESETS["era-paper"].items():
        assert printed[key] == value, key
    # The shipped script: adv_scale=True, topk=True (20), clip 1.0 / 1.0, dual clip 10,
    # lr 1e-6, 8 responses per prompt, filter groups on, token-mean, no KL.
    assert printed["scale_advantages"] is True and printed["era_top_k"] == 20
    assert (printed["epsilon"], printed["epsilon_high"], printed["dual_clip"]) == (
        1.0, 1.0, 10.0)
    assert printed["learning_rate"] == 1e-6 and printed["group_size"] == 8
    assert printed["dynamic_sampling"] is True and printed["loss_type"] == "dapo"
    assert printed["kl_coef"] == 0.0
    # Flags given on the command line win over the preset.
    assert run_cli(main, ["--preset", "era-paper", "--task", str(data),
                          "--group-size", "4", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["group_size"] == 4
