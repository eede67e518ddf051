"""TFDS image classification data through tf.data: load, augment, batch, prefetch.

Every dataset is read through `tfds.builder(...).as_dataset(...)`, so any TFDS image
classification dataset with (image, label) supervised keys works by name. The two offline
datasets (`mnist5k`, `sklearn_digits`; see `offline_datasets`) are prepared on first use.

Pipelines yield `(images, one_hot_labels)`: images are float32 in [0, 1] (the model
normalises them itself, so a served model takes the same pixels), labels are one-hot so
that the loss can apply label smoothing. The training pipeline can corrupt its labels with
symmetric noise (`label_noise`); the evaluation pipelines never do.
"""

import dataclasses
import difflib

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from pipelines.common.errors import UserError
from pipelines.image import label_noise, offline_datasets

AUTOTUNE = tf.data.AUTOTUNE


class DatasetError(UserError, ValueError):
    """A dataset that does not exist or does not fit this pipeline."""


class DatasetNotPreparedError(UserError, FileNotFoundError):
    """A dataset TFDS knows but that is not prepared in the data directory."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know about a dataset."""

    name: str
    image_shape: tuple  # (height, width, channels) after resizing
    num_classes: int


def get_builder(name, data_dir=None, prepare=True):
    """The TFDS builder for `name`; a clear error if TFDS cannot give it.

    With `prepare`, the offline datasets are prepared here on first use (without it, the
    builder still knows their features, so a config can be checked first). Any other
    dataset must already be prepared in `data_dir` (it cannot be downloaded here, and
    downloads can be large).
    """
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"Did you mean: {', '.join(close)}? " if close else ""
        raise DatasetError(
            f"TFDS has no dataset named {name!r}. {hint}Offline datasets here: "
            f"{', '.join(offline_datasets.OFFLINE_DATASETS)}. List every name with "
            "`python -c 'import tensorflow_datasets as tfds; print(tfds.list_builders())'`."
        ) from None
    if prepare:
        prepare_offline(builder)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DatasetError(
            f"Dataset {name!r} is not an image classification dataset: it needs 'image' "
            f"and 'label' features, and has {list(features.keys())}."
        )
    return builder


def prepare_offline(builder):
    """Prepare an offline dataset on first use (a no-op once prepared, and for the others)."""
    if builder.name in offline_datasets.OFFLINE_DATASETS:
        builder.download_and_prepare()


def dataset_info(builder, image_size=None):
    """Shapes and sizes of a builder's data, with images resized to `image_size` if set."""
    height, width, channels = builder.info.features["image"].shape
    if image_size is not None:
        height = width = int(image_size)
    elif height is None or width is None:
        raise DatasetError(
            f"Dataset {builder.name!r} has images of varying size; set image_size "
            "(e.g. 224 for imagenet2012)."
        )
    return DatasetInfo(
        name=builder.name,
        image_shape=(height, width, channels or 3),
        num_classes=builder.info.features["label"].num_classes,
    )


def num_examples(builder, split):
    """How many examples a split (spec such as "train[:90%]") holds."""
    return int(read_split(builder, split).cardinality())


def read_split(builder, split, shuffle_files=False, seed=None, with_ids=False,
               decoders=None):
    """(image uint8, label int64) pairs of one split; a clear error if it is not prepared.

    `with_ids`: dicts of "image", "label" and "tfds_id" (the example's file and position,
    what the label noise is keyed on) instead of pairs.
    """
    read_config = tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=with_ids)
    try:
        return builder.as_dataset(
            split=split,
            as_supervised=not with_ids,
            shuffle_files=shuffle_files,
            read_config=read_config,
            decoders=decoders,
        )
    except AssertionError as error:
        if "could not find data" not in str(error):
            raise
        raise DatasetNotPreparedError(
            f"Dataset {builder.name!r} is not prepared in {builder.data_dir_root}. Prepare "
            f"it first: `tfds build {builder.name} --data_dir={builder.data_dir_root}` "
            "(or tfds.builder(name, data_dir=...).download_and_prepare()); datasets with "
            "manual downloads (e.g. imagenet2012) need the files in "
            "<data_dir>/downloads/manual first."
        ) from None


