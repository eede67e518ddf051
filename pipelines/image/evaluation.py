"""Classification metrics of served probabilities, per epoch and at the end of training.

Metrics of logits z and integer labels: top-1 and top-5 accuracy, NLL, expected
calibration error (era_keras.calibration), and the mean and minimum predictive entropy
of softmax(z). They are computed on the logits the model serves (ERA logits when the floor
is on at inference), over a whole split, not averaged over batches.

Names follow the project's scheme (`pipelines.common.metrics`): `train/...` (loss,
accuracy, learning rate), `eval/<split>_...` (top1, top5, nll, ece, temperature),
`entropy/<split>_{mean,min}` (what ERA controls) and `perf/...` (throughput). The final
report adds `_era_on` / `_era_off` (ERA heads: the floor on and off at inference) and
`_calibrated` (after temperature scaling) variants.
"""

import time

import keras
import numpy as np
import tensorflow as tf

import era_keras
from pipelines.common.metrics import grouped, metric_history
from pipelines.image import data


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def classification_metrics(logits, labels, temperature=1.0):
    """{top1, top5, nll, ece, entropy_mean, entropy_min} of softmax(logits / temperature)."""
    logits = np.asarray(logits, dtype=np.float64) / temperature
    labels = np.asarray(labels).reshape(-1)
    probabilities = _softmax(logits)
    k = min(5, logits.shape[-1])
    top_k = np.argsort(-logits, axis=-1)[:, :k]
    entropy = -np.sum(probabilities * np.log(np.clip(probabilities, 1e-300, None)), axis=-1)
    return {
        "top1": float(np.mean(top_k[:, 0] == labels)),
        "top5": float(np.mean(np.any(top_k == labels[:, None], axis=-1))),
        "nll": era_keras.negative_log_likelihood(logits, labels),
        "ece": era_keras.expected_calibration_error(probabilities, labels),
        "entropy_mean": float(entropy.mean()),
        "entropy_min": float(entropy.min()),
    }


def named(split, metrics, suffix=""):
    """classification_metrics -> project names: {"eval/val_top1": ..., "entropy/val_min": ...}."""
    evaluation = {f"{split}_{k}{suffix}": v
                  for k, v in metrics.items() if not k.startswith("entropy_")}
    entropy = {f"{split}_{k[len('entropy_'):]}{suffix}": v
               for k, v in metrics.items() if k.startswith("entropy_")}
    return {**grouped("eval", evaluation), **grouped("entropy", entropy)}


def predict_logits(model, ds):
    """The model's inference-time outputs over a one-pass (images, labels) dataset.

    Run here, in this process, outside any distribution strategy: under multi-worker
    training only the chief evaluates, and Keras' distributed `predict` would wait for
    the other workers.
    """
    forward = getattr(model, "_era_keras_forward", None)
    if forward is None:
        forward = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
        model._era_keras_forward = forward
    outputs = [np.asarray(forward(images), dtype=np.float64) for images in data.images_only(ds)]
    return np.concatenate(outputs)


def pre_era_model(model):
    """The same network up to the "logits" layer: the logits before any ERA layer."""
    return keras.Model(model.inputs, model.get_layer("logits").output)


def with_era_floor(raw_logits, head):
    """ERA logits of the head's setting for pre-ERA logits (float64 numpy)."""
    era_logits = era_keras.softmax_era(
        np.asarray(raw_logits, np.float32),
        head.target_entropy,
        inverse=head.era_inverse,
        floor=head.era_floor,
    )
    return keras.ops.convert_to_numpy(era_logits).astype(np.float64)


