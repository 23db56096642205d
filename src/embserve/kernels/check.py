"""Input checks that run before any gather: the kernels that follow trust what these clear.

Each returns the index of the first offending element, or -1 when the array is clean, so the
caller can name the exact feature, row and position in its error.
"""

from __future__ import annotations

import math

import numpy as np

from embserve.kernels._jit import jit

__all__ = ["first_bad_id", "first_bad_split", "first_nonfinite"]


# Each check is a branch-free pass the compiler vectorizes (min / max, or an OR of compares),
# then, only when something is wrong, a scan for the first offender. 20,000 int64 ids: the early-
# exit loop alone took 31 us, the vectorized pass 4 us.


@jit
def first_bad_id(ids: np.ndarray, num_rows: int, allow_negative: bool) -> int:
    """First ``k`` with ``ids[k] >= num_rows``, or ``ids[k] < 0`` unless negatives are allowed.

    Negative ids are allowed only on the validated sparse path, which drops them before lookup.
    """
    n = ids.shape[0]
    if n == 0:
        return -1
    lo = ids[0]
    hi = ids[0]
    for k in range(n):
        v = ids[k]
        lo = min(lo, v)
        hi = max(hi, v)
    if hi < num_rows and (lo >= 0 or allow_negative):
        return -1
    for k in range(n):
        v = ids[k]
        if v >= num_rows or (v < 0 and not allow_negative):
            return k
    return -1


@jit
def first_nonfinite(values: np.ndarray) -> int:
    """First ``k`` with ``values[k]`` NaN or ±inf, or -1."""
    bad = False
    for k in range(values.shape[0]):
        v = values[k]
        bad |= (v - v) != 0  # NaN exactly when v is NaN or ±inf
    if not bad:
        return -1
    for k in range(values.shape[0]):
        if not math.isfinite(values[k]):
            return k
    return -1


@jit
def first_bad_split(splits: np.ndarray, num_values: int) -> int:
    """Validate ragged row splits: ``splits[0] == 0``, non-decreasing, ``splits[-1] == n``.

    Returns the index of the first offending split, or -1. An empty ``splits`` is bad at 0.
    """
    n = splits.shape[0]
    if n == 0 or splits[0] != 0:
        return 0
    for k in range(1, n):
        if splits[k] < splits[k - 1]:
            return k
    if splits[n - 1] != num_values:
        return n - 1
    return -1
