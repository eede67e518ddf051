"""The k-th largest entry of each row, exactly, without sorting the row.

Logit ERA's top-k renormalisation needs one number per token: the k-th largest of its
~150k logits. `keras.ops.top_k` sorts, and XLA's CPU sort costs about 29 ms per token at
Qwen's vocabulary of 151,936 (and milliseconds for a few hundred entries), so it would
dominate a training step. The k-th largest needs no sort:

1. Lay each row out as a (block, columns) grid and take every column's maximum: one pass
   of comparisons over the row, which is as cheap as the row's maximum.
2. The k columns with the largest maxima hold the row's top k entries: an entry above the
   k-th largest column maximum lies in a column whose maximum is above it, and the k
   chosen maxima are themselves k entries at least that large. So the top k of the
   k * block entries of those columns are a top k of the row, ties included.
3. Find those k columns the same way (step 1 on the column maxima), until a few hundred
   entries are left; there, rank every entry by pairwise comparisons (ties go to the lower
   position, so the ranks are a permutation) and keep ranks 0 .. k-1.

The result is the value `keras.ops.top_k(x, k)[0][..., -1]` returns, bit for bit: it is
one of the row's own entries, chosen by comparisons only.
"""

import numbers

from keras import ops

# Rows of at most this many entries are ranked by pairwise comparisons (m * m per row).
PAIRWISE_LIMIT = 256


def check_top_k(top_k, size=None):
    """Raise a TypeError / ValueError naming the range unless 1 <= top_k (<= size, if known)."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Real):
        raise TypeError(f"top_k must be an integer >= 1 or None, got {top_k!r}.")
    if not float(top_k).is_integer() or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}.")
    if size is not None and top_k > size:
        raise ValueError(
            f"top_k={int(top_k)} is larger than the vocabulary ({size} logits on the last "
            f"axis); use 1 <= top_k <= {size}."
        )


def kth_largest(x, k):
    """The k-th largest entry along the last axis, with multiplicity: x's shape minus its last axis.

    Equal to `keras.ops.top_k(x, k)[0][..., -1]` (ties count as often as they occur), for
    1 <= k <= x.shape[-1]; computed without a sort (see the module docstring).
    """
    x = ops.convert_to_tensor(x)
    size = x.shape[-1]
    check_top_k(k, size)
    k = int(k)
    rows = ops.reshape(x, (-1, size))
    values = ops.take_along_axis(rows, top_k_positions(rows, k), axis=-1)
    return ops.reshape(ops.min(values, axis=-1), ops.shape(x)[:-1])


def top_k_positions(values, k):
    """Positions (rows, k) of a top k of each row of `values` (rows, m), in no set order."""
    size = values.shape[-1]
    if size <= PAIRWISE_LIMIT:
        return _pairwise_top_k(values, k)
    # Wide blocks on a long row make the first pass as cheap as a row maximum; eight
    # keeps the k * block candidates of later levels few.
    block = 64 if size >= 64 * 64 else 8
    columns = -(-size // block)
    if 2 * k * block > size:
        # A k this close to the row's length leaves nothing to prune: sort.
        return ops.top_k(values, k, sorted=False)[1]
    if columns * block > size:
        padding = ops.full((ops.shape(values)[0], columns * block - size), float("-inf"),
                           dtype=values.dtype)
        values = ops.concatenate([values, padding], axis=-1)
    # Column j holds entries j, j + columns, j + 2 * columns, ...: the maximum is taken
    # over the middle axis, which vectorises along the contiguous last one.
    grid = ops.reshape(values, (-1, block, columns))
    best_columns = top_k_positions(ops.max(grid, axis=1), k)
    children = best_columns[:, :, None] + columns * ops.arange(block, dtype="int32")[None, None]
    children = ops.reshape(children, (-1, k * block))
    chosen = top_k_positions(ops.take_along_axis(values, children, axis=-1), k)
    return ops.take_along_axis(children, chosen, axis=-1)


def _pairwise_top_k(values, k):
    size = values.shape[-1]
    index = ops.arange(size, dtype="int32")
    mine, other = values[:, :, None], values[:, None, :]
    # Entry j outranks entry i if it is larger, or equal and earlier.
    outranks = ops.logical_or(
        other > mine,
        ops.logical_and(other == mine, index[None, None, :] < index[None, :, None]),
    )
    rank = ops.sum(ops.cast(outranks, "int32"), axis=-1)
    hit = rank[:, None, :] == ops.arange(k, dtype="int32")[None, :, None]
    return ops.sum(ops.where(hit, index[None, None, :], 0), axis=-1)

