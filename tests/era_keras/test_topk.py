"""The sort-free k-th largest: the same value as a sort, ties, infinities and all."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from era_keras.topk import kth_largest, top_k_positions
from tests.era_keras.backend_utils import to_numpy


def sorted_kth(x, k):
    return -np.sort(-np.asarray(x), axis=-1)[..., k - 1]


def rows(rng, kind, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "ties":  # a handful of distinct values, each many times
        x = np.round(x * 2.0).astype(np.float32)
    elif kind == "huge":
        x = (x * 1e30).astype(np.float32)
        x[..., ::7] = np.float32(3.4e38)
        x[..., 1::7] = np.float32(-3.4e38)
    elif kind == "infinite":
        x[..., ::3] = -np.inf
        x[..., 1::11] = np.inf
        x[0] = -np.inf
    elif kind == "constant":
        x[:] = 1.5
    return x


@pytest.mark.parametrize("size", [1, 7, 40, 256, 257, 1000, 4095, 4096, 5003, 151936])
@pytest.mark.parametrize("kind", ["normal", "ties", "huge", "infinite", "constant"])
def test_kth_largest_is_the_sorted_kth_entry(size, kind):
    rng = np.random.default_rng(size)
    x = rows(rng, kind, (3, size))
    for k in sorted({1, min(2, size), min(20, size), size}):
        np.testing.assert_array_equal(to_numpy(kth_largest(x, k)), sorted_kth(x, k))


def test_kth_largest_equals_keras_top_k_on_a_batch_of_token_rows():
    """The (batch, time, vocab) layout LogitERA uses, against the sort it replaces."""
    x = rows(np.random.default_rng(0), "ties", (2, 3, 2000))
    got = to_numpy(kth_largest(x, 20))
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got, to_numpy(ops.top_k(x, 20)[0][..., -1]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_kth_largest_keeps_low_precision_values(dtype):
    x = ops.convert_to_tensor(rows(np.random.default_rng(1), "ties", (4, 3000)), dtype)
    exact = to_numpy(ops.cast(x, "float32"))
    got = to_numpy(ops.cast(kth_largest(x, 5), "float32"))
    np.testing.assert_array_equal(got, sorted_kth(exact, 5))


@settings(max_examples=20, deadline=None)
@given(
    # A few sizes (JAX compiles every new shape), covering each path: pairwise, eight-wide
    # blocks with padding, and the sort for a k close to the row's length.
    size=st.sampled_from([1, 9, 256, 300, 2999]),
    k=st.sampled_from([1, 3, 20]),
    distinct=st.integers(1, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_top_k_positions_pick_k_distinct_entries_with_the_top_values(
    size, k, distinct, seed
):
    k = min(k, size)
    x = np.random.default_rng(seed).integers(0, distinct, (2, size)).astype(np.float32)
    positions = to_numpy(top_k_positions(ops.convert_to_tensor(x), k))
    for row, chosen in zip(x, positions):
        assert len(set(chosen.tolist())) == k  # k different entries
        np.testing.assert_array_equal(np.sort(row[chosen]), np.sort(row)[-k:])


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "3"])
def test_bad_k_raises_with_the_range(k):
    with pytest.raises((ValueError, TypeError), match="top_k must be an integer >= 1"):
        kth_largest(np.zeros((2, 10), np.float32), k)


def test_k_above_the_row_length_raises_with_the_length():
    with pytest.raises(ValueError, match=r"top_k=11 is larger than the vocabulary \(10 logits"):
        kth_largest(np.zeros((2, 10), np.float32), 11)
