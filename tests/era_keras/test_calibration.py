"""Calibration helpers: ECE, NLL and temperature scaling (NumPy, backend-free)."""

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

import era_keras


def sample_labels(rng, probabilities):
    cumulative = probabilities.cumsum(-1)
    return (rng.uniform(size=(len(probabilities), 1)) > cumulative).sum(-1)


def test_ece_is_small_for_calibrated_and_large_for_overconfident_predictions():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((20000, 10)) * 2
    probabilities = softmax(logits, -1)
    labels = sample_labels(rng, probabilities)
    assert era_keras.expected_calibration_error(probabilities, labels) < 0.015
    overconfident = softmax(logits * 4, -1)
    assert era_keras.expected_calibration_error(overconfident, labels) > 0.2


def test_ece_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins (15 wide): 0.9 -> {acc 0.5, conf 0.9}; 0.6 -> {1, 0.6}; 0.7 -> {1, 0.7}
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    assert era_keras.expected_calibration_error(probabilities, labels) == pytest.approx(expected)


def test_negative_log_likelihood_matches_scipy():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((50, 7)) * 3
    labels = rng.integers(0, 7, 50)
    expected = -log_softmax(logits / 1.7, -1)[np.arange(50), labels].mean()
    assert era_keras.negative_log_likelihood(logits, labels, 1.7) == pytest.approx(expected)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_temperature_that_generated_the_labels(true_temperature):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((40000, 10)) * 3
    labels = sample_labels(rng, softmax(logits / true_temperature, -1))
    fitted = era_keras.fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    assert era_keras.negative_log_likelihood(
        logits, labels, fitted
    ) <= era_keras.negative_log_likelihood(logits, labels, 1.0)
