"""Image classification with ERA: TFDS -> CIFAR-style ResNet / ResNet-50 -> MLflow -> TF Serving.

Modules, in the order a run uses them: `config` (ImageConfig), `offline_datasets` (TFDS
builders over data that packages ship), `data` (tf.data pipelines), `backbones`, `heads`
and `classifier` (the model), `training` (fit, resume, finish), `evaluation` (metrics),
`export` (SavedModel for TF Serving). Run `python -m pipelines.image --help`.
"""

from pipelines.image.config import ImageConfig

__all__ = ["ImageConfig", "train"]


def train(config):
    """Run the pipeline for an ImageConfig; see `pipelines.image.training.train`."""
    from pipelines.image.training import train as run

    return run(config)
