"""Input checks that run before any gather: the kernels that follow trust what these clear.

Each returns the index of the first offending element, or -1 when the array is clean, so the
caller can name the exact feature, row and position in its error.
"""

from __future__ import annotations

import math

import numpy as np

from embserve.kernels._jit import jit

__all__ = ["first_bad_id", "first_bad_split", "first_nonfinite"]


@jit
def first_bad_id(ids: np.ndarray, num_rows: int, allow_negative: bool) -> int:
    """First ``k`` with ``ids[k] >= num_rows``, or ``ids[k] < 0`` unless negatives are allowed.

    Negative ids are allowed only on the validated sparse path, which drops them before lookup.
    """
    for k in range(ids.shape[0]):
        v = ids[k]
        if v >= num_rows or (v < 0 and not allow_negative):
            return k
    return -1


@jit
def first_nonfinite(values: np.ndarray) -> int:
    """First ``k`` with ``values[k]`` NaN or ±inf, or -1."""
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
