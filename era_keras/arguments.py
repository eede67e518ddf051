"""Checks of the layers' Python arguments: one line that says what is wrong and what is allowed.

A layer checks what it can in its constructor and the rest (what depends on the input's
shape) in `build`, so a wrong setting fails where it is written, not deep in a graph.
"""

import math
import numbers


def real(name, value, allowed="a finite number", finite=True):
    """`value` as a float; a TypeError for a non-number (a string, a bool), a ValueError
    for NaN (and for an infinity, with `finite`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be {allowed}, got {value}.")
    return value


def flag(name, value):
    """`value` as a bool; a TypeError for anything but a bool (or 0 / 1)."""
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}.")
