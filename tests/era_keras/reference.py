"""Independent float64 references for the ERA maps (NumPy + scipy), used only by tests."""

import numpy as np
from scipy.special import lambertw, log_softmax, softmax


def entropy(logits):
    """Entropy in nats of softmax(logits), float64, last axis."""
    logits = np.asarray(logits, dtype=np.float64)
    log_p = log_softmax(logits, axis=-1)
    return -(np.exp(log_p) * log_p).sum(axis=-1)


def softmax_era(logits, constant, tau=4.0):
    """z'_i = W_{-1}(-y_i), y_i = A - (D A - C)/(D - 1) (1 - p_i), via scipy's lambertw."""
    logits = np.asarray(logits, dtype=np.float64)
    d = logits.shape[-1]
    a = np.log(tau) / tau
    p = softmax(logits, axis=-1)
    y = a - (d * a - constant) / (d - 1) * (1.0 - p)
    return np.real(lambertw(-y, -1))
