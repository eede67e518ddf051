"""The left-padded rollout decode against keras-hub's own generate and the model itself.

The loop (`pipelines.grpo.generate.left_padded_decode`) pads prompts on the left and
decodes exactly the new tokens; keras-hub's generate pads on the right. Greedy rollouts
must be the same tokens, sampled ones the same per-step distributions, and the update
must see exactly the response tokens.
"""

import keras
import keras_hub
import numpy as np
import pytest
from scipy import stats

from era_keras import response_entropy, token_entropy
from pipelines.grpo.generate import Sampling, compile_left_padded_decode
from pipelines.grpo.models import tiny_causal_lm
from pipelines.grpo.rollout import PROMPT_BUCKET, Rollout, RolloutGenerator

# Prompts of 1 to 8 tokens: mixed lengths are what the layouts treat differently.
PROMPTS = ["12+3=", "7-2-1=", "9", "41+17-8=", "3*3=", "20-19+1=", "5=", "123+456="]


def sharpened(family, scale, seed=0):
    """A tiny model whose logits are `scale` times the random init's (the tied embedding
    scaled: the input side is RMS-normalised, so only the output logits grow). Random
    init gives near-uniform logits; sharper ones keep greedy argmaxes far from ties."""
    lm = tiny_causal_lm(family, num_layers=2, hidden_dim=32, num_heads=4, seed=seed,
                        sequence_length=48)
    embedding = lm.backbone.token_embedding.embeddings
    embedding.assign(embedding.value * scale)
    return lm


def generators(lm, max_prompt_tokens=12, max_new_tokens=10, samplers=None):
    samplers = samplers or {"greedy": keras_hub.samplers.GreedySampler()}
    return {decoder: RolloutGenerator(lm, max_prompt_tokens, max_new_tokens, samplers,
                                      decoder=decoder) for decoder in ("auto", "keras_hub")}


def reference_log_probs(lm, rows):
    """log softmax of the model's next-token logits after each row of token ids, each
    row run alone and unpadded (positions from 0): the distribution generation samples."""
    out = []
    for row in rows:
        ids = np.asarray(row, "int32")[None, :]
        logits = lm({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)})
        out.append(np.asarray(keras.ops.log_softmax(logits[0, -1])))
    return np.stack(out)


@pytest.mark.parametrize("family", ["qwen", "qwen3"])
def test_greedy_rollouts_are_token_identical_to_keras_hub_generate(family):
    lm = sharpened(family, scale=20.0)
    gens = generators(lm)
    new, old = (gens[d].generate(PROMPTS, "greedy") for d in ("auto", "keras_hub"))
    assert new.token_ids.shape == (len(PROMPTS), 8 + 10)  # prompts of 1-8 tokens: width 8
    np.testing.assert_array_equal(new.token_ids, old.token_ids)
    np.testing.assert_array_equal(new.response_mask, old.response_mask)
    np.testing.assert_array_equal(new.truncated, old.truncated)
    assert new.completions == old.completions
    assert new.response_lengths.min() > 0


def test_decoded_tokens_follow_the_models_own_argmax_at_every_step():
    """Independent of keras-hub's generate: each greedy token is the argmax of the model's
    next-token logits on the unpadded prefix, with a margin above the float error."""
    lm = sharpened("qwen", scale=20.0)
    rollout = generators(lm)["auto"].generate(PROMPTS, "greedy")
    for row in range(len(PROMPTS)):
        real = rollout.token_ids[row][rollout.padding_mask[row]]
        prompt_length = len(real) - rollout.response_lengths[row]
        prefixes = [real[:t] for t in range(prompt_length, len(real))]
        log_p = reference_log_probs(lm, prefixes)
        np.testing.assert_array_equal(log_p.argmax(axis=1), real[prompt_length:])


