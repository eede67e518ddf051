"""A SavedModel that generates: the causal LM's cached decode loop as a `tf.function`.

`export_generate_savedmodel(causal_lm, export_base, model_name)` writes
`<export_base>/<model_name>/<version>/` (TF Serving's layout) with three signatures:

- `serving_default`: `token_ids` (int32, (batch, prompt width): prompts left-aligned,
  padded with anything) and `lengths` (int32, (batch,): each prompt's token count) ->
  `output_ids` (int32, (batch, max_new_tokens): the new tokens, end token excluded,
  0 after it) and `output_lengths` (int32, (batch,)). Sampling settings are the export's
  defaults (`temperature`, `top_p`, `max_new_tokens`, `seed`).
- `generate_with_options`: the same, plus `temperature` (float32 scalar; 0 = greedy),
  `top_p` (float32 scalar in (0, 1]), `max_new_tokens` (int32 scalar) and `seed` (int32
  scalar; the same seed and inputs give the same tokens).
- `serving_metadata`: no inputs; the limits below and the defaults, as tensors (also in
  `assets.extra/serving_metadata.json`).

TF Serving needs every input of a signature in each request, so the defaults live in
the first signature and the options in the second.

Every request is checked in the graph before anything is computed (`check_request`),
and one outside these limits is answered with InvalidArgumentError (gRPC
INVALID_ARGUMENT, HTTP 400) stating the limit: `lengths` in [1, prompt width], one per
row; prompt token ids in [0, vocabulary size) (padding is not read); `max_new_tokens`
in [1, max_new_tokens_limit], a limit fixed at export (default: the model's sequence
length, the prompt and response tokens it was trained on, and at least 64), so no
request can make the server allocate without bound; `temperature` finite and >= 0
(0 = greedy; a negative one is an error, not greedy); `top_p` in (0, 1]. An empty batch
gets an empty result. The export writes warm-up requests (`serving.warmup`), which TF
Serving replays when it loads the model.

The decode loop is keras-hub's own (`CausalLM.generate_step`: one forward pass builds the
key/value cache, then one token per step, stopping when every row has produced an end
token), with a sampler written here in TensorFlow ops whose settings are tensors. Only
the backbone is tracked, never the preprocessor, so the graph holds no tokenizer op
(`SentencepieceOp` needs tensorflow-text, which stock TF Serving lacks): clients
tokenize (see `serving.text_generation`). Written with the TensorFlow backend; from JAX,
`pipelines.grpo.export` runs it in a TensorFlow subprocess.
"""

import json

import keras
import keras_hub
import numpy as np

from pipelines.grpo.models import network_only
from serving.layout import version_dir
from serving.request_checks import after, for_batch, require, require_in_range
from serving.warmup import write_warmup_requests

DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64, "seed": 0}
METADATA_FILE = "serving_metadata.json"


class RequestSampler(keras_hub.samplers.Sampler):
    """Top-p sampling (temperature 0: greedy) whose settings are request tensors.

    Randomness is stateless, keyed on (seed, decode index): the same request gives the
    same tokens, with no random-state variable in the SavedModel.
    """

    def __init__(self, temperature, top_p, seed):
        super().__init__(temperature=temperature)
        self.top_p = top_p
        self.seed = seed
        self._index = None

    def __call__(self, next, *args, **kwargs):
        def next_with_index(prompt, cache, index):
            self._index = index  # read by get_next_token, in the same loop-body trace
            return next(prompt, cache, index)

        return super().__call__(next_with_index, *args, **kwargs)

    def compute_probabilities(self, logits):
        import tensorflow as tf

        logits = tf.cast(logits, tf.float32)
        return tf.nn.softmax(logits / tf.maximum(self.temperature, 1e-6))

    def get_next_token(self, probabilities):
        import tensorflow as tf

        order = tf.argsort(probabilities, axis=-1, direction="DESCENDING")
        sorted_p = tf.gather(probabilities, order, batch_dims=1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always).
        before = tf.cumsum(sorted_p, axis=-1, exclusive=True)
        kept = tf.where(before < self.top_p, sorted_p, tf.zeros_like(sorted_p))
        seed = tf.stack([tf.cast(self.seed, tf.int32), tf.cast(self._index, tf.int32)])
        pick = tf.random.stateless_categorical(tf.math.log(kept), 1, seed=seed)[:, 0]
        sampled = tf.gather(order, pick, batch_dims=1)
        greedy = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return tf.where(self.temperature > 0, tf.cast(sampled, tf.int32), greedy)