def _resize(image, image_shape):
    if tuple(image.shape[:2]) == tuple(image_shape[:2]):
        return image
    resized = tf.image.resize(image, image_shape[:2], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def random_crop_flip(image, padding, flip):
    """Random crop of the image padded by `padding` pixels on each side; random h-flip."""
    if padding:
        height, width, channels = image.shape
        padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
        image = tf.image.random_crop(padded, [height, width, channels])
    if flip:
        image = tf.image.random_flip_left_right(image)
    return image


def train_pipeline(
    builder,
    info,
    split,
    batch_size,
    crop_padding=4,
    flip=True,
    randaugment=False,
    shuffle_buffer=10_000,
    cache=True,
    seed=0,
    label_noise_rate=0.0,
):
    """Shuffled, augmented, repeating batches of the training split, with symmetric label
    noise of rate `label_noise_rate` fixed by `seed` (see `label_noise`)."""
    ds = read_split(builder, split, shuffle_files=True, seed=seed, with_ids=True)
    ds = ds.map(lambda example: (example["image"], label_noise.noisy_labels(
        example["tfds_id"], example["label"], info.num_classes, label_noise_rate, seed)),
        AUTOTUNE)
    ds = ds.map(lambda image, label: (_resize(image, info.image_shape), label), AUTOTUNE)
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(
        lambda image, label: (random_crop_flip(image, crop_padding, flip), label),
        AUTOTUNE,
    )
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    if randaugment:
        augmenter = _randaugment(seed)
        ds = ds.map(
            lambda images, labels: (augmenter(tf.cast(images, tf.float32)), labels),
            AUTOTUNE,
        )
    ds = ds.map(_to_model_inputs(info.num_classes), AUTOTUNE).prefetch(AUTOTUNE)
    # Small TFDS datasets have one file, which cannot be sharded across workers by file.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def flipped_label_fraction(builder, info, split, rate, seed):
    """The fraction of `split`'s labels that label noise of `rate` at `seed` changes (one
    pass over the split's records; the images are not decoded)."""
    examples = read_split(builder, split, with_ids=True,
                          decoders={"image": tfds.decode.SkipDecoding()})
    return label_noise.flipped_fraction(examples, info.num_classes, rate, seed)


def eval_pipeline(builder, info, split, batch_size, cache=True):
    """Batches of a split in a fixed order, unaugmented, one pass."""
    ds = read_split(builder, split)
    ds = ds.map(lambda image, label: (_resize(image, info.image_shape), label), AUTOTUNE)
    if cache:
        ds = ds.cache()
    ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE)
    return ds.map(_to_model_inputs(info.num_classes), AUTOTUNE).prefetch(AUTOTUNE)


def _randaugment(seed):
    # keras' RandAugment works on pixel values; 2 ops of magnitude ~0.5 per image, the
    # CIFAR setting of Cubuk et al. (2020).
    return keras.layers.RandAugment(
        value_range=(0, 255), num_ops=2, factor=0.5, seed=seed
    )


def pixels_to_float(images):
    """uint8 (or float 0..255) pixels -> float32 in [0, 1]; training and serving share it."""
    return tf.cast(images, tf.float32) / 255.0


def _to_model_inputs(num_classes):
    def convert(images, labels):
        return pixels_to_float(images), tf.one_hot(labels, num_classes)

    return convert


def channel_statistics(builder, info, split, max_examples=10_000):
    """Per-channel mean and variance of [0, 1] pixels over up to `max_examples` images."""
    ds = read_split(builder, split).take(max_examples)
    ds = ds.map(lambda image, label: pixels_to_float(_resize(image, info.image_shape)))
    total = tf.zeros([info.image_shape[-1]], tf.float64)
    total_sq = tf.zeros_like(total)
    count = 0
    for images in ds.batch(1024):
        pixels = tf.reshape(tf.cast(images, tf.float64), [-1, info.image_shape[-1]])
        total += tf.reduce_sum(pixels, axis=0)
        total_sq += tf.reduce_sum(tf.square(pixels), axis=0)
        count += int(pixels.shape[0])
    mean = total / count
    variance = tf.maximum(total_sq / count - tf.square(mean), 1e-6)
    return mean.numpy().tolist(), variance.numpy().tolist()


def images_only(ds):
    return ds.map(lambda images, labels: images)


def integer_labels(ds):
    """All labels of a one-pass dataset as an int numpy array, in dataset order."""
    parts = [tf.argmax(labels, axis=-1).numpy() for _, labels in ds]
    return np.concatenate(parts).astype(np.int64)
