"""The GRPO servables load with TensorFlow alone (no keras-hub, no tensorflow-text) and
generate what the keras-hub model generates."""

import numpy as np
import pytest

from serving.signature_runner import Refused, predict_standalone, run_standalone
from serving.text_generation import TextGenerationClient

PROMPTS = ["12+3=", "7*8=90", "1"]
MAX_NEW = 6


def _tiny(family):
    from pipelines.grpo.models import tiny_causal_lm

    return tiny_causal_lm(family, num_layers=1, hidden_dim=32, num_heads=2, seed=0,
                          sequence_length=32)


def _tiny_with_length(sequence_length):
    from pipelines.grpo.models import tiny_causal_lm

    return tiny_causal_lm("qwen", num_layers=1, hidden_dim=32, num_heads=2, seed=0,
                          sequence_length=sequence_length)


def _keras_hub_greedy_ids(causal_lm):
    """keras-hub's own greedy continuation of PROMPTS (XLA-compiled generate), end token
    dropped, first MAX_NEW tokens."""
    import keras_hub

    from pipelines.grpo.rollout import RolloutGenerator

    generator = RolloutGenerator(causal_lm, 8, MAX_NEW,
                                 {"greedy": keras_hub.samplers.GreedySampler()})
    rollout = generator.generate(PROMPTS, "greedy")
    rows = []
    for ids, mask in zip(rollout.token_ids, rollout.response_mask):
        new = [int(t) for t in ids[mask]]
        stops = [i for i, t in enumerate(new) if t in generator.stop_token_ids]
        rows.append(new[: stops[0]] if stops else new)
    return [row[:MAX_NEW] for row in rows]


@pytest.fixture(scope="module", params=["qwen", "gemma"])
def exported(request, tmp_path_factory):
    from pipelines.grpo.generate import export_generate_savedmodel

    causal_lm = _tiny(request.param)
    path = export_generate_savedmodel(causal_lm, tmp_path_factory.mktemp("generate"), "lm",
                                      max_new_tokens=MAX_NEW, temperature=0.0)
    return causal_lm, path


def test_generate_servable_alone_reproduces_keras_hubs_greedy_text(exported):
    """Run as TF Serving runs it, in a process where keras, keras_hub, tensorflow_text and
    this project cannot be imported; the client tokenizes and detokenizes. Greedy decoding
    is exact up to argmax ties, which a random-init float32 model does not produce."""
    causal_lm, path = exported
    tokenizer = causal_lm.preprocessor.tokenizer
    client = TextGenerationClient(
        lambda inputs, signature: predict_standalone(path, inputs, signature), tokenizer)
    texts = client.generate(PROMPTS, max_new_tokens=MAX_NEW, temperature=0.0)
    expected = _keras_hub_greedy_ids(causal_lm)
    expected_texts = [
        np.asarray(tokenizer.detokenize([row])).reshape(-1)[0] if row else b""
        for row in expected
    ]
    expected_texts = [t.decode() if isinstance(t, bytes) else str(t) for t in expected_texts]
    assert texts == expected_texts


