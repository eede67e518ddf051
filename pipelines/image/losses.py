"""The confidence penalty: cross-entropy minus beta times the entropy of the prediction.

Pereyra et al. (2017), "Regularizing Neural Networks by Penalizing Confident Output
Distributions" (arXiv 1701.06548), add -beta * H(p) to the negative log-likelihood, with
p = softmax(logits): the loss rewards entropy, so it pushes against the confident,
low-entropy outputs that cross-entropy alone drives towards. It is the reverse direction
of label smoothing's KL to the uniform distribution (the paper's Section 3.2).

Keras has no such loss; the other heads' losses are Keras' own (`heads.head_loss`).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="era_keras_image")
class ConfidencePenaltyCrossentropy(keras.losses.Loss):
    """Per example: -sum_k y_k log p_k - beta * H(p), p = softmax(logits), on one-hot or
    soft targets y. `beta` >= 0; 0 is plain categorical cross-entropy."""

    def __init__(self, beta, name="confidence_penalty_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = float(beta)

    def call(self, y_true, y_pred):
        log_p = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        cross_entropy = -ops.sum(ops.cast(y_true, "float32") * log_p, axis=-1)
        entropy = -ops.sum(ops.exp(log_p) * log_p, axis=-1)
        return cross_entropy - self.beta * entropy

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}
