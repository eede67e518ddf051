"""The GRPO servables load with TensorFlow alone (no keras-hub, no tensorflow-text) and
generate what the keras-hub model generates."""

import numpy as np
import pytest

from serving.signature_runner import predict_standalone
from serving.text_generation import TextGenerationClient

PROMPTS = ["12+3=", "7*8=90", "1"]
MAX_NEW = 6


def _tiny(family):
    from pipelines.grpo.models import tiny_causal_lm

    return tiny_causal_lm(family, num_layers=1, hidden_dim=32, num_heads=2, seed=0,
                          sequence_length=32)


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
