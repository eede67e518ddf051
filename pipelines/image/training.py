"""Training: distribution strategy, optimizer and schedule, Keras fit, then finish.

`train(config)` runs the pipeline on the shared run lifecycle
(`pipelines.common.lifecycle.RunLifecycle`): check the config (the dataset and the ERA
target included), check the tracking store, lock and claim the run directory, build the
model, restore the newest readable checkpoint (`checkpoint.ImageCheckpoints`), then Keras
`fit`, whose callbacks log the epoch's metrics and checkpoint it on `IntervalTrigger`s;
then test metrics (with the fitted temperature, applied to the export only with
`calibrate`), the Keras model, curves, the MLflow model and a TF Serving export. Everything
goes to one MLflow run, which a resumed run continues, each metric once per epoch.

Under `multi_worker_mirrored` every worker runs this same function; the chief alone claims
the run directory, writes checkpoints, logs to MLflow and exports. The other workers read
the chief's checkpoints when they resume, so the run directory must be on storage every
worker can read.
"""

import dataclasses
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

import era_keras
from pipelines.common import tracking
from pipelines.common.errors import UserError
from pipelines.common.lifecycle import IntervalTrigger, RunLifecycle, run_name
from pipelines.image import data, evaluation, export, offline_datasets
from pipelines.image.checkpoint import ImageCheckpoints
from pipelines.image.classifier import build_classifier
from pipelines.image.heads import head_loss, served_probabilities

MODEL_FILE = "model.keras"
EXPORT_NAME = "classifier"  # the summary's `exports` key of the TF Serving export
# Display settings: they may change when a run resumes, and are not part of its identity.
DISPLAY_FIELDS = ("verbose",)
# Every epoch is logged and checkpointed (one epoch is the unit Keras fit resumes from).
EVERY_EPOCHS = 1


def make_strategy(name):
    """The tf.distribute strategy called `name` (see config.STRATEGIES).

    `mirrored` replicates over every GPU, or, on a machine without one, over every logical
    CPU device (one unless `tf.config.set_logical_device_configuration` made more).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker_mirrored":
        # Reads the cluster from TF_CONFIG, as every worker runs the same command.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy()
    raise ValueError(f"Unknown strategy {name!r}.")


def _tpu_strategy():
    """TPUStrategy on the TPU that `TPUClusterResolver` finds (a TPU VM's own, or
    `TPU_NAME`); a UserError when there is none."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"--strategy tpu found no TPU ({reason.rstrip('.')}); run on a Cloud TPU VM or "
            "set TPU_NAME, or use --strategy default or mirrored") from None
    return tf.distribute.TPUStrategy(resolver)


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