def test_sampled_tokens_have_the_models_next_token_distribution():
    """Top-p 1 at temperature 0.7: the first and second sampled tokens of one prompt,
    over many rows, against softmax(logits / 0.7) of the model on the unpadded prefix
    (chi-square over bins of expected count >= 20, at a 1e-6 false-alarm level)."""
    lm = sharpened("qwen", scale=5.0, seed=3)
    temperature, rows = 0.7, 4000
    sampler = keras_hub.samplers.TopPSampler(p=1.0, temperature=temperature, seed=0)
    generator = RolloutGenerator(lm, 8, 2, {"train": sampler})
    prompts = ["12+3="] * (rows // 2) + ["7-2-1=9"] * (rows // 2)  # two widths' rows
    rollout = generator.generate(prompts, "train", seed=11)
    width = rollout.token_ids.shape[1] - 2
    first, second = rollout.token_ids[:, width], rollout.token_ids[:, width + 1]
    prompt_ids = generator.tokenize(["12+3="])[0]

    def check(samples, log_p):
        p = np.exp(log_p)
        order = np.argsort(-p)
        bins, current, mass = [], [], 0.0
        for token in order:  # merge the least likely tokens until each bin expects >= 20
            current.append(token)
            mass += p[token]
            if mass * len(samples) >= 20:
                bins.append(current)
                current, mass = [], 0.0
        if current:
            bins[-1] += current
        observed = [np.isin(samples, b).sum() for b in bins]
        expected = [p[b].sum() * len(samples) for b in bins]
        statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
        assert len(bins) > 5
        assert statistic < stats.chi2.ppf(1 - 1e-6, len(bins) - 1), (statistic, len(bins))

    # The model's distribution at temperature 0.7, from its plain forward pass.
    def tempered(log_p):
        logits = log_p / temperature
        return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)

    first_log_p = tempered(reference_log_probs(lm, [prompt_ids])[0])
    check(first[: rows // 2], first_log_p)
    # The second token's distribution is the mixture, over the first token, of the
    # model's next-token distribution after it (one forward pass per possible token).
    vocabulary = first_log_p.size
    prefixes = np.concatenate([np.repeat(prompt_ids[None], vocabulary, axis=0),
                               np.arange(vocabulary)[:, None]], axis=1).astype("int32")
    logits = lm({"token_ids": prefixes, "padding_mask": np.ones_like(prefixes, bool)})
    second_log_p = tempered(np.asarray(keras.ops.log_softmax(logits[:, -1])))
    mixture = np.logaddexp.reduce(first_log_p[:, None] + second_log_p, axis=0)
    check(second[: rows // 2], mixture)


def test_top_p_keeps_sampling_inside_the_nucleus():
    lm = sharpened("qwen", scale=5.0, seed=3)
    top_p, rows = 0.6, 2000
    sampler = keras_hub.samplers.TopPSampler(p=top_p, temperature=1.0, seed=0)
    generator = RolloutGenerator(lm, 8, 1, {"train": sampler})
    rollout = generator.generate(["12+3="] * rows, "train", seed=4)
    first = rollout.token_ids[:, -1]
    p = np.exp(reference_log_probs(lm, generator.tokenize(["12+3="]))[0])
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    nucleus = order[before <= top_p]  # keras-hub's TopPSampler rule
    assert 1 < nucleus.size < p.size
    assert np.isin(first, nucleus).all()
    # Renormalised over the nucleus, each kept token's share matches.
    kept = p[nucleus] / p[nucleus].sum()
    observed = np.array([(first == t).sum() for t in nucleus])
    statistic = ((observed - kept * rows) ** 2 / (kept * rows)).sum()
    assert statistic < stats.chi2.ppf(1 - 1e-6, nucleus.size - 1)


def test_seeded_sampling_repeats_and_streams_differ():
    lm = sharpened("qwen", scale=2.0)
    sampler = keras_hub.samplers.TopPSampler(p=1.0, temperature=1.0, seed=0)
    generator = RolloutGenerator(lm, 12, 10, {"train": sampler})
    a = generator.generate(PROMPTS, "train", seed=5)
    b = generator.generate(PROMPTS, "train", seed=5)
    c = generator.generate(PROMPTS, "train", seed=5, stream=1)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    assert not np.array_equal(a.token_ids, c.token_ids)


def test_the_loop_stops_once_every_row_has_ended():
    lm = sharpened("qwen", scale=20.0)
    generator = generators(lm)["auto"]
    ids, mask = generator.encode_prompts(PROMPTS[:3])
    width = ids.shape[1] - generator.max_new_tokens
    greedy = generator.generate(PROMPTS[:3], "greedy")
    # Make the tokens greedy decoding emits first stop tokens: one step, then padding.
    stops = tuple(int(t) for t in greedy.token_ids[:, width])
    decode = compile_left_padded_decode(lm, generator.max_new_tokens, Sampling(0.0), stops,
                                        pad_id=generator.pad_id)
    tokens, steps = decode(ids[:, :width], mask[:, :width], np.zeros(2, "int32"))
    assert int(steps) == 1
    np.testing.assert_array_equal(np.asarray(tokens)[:, 0], stops)
    assert (np.asarray(tokens)[:, 1:] == generator.pad_id).all()


def test_prompt_widths_are_bucketed_and_rollouts_of_two_widths_concatenate():
    lm = sharpened("qwen", scale=20.0)
    generator = generators(lm, max_prompt_tokens=20)["auto"]
    assert generator.prompt_width([1]) == PROMPT_BUCKET
    assert generator.prompt_width([3, PROMPT_BUCKET]) == PROMPT_BUCKET
    assert generator.prompt_width([PROMPT_BUCKET + 1]) == 2 * PROMPT_BUCKET
    assert generator.prompt_width([19]) == 20  # never above max_prompt_tokens
    short = generator.generate(["1=", "2="], "greedy")
    long = generator.generate(["1234567890+1="], "greedy")
    both = Rollout.concatenate([short, long])
    assert both.token_ids.shape[1] == long.token_ids.shape[1] > short.token_ids.shape[1]
    for row, (source, i) in enumerate([(short, 0), (short, 1), (long, 0)]):
        np.testing.assert_array_equal(both.token_ids[row][both.padding_mask[row]],
                                      source.token_ids[i][source.padding_mask[i]])
        np.testing.assert_array_equal(both.token_ids[row][both.response_mask[row]],
                                      source.token_ids[i][source.response_mask[i]])


def test_h_resp_is_computed_over_exactly_the_response_tokens(tmp_path):
    """The update's H_resp (ERA's decision statistic) equals the one computed row by row
    on the unpadded prompt + response, so neither the left padding nor the prompt counts."""
    from pipelines.grpo.config import GRPOConfig
    from pipelines.grpo.train import GRPOTrainer, build_causal_lm, load_problems

    config = GRPOConfig(model="tiny:qwen", task="arithmetic", tiny_layers=1, tiny_hidden_dim=32,
                        prompts_per_step=2, group_size=4, max_new_tokens=12,
                        warm_start_steps=0, era=False, learning_rate=1e-3,
                        mask_truncated_completions=False, run_dir=str(tmp_path / "run"))
    train, test = load_problems(config)
    trainer = GRPOTrainer(config, build_causal_lm(config), train, test)
    trainer.prepare_sampling()
    rollout = trainer.generator.generate(PROMPTS, "train", seed=2)
    advantages = np.linspace(-1.0, 1.0, len(PROMPTS)).astype("float32")
    assert (~rollout.padding_mask[:, 0]).any()  # some rows are padded on the left
    lm = trainer.causal_lm
    expected = []
    for row in range(len(rollout.token_ids)):
        real = rollout.token_ids[row][rollout.padding_mask[row]]
        n = rollout.response_lengths[row]
        logits = lm({"token_ids": real[None], "padding_mask": np.ones((1, len(real)), bool)})
        # Position t predicts token t + 1: the response is predicted from the last prompt
        # position up to the one before the last response token.
        entropies = np.asarray(token_entropy(logits[0, len(real) - n - 1:len(real) - 1]))
        expected.append(float(response_entropy(entropies[None], np.ones((1, n)),
                                               config.top_fraction)[0]))
    info = trainer.update(rollout, advantages)  # before the update changed the weights
    np.testing.assert_allclose(np.asarray(info.extra["response_entropy"]), expected,
                               rtol=1e-4, atol=1e-5)
