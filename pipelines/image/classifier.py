"""The image classifier: normalisation -> backbone -> head, one Keras functional model.

Input: float32 images in [0, 1] (see `data.pixels_to_float`); the model normalises them
with per-channel statistics of the training split, so a saved or exported model needs no
separate preprocessing. Output: logits (ERA logits for ERA heads; see `heads`).
"""

import keras

from pipelines.image.backbones import build_backbone
from pipelines.image.heads import classification_head


def build_classifier(image_shape, num_classes, backbone, head, mean, variance, width=None):
    images = keras.Input(image_shape, name="images")
    normalized = keras.layers.Normalization(
        mean=mean, variance=variance, name="normalize"
    )(images)
    features = build_backbone(backbone, image_shape, width)(normalized)
    logits = classification_head(features, num_classes, head)
    return keras.Model(images, logits, name=f"{backbone}_{head.kind}_classifier")