def test_generate_servable_ids_sampling_options_and_defaults(exported):
    """In-process load (tf.saved_model.load): greedy ids equal keras-hub's; a tiny top_p
    keeps only the most likely token, so it is greedy too; the same seed repeats a
    sample and another seed changes it (18 tokens from a ~300-token random model);
    serving_default uses the export's defaults (greedy, MAX_NEW tokens)."""
    import tensorflow as tf

    causal_lm, path = exported
    client = TextGenerationClient(None, causal_lm.preprocessor.tokenizer)
    token_ids, lengths = client.encode(PROMPTS)
    model = tf.saved_model.load(str(path))

    def run(temperature, top_p, seed, max_new=MAX_NEW):
        out = model.signatures["generate_with_options"](
            token_ids=tf.constant(token_ids), lengths=tf.constant(lengths),
            temperature=tf.constant(temperature, tf.float32),
            top_p=tf.constant(top_p, tf.float32),
            max_new_tokens=tf.constant(max_new, tf.int32), seed=tf.constant(seed, tf.int32))
        ids, n = out["output_ids"].numpy(), out["output_lengths"].numpy()
        assert ids.shape == (len(PROMPTS), max_new)
        assert (ids[np.arange(max_new)[None, :] >= n[:, None]] == 0).all()
        return [row[:k].tolist() for row, k in zip(ids, n)]

    expected = _keras_hub_greedy_ids(causal_lm)
    assert run(0.0, 1.0, 0) == expected
    assert run(1.0, 1e-6, 3) == expected
    assert run(1.0, 1.0, 5) == run(1.0, 1.0, 5)
    assert run(1.0, 1.0, 5) != run(1.0, 1.0, 6)
    assert [row[:3] for row in run(0.0, 1.0, 0, max_new=3)] == [r[:3] for r in expected]
    default = model.signatures["serving_default"](token_ids=tf.constant(token_ids),
                                                  lengths=tf.constant(lengths))
    assert [row[:k].tolist() for row, k in zip(default["output_ids"].numpy(),
                                               default["output_lengths"].numpy())] == expected


def test_gemma_scoring_servable_loads_without_tensorflow_text(tmp_path):
    """Gemma's tokenizer is a SentencepieceOp; the scoring export holds the network only."""
    import keras

    from pipelines.grpo.export import export_scoring_savedmodel, scoring_function

    causal_lm = _tiny("gemma")
    path = export_scoring_savedmodel(causal_lm, tmp_path, "gemma")
    token_ids = np.array([[2, 20, 21, 22, 23], [2, 30, 31, 0, 0]], np.int32)
    padding_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    served = predict_standalone(path, {"token_ids": token_ids, "padding_mask": padding_mask})
    expected = scoring_function(causal_lm)(token_ids, padding_mask)
    np.testing.assert_allclose(served["token_log_probs"],
                               keras.ops.convert_to_numpy(expected["token_log_probs"]),
                               rtol=1e-5, atol=1e-5)


