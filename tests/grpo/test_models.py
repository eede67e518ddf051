import keras_hub
import numpy as np
import pytest

from pipelines.common.errors import UserError
from pipelines.grpo.models import TINY_FAMILIES, load_causal_lm, tiny_causal_lm
from pipelines.grpo.rollout import RolloutGenerator


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def tiny_lm(request):
    return request.param, tiny_causal_lm(request.param, num_layers=1, hidden_dim=32,
                                         num_heads=2, sequence_length=32)


def test_tiny_model_is_the_real_keras_hub_class_with_a_working_tokenizer(tiny_lm):
    family, lm = tiny_lm
    expected = {"qwen": keras_hub.models.QwenCausalLM, "qwen3": keras_hub.models.Qwen3CausalLM,
                "gemma": keras_hub.models.GemmaCausalLM,
                "gemma3": keras_hub.models.Gemma3CausalLM}[family]
    assert type(lm) is expected
    tokenizer = lm.preprocessor.tokenizer
    text = "3 digits, sum 12:12-5=7;7-4=3;543 \\boxed{1/2}"
    ids = tokenizer([text])
    assert tokenizer.detokenize(ids)[0] in (text, text.encode())
    assert len(ids[0]) == len(text)  # one token per character: responses of 10+ tokens
    # Padding must never read as the end token, or generation stops at once.
    assert getattr(tokenizer, "pad_token_id", 0) != tokenizer.end_token_id


def test_rollout_masks_cover_exactly_the_generated_tokens(tiny_lm):
    _, lm = tiny_lm
    generator = RolloutGenerator(lm, max_prompt_tokens=12, max_new_tokens=8, samplers={
        "train": keras_hub.samplers.TopPSampler(p=1.0, temperature=1.0, seed=1)})
    prompts = ["12+3=", "7-2-1="]
    _, prompt_mask = generator.encode_prompts(prompts)
    out = generator.generate(prompts, "train", seed=5)
    # Prompts of 6-7 tokens, padded on the left to the bucketed width 8, then 8 new tokens.
    assert out.token_ids.shape == (2, 16)
    assert not (out.response_mask & prompt_mask).any()
    assert out.response_lengths.max() <= 8
    np.testing.assert_array_equal(out.padding_mask, prompt_mask | out.response_mask)
    for row in range(2):
        positions = np.flatnonzero(out.response_mask[row])
        start = np.flatnonzero(prompt_mask[row])[-1] + 1
        assert positions[0] == start  # the response starts right after the prompt
        np.testing.assert_array_equal(positions, np.arange(start, start + positions.size))
    again = generator.generate(prompts, "train", seed=5)
    np.testing.assert_array_equal(out.token_ids, again.token_ids)  # seeded sampling
    assert out.completions == again.completions


def test_too_long_prompt_is_refused(tiny_lm):
    _, lm = tiny_lm
    generator = RolloutGenerator(lm, max_prompt_tokens=4, max_new_tokens=4, samplers={})
    with pytest.raises(UserError, match="longer than max_prompt_tokens=4"):
        generator.encode_prompts(["1+2+3+4="])


def test_preset_round_trip(tmp_path):
    lm = tiny_causal_lm("qwen3", num_layers=1, hidden_dim=32, num_heads=2)
    lm.save_to_preset(str(tmp_path / "preset"))
    loaded = load_causal_lm(str(tmp_path / "preset"))
    x = {"token_ids": np.array([[5, 6, 7, 8]], "int32"), "padding_mask": np.ones((1, 4), bool)}
    np.testing.assert_allclose(np.asarray(lm(x)), np.asarray(loaded(x)), atol=1e-5)


def test_bad_presets_get_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="Could not load keras-hub CausalLM preset 'no_such_lm'"):
        load_causal_lm("no_such_lm")
    with pytest.raises(ValueError, match="Unknown tiny model family"):
        tiny_causal_lm("llama")


def test_warm_start_examples_weight_exactly_the_solution_and_end_token(tiny_lm):
    from pipelines.grpo.tasks import builtin_problems
    from pipelines.grpo.warm_start import warm_start_examples

    _, lm = tiny_lm
    tokenizer = lm.preprocessor.tokenizer
    problems = builtin_problems("digit_sum", "train", 3)
    x, y, weights = warm_start_examples(lm, problems, sequence_length=48)
    for row, problem in enumerate(problems):
        targets = [int(t) for t in y[row][weights[row] > 0]]
        assert targets[-1] == tokenizer.end_token_id
        decoded = tokenizer.detokenize([targets[:-1]])[0]
        decoded = decoded.decode() if isinstance(decoded, bytes) else decoded
        assert decoded == problem.solution
        # y is x shifted by one: the model at position t learns token t + 1.
        np.testing.assert_array_equal(x["token_ids"][row, 1:], y[row, :-1])
    with pytest.raises(UserError, match="raise --max-new-tokens"):
        warm_start_examples(lm, problems, sequence_length=12)
