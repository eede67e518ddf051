"""Symmetric label noise: fixed per seed, on the training split only, about the asked rate,
never the original class; the CLI refuses rates outside [0, 1)."""

import json
import math

import mlflow
import numpy as np
import pytest
import tensorflow as tf

from pipelines.common.errors import run_cli
from pipelines.image import __main__ as cli
from pipelines.image import data, label_noise, training
from pipelines.image.config import ImageConfig
from pipelines.image.heads import HEADS
from tests.image.conftest import tiny_config

NUM_CLASSES = 10


def _ids(n, prefix="digits-train.tfrecord-00000-of-00001"):
    return tf.constant([f"{prefix}__{i}" for i in range(n)])


def _labels(n, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, NUM_CLASSES, n), tf.int64)


def _binomial_bound(n, rate):
    """4 standard deviations of the flipped fraction if each label flips independently
    with probability `rate` (a hash-based draw passes it but for ~6e-5 of seeds)."""
    return 4 * math.sqrt(rate * (1 - rate) / n)


def test_noise_is_a_function_of_seed_and_example_not_of_order():
    ids, labels = _ids(2000), _labels(2000)
    first = label_noise.noisy_labels(ids, labels, NUM_CLASSES, 0.4, seed=3).numpy()
    again = label_noise.noisy_labels(ids, labels, NUM_CLASSES, 0.4, seed=3).numpy()
    np.testing.assert_array_equal(first, again)
    # Read in another order (a shuffle, another batch size, a resumed run): the same
    # example gets the same label.
    order = np.random.default_rng(1).permutation(2000)
    shuffled = label_noise.noisy_labels(tf.gather(ids, order), tf.gather(labels, order),
                                        NUM_CLASSES, 0.4, seed=3).numpy()
    np.testing.assert_array_equal(shuffled, first[order])
    # Another seed corrupts other examples: two independent 40% draws agree on whether to
    # flip for 0.4^2 + 0.6^2 = 52% of examples, far from all of them.
    other = label_noise.noisy_labels(ids, labels, NUM_CLASSES, 0.4, seed=4).numpy()
    changed, changed_other = first != labels.numpy(), other != labels.numpy()
    assert np.mean(changed == changed_other) < 0.6


@pytest.mark.parametrize("rate", [0.05, 0.4, 0.8])
def test_flipped_fraction_is_the_rate_within_the_binomial_bound(rate):
    n = 20_000
    labels = _labels(n)
    noisy = label_noise.noisy_labels(_ids(n), labels, NUM_CLASSES, rate, seed=0).numpy()
    fraction = np.mean(noisy != labels.numpy())
    assert abs(fraction - rate) <= _binomial_bound(n, rate), fraction


def test_a_corrupted_label_is_always_another_class_drawn_uniformly():
    n = 20_000
    labels = _labels(n).numpy()
    # With the rate just below 1 every example is corrupted (the chance of one that is
    # not is 2 / 2^31), so any kept class would be the noise keeping it.
    noisy = label_noise.noisy_labels(_ids(n), labels, NUM_CLASSES, 1 - 1e-9, seed=0).numpy()
    assert np.all(noisy != labels)
    # The new class is uniform over the other 9: each offset 1..9 has n/9 examples,
    # binomial standard deviation sqrt(n (1/9)(8/9)) = 44; 4 of them allowed.
    offsets = np.bincount((noisy - labels) % NUM_CLASSES, minlength=NUM_CLASSES)
    assert offsets[0] == 0
    assert np.all(np.abs(offsets[1:] - n / 9) <= 4 * math.sqrt(n * (1 / 9) * (8 / 9)))


def test_rate_zero_changes_nothing():
    labels = _labels(500)
    noisy = label_noise.noisy_labels(_ids(500), labels, NUM_CLASSES, 0.0, seed=0)
    np.testing.assert_array_equal(noisy.numpy(), labels.numpy())


def _train_labels(inputs, batches):
    return np.concatenate([labels.numpy().argmax(-1) for _, labels in inputs.train.take(batches)])


