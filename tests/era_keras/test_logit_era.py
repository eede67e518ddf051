"""Logit ERA for GRPO: response entropy, which tokens are scaled, ERA log-probs."""

import keras
import numpy as np
import pytest
from scipy.special import log_softmax

import era_keras
from tests.era_keras.backend_utils import to_numpy, value_and_grad


def token_entropy64(logits, temperature=1.0):
    log_p = log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1)
    return -(np.exp(log_p) * log_p).sum(-1)


def response_entropy_reference(entropies, mask, fraction):
    out = []
    for row, row_mask in zip(entropies, mask):
        kept = np.sort(row[row_mask > 0])[::-1]
        if len(kept) == 0:
            out.append(0.0)
            continue
        keep = max(1, int(np.floor(fraction * len(kept))))
        out.append(kept[:keep].mean())
    return np.array(out)


def test_token_entropy_matches_the_definition_with_temperature():
    logits = np.random.default_rng(0).standard_normal((3, 5, 50)).astype(np.float32) * 4
    for temperature in (1.0, 0.7):
        np.testing.assert_allclose(
            to_numpy(era_keras.token_entropy(logits, temperature)),
            token_entropy64(logits, temperature),
            rtol=1e-5,
        )


@pytest.mark.parametrize("fraction", [0.2, 0.5, 1.0])
def test_response_entropy_is_the_mean_of_the_top_fraction_of_masked_tokens(fraction):
    rng = np.random.default_rng(1)
    entropies = rng.uniform(0, 3, (6, 23)).astype(np.float32)
    lengths = np.array([23, 12, 5, 4, 1, 0])
    mask = (np.arange(23)[None, :] < lengths[:, None]).astype(np.float32)
    # Padding carries large entropies: it must never count.
    entropies[mask == 0] = 100.0
    got = to_numpy(era_keras.response_entropy(entropies, mask, fraction))
    np.testing.assert_allclose(
        got, response_entropy_reference(entropies, mask, fraction), rtol=1e-6
    )
    assert got[-1] == 0.0


def test_short_responses_use_their_single_highest_token():
    entropies = np.array([[0.1, 2.0, 0.5, 0.0]], np.float32)
    mask = np.array([[1, 1, 1, 0]], np.float32)
    assert to_numpy(era_keras.response_entropy(entropies, mask))[0] == pytest.approx(2.0)


def test_scaling_lands_on_exactly_the_tokens_the_spec_says_with_fractional_advantages():
    # responses: low entropy, high entropy, in between; advantages include 0.3 and -0.3,
    # which the authors' integer cast would have turned into 0.
    h_resp = np.array([0.2, 3.5, 1.0], np.float32)
    advantages = np.array(
        [[0.3, -0.3, 1.5, 0.0], [0.3, -0.3, 1.5, 0.0], [0.3, -0.3, 1.5, 0.0]], np.float32
    )
    logit_scale, advantage_scale = era_keras.era_scales(
        h_resp, advantages, k=2.0, omega_low=0.45, omega_high=3.0
    )
    np.testing.assert_array_equal(
        to_numpy(logit_scale),
        [[2.0, 1.0, 2.0, 1.0], [0.5, 1.0, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0]],
    )
    np.testing.assert_array_equal(to_numpy(advantage_scale), 1.0 / to_numpy(logit_scale))


def test_per_response_advantages_broadcast_over_tokens():
    logit_scale, _ = era_keras.era_scales(
        np.array([0.1, 0.1]), np.array([0.25, -0.25]), k=3.0
    )
    np.testing.assert_array_equal(to_numpy(logit_scale), [3.0, 1.0])


def test_token_log_probs_apply_scale_temperature_and_top_k():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 3, 40)).astype(np.float32) * 3
    tokens = rng.integers(0, 40, (2, 3))
    scale = np.array([[2.0, 1.0, 0.5], [1.0, 1.0, 2.0]], np.float32)
    expected = log_softmax(logits * scale[..., None] / 0.8, axis=-1)
    expected = np.take_along_axis(expected, tokens[..., None], -1)[..., 0]
    got = to_numpy(era_keras.token_log_probs(logits, tokens, scale, temperature=0.8))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    # Top-k renormalisation: the top token's log-prob over the top 5 logits only.
    tokens = logits.argmax(-1)
    top5 = np.sort(logits, -1)[..., -5:]
    expected_top = logits.max(-1) - np.log(np.exp(top5).sum(-1))
    got_top = to_numpy(era_keras.token_log_probs(logits, tokens, top_k=5))
    np.testing.assert_allclose(got_top, expected_top, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["normal", "ties", "infinite"])
