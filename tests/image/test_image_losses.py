"""Each head's training loss against numpy, and what the confidence penalty does to entropy.

The references are float64 numpy; the losses run in float32 on values of order 1, so they
agree to a relative 1e-5 (a few float32 roundings of the log-softmax and the sums).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.image.heads import HEADS, HeadConfig, head_loss
from pipelines.image.losses import ConfidencePenaltyCrossentropy

RTOL, ATOL = 1e-5, 1e-6
NUM_CLASSES = 5


def _batch(seed=0, batch=6, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(batch, NUM_CLASSES))
    labels = np.eye(NUM_CLASSES)[rng.integers(0, NUM_CLASSES, size=batch)]
    return logits, labels


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _entropy(logits):
    log_p = _log_softmax(logits)
    return -(np.exp(log_p) * log_p).sum(-1)


def numpy_loss(head, logits, labels):
    """The per-example loss of `head` written out, averaged over the batch as Keras does."""
    log_p = _log_softmax(logits)
    p = np.exp(log_p)
    if head.kind == "focal":
        # Lin et al. (2017), as Keras writes it: alpha (1 - p_k)^gamma (-y_k log p_k).
        per_example = (head.focal_alpha * (1 - p) ** head.focal_gamma * -labels * log_p).sum(-1)
    else:
        targets = labels * (1 - head.smoothing) + head.smoothing / NUM_CLASSES
        per_example = -(targets * log_p).sum(-1)
        if head.kind == "confidence_penalty":
            per_example -= head.confidence_penalty * _entropy(logits)
    return per_example.mean()


# Settings away from the defaults, so that a setting that does not reach the loss shows.
SETTINGS = dict(label_smoothing=0.2, confidence_penalty=0.5, focal_gamma=1.5, focal_alpha=0.4)


@pytest.mark.parametrize("kind", HEADS)
def test_each_heads_loss_is_the_numpy_one(kind):
    head = HeadConfig(kind=kind, **SETTINGS)
    logits, labels = _batch()
    loss = head_loss(head)(labels.astype("float32"), logits.astype("float32"))
    expected = numpy_loss(head, logits, labels)
    np.testing.assert_allclose(float(loss), expected, rtol=RTOL, atol=ATOL)


def test_the_heads_that_change_the_loss_differ_from_cross_entropy():
    """Guards the reference itself: with these settings each loss is far from plain
    cross-entropy (by more than 0.01 nats on this batch, 300 times the tolerance)."""
    logits, labels = _batch()
    plain = numpy_loss(HeadConfig(kind="softmax"), logits, labels)
    for kind in ("label_smoothing", "confidence_penalty", "focal", "era_label_smoothing"):
        assert abs(numpy_loss(HeadConfig(kind=kind, **SETTINGS), logits, labels) - plain) > 0.01


def test_focal_and_confidence_penalty_defaults():
    # Keras' CategoricalFocalCrossentropy defaults (gamma 2, alpha 0.25) are the head's.
    keras_focal = keras.losses.CategoricalFocalCrossentropy()
    focal = head_loss(HeadConfig(kind="focal"))
    assert (focal.gamma, focal.alpha) == (keras_focal.gamma, keras_focal.alpha) == (2.0, 0.25)
    assert head_loss(HeadConfig(kind="confidence_penalty")).beta == 0.1


def test_confidence_penalty_gradient_raises_entropy():
    """d/dz [CE - beta H] = (p - y) + beta p_k (log p_k + H): the penalty's part is
    -beta dH/dz, so a gradient step on it alone raises every example's entropy, and a step
    on the whole loss ends with more entropy than a plain cross-entropy step."""
    logits, labels = _batch(seed=1)
    labels = np.eye(NUM_CLASSES)[logits.argmax(-1)]  # confident and right: CE lowers H
    beta = 0.5
    p = np.exp(_log_softmax(logits))
    entropy = _entropy(logits)[:, None]
    expected = ((p - labels) + beta * p * (np.log(p) + entropy)) / len(logits)

    def gradient(loss):
        z = tf.Variable(logits.astype("float32"))
        with tf.GradientTape() as tape:
            value = loss(labels.astype("float32"), z)
        return tape.gradient(value, z).numpy().astype(np.float64)

    penalized = gradient(ConfidencePenaltyCrossentropy(beta))
    plain = gradient(ConfidencePenaltyCrossentropy(0.0))
    # Gradients are of order 0.1; float32 gives them to ~1e-7 absolute.
    np.testing.assert_allclose(penalized, expected, rtol=1e-4, atol=1e-6)
    step = 0.5 * len(logits)  # a step of 0.5 on each example's own loss
    penalty_only = logits - step * (penalized - plain)
    assert np.all(_entropy(penalty_only) > _entropy(logits))
    assert np.all(_entropy(logits - step * plain) < _entropy(logits))
    assert np.all(_entropy(logits - step * penalized) > _entropy(logits - step * plain))


def test_confidence_penalty_survives_saving(tmp_path):
    """A model compiled with the penalty saves and loads with its loss (resume reads it)."""
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(inputs))
    model.compile(optimizer="sgd", loss=head_loss(HeadConfig(kind="confidence_penalty",
                                                             confidence_penalty=0.3)))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.loss, ConfidencePenaltyCrossentropy) and loaded.loss.beta == 0.3


@pytest.mark.parametrize(
    "field, value, message",
    [("confidence_penalty", -0.1, "confidence_penalty must be >= 0.0"),
     ("focal_gamma", -1.0, "focal_gamma must be >= 0.0"),
     ("focal_alpha", 0.0, "focal_alpha must be > 0")],
)
def test_bad_head_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(kind="softmax", **{field: value}).validate(10)
