"""Training: distribution strategy, optimizer and schedule, fit with resume, then finish.

`train(config)` runs the whole pipeline: data, model, Keras fit with a checkpoint every
epoch (keras.callbacks.BackupAndRestore: weights, optimizer state and epoch), validation
metrics per epoch, then temperature scaling, test metrics, the Keras model, curves, the
MLflow model and a TF Serving export. Everything goes to one MLflow run, which a resumed
run continues (`pipelines.common.tracking.tracked_run` keeps the run id in the run dir).
"""

import dataclasses
import json
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

import era_keras
from pipelines.common import tracking
from pipelines.image import data, evaluation, export
from pipelines.image.classifier import build_classifier
from pipelines.image.heads import head_loss, served_probabilities

CONFIG_FILE = "config.json"
FINISHED_FILE = "finished.json"
MODEL_FILE = "model.keras"


def make_strategy(name):
    """The tf.distribute strategy called `name` (see config.STRATEGIES)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        # Reads the cluster from TF_CONFIG, as every worker runs the same command.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}.")


def learning_rate_schedule(config, steps_per_epoch):
    """Linear warm-up to `learning_rate`, then cosine decay to 0 at the last step."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, warmup_target=config.learning_rate, warmup_steps=warmup
    )


def make_optimizer(config, schedule):
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            schedule, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
        )
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    # Decay the convolution and dense kernels only, as usual for ResNets.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def prepare_run_dir(config):
    """The run directory; refuses one that holds another config or a finished run."""
    if config.run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config.run_dir = f"runs/image/{config.dataset}-{config.head}-{stamp}"
    run_dir = pathlib.Path(config.run_dir)
    saved = run_dir / CONFIG_FILE
    if saved.exists():
        previous = json.loads(saved.read_text())
        current = dataclasses.asdict(config)
        changed = sorted(k for k in current if previous.get(k) != current[k] and k != "verbose")
        if changed:
            raise ValueError(
                f"{run_dir} holds a run with a different config ({', '.join(changed)} "
                "differ). Resume it with the same settings, or pick a new --run-dir."
            )
    if (run_dir / FINISHED_FILE).exists():
        raise FileExistsError(
            f"The run in {run_dir} has already finished (see {run_dir / FINISHED_FILE}); "
            "pick a new --run-dir to train again."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(config.to_json())
    return run_dir


def _verbosity(config):
    return config.verbose if config.verbose == "auto" else int(config.verbose)


def train(config):
    """Run the pipeline for `config` (an ImageConfig); return a summary dict."""
    previous_policy = keras.mixed_precision.global_policy()
    if config.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")
    try:
        return _train(config)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


@dataclasses.dataclass
class Inputs:
    """Everything a run reads: the builder, its facts, and the three tf.data pipelines."""

    builder: object
    info: data.DatasetInfo
    steps_per_epoch: int
    train: object
    validation: object
    test: object
    mean: list
    variance: list


def prepare_inputs(config):
    """The data side of a run; fails clearly if the dataset is unknown or not prepared."""
    builder = data.get_builder(config.dataset, config.data_dir)
    info = data.dataset_info(builder, config.image_size)
    train_examples = data.num_examples(builder, config.train_split)
    steps_per_epoch = config.steps_per_epoch or max(1, train_examples // config.batch_size)
    train_ds = data.train_pipeline(
        builder,
        info,
        config.train_split,
        config.batch_size,
        crop_padding=config.crop_padding,
        flip=config.flip,
        randaugment=config.randaugment,
        shuffle_buffer=config.shuffle_buffer,
        cache=config.cache,
        seed=config.seed,
    )
    mean, variance = data.channel_statistics(builder, info, config.train_split)
    return Inputs(
        builder=builder,
        info=info,
        steps_per_epoch=steps_per_epoch,
        train=train_ds,
        validation=data.eval_pipeline(builder, info, config.validation_split, 256, config.cache),
        test=data.eval_pipeline(builder, info, config.test_split, 256, config.cache),
        mean=mean,
        variance=variance,
    )


def compiled_model(config, inputs, strategy=None):
    """The classifier for `config`, compiled under `strategy`; returns (model, schedule)."""
    strategy = strategy or tf.distribute.get_strategy()
    head = config.head_config()
    info = inputs.info
    with strategy.scope():
        model = build_classifier(
            info.image_shape,
            info.num_classes,
            config.backbone,
            head,
            inputs.mean,
            inputs.variance,
            config.width,
        )
        schedule = learning_rate_schedule(config, inputs.steps_per_epoch)
        model.compile(
            optimizer=make_optimizer(config, schedule),
            loss=head_loss(head),
            metrics=[
                keras.metrics.CategoricalAccuracy(name="accuracy"),
                keras.metrics.TopKCategoricalAccuracy(k=min(5, info.num_classes), name="top5"),
            ],
        )
    return model, schedule


def _train(config):
    config.validate()
    # First: multi-worker collectives must be set up before any other TensorFlow op.
    strategy = make_strategy(config.strategy)
    head = config.head_config()
    inputs = prepare_inputs(config)
    floor = head.validate(inputs.info.num_classes)
    run_dir = prepare_run_dir(config)
    keras.utils.set_random_seed(config.seed)
    model, schedule = compiled_model(config, inputs, strategy)

    with tracking.tracked_run(config.experiment, config, run_dir, config.tracking_uri) as run:
        import mlflow

        mlflow.log_params(
            _setting_params(inputs.info, floor, head, inputs.steps_per_epoch, strategy)
        )
        epoch_metrics = evaluation.EpochMetrics(
            inputs.validation,
            data.integer_labels(inputs.validation),
            learning_rate_fn=lambda: schedule(model.optimizer.iterations),
        )
        callbacks = [
            epoch_metrics,
            keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        ]
        model.fit(
            inputs.train,
            epochs=config.epochs,
            steps_per_epoch=inputs.steps_per_epoch,
            callbacks=callbacks,
            verbose=_verbosity(config),
        )
        return finish(config, run, run_dir, model, head, inputs)


def _setting_params(info, floor, head, steps_per_epoch, strategy):
    params = {
        "data.num_classes": info.num_classes,
        "data.image_shape": "x".join(map(str, info.image_shape)),
        "train.steps_per_epoch": steps_per_epoch,
        "train.replicas": strategy.num_replicas_in_sync,
        "served_probabilities": served_probabilities(head),
    }
    if floor is not None:
        params.update(
            {
                "era.min_entropy": round(floor.min_entropy, 6),
                "era.max_probability": round(floor.max_probability, 6),
                "era.constant": round(floor.constant, 6),
            }
        )
    return params


def finish(config, run, run_dir, model, head, inputs):
    """After fit: calibration, test metrics, saved model, curves, MLflow model, export."""
    import mlflow

    info = inputs.info
    metrics, temperature = evaluation.final_report(
        model, head, inputs.validation, inputs.test, config.calibrate
    )
    mlflow.log_metrics(metrics)

    model.save(run_dir / MODEL_FILE)
    mlflow.log_artifact(str(run_dir / MODEL_FILE))
    tracking.log_curves(
        evaluation.metric_curves(run.info.run_id),
        "curves.png",
        title=f"{config.dataset} {config.backbone} {config.head}",
        xlabel="epoch",
    )

    class_names = _class_names(inputs.builder, info)
    metadata = export.serving_metadata(head, temperature, info.image_shape, class_names)
    if config.log_model:
        _log_keras_model(model, inputs.validation, metadata)
    export_base = config.export_base or str(run_dir / "serving")
    model_name = config.model_name or f"{config.dataset}_{config.backbone}_{config.head}"
    export_dir = export.export_for_serving(model, export_base, model_name, info.image_shape, metadata)
    # The SavedModel also goes to the run, so `python -m pipelines.export --run-id` finds it.
    mlflow.log_artifacts(str(export_dir), "saved_model")
    mlflow.log_dict(metadata, "serving_metadata.json")
    mlflow.set_tag("export_dir", str(export_dir))

    summary = {"run_id": run.info.run_id, "run_dir": str(run_dir), "export_dir": str(export_dir)}
    summary.update(metrics)
    tracking.write_json(run_dir / FINISHED_FILE, summary)
    return summary


def _class_names(builder, info):
    names = builder.info.features["label"].names
    return names if len(names) == info.num_classes else [str(i) for i in range(info.num_classes)]


def _log_keras_model(model, ds, metadata):
    import mlflow
    from mlflow.models import infer_signature

    images = next(iter(data.images_only(ds))).numpy()[:4]
    logits = np.asarray(model.predict(images, verbose=0))
    era_dir = pathlib.Path(era_keras.__file__).parent
    mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=infer_signature(images, logits),
        code_paths=[str(era_dir)],
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        metadata=metadata,
    )