def test_top_k_log_probs_and_their_gradient_are_the_renormalised_softmax(kind):
    """Against log_softmax in float64 of the logits with every entry below the k-th
    largest lowered by 1e4 (ties with it kept), value and gradient, at a vocabulary
    large enough for the sort-free top-k's pruning (3,000 > 2 * k * 8)."""
    rng = np.random.default_rng(4)
    vocab, top_k, temperature = 3000, 20, 0.7
    logits = rng.standard_normal((2, 3, vocab)).astype(np.float32) * 3
    if kind == "ties":  # the 20th largest value occurs many times
        logits = np.round(logits).astype(np.float32)
    elif kind == "infinite":  # a row with fewer than top_k finite logits
        logits[..., ::2] = -np.inf
        logits[0, 0, : vocab - 6] = -np.inf
    scale = np.array([[2.0, 1.0, 0.5], [1.0, 1.0, 2.0]], np.float32)
    # Tokens in and out of the top k (a finite one in the row with few finite logits).
    tokens = np.array([[vocab - 1, 0, 1], [int(logits[1, 0].argmax()), 7, 2]])
    if kind == "infinite":
        tokens[:, 1:] = tokens[:, 1:] | 1  # odd positions: finite logits
    weights = np.arange(1.0, 7.0).reshape(2, 3).astype(np.float32)

    x = logits.astype(np.float64) * scale[..., None] / temperature
    kth = -np.sort(-x, axis=-1)[..., top_k - 1 : top_k]
    lowered = np.where(x >= kth, x, x - 1e4)
    log_p = log_softmax(lowered, axis=-1)
    expected = np.take_along_axis(log_p, tokens[..., None], -1)[..., 0]
    one_hot = np.eye(vocab)[tokens]
    softmax = np.where(np.isfinite(x), np.exp(log_p), 0.0)
    expected_grad = weights[..., None] * (one_hot - softmax) * scale[..., None] / temperature

    def weighted(z):
        return keras.ops.multiply(
            era_keras.token_log_probs(z, tokens, scale, temperature, top_k), weights)

    got, grad = value_and_grad(weighted, logits)
    # float32 carries ~1e-7 of each term, and a lowered token's log-prob is ~ -1e4.
    np.testing.assert_allclose(got / weights, expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_layer_returns_consistent_log_probs_advantages_and_entropy():
    rng = np.random.default_rng(3)
    batch, time, vocab = 4, 6, 30
    logits = rng.standard_normal((batch, time, vocab)).astype(np.float32)
    logits[0] *= 20.0  # a confident (low-entropy) response
    logits[1] *= 0.01  # a near-uniform (high-entropy) response
    tokens = rng.integers(0, vocab, (batch, time))
    mask = np.ones((batch, time), np.float32)
    advantages = np.array([0.5, 0.5, -0.5, 0.5], np.float32)
    layer = era_keras.LogitERA(k=2.0, omega_low=0.45, omega_high=3.0)
    out = layer((logits, tokens, advantages, mask))
    h = to_numpy(out["response_entropy"])
    assert h[0] < 0.45 and h[1] > 3.0
    scale = to_numpy(out["logit_scale"])
    np.testing.assert_array_equal(scale[0], 2.0)
    np.testing.assert_array_equal(scale[1], 0.5)
    np.testing.assert_array_equal(to_numpy(out["advantages"])[0], 0.25)
    np.testing.assert_array_equal(to_numpy(out["advantages"])[1], 1.0)
    expected = log_softmax(logits * scale[..., None], axis=-1)
    expected = np.take_along_axis(expected, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(to_numpy(out["log_probs"]), expected, rtol=1e-4, atol=1e-4)

    unscaled = era_keras.LogitERA(scale_advantages=False)((logits, tokens, advantages, mask))
    np.testing.assert_array_equal(to_numpy(unscaled["advantages"])[0], 0.5)
    config = layer.get_config()
    assert era_keras.LogitERA.from_config(config).get_config() == config


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"k": 0.5}, ValueError, "k must be >= 1"),
        ({"k": "2"}, TypeError, "k must be a finite number >= 1"),
        ({"k": float("inf")}, ValueError, "k must be a finite number"),
        ({"omega_low": 3.0, "omega_high": 1.0}, ValueError, "must not exceed omega_high"),
        ({"omega_low": float("nan")}, ValueError, "omega_low must be"),
        ({"top_fraction": 0.0}, ValueError, r"top_fraction must be in \(0, 1\]"),
        ({"top_fraction": 1.5}, ValueError, r"top_fraction must be in \(0, 1\]"),
        ({"temperature": 0.0}, ValueError, "temperature must be > 0"),
        ({"temperature": "1"}, TypeError, "temperature must be a finite number > 0"),
        ({"top_k": -3}, ValueError, "top_k must be an integer >= 1"),
        ({"top_k": 0}, ValueError, "top_k must be an integer >= 1"),
        ({"top_k": 2.5}, ValueError, "top_k must be an integer >= 1"),
        ({"top_k": "20"}, TypeError, "top_k must be an integer >= 1"),
        ({"scale_advantages": "no"}, TypeError, "scale_advantages must be True or False"),
    ],
)
def test_bad_arguments_raise_in_the_constructor(kwargs, error, message):
    with pytest.raises(error, match=message):
        era_keras.LogitERA(**kwargs)


def test_an_infinite_band_edge_switches_its_branch_off():
    layer = era_keras.LogitERA(omega_low=float("-inf"), omega_high=float("inf"))
    assert layer.omega_high == float("inf")


def test_top_k_above_the_vocabulary_raises_with_the_vocabulary_size():
    inputs = (np.zeros((1, 2, 10), np.float32), np.zeros((1, 2), np.int32),
              np.ones(1, np.float32), np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"top_k=50 is larger than the vocabulary \(10 logits"):
        era_keras.LogitERA(top_k=50)(inputs)
    with pytest.raises(ValueError, match=r"top_k=11 is larger than the vocabulary \(10 logits"):
        era_keras.token_log_probs(inputs[0], inputs[1], top_k=11)
    era_keras.LogitERA(top_k=10)(inputs)  # the whole vocabulary is allowed


def test_a_top_k_above_the_vocabulary_is_refused_naming_its_size():
    logits = keras.ops.zeros((1, 3, 10))
    tokens = keras.ops.zeros((1, 3), "int32")
    with pytest.raises(ValueError, match="10"):
        era_keras.token_log_probs(logits, tokens, top_k=11)