def is_chief(strategy):
    """Whether this process writes the run's outputs: always, except a non-chief worker of
    a multi-worker strategy (the chief is task "chief", or worker 0 when there is none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


def default_run_dir(config):
    return f"runs/image/{config.dataset}-{config.head}-{time.strftime('%Y%m%d-%H%M%S')}"


def default_run_name(config):
    """pipeline, data, model, head and seed, e.g. "image mnist5k resnet20 era-h0.6 seed 0"."""
    head = config.head + (f"-h{config.target_entropy:g}" if config.head.startswith("era") else "")
    return run_name("image", config.dataset, config.backbone, head, seed=config.seed)


def claimed_config(config):
    """What identifies a run: every field but the display ones."""
    values = dataclasses.asdict(config)
    return {k: v for k, v in values.items() if k not in DISPLAY_FIELDS}


def _verbosity(config):
    return config.verbose if config.verbose == "auto" else int(config.verbose)


def train(config):
    """Run the pipeline for `config` (an ImageConfig); returns the run's summary.

    The summary every pipeline returns (`RunLifecycle.finish`): `run_id`, `run_dir`,
    `step` (epochs done), `exports` ({"classifier": export dir}), `metrics` (the final
    test metrics), and `served_temperature`; `chief: False` on a non-chief worker.
    """
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
    label_noise_flipped: float | None = None  # fraction of training labels changed


def open_dataset(config):
    """The run's dataset as (builder, `data.DatasetInfo`), checked without preparing or
    reading it, so that a config is checked in seconds; fails clearly if the dataset is
    unknown, not an image classification dataset, or (unless it is one of the offline
    datasets, prepared on first use) not prepared."""
    builder = data.get_builder(config.dataset, config.data_dir, prepare=False)
    info = data.dataset_info(builder, config.image_size)
    if config.dataset not in offline_datasets.OFFLINE_DATASETS:
        data.num_examples(builder, config.train_split)  # reads only the split's metadata
    return builder, info


def prepare_inputs(config, dataset=None):
    """The data side of a run, from `dataset` (what `open_dataset` returned) or opened here;
    fails clearly if the dataset is unknown or not prepared."""
    builder, info = dataset or open_dataset(config)
    data.prepare_offline(builder)
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
        label_noise_rate=config.label_noise,
    )
    flipped = None
    if config.label_noise > 0:
        flipped = data.flipped_label_fraction(builder, info, config.train_split,
                                              config.label_noise, config.seed)
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
        label_noise_flipped=flipped,
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
    # First: multi-worker collectives must be set up before any other TensorFlow op.
    strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    try:
        (builder, info), dataset_problem = open_dataset(config), None
    except UserError as error:  # an unknown or unprepared dataset
        builder, info, dataset_problem = None, None, str(error)
    # Every problem at once, and all of it before the data is read or the run directory
    # is claimed.
    floor = config.check(info, dataset_problem)
    if config.run_dir is None:
        config.run_dir = default_run_dir(config)
    run = RunLifecycle(config, config.experiment, default_run_name(config),
                       tracking_uri=config.tracking_uri, chief=chief,
                       claimed=claimed_config(config))
    try:
        run.start()
        return _fit_and_finish(config, run, strategy, builder, info, floor)
    finally:
        run.close()  # in a process that goes on (tests, notebooks) after a failed run


def _fit_and_finish(config, run, strategy, builder, info, floor):
    """The run once its dir is held: data, model, restore, fit with the per-epoch triggers
    as callbacks, then (the chief) test metrics and export; returns the summary."""
    chief = run.chief
    inputs = prepare_inputs(config, (builder, info))
    keras.utils.set_random_seed(config.seed)
    model, schedule = compiled_model(config, inputs, strategy)
    checkpoints = ImageCheckpoints(run.run_dir)
    with strategy.scope():
        initial_epoch = checkpoints.restore(model)
    if run.resumed:
        run.announce_resume(f"epoch {initial_epoch}" if initial_epoch
                            else "the start (no checkpoint was written yet)")
    every_epoch = IntervalTrigger(EVERY_EPOCHS, config.epochs)
    with run.tracking() as active:
        callbacks = []
        if chief:
            _log_setting_params(active, _setting_params(inputs, floor, config.head_config(),
                                                        strategy))
            callbacks = [
                evaluation.EpochMetrics(
                    inputs.validation,
                    data.integer_labels(inputs.validation),
                    log=run.log_metrics,
                    trigger=every_epoch,
                    learning_rate_fn=lambda: schedule(model.optimizer.iterations),
                    images_per_epoch=inputs.steps_per_epoch * config.batch_size,
                ),
                checkpoints.callback(every_epoch),  # after the metrics: see EpochMetrics
            ]
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            _work_around_keras_multi_worker(model)
        with strategy.scope():
            model.fit(
                inputs.train,
                epochs=config.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=inputs.steps_per_epoch,
                callbacks=callbacks,
                shuffle=False,  # the tf.data pipeline shuffles; Keras warns it ignores this
                verbose=_verbosity(config) if chief else 0,
            )
        if chief:
            exports, metrics, temperature = finish(config, run, active, model, inputs)
        _all_workers_done(strategy)
    if not chief:
        return run.finish(config.epochs, chief=False)
    return run.finish(config.epochs, exports, metrics, served_temperature=temperature)


def _log_setting_params(active, params):
    """The run's facts as params, once: a resumed MLflow run already holds them."""
    import mlflow

    mlflow.log_params({k: v for k, v in params.items() if k not in active.data.params})


