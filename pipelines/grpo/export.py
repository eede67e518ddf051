"""Export a trained policy: a keras-hub preset, and SavedModels that TensorFlow alone loads.

- `export_preset`: `CausalLM.save_to_preset(dir)`, loadable with `CausalLM.from_preset(dir)`
  (weights, config, tokenizer assets). A LoRA-enabled model is saved merged: Keras folds
  each LoRA pair into its kernel when it saves, so the preset is a plain full model.
- `export_scoring_savedmodel`: a SavedModel, in TF Serving's `<base>/<model>/<version>/`
  layout (`serving.layout.version_dir`), whose `serving_default` signature maps
  `token_ids` and `padding_mask` (int32, (batch, time)) to
  `token_log_probs` (batch, time): log p(token_t | tokens_<t), 0 at t = 0 and on padding,
  and `sequence_log_prob` (batch,): their sum. The graph checks each request first
  (`check_scoring_request`): token ids in [0, vocabulary size), a padding mask of 0s and
  1s shaped like `token_ids`; otherwise InvalidArgumentError (gRPC INVALID_ARGUMENT,
  HTTP 400) states the limit. An empty batch gets an empty result.
- `pipelines.grpo.generate.export_generate_savedmodel`: the sampling servable
  (`<model>_generate`), token ids in, new token ids out; a request asks for at most
  `max_new_tokens_limit` new tokens (`--max-new-tokens-limit`; default: the model's
  sequence length, at least 64).

Neither SavedModel holds the tokenizer (`models.network_only`): tokenizer ops such as
Gemma's `SentencepieceOp` need tensorflow-text, which TF Serving lacks. Clients tokenize.

The SavedModels are written with the TensorFlow backend. From another backend (JAX),
they are written by a TensorFlow-backend subprocess from the exported preset:
`python -m pipelines.grpo.export --preset DIR --export-base BASE --model-name NAME`.
"""

import argparse
import os
import pathlib
import subprocess
import sys

import keras

from pipelines.grpo.models import network_only
from serving.layout import version_dir, write_models_config
from serving.request_checks import after, require, require_in_range


def export_preset(causal_lm, preset_dir):
    preset_dir = pathlib.Path(preset_dir)
    causal_lm.save_to_preset(str(preset_dir))
    return preset_dir


def scoring_function(causal_lm):
    """The (token_ids, padding_mask) -> next-token log-probs function, in keras.ops."""
    from keras import ops

    def score(token_ids, padding_mask):
        logits = causal_lm({"token_ids": token_ids, "padding_mask": padding_mask})
        log_p = ops.log_softmax(ops.cast(logits[:, :-1], "float32"), axis=-1)
        picked = ops.take_along_axis(log_p, token_ids[:, 1:, None], axis=-1)[..., 0]
        picked = picked * ops.cast(padding_mask[:, 1:], "float32")
        token_log_probs = ops.concatenate([ops.zeros_like(picked[:, :1]), picked], axis=1)
        return {"token_log_probs": token_log_probs,
                "sequence_log_prob": ops.sum(token_log_probs, axis=1)}

    return score


def check_scoring_request(token_ids, padding_mask, vocabulary_size):
    """(token_ids, padding_mask), once the graph has checked them (InvalidArgumentError
    naming the limit and the value otherwise)."""
    import tensorflow as tf

    shape = require(tf.reduce_all(tf.shape(padding_mask) == tf.shape(token_ids)),
                    "padding_mask must have the shape of token_ids", tf.shape(padding_mask),
                    "token_ids:", tf.shape(token_ids))
    padding_mask = after([shape], padding_mask)
    checks = [require_in_range(token_ids, 0, vocabulary_size,
                               f"token_ids must be in [0, {vocabulary_size}) (the vocabulary)"),
              require_in_range(padding_mask, 0, 2, "padding_mask must be 0 or 1")]
    return after(checks, token_ids, padding_mask)


