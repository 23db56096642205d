"""Sequence lookups and plain gathers: rows copied into place, never combined.

Callers guarantee every id is within ``[0, table.shape[0])`` and every target position is inside
``out``; these kernels check only the layout: every entry point raises ``ValueError`` unless
``table`` and ``out`` are C-ordered rows and ``out``'s rows are no wider than the table's (rows are
prefetched by address; the multi-table gather reads whole tables by address through
:func:`_gather_range`). They copy the first ``dim = out.shape[-1]`` values of each table row: all
of a plain table's, or a logical table's columns of a SparseCore stack passed whole
(:func:`embserve.kernels.check.readable`). Every loop prefetches the row
``PREFETCH_ROWS`` ids ahead (see :mod:`embserve.kernels._native` for the measurements).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from embserve.kernels._jit import jit, jit_inline, jit_parallel
from embserve.kernels._native import PREFETCH_ROWS, prefetch_row
from embserve.kernels.check import readable

__all__ = [
    "gather_parallel",
    "gather_serial",
    "scatter_add_parallel",
    "scatter_add_serial",
    "sequence_parallel",
    "sequence_serial",
]

# Row copies are explicit loops over ``d``, inlined into both drivers: 26 x 1024 rows from a
# 1M x 64 table took 5.4 ms with slice assignment in a called helper, 2.8 ms with loops in it,
# 1.4 ms inlined (np.take: 2.6 ms).

# Ids per work unit of the parallel gather: large enough that a unit's prefetches run ahead of
# its copies, small enough that 2 threads split a 1,024-id call evenly.
_GATHER_CHUNK = 64


@jit_inline
def _gather_range(table, ids, out, i0, i1):  # type: ignore[no-untyped-def]
    dim = out.shape[1]
    row_bytes = table.shape[1] * table.itemsize
    used = dim * table.itemsize
    base = table.ctypes.data
    n = ids.shape[0]
    for i in range(i0, i1):
        if i + PREFETCH_ROWS < n:
            prefetch_row(base + ids[i + PREFETCH_ROWS] * row_bytes, used)
        row = table[ids[i]]
        o = out[i]
        for d in range(dim):
            o[d] = row[d]


@jit
def gather_serial(table, ids, out):  # type: ignore[no-untyped-def]
    """``out[i] = table[ids[i]]``: dense ids of any shape, flattened."""
    readable(table, out)
    _gather_range(table, ids, out, 0, ids.shape[0])


@jit_parallel
def gather_parallel(table, ids, out):  # type: ignore[no-untyped-def]
    """:func:`gather_serial` over the thread pool."""
    readable(table, out)
    n = ids.shape[0]
    for c in prange((n + _GATHER_CHUNK - 1) // _GATHER_CHUNK):
        i0 = c * _GATHER_CHUNK
        _gather_range(table, ids, out, i0, min(i0 + _GATHER_CHUNK, n))


@jit_inline
def _sequence_row(table, ids, splits, out, b):  # type: ignore[no-untyped-def]
    length = out.shape[1]
    dim = out.shape[2]
    row_bytes = table.shape[1] * table.itemsize
    used = dim * table.itemsize
    base = table.ctypes.data
    start = splits[b]
    n = min(splits[b + 1] - start, length)
    for j in range(n):
        if j + PREFETCH_ROWS < n:
            prefetch_row(base + ids[start + j + PREFETCH_ROWS] * row_bytes, used)
        row = table[ids[start + j]]
        o = out[b, j]
        for d in range(dim):
            o[d] = row[d]
    for j in range(n, length):
        o = out[b, j]
        for d in range(dim):
            o[d] = 0


@jit
def sequence_serial(table, ids, splits, out):  # type: ignore[no-untyped-def]
    """Ragged rows packed left into ``out[B, L, D]``, cut at ``L``, zero-padded."""
    readable(table, out)
    for b in range(splits.shape[0] - 1):
        _sequence_row(table, ids, splits, out, b)


@jit_parallel
def sequence_parallel(table, ids, splits, out):  # type: ignore[no-untyped-def]
    """:func:`sequence_serial` over the thread pool."""
    readable(table, out)
    for b in prange(splits.shape[0] - 1):
        _sequence_row(table, ids, splits, out, b)


@jit_inline
def _scatter_row(table, ids, cols, splits, out, b):  # type: ignore[no-untyped-def]
    """Add row ``b``'s entries into place; whether a position it touched is not finite.

    Only sums can overflow, and only where entries share a position, but finding those costs
    more than re-reading the touched rows while they are in cache.
    """
    dim = out.shape[2]
    row_bytes = table.shape[1] * table.itemsize
    used = dim * table.itemsize
    base = table.ctypes.data
    start = splits[b]
    end = splits[b + 1]
    for k in range(start, end):
        if k + PREFETCH_ROWS < end:
            prefetch_row(base + ids[k + PREFETCH_ROWS] * row_bytes, used)
        row = table[ids[k]]
        o = out[b, cols[k]]
        for d in range(dim):
            o[d] += row[d]
    bad = False
    for k in range(start, end):
        o = out[b, cols[k]]
        for d in range(dim):
            v = o[d]
            bad |= (v - v) != 0
    return bad


@jit
def scatter_add_serial(table, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    """``out[b, cols[k]] += table[ids[k]]`` for the entries ``k`` of row ``b`` (CSR by row).

    ``out`` must be zero-filled. Duplicate positions add up, as TensorFlow's scatter does.
    Returns the first row ``b`` holding an inf or NaN at a position it wrote, or -1 (the
    caller decides whether finite rows overflowed or the table holds non-finite values).
    """
    readable(table, out)
    first = -1
    for b in range(splits.shape[0] - 1):
        if _scatter_row(table, ids, cols, splits, out, b) and first < 0:
            first = b
    return first


@jit_parallel
def scatter_add_parallel(table, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    """:func:`scatter_add_serial` with rows spread over the thread pool (rows never overlap)."""
    readable(table, out)
    n = splits.shape[0] - 1
    flagged = np.zeros(n, dtype=np.bool_)
    for b in prange(n):
        flagged[b] = _scatter_row(table, ids, cols, splits, out, b)
    for b in range(n):
        if flagged[b]:
            return b
    return -1
