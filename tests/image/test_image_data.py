"""TFDS loading (offline builders, mock data), errors, and the tf.data pipelines."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pipelines.image import data, offline_datasets


def test_sklearn_digits_builds_through_tfds_load(offline_data_dir):
    import sklearn.datasets

    train, info = tfds.load(
        "sklearn_digits", split="train", data_dir=offline_data_dir, with_info=True,
        as_supervised=True,
    )
    assert info.splits["train"].num_examples + info.splits["test"].num_examples == 1797
    images, labels = next(iter(train.batch(2000)))
    assert images.shape[1:] == (8, 8, 1) and images.dtype == tf.uint8
    # The images are scikit-learn's, grey levels 0..16 spread over 0..255.
    digits = sklearn.datasets.load_digits()
    expected = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    first = images.numpy()[0, ..., 0]
    matches = np.flatnonzero(np.all(expected == first, axis=(1, 2)))
    assert len(matches) >= 1 and labels.numpy()[0] in digits.target[matches]


def test_mnist5k_split_is_stratified_and_fixed(offline_data_dir):
    builder = data.get_builder("mnist5k", offline_data_dir)
    assert builder.info.splits["train"].num_examples == 4000
    labels = np.concatenate(
        [y.numpy() for _, y in data.read_split(builder, "test").batch(1000)]
    )
    assert np.bincount(labels, minlength=10).tolist() == [100] * 10
    # The split depends only on the labels and the fixed seed.
    a = offline_datasets.stratified_split(np.repeat(np.arange(10), 500))
    b = offline_datasets.stratified_split(np.repeat(np.arange(10), 500))
    assert np.array_equal(a[1], b[1]) and not set(a[0]) & set(a[1])


def test_unknown_dataset_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"no dataset named 'cifar11'.*cifar10.*list_builders"):
        data.get_builder("cifar11")


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
    builder = data.get_builder("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"not prepared.*tfds build cifar10 --data_dir="):
        data.num_examples(builder, "train")


def test_train_pipeline_on_mock_cifar10_augments_and_one_hots():
    with tfds.testing.mock_data(num_examples=40):
        builder = data.get_builder("cifar10", "/nonexistent")
        info = data.dataset_info(builder)
        assert info.image_shape == (32, 32, 3) and info.num_classes == 10
        train = data.train_pipeline(builder, info, "train", batch_size=8, crop_padding=4, flip=True)
        images, labels = next(iter(train))
        assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
        assert labels.shape == (8, 10) and np.allclose(labels.numpy().sum(-1), 1.0)
        # The training stream repeats forever; evaluation is one pass in a fixed order.
        assert len(list(train.take(12))) == 12
        evaluation = data.eval_pipeline(builder, info, "test", batch_size=16)
        assert sum(int(x.shape[0]) for x, _ in evaluation) == 40
        first = [x.numpy() for x, _ in evaluation]
        second = [x.numpy() for x, _ in evaluation]
        assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_random_crop_moves_content_and_keeps_shape():
    image = tf.reshape(tf.range(16 * 16, dtype=tf.int32) % 251, (16, 16, 1))
    image = tf.cast(image, tf.uint8)
    tf.random.set_seed(0)
    crops = [data.random_crop_flip(image, padding=2, flip=False) for _ in range(20)]
    assert all(c.shape == (16, 16, 1) for c in crops)
    assert any(not np.array_equal(c.numpy(), image.numpy()) for c in crops)
    assert np.array_equal(data.random_crop_flip(image, 0, False).numpy(), image.numpy())


def test_randaugment_changes_the_images_and_keeps_them_valid():
    """The same seeded pipeline with and without RandAugment (no crop or flip) yields the
    same examples in the same order; with it, the images change. Two ops of magnitude 0.5
    per image leave an image unchanged only when both draws are near-identity ops, so most
    of a batch of 16 must differ: we require 12 (a RandAugment that did nothing gives 0)."""
    with tfds.testing.mock_data(num_examples=32):
        builder = data.get_builder("cifar10", "/nonexistent")
        info = data.dataset_info(builder)

        def first_batch(randaugment):
            train = data.train_pipeline(builder, info, "train", batch_size=16, crop_padding=0,
                                        flip=False, randaugment=randaugment, seed=3)
            return [t.numpy() for t in next(iter(train))]

        plain, plain_labels = first_batch(False)
        augmented, labels = first_batch(True)
    np.testing.assert_array_equal(labels, plain_labels)
    assert augmented.shape == (16, 32, 32, 3) and augmented.dtype == np.float32
    assert np.isfinite(augmented).all() and augmented.min() >= 0.0 and augmented.max() <= 1.0 + 1e-6
    changed = np.abs(augmented - plain).mean(axis=(1, 2, 3)) > 1.0 / 255
    assert changed.sum() >= 12, changed


def test_images_of_varying_size_need_image_size():
    with tfds.testing.mock_data(num_examples=4):
        builder = data.get_builder("imagenet2012", "/nonexistent")
        with pytest.raises(ValueError, match="set image_size"):
            data.dataset_info(builder)
        assert data.dataset_info(builder, image_size=64).image_shape == (64, 64, 3)
