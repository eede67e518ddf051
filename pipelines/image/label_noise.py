"""Symmetric label noise on the training split, fixed per seed.

Convention ("other class", the symmetric flipping of Han et al. 2018, "Co-teaching"):
each training example's label is, with probability `rate`, replaced
by one of the other K - 1 classes drawn uniformly; it never keeps its class when it is
corrupted, so the fraction of changed labels is `rate` in expectation (the other common
convention, "any class", redraws among all K classes and changes only rate * (K-1)/K).

Which examples are corrupted, and to which class, is a keyed hash (SipHash,
`tf.strings.to_hash_bucket_strong`) of the run's seed and the example's TFDS id (its file
and position in the prepared dataset): it does not depend on the order the examples are
read in, the shuffle, the batch size, the head, the worker or whether the run resumed, so
a given seed corrupts the same examples the same way in every run.
"""

import tensorflow as tf

# Hash keys, with the seed: one decides whether an example is corrupted, the other which
# class it gets; arbitrary constants, fixed so that runs stay comparable.
_FLIP_KEY = 0x5EED_F11B
_CLASS_KEY = 0x5EED_C1A5
# Resolution of the flip decision: rate is compared with bucket / _BUCKETS.
_BUCKETS = 2**31


def _key(seed, salt):
    return [int(seed) % 2**62, salt]


def noisy_labels(ids, labels, num_classes, rate, seed):
    """Labels (int64) of the examples named `ids` (TFDS ids, strings) after the noise."""
    labels = tf.cast(labels, tf.int64)
    if rate <= 0:
        return labels
    flip_bucket = tf.strings.to_hash_bucket_strong(ids, _BUCKETS, _key(seed, _FLIP_KEY))
    flip = tf.cast(flip_bucket, tf.float64) < rate * _BUCKETS
    # 1 .. K-1 classes on: uniform over the other classes.
    offset = 1 + tf.strings.to_hash_bucket_strong(ids, num_classes - 1, _key(seed, _CLASS_KEY))
    return tf.where(flip, (labels + offset) % num_classes, labels)


def flipped_fraction(examples, num_classes, rate, seed):
    """The fraction of `examples` (a dataset of dicts with "tfds_id" and "label") whose
    label the noise changes."""
    changed = total = 0
    for batch in examples.batch(4096):
        noisy = noisy_labels(batch["tfds_id"], batch["label"], num_classes, rate, seed)
        changed += int(tf.reduce_sum(tf.cast(noisy != batch["label"], tf.int64)))
        total += int(tf.size(noisy))
    return changed / max(total, 1)