LIMIT = 8


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A qwen generate servable exported with max_new_tokens_limit=LIMIT (the model's
    sequence length is 32)."""
    from pipelines.grpo.generate import export_generate_savedmodel

    causal_lm = _tiny("qwen")
    path = export_generate_savedmodel(causal_lm, tmp_path_factory.mktemp("limited"), "lm",
                                      max_new_tokens_limit=LIMIT)
    return causal_lm, path


def _request(**changes):
    request = {"token_ids": np.array([[5, 6, 7], [8, 0, 0]], np.int32),
               "lengths": np.array([3, 1], np.int32), "temperature": np.float32(0.0),
               "top_p": np.float32(1.0), "max_new_tokens": np.int32(4), "seed": np.int32(0)}
    return {**request, **changes}


REFUSED = {
    "100000 new tokens": (_request(max_new_tokens=np.int32(100000)),
                          f"max_new_tokens must be in [1, {LIMIT}] (the limit this model was "
                          "exported with); got] [100000]"),
    "no new tokens": (_request(max_new_tokens=np.int32(0)), "max_new_tokens must be in"),
    "negative new tokens": (_request(max_new_tokens=np.int32(-3)), "got] [-3]"),
    "a length of 0": (_request(lengths=np.array([3, 0], np.int32)),
                      "lengths must be in [1, width], width = the second dimension of "
                      "token_ids; got] [width] [3] [values from] [0] [to] [3]"),
    "a length past the width": (_request(lengths=np.array([4, 1], np.int32)),
                                "[values from] [1] [to] [4]"),
    "a length per row": (_request(lengths=np.array([3], np.int32)),
                         "lengths must have one entry per row of token_ids; got] [1] "
                         "[entries for rows:] [2]"),
    "a NaN temperature": (_request(temperature=np.float32("nan")),
                          "temperature must be finite and >= 0 (0: greedy); got] [nan]"),
    "an infinite temperature": (_request(temperature=np.float32("inf")), "got] [inf]"),
    "a negative temperature": (_request(temperature=np.float32(-0.5)), "got] [-0.5]"),
    "top_p 0": (_request(top_p=np.float32(0.0)), "top_p must be in (0, 1]; got] [0]"),
    "top_p above 1": (_request(top_p=np.float32(1.5)), "got] [1.5]"),
    "a token id of -5": (_request(token_ids=np.array([[5, -5, 7], [8, 0, 0]], np.int32)),
                         "prompt token ids must be in [0, 258) (the vocabulary); got] "
                         "[values from] [-5] [to] [8]"),
    "a token id past the vocabulary": (
        _request(token_ids=np.array([[5, 6, 7], [258, 0, 0]], np.int32)), "[to] [258]"),
}


def test_generate_servable_refuses_requests_outside_its_limits_and_serves_the_rest(limited):
    """With TensorFlow alone (plain tf.saved_model.load, the project not importable): each
    request outside the stated limits gets InvalidArgumentError naming the limit and the
    value sent; padding past a prompt's length is not read; an empty batch gets an empty
    result; valid requests still generate, at the limit too."""
    causal_lm, path = limited
    valid = {
        "greedy": _request(),
        "padding is not read": _request(token_ids=np.array([[5, 6, 7], [8, -1, 9999]],
                                                           np.int32)),
        "at the limit": _request(max_new_tokens=np.int32(LIMIT)),
        "sampled": _request(temperature=np.float32(0.7), top_p=np.float32(0.9)),
        "empty batch": _request(token_ids=np.zeros((0, 3), np.int32),
                                lengths=np.zeros((0,), np.int32)),
    }
    cases = [*REFUSED.values(), *((inputs, None) for inputs in valid.values())]
    results = run_standalone(path, [("generate_with_options", inputs) for inputs, _ in cases],
                             loader="object")
    for name, (_, reason), result in zip([*REFUSED, *valid], cases, results):
        if reason is None:
            assert isinstance(result, dict), (name, result)
        else:
            assert isinstance(result, Refused) and result.kind == "InvalidArgumentError", name
            assert result.message.startswith("assertion failed: ["), (name, result.message)
            assert reason in result.message, (name, result.message)
    greedy, unread, at_limit, sampled, empty = results[len(REFUSED):]
    assert greedy["output_ids"].shape == (2, 4)
    np.testing.assert_array_equal(unread["output_ids"], greedy["output_ids"])
    assert at_limit["output_ids"].shape == (2, LIMIT)
    np.testing.assert_array_equal(at_limit["output_ids"][:, :4], greedy["output_ids"])
    assert sampled["output_ids"].shape == (2, 4)
    assert empty["output_ids"].shape == (0, 4) and empty["output_lengths"].shape == (0,)


def test_a_refusal_reaches_a_tf_serving_client_as_a_bad_request(limited):
    """Through TF Serving's gRPC protocol (the stand-in runs the graph as TF Serving does):
    INVALID_ARGUMENT -> BadRequestError with the limit; the next request is served."""
    from serving.client import BadRequestError, TFServingGrpcClient
    from tests.serving.stand_ins import grpc_prediction_service

    _, path = limited
    prompt = {name: _request()[name] for name in ("token_ids", "lengths")}
    with grpc_prediction_service(path, "lm") as target:
        client = TFServingGrpcClient(target)
        with pytest.raises(BadRequestError, match=r"\(INVALID_ARGUMENT\): assertion failed: "
                           r"\[lengths must be in \[1, width\]"):
            client.predict("lm", {**prompt, "lengths": np.array([3, 0], np.int32)})
        assert client.predict("lm", prompt)["output_ids"].shape[0] == 2
        client.close()


def test_generate_servable_states_its_limits(limited, exported):
    import json

    import tensorflow as tf

    causal_lm, path = limited
    metadata = json.loads((path / "assets.extra" / "serving_metadata.json").read_text())
    assert metadata["max_new_tokens_limit"] == LIMIT
    assert metadata["vocabulary_size"] == causal_lm.backbone.vocabulary_size == 258
    # serving_default's max_new_tokens defaults to at most the limit.
    assert metadata["defaults"]["max_new_tokens"] == LIMIT
    facts = tf.saved_model.load(str(path)).signatures["serving_metadata"]()
    assert int(facts["max_new_tokens_limit"]) == LIMIT
    # Without a limit given: the model's sequence length (prompt + response tokens), and at
    # least serving_default's 64 new tokens.
    from pipelines.grpo.generate import default_max_new_tokens_limit

    _, default_path = exported
    default = json.loads((default_path / "assets.extra" / "serving_metadata.json").read_text())
    assert default["max_new_tokens_limit"] == 64  # the tiny model's sequence length is 32
    assert default_max_new_tokens_limit(_tiny_with_length(1000)) == 1000


def test_generate_export_refuses_defaults_outside_its_limits(tmp_path):
    from pipelines.grpo.generate import export_generate_savedmodel

    with pytest.raises(ValueError, match=r"max_new_tokens must be in \[1, 4\].*got 6; "
                       r"temperature must be finite and >= 0, got -1"):
        export_generate_savedmodel(_tiny("qwen"), tmp_path, "lm", max_new_tokens_limit=4,
                                   max_new_tokens=6, temperature=-1.0)
    assert not (tmp_path / "lm").exists()


def test_pipelines_export_of_a_generate_servable_passes_its_load_check(limited, tmp_path,
                                                                      capsys):
    """Zeros are no valid request (a prompt needs a token): the load check replays the
    servable's own warm-up requests, as TF Serving does when it loads it."""
    from pipelines import export as export_cli
    from pipelines.common.errors import run_cli

    _, path = limited
    base = tmp_path / "exports"
    assert run_cli(export_cli.main, ["--path", str(path), "--model-name", "lm_generate",
                                     "--export-base", str(base)]) == 0
    out = capsys.readouterr().out
    assert "loads and runs without project code; outputs: {" in out
    assert "'output_ids': (2, 8)" in out  # the outputs' order is the signature's, not fixed
    assert (base / "lm_generate" / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()


def test_the_scoring_servable_refuses_ids_outside_the_vocabulary_and_a_mismatched_mask(
        tmp_path):
    from pipelines.grpo.export import export_scoring_savedmodel

    path = export_scoring_savedmodel(_tiny("qwen"), tmp_path, "lm")
    token_ids = np.array([[1, 20, 21, 22], [1, 30, 31, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32)
    cases = [
        ({"token_ids": token_ids, "padding_mask": mask}, None),
        ({"token_ids": token_ids[:0], "padding_mask": mask[:0]}, None),
        ({"token_ids": np.where(token_ids == 21, -5, token_ids), "padding_mask": mask},
         "token_ids must be in [0, 258) (the vocabulary); got] [values from] [-5] [to] [31]"),
        ({"token_ids": token_ids + 300, "padding_mask": mask}, "[to] [331]"),
        ({"token_ids": token_ids, "padding_mask": mask[:, :3]},
         "padding_mask must have the shape of token_ids; got] [2 3] [token_ids:] [2 4]"),
        ({"token_ids": token_ids, "padding_mask": mask * 2},
         "padding_mask must be 0 or 1; got] [values from] [0] [to] [2]"),
    ]
    results = run_standalone(path, [("serving_default", inputs) for inputs, _ in cases],
                             loader="object")
    for (_, reason), result in zip(cases, results):
        if reason is None:
            assert isinstance(result, dict), result
        else:
            assert isinstance(result, Refused) and result.kind == "InvalidArgumentError"
            assert reason in result.message, result.message
    served, empty = results[:2]
    assert served["token_log_probs"].shape == (2, 4) and (served["token_log_probs"] <= 0).all()
    assert empty["token_log_probs"].shape == (0, 4) and empty["sequence_log_prob"].shape == (0,)


def test_text_generation_client_answers_no_prompts_with_no_texts():
    tokenizer = _tiny("qwen").preprocessor.tokenizer

    def predict(inputs, signature):
        raise AssertionError("no request is sent for no prompts")

    client = TextGenerationClient(predict, tokenizer)
    assert client.generate([]) == []
    ids, lengths = client.generate_ids([], max_new_tokens=5)
    assert ids.shape == (0, 5) and lengths.shape == (0,)
