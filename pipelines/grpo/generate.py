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

import dataclasses
import inspect
import json

import keras
import keras_hub
import numpy as np
from keras import ops

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


def stop_token_ids(causal_lm):
    """The tokens a response ends at: the tokenizer's end token, and the end-of-turn
    tokens of chat templates (Qwen's <|im_end|>, Gemma's <end_of_turn>, Llama 3's
    <|eot_id|>) where the vocabulary has them, as transformers' generation configs stop."""
    tokenizer = causal_lm.preprocessor.tokenizer if causal_lm.preprocessor else None
    ids = {getattr(tokenizer, "end_token_id", None)}
    for token in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
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
    stops = stop_token_ids(causal_lm)
    network = network_only(causal_lm)
    vocabulary_size = int(causal_lm.backbone.vocabulary_size)
    generate = checked_generate_function(generate_function(network, stops),
                                         vocabulary_size, int(max_new_tokens_limit))
    metadata = {"max_new_tokens_limit": int(max_new_tokens_limit),
                "vocabulary_size": vocabulary_size, "stop_token_ids": list(stops),
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


# --- The rollout decode: left-padded prompts, exactly the new tokens -----------------
#
# keras-hub's `generate` takes prompts aligned on the left (right padding) and decodes
# from the shortest prompt to the padded width, so a batch of mixed lengths pays for
# `max_prompt_tokens + max_new_tokens - min(length)` decode steps to keep
# `max_new_tokens`. The loop below takes prompts padded on the LEFT, so every row's next
# token is written at the same index: one forward pass over the prompts fills the
# key/value cache, then exactly `max_new_tokens` one-token steps follow (fewer once every
# row has produced an end token), with the sampling inside the compiled loop.
#
# Positions: the cache index of a token is its position plus the row's left padding.
# Qwen-style models have rotary position embeddings and no absolute ones, and a rotary
# attention score depends on the query and key positions only through their difference,
# so shifting a whole row changes nothing but float rounding; the padded keys are masked
# out of attention. The decoder layers are keras-hub's own, called as
# `CausalLM.call_with_cache` calls them, plus that attention mask.


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the decode loop picks a token: greedy at temperature 0, else top-p sampling
    of softmax(logits / temperature), keeping the smallest prefix of the sorted
    distribution whose mass reaches `top_p` (as keras-hub's `TopPSampler`)."""

    temperature: float = 1.0
    top_p: float = 1.0

    @classmethod
    def of(cls, sampler):
        """The Sampling a keras-hub sampler draws from, or None for another kind."""
        if type(sampler) is keras_hub.samplers.GreedySampler:
            return cls(temperature=0.0)
        if type(sampler) is keras_hub.samplers.TopPSampler and sampler.k is None:
            return cls(temperature=float(sampler.temperature), top_p=float(sampler.p))
        return None


def supports_left_padded_decode(causal_lm):
    """Whether `left_padded_decode` can run this model: a backbone of token embedding,
    decoder layers that take an attention mask beside their cache (Qwen, Qwen3, Llama,
    Mistral in keras-hub 0.32) and a final norm. Gemma's layers take other arguments."""
    backbone = causal_lm.backbone
    if not all(hasattr(backbone, name) for name in
               ("token_embedding", "transformer_layers", "layer_norm", "num_key_value_heads")):
        return False
    wanted = {"decoder_attention_mask", "self_attention_cache",
              "self_attention_cache_update_index"}
    return all(wanted <= set(inspect.signature(layer.call).parameters)
               for layer in backbone.transformer_layers)


def _forward_with_cache(backbone, token_ids, cache, index, key_mask):
    """Logits of `token_ids` written at cache index `index`, and the updated cache.

    key_mask: (batch, cache length), True where the cache holds (or will hold) a real
    token; the decoder layers add the causal mask themselves.
    """
    x = backbone.token_embedding(token_ids)
    queries = ops.shape(token_ids)[1]
    attention_mask = ops.repeat(key_mask[:, None, :], queries, axis=1)
    caches = []
    for i, layer in enumerate(backbone.transformer_layers):
        x, layer_cache = layer(x, decoder_attention_mask=attention_mask,
                               self_attention_cache=cache[:, i, ...],
                               self_attention_cache_update_index=index)
        caches.append(layer_cache)
    x = backbone.layer_norm(x)
    return backbone.token_embedding(x, reverse=True), ops.stack(caches, axis=1)


def _uniform(shape, seed, step):
    """Uniform draws in (0, 1), a pure function of (seed pair, step): the loop is
    compiled and stateless, so the randomness is keyed, not drawn from a variable."""
    if keras.backend.backend() == "jax":
        import jax

        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed[0]), seed[1]), step)
        return jax.random.uniform(key, shape, minval=1e-7, maxval=1.0)
    import tensorflow as tf

    seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), step)
    return tf.random.stateless_uniform(shape, seed=seed, minval=1e-7, maxval=1.0)


