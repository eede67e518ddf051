"""Classification heads and their losses: softmax, label smoothing, dropout, ERA, ERA + LS.

Every head ends in a float32 Dense layer named "logits"; ERA heads add a `SoftmaxERA`
layer named "era" after it. The model's output is always logits (the ERA logits for ERA
heads), and the loss is categorical cross-entropy on them, with label smoothing for the
`*label_smoothing` heads.

Which probabilities an ERA model serves is explicit: `era_at_inference=True` keeps the
floor at inference (softmax of the ERA logits), `False` makes the ERA layer the identity
outside training (`SoftmaxERA(training_only=True)`), so inference serves the plain softmax
of the "logits" layer. The argmax is the same either way.
"""

import dataclasses

import era_keras
import keras

HEADS = ("softmax", "label_smoothing", "dropout", "era", "era_label_smoothing")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    kind: str = "era"
    label_smoothing: float = 0.1  # strength, for the *label_smoothing heads
    dropout: float = 0.2  # rate before the last Dense, for the dropout head
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

    def validate(self, num_classes):
        """Raise ValueError for a setting that cannot work with `num_classes` classes."""
        if self.kind not in HEADS:
            raise ValueError(f"Unknown head {self.kind!r}; choose one of {HEADS}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.uses_era:
            return era_keras.entropy_floor(num_classes, self.target_entropy, self.era_floor)
        return None


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
    return keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=head.smoothing
    )


def served_probabilities(head):
    """What the model's softmax is at inference: a label for configs and exports."""
    if head.uses_era and head.era_at_inference:
        return f"era_floor(target_entropy={head.target_entropy}, floor={head.era_floor})"
    return "softmax"