def test_only_the_training_split_is_corrupted_the_same_for_every_head(tmp_path,
                                                                       offline_data_dir):
    """Through the pipeline on real data (sklearn digits): in file order (a shuffle buffer
    of 1), the training stream's labels differ from the clean ones where the noise says,
    the validation and test splits are untouched, and the head does not matter."""
    def inputs(**overrides):
        config = tiny_config(tmp_path / "run", offline_data_dir, shuffle_buffer=1,
                             batch_size=100, **overrides)
        return training.prepare_inputs(config)

    clean = inputs()
    noisy = inputs(label_noise=0.4)
    batches = 12  # 1,200 of the 1,438 training images, one pass
    clean_train, noisy_train = _train_labels(clean, batches), _train_labels(noisy, batches)
    fraction = np.mean(clean_train != noisy_train)
    assert abs(fraction - 0.4) <= _binomial_bound(len(clean_train), 0.4)
    # The logged fraction is the whole split's, counted the same way.
    assert abs(noisy.label_noise_flipped - 0.4) <= _binomial_bound(1438, 0.4)
    assert clean.label_noise_flipped is None
    for split in ("validation", "test"):
        np.testing.assert_array_equal(data.integer_labels(getattr(clean, split)),
                                      data.integer_labels(getattr(noisy, split)))
    other_head = inputs(label_noise=0.4, head="focal")
    np.testing.assert_array_equal(_train_labels(other_head, batches), noisy_train)


def test_the_flipped_fraction_is_logged(tracking_uri, tmp_path, offline_data_dir):
    config = tiny_config(tmp_path / "run", offline_data_dir, label_noise=0.4,
                         head="confidence_penalty", epochs=1)
    summary = training.train(config)
    run = mlflow.tracking.MlflowClient(tracking_uri).get_run(summary["run_id"])
    assert float(run.data.params["label_noise"]) == 0.4
    builder = data.get_builder(config.dataset, config.data_dir)
    expected = data.flipped_label_fraction(builder, data.dataset_info(builder),
                                           config.train_split, 0.4, config.seed)
    assert float(run.data.params["data.label_noise_flipped"]) == pytest.approx(expected,
                                                                               abs=1e-6)
    assert math.isfinite(summary["metrics"]["eval/test_nll"])


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("rate", ["1.0", "-0.1", "1.5"])
def test_the_cli_refuses_a_rate_outside_0_1(rate, tmp_path, capsys):
    data_dir = tmp_path / "tfds"
    assert run_cli(cli.main, ["--label-noise", rate, "--data-dir", str(data_dir)]) == 2
    line = _one_error_line(capsys)
    assert f"label_noise must be in [0.0, 1.0) (got {float(rate)})" in line
    assert not data_dir.exists()  # refused before any data was prepared


def test_the_cli_lists_the_heads_for_an_unknown_one(tmp_path, capsys):
    assert run_cli(cli.main, ["--head", "focal_loss", "--data-dir", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert f"head='focal_loss' is not one of {HEADS}" in line
    assert "confidence_penalty" in line and "'focal'" in line


def test_print_config_shows_the_noise_and_the_new_heads_settings(capsys):
    assert run_cli(cli.main, ["--label-noise", "0.4", "--head", "focal", "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["label_noise"], shown["head"]) == (0.4, "focal")
    assert (shown["focal_gamma"], shown["focal_alpha"], shown["confidence_penalty"]) == (
        2.0, 0.25, 0.1)


def test_noise_on_a_one_class_dataset_is_refused():
    one_class = data.DatasetInfo(name="one", image_shape=(8, 8, 1), num_classes=1)
    with pytest.raises(ValueError, match=r"label_noise needs 2 classes or more \(the dataset "
                                         r"has 1\)"):
        ImageConfig(label_noise=0.4, head="softmax", backbone="resnet8").check(one_class)
    ImageConfig(head="softmax", backbone="resnet8").check(one_class)  # no noise: fine