def _stop_token_ids(causal_lm):
    tokenizer = causal_lm.preprocessor.tokenizer if causal_lm.preprocessor else None
    ids = {getattr(tokenizer, "end_token_id", None)}
    # Instruction-tuned checkpoints end turns with these; keras-hub stops on them too.
    for token in ("<end_of_turn>", "<|im_end|>"):
        try:
            ids.add(tokenizer.token_to_id(token))
        except Exception:  # not in this vocabulary
            pass
    return tuple(sorted(i for i in ids if i is not None))


def generate_function(causal_lm, stop_token_ids):
    """(token_ids, lengths, temperature, top_p, max_new_tokens, seed) -> outputs, in TF ops."""
    import tensorflow as tf

    def generate(token_ids, lengths, temperature, top_p, max_new_tokens, seed):
        width = tf.reduce_max(lengths) + max_new_tokens
        positions = tf.range(width)[None, :]
        prompt_mask = positions < lengths[:, None]
        token_ids = token_ids[:, : tf.reduce_max(lengths)]
        token_ids = tf.pad(token_ids, [[0, 0], [0, max_new_tokens]])
        token_ids = tf.where(prompt_mask, token_ids, tf.zeros_like(token_ids))
        saved = causal_lm.sampler
        causal_lm.sampler = RequestSampler(temperature, top_p, seed)
        try:
            out = causal_lm.generate_step(
                {"token_ids": token_ids, "padding_mask": prompt_mask},
                stop_token_ids=stop_token_ids,
            )
        finally:
            causal_lm.sampler = saved
        # Row i's new tokens start at lengths[i]; keep max_new_tokens of them.
        index = lengths[:, None] + tf.range(max_new_tokens)[None, :]
        new_ids = tf.gather(out["token_ids"], index, batch_dims=1)
        new_mask = tf.gather(out["padding_mask"], index, batch_dims=1)
        if stop_token_ids:
            is_stop = tf.reduce_any(
                new_ids[..., None] == tf.constant(stop_token_ids, tf.int32), axis=-1)
            new_mask = new_mask & ~is_stop
        output_lengths = tf.reduce_sum(tf.cast(new_mask, tf.int32), axis=1)
        output_ids = tf.where(new_mask, new_ids, tf.zeros_like(new_ids))
        return {"output_ids": output_ids, "output_lengths": output_lengths}

    return generate


def check_request(token_ids, lengths, temperature, top_p, max_new_tokens, vocabulary_size,
                  max_new_tokens_limit):
    """The request's tensors, once the graph has checked them against the servable's
    limits (InvalidArgumentError naming the limit and the value otherwise)."""
    import tensorflow as tf

    batch, width = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    shapes = [
        require(tf.shape(lengths)[0] == batch,
                "lengths must have one entry per row of token_ids", tf.shape(lengths)[0],
                "entries for rows:", batch),
        require((max_new_tokens >= 1) & (max_new_tokens <= max_new_tokens_limit),
                f"max_new_tokens must be in [1, {max_new_tokens_limit}] (the limit this "
                "model was exported with)", max_new_tokens),
        require(tf.math.is_finite(temperature) & (temperature >= 0),
                "temperature must be finite and >= 0 (0: greedy)", temperature),
        require((top_p > 0) & (top_p <= 1), "top_p must be in (0, 1]", top_p),
    ]
    lengths = after(shapes, lengths)
    # Lengths are known to be one per row now; prompt tokens are those before them.
    prompt = tf.range(width)[None, :] < lengths[:, None]
    values = [
        require_in_range(lengths, 1, width + 1,
                         "lengths must be in [1, width], width = the second "
                         "dimension of token_ids", "width", width),
        require_in_range(tf.where(prompt, token_ids, tf.zeros_like(token_ids)), 0,
                         vocabulary_size,
                         f"prompt token ids must be in [0, {vocabulary_size}) (the "
                         "vocabulary)"),
    ]
    return after(values, token_ids, lengths, temperature, top_p, max_new_tokens)


def checked_generate_function(generate, vocabulary_size, max_new_tokens_limit):
    """`generate` behind `check_request`, with an empty result for an empty batch."""
    import tensorflow as tf

    def checked(token_ids, lengths, temperature, top_p, max_new_tokens, seed):
        token_ids, lengths, temperature, top_p, max_new_tokens = check_request(
            token_ids, lengths, temperature, top_p, max_new_tokens, vocabulary_size,
            max_new_tokens_limit)
        return for_batch(
            tf.shape(token_ids)[0],
            lambda: generate(token_ids, lengths, temperature, top_p, max_new_tokens, seed),
            lambda: {"output_ids": tf.zeros([0, max_new_tokens], tf.int32),
                     "output_lengths": tf.zeros([0], tf.int32)})

    return checked


