"""Image classification with ERA: TFDS -> CIFAR-style ResNet / ResNet-50 -> MLflow -> TF Serving.

Modules, in the order a run uses them: `config` (ImageConfig) and `presets` (the authors'
ResNet-50 settings), `offline_datasets` (TFDS builders over data that packages ship),
`data` (tf.data pipelines), `backbones`, `heads` and `classifier` (the model), `training`
(strategy, fit on the shared run lifecycle), `checkpoint` (what a checkpoint holds), `evaluation`
(metrics), `export` (SavedModel for TF Serving). Run `python -m pipelines.image --help`.
"""

from pipelines.common.native_logs import import_tensorflow

import_tensorflow()  # first: the package's config imports Keras, and with it TensorFlow

from pipelines.image.config import ImageConfig  # noqa: E402

__all__ = ["ImageConfig", "train"]


def train(config):
    """Run the pipeline for an ImageConfig; see `pipelines.image.training.train`."""
    from pipelines.image.training import train as run

    return run(config)
