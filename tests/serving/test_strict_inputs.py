"""A servable refuses requests that do not fit its signature, naming the expected spec:
in the graph itself (what TF Serving runs; checked through TF2's object loader, which, like
TF Serving's C++ session, does not check feeds against the signature) and in
`SignatureRunner`, which `mlflow models serve` runs."""

import numpy as np
import pytest

from serving.signature_runner import InputSpecError, SignatureRunner, check_inputs


@pytest.fixture(scope="module")
def uint8_classifier(tmp_path_factory):
    """A tiny [-1, 28, 28, 1] uint8 image classifier, exported as the image pipeline does."""
    import keras

    from pipelines.image.export import export_for_serving, serving_metadata
    from pipelines.image.heads import HeadConfig

    keras.utils.set_random_seed(0)
    images = keras.Input((28, 28, 1))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(images))
    model = keras.Model(images, keras.layers.Dense(10, name="logits")(features))
    metadata = serving_metadata(HeadConfig(kind="softmax"), 1.0, (28, 28, 1), list("0123456789"))
    return export_for_serving(model, tmp_path_factory.mktemp("exports"), "digits", (28, 28, 1),
                              metadata)


def _object_signature(path):
    import tensorflow as tf

    return tf.saved_model.load(str(path)).signatures["serving_default"]


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 8, 8, 1), (3, 28, 28), (3, 28, 28, 3)])
def test_the_graph_refuses_a_wrong_shape_naming_the_expected_one(uint8_classifier, shape):
    import tensorflow as tf

    path = uint8_classifier
    signature = _object_signature(path)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"is not compatible with expected shape \[\?,28,28,1\]"):
        signature(images=tf.zeros(shape, tf.uint8))
    outputs = signature(images=tf.zeros((3, 28, 28, 1), tf.uint8))
    assert outputs["probabilities"].shape == (3, 10)  # the right shape still serves


def test_the_graph_refuses_a_wrong_dtype(uint8_classifier):
    import tensorflow as tf

    path = uint8_classifier
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError), match="uint8"):
        _object_signature(path)(images=tf.zeros((3, 28, 28, 1), tf.float32))


@pytest.mark.parametrize(
    "images, got",
    [
        (np.zeros((3, 8, 8), np.uint8), "uint8 [3, 8, 8]"),
        (np.zeros((3, 28, 28), np.uint8), "uint8 [3, 28, 28]"),
        (np.full((3, 28, 28, 1), 0.5), "float64 [3, 28, 28, 1]"),  # not silently cast to 0
        (np.full((3, 28, 28, 1), 300), "int64 [3, 28, 28, 1]"),  # out of uint8's range
        (np.full((3, 28, 28, 1), "a"), "str32 [3, 28, 28, 1]"),
    ],
)
def test_the_runner_refuses_a_request_that_does_not_fit(uint8_classifier, images, got):
    path = uint8_classifier
    runner = SignatureRunner(path)
    expected = f"input 'images' must be uint8 [-1, 28, 28, 1], got {got}"
    with pytest.raises(InputSpecError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        runner({"images": images})


def test_the_runner_accepts_values_that_fit(uint8_classifier):
    path = uint8_classifier
    runner = SignatureRunner(path)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1))
    as_json_ints = runner({"images": pixels})  # int64, as JSON numbers arrive
    exact = runner({"images": pixels.astype(np.uint8)})
    np.testing.assert_array_equal(as_json_ints["probabilities"], exact["probabilities"])


def test_an_8x8_model_refuses_28x28_images(tmp_path):
    import keras

    from pipelines.image.export import export_for_serving, serving_metadata
    from pipelines.image.heads import HeadConfig

    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 1))
    logits = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(images))
    model = keras.Model(images, logits)
    metadata = serving_metadata(HeadConfig(kind="softmax"), 1.0, (8, 8, 1), list("0123456789"))
    path = export_for_serving(model, tmp_path, "digits", (8, 8, 1), metadata)
    expected = r"must be uint8 \[-1, 8, 8, 1\], got uint8 \[3, 28, 28, 1\]"
    with pytest.raises(InputSpecError, match=expected):
        SignatureRunner(path)({"images": np.zeros((3, 28, 28, 1), np.uint8)})
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected shape \[\?,8,8,1\]"):
        _object_signature(path)(images=tf.zeros((3, 28, 28, 1), tf.uint8))


def test_every_problem_and_missing_names_are_reported_together():
    specs = {"a": (np.dtype("float32"), (None, 2)), "b": (np.dtype("int32"), (None,))}
    with pytest.raises(InputSpecError, match=r"missing \['b'\], unknown \['c'\]. Expected: "
                       r"a: float32 \[-1, 2\]; b: int32 \[-1\]"):
        check_inputs({"a": np.zeros((1, 2)), "c": 1}, specs)
    with pytest.raises(InputSpecError) as info:
        check_inputs({"a": np.zeros((1, 3)), "b": np.zeros(1)}, specs)
    assert "input 'a' must be float32 [-1, 2], got float64 [1, 3]" in str(info.value)
    assert "input 'b' must be int32 [-1], got float64 [1]" in str(info.value)
