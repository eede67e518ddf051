"""SavedModel export for TF Serving: uint8 images in, probabilities and class ids out.

`serving_default` takes `images`, uint8 [batch, height, width, channels] (raw pixels, as
a client decodes them from PNG/JPEG), and returns
    probabilities: float32 [batch, classes]   softmax(logits / temperature), T = 1 unless
                                              the run was trained with --calibrate
    class_ids:     int64   [batch]            argmax of the probabilities
where logits are the model's inference outputs: ERA logits when the ERA floor is on at
inference, the plain "logits" layer otherwise. An empty batch gets empty outputs. The
ERA math is traced into the graph, so the SavedModel loads and serves without era_keras.

Which probabilities are served is recorded twice: in the `serving_metadata` signature (no
inputs; returns the same facts as string/float tensors, so TF Serving's metadata and any
SavedModel reader can see it) and in `assets.extra/serving_metadata.json` next to it.
"""

import json

import keras
import tensorflow as tf

from pipelines.image import data
from pipelines.image.heads import served_probabilities
from serving import layout
from serving.request_checks import for_batch

METADATA_FILE = "serving_metadata.json"


def serving_metadata(head, temperature, image_shape, class_names, fitted_temperature=None):
    """What the export serves. `temperature` is the one applied (1.0 unless the run asked
    for calibration); `fitted_temperature` the one fitted on the validation split."""
    return {
        "served_probabilities": _describe(head, temperature),
        "era_at_inference": bool(head.uses_era and head.era_at_inference),
        "head": head.kind,
        "target_entropy": head.target_entropy if head.uses_era else None,
        "era_floor": head.era_floor if head.uses_era else None,
        "calibrated": fitted_temperature is not None and temperature == fitted_temperature,
        "temperature": float(temperature),
        "fitted_temperature": None if fitted_temperature is None else float(fitted_temperature),
        "input": f"uint8 images [batch, {', '.join(map(str, image_shape))}], raw pixels",
        "class_names": list(class_names),
    }


def _describe(head, temperature):
    base = served_probabilities(head)
    return base if temperature == 1.0 else f"{base} / temperature {temperature:.4f}"


def export_for_serving(model, export_base, model_name, image_shape, metadata, version=None):
    """Write a SavedModel to `<export_base>/<model_name>/<version>/`; return that path."""
    target = layout.version_dir(export_base, model_name, version)
    temperature = tf.constant(metadata["temperature"], tf.float32)
    facts = {
        "served_probabilities": tf.constant(metadata["served_probabilities"]),
        "era_at_inference": tf.constant(metadata["era_at_inference"]),
        "temperature": temperature,
        "calibrated": tf.constant(metadata["calibrated"]),
    }

    classes = int(model.output_shape[-1])
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        # The signature states the full shape, but a graph trusts it: TF Serving feeds a
        # [3, 8, 8] request to a [-1, 28, 28, 1] model unchecked (it crashed a kernel, or
        # returned one row for three images). EnsureShape refuses it at run time, with
        # INVALID_ARGUMENT naming the expected shape.
        images = tf.ensure_shape(images, [None, *image_shape])

        def classify():
            logits = model(data.pixels_to_float(images), training=False)
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)
            return {
                "probabilities": probabilities,
                "class_ids": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            }

        # Batch normalisation fails on zero images; an empty batch gets an empty answer.
        return for_batch(tf.shape(images)[0], classify, lambda: {
            "probabilities": tf.zeros([0, classes], tf.float32),
            "class_ids": tf.zeros([0], tf.int64),
        })

    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[tf.TensorSpec([None, *image_shape], tf.uint8, name="images")],
    )
    archive.add_endpoint("serving_metadata", lambda: dict(facts), input_signature=[])
    archive.write_out(str(target), verbose=False)
    extra = target / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    layout.write_models_config(export_base)
    return target
