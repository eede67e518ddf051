"""Checks a servable's graph makes on each request, before it computes anything.

A SavedModel's signature states dtypes and shapes, but not values: a generate servable
asked for 100000 new tokens allocates until the server runs out of memory, a token id
of -5 reaches an embedding lookup, a NaN temperature reaches the sampler. The checks
here are ops in the graph itself, so TF Serving (which runs the graph and nothing else),
`mlflow models serve` and any SavedModel loader make them alike. A request that fails
one gets `InvalidArgumentError` (gRPC INVALID_ARGUMENT, HTTP 400) whose message states
the limit and the value sent:

    assertion failed: [max_new_tokens must be an integer in [1, 256] (the export's
    --max-new-tokens-limit); got] [100000]

Use them inside the function an endpoint traces:

    checks = [require(max_new_tokens >= 1, "max_new_tokens must be ...", max_new_tokens)]
    token_ids, lengths = after(checks, token_ids, lengths)   # the rest waits for them

`for_batch` returns an empty result for an empty batch instead of running the model on
it (batch normalisation, a decode loop and a reduction over the batch fail on zero rows).
"""


def require(condition, spec, *values):
    """An op that raises InvalidArgumentError "[<spec>; got] [<values>...]" unless every
    element of `condition` holds."""
    import tensorflow as tf

    return tf.debugging.Assert(tf.reduce_all(condition), [f"{spec}; got", *values],
                               summarize=8)


def require_in_range(values, low, high, spec, *context):
    """`require` that every element of the int tensor `values` lies in [low, high) (ints
    or scalar tensors), naming `context` (more values to show) and the smallest and
    largest value sent. An empty tensor passes."""
    import tensorflow as tf

    values = tf.convert_to_tensor(values)
    # The min and max of no element are the dtype's extremes; show the range sent instead.
    empty = tf.equal(tf.size(values), 0)
    smallest = tf.where(empty, tf.zeros([], values.dtype), tf.reduce_min(values))
    largest = tf.where(empty, tf.zeros([], values.dtype), tf.reduce_max(values))
    inside = tf.logical_or(empty, (smallest >= low) & (largest < high))
    return require(inside, spec, *context, "values from", smallest, "to", largest)


def after(checks, *tensors):
    """`tensors`, available only once every op in `checks` has run (and passed): what the
    graph computes from them cannot start, or allocate, before the request is checked."""
    import tensorflow as tf

    with tf.control_dependencies(checks):
        passed = tuple(tf.identity(tensor) for tensor in tensors)
    return passed[0] if len(passed) == 1 else passed


def for_batch(batch_size, compute, empty):
    """`compute()` for a batch of at least one row, `empty()` (the same structure, zero
    rows) for an empty batch; only the branch taken runs."""
    import tensorflow as tf

    return tf.cond(batch_size > 0, compute, empty)
