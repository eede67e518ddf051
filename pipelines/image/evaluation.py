"""Classification metrics of served probabilities, per epoch and at the end of training.

Metrics of logits z and integer labels: top-1 and top-5 accuracy, NLL, expected
calibration error (era_keras.calibration), and the mean and minimum predictive entropy
of softmax(z). They are computed on the logits the model serves (ERA logits when the floor
is on at inference), over a whole split, not averaged over batches.
"""

import keras
import numpy as np

import era_keras
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


def predict_logits(model, ds):
    """The model's inference-time outputs over a one-pass (images, labels) dataset."""
    return np.asarray(model.predict(data.images_only(ds), verbose=0), dtype=np.float64)


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


def final_report(model, head, validation_ds, test_ds, calibrate=True):
    """Test metrics of the served probabilities, before and after temperature scaling.

    The temperature is fitted by NLL on the validation split. For ERA heads the report
    also has the floor on and off at inference (`*_era_on`, `*_era_off`), whichever the
    model serves, each with its own fitted temperature. Returns (metrics, temperature of
    the served probabilities).
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
        temperature = 1.0
        if calibrate:
            temperature = era_keras.fit_temperature(validation_logits, validation_labels)
        before = classification_metrics(test_logits, test_labels)
        after = classification_metrics(test_logits, test_labels, temperature)
        metrics.update({f"test/{k}{suffix}": v for k, v in before.items()})
        metrics.update({f"test/{k}{suffix}_calibrated": after[k] for k in ("nll", "ece", "entropy_mean")})
        metrics[f"temperature{suffix}"] = temperature
    return metrics, metrics["temperature"]


class EpochMetrics(keras.callbacks.Callback):
    """Logs the epoch's training metrics and the validation metrics to MLflow.

    Put it before BackupAndRestore in the callback list: then an epoch's metrics are
    logged before its checkpoint, and a run killed in between re-runs the epoch and logs
    the same step again (plots keep the last value of each step).
    """

    def __init__(self, validation_ds, validation_labels, learning_rate_fn=None):
        super().__init__()
        self.validation_ds = validation_ds
        self.validation_labels = validation_labels
        self.learning_rate_fn = learning_rate_fn
        self.last = {}

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        logs = logs or {}
        metrics = {
            f"train/{name}": float(logs[key])
            for name, key in (("loss", "loss"), ("top1", "accuracy"), ("top5", "top5"))
            if key in logs
        }
        logits = predict_logits(self.model, self.validation_ds)
        validation = classification_metrics(logits, self.validation_labels)
        metrics.update({f"val/{name}": value for name, value in validation.items()})
        if self.learning_rate_fn is not None:
            metrics["train/learning_rate"] = float(self.learning_rate_fn())
        mlflow.log_metrics(metrics, step=epoch + 1)
        self.last = metrics
        print(
            f"epoch {epoch + 1}: val top1 {validation['top1']:.4f}  nll "
            f"{validation['nll']:.4f}  ece {validation['ece']:.4f}  entropy mean "
            f"{validation['entropy_mean']:.3f} min {validation['entropy_min']:.3f}",
            flush=True,
        )


def metric_curves(run_id):
    """{"top1/val": (epochs, values), ...} from the run's MLflow history, resumes included.

    A step logged twice (an epoch re-run after a kill) keeps its last value.
    """
    import mlflow

    client = mlflow.tracking.MlflowClient()
    run = client.get_run(run_id)
    curves = {}
    for key in sorted(run.data.metrics):
        if "/" not in key or not key.startswith(("train/", "val/")):
            continue
        split, name = key.split("/", 1)
        by_step = {}
        for point in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            by_step[point.step] = point.value
        steps = sorted(by_step)
        curves[f"{name}/{split}"] = (steps, [by_step[s] for s in steps])
    return curves
