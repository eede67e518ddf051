"""A SavedModel that generates: the causal LM's cached decode loop as a `tf.function`.

`export_generate_savedmodel(causal_lm, export_base, model_name)` writes
`<export_base>/<model_name>/<version>/` (TF Serving's layout) with two signatures:

- `serving_default`: `token_ids` (int32, (batch, prompt width): prompts left-aligned,
  padded with anything) and `lengths` (int32, (batch,): each prompt's token count) ->
  `output_ids` (int32, (batch, max_new_tokens): the new tokens, end token excluded,
  0 after it) and `output_lengths` (int32, (batch,)). Sampling settings are the export's
  defaults (`temperature`, `top_p`, `max_new_tokens`, `seed`).
- `generate_with_options`: the same, plus `temperature` (float32 scalar; 0 = greedy),
  `top_p` (float32 scalar in (0, 1]), `max_new_tokens` (int32 scalar) and `seed` (int32
  scalar; the same seed and inputs give the same tokens).

TF Serving needs every input of a signature in each request, so the defaults live in
the first signature and the options in the second.

The decode loop is keras-hub's own (`CausalLM.generate_step`: one forward pass builds the
key/value cache, then one token per step, stopping when every row has produced an end
token), with a sampler written here in TensorFlow ops whose settings are tensors. Only
the backbone is tracked, never the preprocessor, so the graph holds no tokenizer op
(`SentencepieceOp` needs tensorflow-text, which stock TF Serving lacks): clients
tokenize (see `serving.text_generation`). Written with the TensorFlow backend; from JAX,
`pipelines.grpo.export` runs it in a TensorFlow subprocess.
"""

import keras
import keras_hub

from pipelines.grpo.models import network_only
from serving.layout import version_dir

DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64, "seed": 0}


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


def export_generate_savedmodel(causal_lm, export_base, model_name, version=None,
                               **defaults):
    """Write the generate SavedModel to `<export_base>/<model_name>/<version>`; returns it.

    `defaults` overrides DEFAULTS (temperature, top_p, max_new_tokens, seed) for the
    `serving_default` signature.
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("The generate SavedModel is written with the TensorFlow backend.")
    import tensorflow as tf

    unknown = set(defaults) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown generation defaults {sorted(unknown)}; "
                         f"known: {sorted(DEFAULTS)}.")
    settings = {**DEFAULTS, **defaults}
    stop_token_ids = _stop_token_ids(causal_lm)
    network = network_only(causal_lm)
    generate = generate_function(network, stop_token_ids)
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
    target = version_dir(export_base, model_name, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    archive.write_out(str(target), verbose=False)
    return target
