import types

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path, monkeypatch):
    """MLflow's SQLite stores put artifacts in ./mlruns: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)


def build_era_classifier(seed=0):
    """A tiny image classifier whose last layer is softmax ERA (random init)."""
    import keras

    import era_keras

    keras.utils.set_random_seed(seed)
    images = keras.Input((8, 8, 1), name="images")
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(images))
    logits = era_keras.SoftmaxERA(target_entropy=0.6)(keras.layers.Dense(10)(hidden))
    return keras.Model(images, logits)


def export_classifier(model, path):
    """serving_default: images -> {probabilities, class_ids}, as the image pipeline serves."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        images = tf.ensure_shape(images, [None, 8, 8, 1])  # run-time check, as pipelines do
        probabilities = tf.nn.softmax(model(images, training=False))
        return {
            "probabilities": probabilities,
            "class_ids": tf.argmax(probabilities, axis=-1, output_type=tf.int32),
        }

    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="images")],
    )
    archive.write_out(str(path), verbose=False)
    return path


@pytest.fixture(scope="session")
def era_classifier(tmp_path_factory):
    """The Keras model, its SavedModel, example images and Keras' own probabilities."""
    import keras

    model = build_era_classifier()
    path = export_classifier(model, tmp_path_factory.mktemp("era_classifier") / "saved_model")
    images = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    probabilities = keras.ops.convert_to_numpy(
        keras.ops.softmax(model(images, training=False))
    )
    return types.SimpleNamespace(
        model=model, path=path, images=images, probabilities=probabilities
    )