def sample_next_token(logits, sampling, seed, step):
    """One token per row from (batch, vocab) logits (Gumbel-max over the kept tokens)."""
    logits = ops.cast(logits, "float32")
    if sampling.temperature == 0:
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    logits = logits / sampling.temperature
    if sampling.top_p < 1:
        probabilities = ops.softmax(logits, axis=-1)
        # The rank of each token's probability; keep a token when the mass of all the
        # tokens ranked above it is at most top_p (the first one always).
        sorted_p = ops.flip(ops.sort(probabilities, axis=-1), axis=-1)
        before = ops.cumsum(sorted_p, axis=-1) - sorted_p
        kept = ops.sum(ops.cast(before <= sampling.top_p, "int32"), axis=-1, keepdims=True)
        threshold = ops.take_along_axis(sorted_p, kept - 1, axis=-1)
        logits = ops.where(probabilities >= threshold, logits, -1e30)
    gumbel = -ops.log(-ops.log(_uniform(ops.shape(logits), seed, step)))
    return ops.cast(ops.argmax(logits + gumbel, axis=-1), "int32")


def left_padded_decode(causal_lm, token_ids, prompt_mask, max_new_tokens, sampling, seed,
                       stop_token_ids, pad_id=0):
    """Decode `max_new_tokens` after prompts padded on the left; returns (new tokens,
    number of steps run).

    token_ids, prompt_mask: (batch, width), each prompt's tokens at its last positions.
    seed: int32 (2,) tensor keying the sampling. A row's tokens after its end token are
    `pad_id`; the loop stops early once every row has ended. Runs inside a compiled
    function (`compile_left_padded_decode`).
    """
    backbone = causal_lm.backbone
    batch, width = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    length = width + max_new_tokens
    head_dim = getattr(backbone, "head_dim", None) or (
        backbone.hidden_dim // backbone.num_query_heads)
    cache = ops.zeros((batch, backbone.num_layers, 2, length, backbone.num_key_value_heads,
                       head_dim), dtype=causal_lm.compute_dtype)
    # Generated positions are real keys; the causal mask hides those not yet written.
    key_mask = ops.concatenate(
        [ops.cast(prompt_mask, "bool"), ops.ones((batch, max_new_tokens), "bool")], axis=1)
    logits, cache = _forward_with_cache(backbone, token_ids, cache, 0, key_mask)
    stops = ops.convert_to_tensor(list(stop_token_ids) or [-1], "int32")

    def cond(step, logits, cache, new_tokens, ended):
        return ops.logical_and(step < max_new_tokens, ops.logical_not(ops.all(ended)))

    def body(step, logits, cache, new_tokens, ended):
        token = sample_next_token(logits[:, -1, :], sampling, seed, step)
        token = ops.where(ended, pad_id, token)
        new_tokens = ops.slice_update(new_tokens, [0, step], token[:, None])
        ended = ops.logical_or(ended, ops.any(token[:, None] == stops[None, :], axis=-1))
        logits, cache = _forward_with_cache(backbone, token[:, None], cache, width + step,
                                            key_mask)
        return step + 1, logits, cache, new_tokens, ended

    state = (ops.convert_to_tensor(0, "int32"), logits[:, -1:, :], cache,
             ops.full((batch, max_new_tokens), pad_id, "int32"), ops.zeros((batch,), "bool"))
    steps, _, _, new_tokens, _ = ops.while_loop(cond, body, state)
    return new_tokens, steps


def compile_left_padded_decode(causal_lm, max_new_tokens, sampling, stop_token_ids, pad_id=0):
    """`decode(token_ids, prompt_mask, seed) -> (new tokens, steps)`, XLA-compiled for
    the backend Keras runs on (TensorFlow: `tf.function(jit_compile=True)`; JAX: `jax.jit`
    over the variables' values, as keras-hub's own generate function does)."""
    def loop(token_ids, prompt_mask, seed):
        return left_padded_decode(causal_lm, token_ids, prompt_mask, max_new_tokens,
                                  sampling, seed, stop_token_ids, pad_id)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(loop, jit_compile=True)
    if backend != "jax":
        raise ValueError(f"The rollout decode runs on TensorFlow or JAX, not {backend!r}.")
    import jax

    @jax.jit
    def stateless(trainable, non_trainable, token_ids, prompt_mask, seed):
        mapping = list(zip(causal_lm.trainable_variables, trainable)) + list(
            zip(causal_lm.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping):
            return loop(token_ids, prompt_mask, seed)

    def decode(token_ids, prompt_mask, seed):
        return stateless([v.value for v in causal_lm.trainable_variables],
                         [v.value for v in causal_lm.non_trainable_variables],
                         token_ids, prompt_mask, seed)

    return decode