def _all_workers_done(strategy):
    """Under multi-worker training, wait here until every worker arrives (a tiny
    all-reduce): the others wait for the chief's evaluation and export instead of
    exiting, which its coordination service would report as a crashed worker."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def _work_around_keras_multi_worker(model):
    """Keras 3 fit under MultiWorkerMirroredStrategy fails twice (tensorflow/tensorflow
    #72388): it builds the model on one batch reduced across replicas (a PerReplica value
    cannot become a tensor), and it reduces each step's scalar logs with
    `strategy.reduce("MEAN", v, axis=0)` (no axis 0 on a scalar). Without its own strategy
    reference the model builds when fit traces the train step, under the strategy scope
    fit runs in; and logs of shape [1] reduce over replicas and that axis to the mean."""
    model._distribute_strategy = None
    train_step = model.train_step

    def train_step_with_vector_logs(data):
        return {name: tf.reshape(value, [1]) for name, value in train_step(data).items()}

    model.train_step = train_step_with_vector_logs


def _setting_params(inputs, floor, head, strategy):
    info = inputs.info
    params = {
        "data.num_classes": info.num_classes,
        "data.image_shape": "x".join(map(str, info.image_shape)),
        "train.steps_per_epoch": inputs.steps_per_epoch,
        "train.replicas": strategy.num_replicas_in_sync,
        "served_probabilities": served_probabilities(head),
    }
    if inputs.label_noise_flipped is not None:
        # What the noise did, beside the rate asked for (the `label_noise` param).
        params["data.label_noise_flipped"] = round(inputs.label_noise_flipped, 6)
    if floor is not None:
        params.update(
            {
                "era.min_entropy": round(floor.min_entropy, 6),
                "era.max_probability": round(floor.max_probability, 6),
                "era.constant": round(floor.constant, 6),
            }
        )
    return params


def finish(config, run, active, model, inputs):
    """After fit: test metrics, saved model, curves, MLflow model, export.

    Returns (exports {name: path}, test metrics, the temperature the export applies).
    """
    import mlflow

    info = inputs.info
    head = config.head_config()
    metrics, fitted_temperature = evaluation.final_report(
        model, head, inputs.validation, inputs.test
    )
    run.log_metrics(metrics, config.epochs)

    model_file = run.run_dir / MODEL_FILE
    model.save(model_file)
    mlflow.log_artifact(str(model_file))
    tracking.log_curves(
        evaluation.metric_curves(active.info.run_id),
        "curves.png",
        title=f"{config.dataset} {config.backbone} {config.head}",
        xlabel="epoch",
    )

    class_names = _class_names(inputs.builder, info)
    # The export serves what was trained (the ERA floor on, when the head has it); the
    # fitted temperature is applied only when the user asks for it (`calibrate`).
    temperature = fitted_temperature if config.calibrate else 1.0
    metadata = export.serving_metadata(head, temperature, info.image_shape, class_names,
                                       fitted_temperature=fitted_temperature)
    if config.log_model:
        _log_keras_model(model, inputs.validation, metadata)
    export_base = config.export_base or str(run.run_dir / "serving")
    model_name = config.model_name or f"{config.dataset}_{config.backbone}_{config.head}"
    export_dir = export.export_for_serving(
        model, export_base, model_name, info.image_shape, metadata
    )
    # The SavedModel also goes to the run, so `python -m pipelines.export --run-id` finds it.
    mlflow.log_artifacts(str(export_dir), "saved_model")
    mlflow.log_dict(metadata, "serving_metadata.json")
    mlflow.set_tag("export_dir", str(export_dir))
    return {EXPORT_NAME: export_dir}, metrics, temperature


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