def default_max_new_tokens_limit(causal_lm):
    """The model's sequence length (its preprocessor's: prompt plus response tokens in
    GRPO training), and at least DEFAULTS' max_new_tokens (what serving_default generates)."""
    preprocessor = getattr(causal_lm, "preprocessor", None)
    length = getattr(preprocessor, "sequence_length", None) or 0
    return max(int(length), DEFAULTS["max_new_tokens"])


def _check_settings(settings, max_new_tokens_limit):
    """The export's own values, checked as requests are (a ValueError names them all)."""
    limit, problems = max_new_tokens_limit, []
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        problems.append(f"max_new_tokens_limit must be an integer >= 1 (got {limit!r})")
    elif not 1 <= settings["max_new_tokens"] <= limit:
        problems.append(f"max_new_tokens must be in [1, {limit}] (max_new_tokens_limit), "
                        f"got {settings['max_new_tokens']}")
    if not (np.isfinite(settings["temperature"]) and settings["temperature"] >= 0):
        problems.append(f"temperature must be finite and >= 0, got {settings['temperature']}")
    if not 0 < settings["top_p"] <= 1:
        problems.append(f"top_p must be in (0, 1], got {settings['top_p']}")
    if problems:
        raise ValueError("; ".join(problems) + ".")


def warmup_requests(settings):
    """Two prompts of token 0 (the second shorter) for each signature: what TF Serving
    replays when it loads the model, and the export's load check."""
    prompts = {"token_ids": np.zeros((2, 3), np.int32), "lengths": np.array([3, 1], np.int32)}
    options = {"temperature": np.float32(settings["temperature"]),
               "top_p": np.float32(settings["top_p"]),
               "max_new_tokens": np.int32(min(2, settings["max_new_tokens"])),
               "seed": np.int32(settings["seed"])}
    return [("serving_default", prompts), ("generate_with_options", {**prompts, **options})]


def export_generate_savedmodel(causal_lm, export_base, model_name, version=None,
                               max_new_tokens_limit=None, **defaults):
    """Write the generate SavedModel to `<export_base>/<model_name>/<version>`; returns it.

    `max_new_tokens_limit` is the most new tokens a request may ask for (None:
    `default_max_new_tokens_limit`). `defaults` overrides DEFAULTS (temperature, top_p,
    max_new_tokens, seed) for the `serving_default` signature; max_new_tokens defaults
    to at most the limit.
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("The generate SavedModel is written with the TensorFlow backend.")
    import tensorflow as tf

    unknown = set(defaults) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown generation defaults {sorted(unknown)}; "
                         f"known: {sorted(DEFAULTS)}.")
    if max_new_tokens_limit is None:
        max_new_tokens_limit = default_max_new_tokens_limit(causal_lm)
    settings = {**DEFAULTS, "max_new_tokens": min(DEFAULTS["max_new_tokens"],
                                                  max_new_tokens_limit), **defaults}
    _check_settings(settings, max_new_tokens_limit)
    stop_token_ids = _stop_token_ids(causal_lm)
    network = network_only(causal_lm)
    vocabulary_size = int(causal_lm.backbone.vocabulary_size)
    generate = checked_generate_function(generate_function(network, stop_token_ids),
                                         vocabulary_size, int(max_new_tokens_limit))
    metadata = {"max_new_tokens_limit": int(max_new_tokens_limit),
                "vocabulary_size": vocabulary_size, "stop_token_ids": list(stop_token_ids),
                "defaults": settings}
    prompt_specs = [tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                    tf.TensorSpec([None], tf.int32, name="lengths")]
    option_specs = [tf.TensorSpec([], tf.float32, name="temperature"),
                    tf.TensorSpec([], tf.float32, name="top_p"),
                    tf.TensorSpec([], tf.int32, name="max_new_tokens"),
                    tf.TensorSpec([], tf.int32, name="seed")]

    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint(
        "serving_default",
        lambda token_ids, lengths: generate(
            token_ids, lengths, tf.constant(float(settings["temperature"])),
            tf.constant(float(settings["top_p"])), tf.constant(int(settings["max_new_tokens"])),
            tf.constant(int(settings["seed"]))),
        input_signature=prompt_specs,
    )
    archive.add_endpoint("generate_with_options", generate,
                         input_signature=prompt_specs + option_specs)
    facts = {"max_new_tokens_limit": tf.constant(metadata["max_new_tokens_limit"]),
             "vocabulary_size": tf.constant(vocabulary_size),
             "default_max_new_tokens": tf.constant(int(settings["max_new_tokens"]))}
    archive.add_endpoint("serving_metadata", lambda: dict(facts), input_signature=[])
    target = version_dir(export_base, model_name, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    archive.write_out(str(target), verbose=False)
    (target / "assets.extra").mkdir(exist_ok=True)
    (target / "assets.extra" / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    write_warmup_requests(target, warmup_requests(settings))
    return target
