"""Classification heads and their losses: softmax, label smoothing, dropout, confidence
penalty, focal loss, ERA, ERA + LS.

Every head ends in a float32 Dense layer named "logits"; ERA heads add a `SoftmaxERA`
layer named "era" after it. The model's output is always logits (the ERA logits for ERA
heads). The loss on them is categorical cross-entropy, with label smoothing for the
`*label_smoothing` heads, except for two heads that change only the loss:
`confidence_penalty` (cross-entropy - beta * H(p), Pereyra et al. 2017; see `losses`) and
`focal` (Keras' `CategoricalFocalCrossentropy`, Lin et al. 2017, with its gamma and alpha).

Which probabilities an ERA model serves is explicit: `era_at_inference=True` keeps the
floor at inference (softmax of the ERA logits), `False` makes the ERA layer the identity
outside training (`SoftmaxERA(training_only=True)`), so inference serves the plain softmax
of the "logits" layer. The argmax is the same either way.
"""

import dataclasses

import keras

import era_keras
from pipelines.common.config import Problems
from pipelines.image.losses import ConfidencePenaltyCrossentropy

HEADS = ("softmax", "label_smoothing", "dropout", "confidence_penalty", "focal", "era",
         "era_label_smoothing")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """A head's settings. Its defaults are the pipeline's (`ImageConfig` and the presets
    read them from here); H0 = 0.6 nats is the authors' image target (nothingbutbut/era,
    `resnet-era/`). beta = 0.1 is the confidence-penalty weight Pereyra et al. (2017)
    report for CIFAR-10 (from their grid 0.1 ... 8); gamma = 2 and alpha = 0.25 are the
    defaults of Keras' `CategoricalFocalCrossentropy` (Lin et al. 2017's choice)."""

    kind: str = "era"
    label_smoothing: float = 0.1  # strength, for the *label_smoothing heads
    dropout: float = 0.2  # rate before the last Dense, for the dropout head
    confidence_penalty: float = 0.1  # beta, for the confidence_penalty head
    focal_gamma: float = 2.0  # focusing exponent, for the focal head
    focal_alpha: float = 0.25  # class weight (the same for every class), for the focal head
    target_entropy: float = 0.6  # nats, for ERA heads
    era_floor: str = "tight"  # "tight" or "paper" (see era_keras.SoftmaxERA)
    era_inverse: str = "exact"  # "exact" or "approx"
    era_at_inference: bool = True

    @property
    def uses_era(self):
        return self.kind.startswith("era")

    @property
    def smoothing(self):
        return self.label_smoothing if self.kind.endswith("label_smoothing") else 0.0

    def check(self, problems, num_classes=None):
        """Add what is wrong with this head to `problems` (a `Problems`); the ERA target is
        checked once `num_classes` is known. Returns the ERA floor report (or None)."""
        problems.choice("head", self.kind, HEADS)
        problems.choice("era_floor", self.era_floor, ("tight", "paper"))
        problems.choice("era_inverse", self.era_inverse, ("exact", "approx"))
        problems.in_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        problems.in_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        problems.at_least("confidence_penalty", self.confidence_penalty, 0.0)
        problems.at_least("focal_gamma", self.focal_gamma, 0.0)
        problems.check(self.focal_alpha > 0,
                       f"focal_alpha must be > 0 (got {self.focal_alpha})")
        if num_classes is None or not self.uses_era or self.era_floor not in ("tight", "paper"):
            return None
        try:
            return era_keras.entropy_floor(num_classes, self.target_entropy, self.era_floor)
        except ValueError as error:
            problems.add(str(error).rstrip("."))
            return None

    def validate(self, num_classes):
        """The ERA floor report for `num_classes` classes (None without ERA); a ConfigError
        listing every setting that cannot work."""
        problems = Problems("head")
        floor = self.check(problems, num_classes)
        problems.raise_if_any()
        return floor


def classification_head(features, num_classes, head):
    """Logits for `features`, through the head `head` (a HeadConfig)."""
    x = features
    if head.kind == "dropout":
        x = keras.layers.Dropout(head.dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    if not head.uses_era:
        return logits
    return era_keras.SoftmaxERA(
        target_entropy=head.target_entropy,
        floor=head.era_floor,
        inverse=head.era_inverse,
        training_only=not head.era_at_inference,
        dtype="float32",
        name="era",
    )(logits)


def head_loss(head):
    """The training loss of `head` on the model's logits and one-hot (or soft) labels."""
    if head.kind == "confidence_penalty":
        return ConfidencePenaltyCrossentropy(beta=head.confidence_penalty)
    if head.kind == "focal":
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=head.focal_alpha, gamma=head.focal_gamma, from_logits=True
        )
    return keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=head.smoothing
    )


def served_probabilities(head):
    """What the model's softmax is at inference: a label for configs and exports."""
    if head.uses_era and head.era_at_inference:
        return f"era_floor(target_entropy={head.target_entropy}, floor={head.era_floor})"
    return "softmax"
