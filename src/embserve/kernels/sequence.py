"""Sequence lookups and plain gathers: rows copied into place, never combined.

Callers guarantee every id is within ``[0, table.shape[0])`` and every target position is inside
``out``; these kernels do no checking of their own.
"""

from __future__ import annotations

from numba import prange

from embserve.kernels._jit import jit, jit_parallel

__all__ = [
    "gather_parallel",
    "gather_serial",
    "scatter_add_parallel",
    "scatter_add_serial",
    "sequence_parallel",
    "sequence_serial",
]


@jit
def _gather_one(table, ids, out, i):  # type: ignore[no-untyped-def]
    out[i, :] = table[ids[i], :]


@jit
def gather_serial(table, ids, out):  # type: ignore[no-untyped-def]
    """``out[i] = table[ids[i]]``: dense ids of any shape, flattened."""
    for i in range(ids.shape[0]):
        _gather_one(table, ids, out, i)


@jit_parallel
def gather_parallel(table, ids, out):  # type: ignore[no-untyped-def]
    """:func:`gather_serial` over the thread pool."""
    for i in prange(ids.shape[0]):
        _gather_one(table, ids, out, i)


@jit
def _sequence_row(table, ids, splits, out, b):  # type: ignore[no-untyped-def]
    length = out.shape[1]
    start = splits[b]
    n = min(splits[b + 1] - start, length)
    for j in range(n):
        out[b, j, :] = table[ids[start + j], :]
    out[b, n:, :] = 0


@jit
def sequence_serial(table, ids, splits, out):  # type: ignore[no-untyped-def]
    """Ragged rows packed left into ``out[B, L, D]``, cut at ``L``, zero-padded."""
    for b in range(splits.shape[0] - 1):
        _sequence_row(table, ids, splits, out, b)


@jit_parallel
def sequence_parallel(table, ids, splits, out):  # type: ignore[no-untyped-def]
    """:func:`sequence_serial` over the thread pool."""
    for b in prange(splits.shape[0] - 1):
        _sequence_row(table, ids, splits, out, b)


@jit
def _scatter_row(table, ids, cols, splits, out, b):  # type: ignore[no-untyped-def]
    dim = table.shape[1]
    for k in range(splits[b], splits[b + 1]):
        row = table[ids[k]]
        dst = out[b, cols[k]]
        for d in range(dim):
            dst[d] += row[d]


@jit
def scatter_add_serial(table, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    """``out[b, cols[k]] += table[ids[k]]`` for the entries ``k`` of row ``b`` (CSR by row).

    ``out`` must be zero-filled. Duplicate positions add up, as TensorFlow's scatter does.
    """
    for b in range(splits.shape[0] - 1):
        _scatter_row(table, ids, cols, splits, out, b)


@jit_parallel
def scatter_add_parallel(table, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    """:func:`scatter_add_serial` with rows spread over the thread pool (rows never overlap)."""
    for b in prange(splits.shape[0] - 1):
        _scatter_row(table, ids, cols, splits, out, b)