def final_report(model, head, validation_ds, test_ds):
    """Test metrics of the served probabilities, before and after temperature scaling.

    The temperature is fitted by NLL on the validation split and always reported
    (`eval/temperature`); whether the export applies it is the caller's choice. For ERA
    heads the report also has the floor on and off at inference (`*_era_on`,
    `*_era_off`), whichever the model serves, each with its own fitted temperature.
    Returns (metrics, fitted temperature of the served probabilities).
    """
    validation_labels = data.integer_labels(validation_ds)
    test_labels = data.integer_labels(test_ds)
    variants = {"": (predict_logits(model, validation_ds), predict_logits(model, test_ds))}
    if head.uses_era:
        raw_model = pre_era_model(model)
        raw = (predict_logits(raw_model, validation_ds), predict_logits(raw_model, test_ds))
        variants["_era_on"] = tuple(with_era_floor(logits, head) for logits in raw)
        variants["_era_off"] = raw
    metrics = {}
    for suffix, (validation_logits, test_logits) in variants.items():
        temperature = era_keras.fit_temperature(validation_logits, validation_labels)
        before = classification_metrics(test_logits, test_labels)
        after = classification_metrics(test_logits, test_labels, temperature)
        metrics.update(named("test", before, suffix))
        calibrated = {k: after[k] for k in ("nll", "ece", "entropy_mean", "entropy_min")}
        metrics.update(named("test", calibrated, f"{suffix}_calibrated"))
        metrics[f"eval/temperature{suffix}"] = temperature
    return metrics, metrics["eval/temperature"]


class EpochMetrics(keras.callbacks.Callback):
    """The epoch's training metrics, the validation metrics and throughput, at the epochs
    `trigger` (a `pipelines.common.lifecycle.IntervalTrigger`) fires on.

    `log(metrics, step)` is the run's `RunLifecycle.log_metrics`, which logs each (metric,
    epoch) once: a run killed after an epoch's metrics but before its checkpoint trains
    that epoch again on resume, and the values logged first stay.
    """

    def __init__(self, validation_ds, validation_labels, log, trigger, learning_rate_fn=None,
                 images_per_epoch=None):
        super().__init__()
        self.validation_ds = validation_ds
        self.validation_labels = validation_labels
        self.log = log
        self.trigger = trigger
        self.learning_rate_fn = learning_rate_fn
        self.images_per_epoch = images_per_epoch
        self.last = {}
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if not self.trigger(epoch, epoch + 1):
            return
        seconds = time.perf_counter() - self._started
        logs = logs or {}
        train = {name: float(logs[key])
                 for name, key in (("loss", "loss"), ("top1", "accuracy"), ("top5", "top5"))
                 if key in logs}
        if self.learning_rate_fn is not None:
            train["learning_rate"] = float(self.learning_rate_fn())
        logits = predict_logits(self.model, self.validation_ds)
        validation = classification_metrics(logits, self.validation_labels)
        perf = {"epoch_seconds": seconds}
        if self.images_per_epoch:
            perf["train_images_per_second"] = self.images_per_epoch / seconds
        metrics = {**grouped("train", train), **named("val", validation), **grouped("perf", perf)}
        self.log(metrics, epoch + 1)
        self.last = metrics
        print(
            f"epoch {epoch + 1}: val top1 {validation['top1']:.4f}  nll "
            f"{validation['nll']:.4f}  ece {validation['ece']:.4f}  entropy mean "
            f"{validation['entropy_mean']:.3f} min {validation['entropy_min']:.3f}",
            flush=True,
        )


def metric_curves(run_id):
    """{"top1/train": (epochs, values), "top1/val": ..., "entropy/val_min": ...} for plots.

    Read through `pipelines.common.metrics.metric_history`; panels group by the part
    before "/".
    """
    import mlflow

    keys = [key for key in mlflow.tracking.MlflowClient().get_run(run_id).data.metrics
            if key.startswith(("train/", "eval/val_", "entropy/val_"))]
    curves = {}
    for key, series in metric_history(run_id, sorted(keys)).items():
        group, name = key.split("/", 1)
        if group == "train":
            curves[f"{name}/train"] = series
        elif group == "eval":
            curves[f"{name[len('val_'):]}/val"] = series
        else:
            curves[f"entropy/val {name[len('val_'):]}"] = series
    return curves