def export_scoring_savedmodel(causal_lm, export_base, model_name, version=None):
    """Write the scoring SavedModel to `<export_base>/<model_name>/<version>`; returns the dir."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "The SavedModel export needs the TensorFlow backend; use "
            "export_savedmodels_from_preset, which runs it in a subprocess."
        )
    import tensorflow as tf

    target = version_dir(export_base, model_name, version)
    network = network_only(causal_lm)
    score = scoring_function(network)
    vocabulary_size = int(causal_lm.backbone.vocabulary_size)
    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint(
        "serving_default",
        lambda token_ids, padding_mask: score(
            *check_scoring_request(token_ids, padding_mask, vocabulary_size)),
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                         tf.TensorSpec([None, None], tf.int32, name="padding_mask")],
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    archive.write_out(str(target), verbose=False)
    return target


def export_savedmodels(causal_lm, export_base, model_name, version=None,
                       max_new_tokens_limit=None):
    """The scoring servable `<model_name>` and the generate servable `<model_name>_generate`
    (`max_new_tokens_limit`: see `export_generate_savedmodel`)."""
    from pipelines.grpo.generate import export_generate_savedmodel

    return {
        "savedmodel_dir": export_scoring_savedmodel(causal_lm, export_base, model_name, version),
        "generate_savedmodel_dir": export_generate_savedmodel(
            causal_lm, export_base, f"{model_name}_generate", version,
            max_new_tokens_limit=max_new_tokens_limit),
    }


def export_savedmodels_from_preset(preset_dir, export_base, model_name, version=None,
                                   max_new_tokens_limit=None):
    """Run `export_savedmodels` in a TensorFlow-backend subprocess (for JAX runs)."""
    command = [sys.executable, "-m", "pipelines.grpo.export", "--preset", str(preset_dir),
               "--export-base", str(export_base), "--model-name", model_name]
    if version is not None:
        command += ["--version", str(version)]
    if max_new_tokens_limit is not None:
        command += ["--max-new-tokens-limit", str(max_new_tokens_limit)]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    root = pathlib.Path(__file__).resolve().parents[2]
    result = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"SavedModel export failed:\n{result.stderr[-4000:]}")
    lines = result.stdout.strip().splitlines()[-2:]
    return {"savedmodel_dir": pathlib.Path(lines[0]),
            "generate_savedmodel_dir": pathlib.Path(lines[1])}


def export_all(causal_lm, export_dir, model_name, version=None, max_new_tokens_limit=None):
    """Preset at `<export_dir>/preset`, SavedModels under `<export_dir>/serving/`, with the
    `models.config` that starts TF Serving on both of them."""
    export_dir = pathlib.Path(export_dir)
    preset = export_preset(causal_lm, export_dir / "preset")
    if keras.backend.backend() == "tensorflow":
        saved = export_savedmodels(causal_lm, export_dir / "serving", model_name, version,
                                   max_new_tokens_limit)
    else:
        saved = export_savedmodels_from_preset(preset, export_dir / "serving", model_name,
                                               version, max_new_tokens_limit)
    models_config = write_models_config(export_dir / "serving")
    return {"preset_dir": preset, **saved, "models_config": models_config}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", required=True, help="keras-hub preset directory or name")
    parser.add_argument("--export-base", required=True, help="TF Serving base directory")
    parser.add_argument("--model-name", default="grpo_policy")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--max-new-tokens-limit", type=int, default=None,
                        help="the most new tokens a request to the generate servable may "
                        "ask for (default: the model's sequence length, at least 64)")
    args = parser.parse_args(argv)
    if args.max_new_tokens_limit is not None and args.max_new_tokens_limit < 1:
        parser.error(f"--max-new-tokens-limit must be >= 1 (got {args.max_new_tokens_limit})")
    from pipelines.grpo.models import load_causal_lm

    written = export_savedmodels(load_causal_lm(args.preset), args.export_base,
                                 args.model_name, args.version, args.max_new_tokens_limit)
    print(written["savedmodel_dir"])
    print(written["generate_savedmodel_dir"])


if __name__ == "__main__":
    main()
