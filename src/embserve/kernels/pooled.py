"""Pooled lookups: each bag of ids (a CSR row) reduced to one vector by its combiner.

With ``e(x)`` the table row of id ``x`` and weights ``w`` (all 1 when unweighted)::

    sum   = Σ w_i e(x_i)
    mean  = Σ w_i e(x_i) / Σ w_i
    sqrtn = Σ w_i e(x_i) / sqrt(Σ w_i²)

Division is TensorFlow's ``div_no_nan``: a zero denominator (an empty bag, or weights summing to
zero under ``mean``) gives a zero vector. Accumulation is in the table's dtype in bag order, like
TensorFlow's segment sums, so float32 results agree to the last bit or two.

Callers guarantee: ``ids`` within ``[0, table.shape[0])``, ``splits`` non-decreasing from 0 to
``len(ids)``, ``out`` shaped ``[len(splits) - 1, table.shape[1]]`` in the table's dtype,
``weights`` as long as ``ids`` (or empty: unweighted). Rows are read and written by address, so
both entry points raise ``ValueError`` unless ``table`` and ``out`` are C-ordered rows
(:func:`embserve.kernels.check.c_rows`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from embserve.kernels._jit import jit, jit_inline, jit_parallel
from embserve.kernels._native import PREFETCH_ROWS, prefetch_row, sum_rows
from embserve.kernels.check import LAYOUT_MESSAGE, c_rows

__all__ = ["CHUNKS", "MEAN", "SQRTN", "SUM", "pooled_parallel", "pooled_serial"]

SUM = 0
MEAN = 1
SQRTN = 2

# Work units of the parallel driver: 64 runs of bags holding equal numbers of ids (not equal
# numbers of bags), so a thread that draws the long bags does not finish last.
CHUNKS = 64

# float32 tables whose dim is a multiple of 16 are summed by the register kernel
# (:func:`embserve.kernels._native.sum_rows`); other tables (float64, odd dims) go through an
# accumulator array, written to ``out`` once, with the row ``PREFETCH_ROWS`` ids ahead
# prefetched. Bags of 1-40 ids, B=1024, 1 thread, ns per row (cache-resident 1k-row table /
# 2M-row table): summing into ``out`` row by row 7.2 / 27.0; with the prefetch 6.8 / 15.9 (torch
# 2.13 embedding_bag: 5.3 / 13.1). Summing four rows per pass over ``d`` reached 6.3 / 14.5 but
# was dropped with the register kernel: it added 1.5 s to the parallel kernel's compile.


@jit_inline
def _vector_dim(table):  # type: ignore[no-untyped-def]
    """Whether the register kernel serves this table: float32 rows of a multiple of 16 floats."""
    return table.itemsize == 4 and table.shape[1] % 16 == 0


@jit_inline
def _sum_bag(base, row_bytes, ids, weights, start, end, target, dim, weighted):  # type: ignore[no-untyped-def]
    """Bag sum into the row at address ``target``, in column blocks of 64 then 16 floats; each
    row scaled by its weight first when ``weighted`` (a literal: callers write True or False,
    which numba carries into this inlined body and on to :func:`sum_rows`)."""
    col = 0
    while dim - col >= 64:
        sum_rows(base + 4 * col, row_bytes, ids, weights, start, end, target + 4 * col, weighted, 8)  # type: ignore[call-arg]
        col += 64
    while col < dim:
        sum_rows(base + 4 * col, row_bytes, ids, weights, start, end, target + 4 * col, weighted, 2)  # type: ignore[call-arg]
        col += 16


@jit_inline
def _bags(table, ids, splits, combiner, out, b0, b1, acc):  # type: ignore[no-untyped-def]
    dim = table.shape[1]
    row_bytes = dim * table.itemsize
    base = table.ctypes.data
    last = ids.shape[0] - 1
    vector = _vector_dim(table)
    out_base = out.ctypes.data
    for b in range(b0, b1):
        start = splits[b]
        end = splits[b + 1]
        if vector:
            _sum_bag(base, row_bytes, ids, ids, start, end, out_base + b * row_bytes, dim, False)
            n = end - start
            if n > 0 and combiner != SUM:
                o = out[b]
                denom = np.float32(n) if combiner == MEAN else np.float32(math.sqrt(n))
                for d in range(dim):
                    o[d] = o[d] / denom
            continue
        for d in range(dim):
            acc[d] = 0
        for k in range(start, end):
            if k + PREFETCH_ROWS <= last:
                prefetch_row(base + ids[k + PREFETCH_ROWS] * row_bytes, row_bytes)
            r0 = table[ids[k]]
            for d in range(dim):
                acc[d] += r0[d]
        o = out[b]
        n = end - start
        if n > 0 and combiner != SUM:
            denom = np.float32(n) if combiner == MEAN else np.float32(math.sqrt(n))
            for d in range(dim):
                o[d] = acc[d] / denom
        else:
            for d in range(dim):
                o[d] = acc[d]


@jit_inline
def _bags_weighted(table, ids, weights, splits, combiner, out, b0, b1, acc):  # type: ignore[no-untyped-def]
    dim = table.shape[1]
    row_bytes = dim * table.itemsize
    base = table.ctypes.data
    last = ids.shape[0] - 1
    vector = _vector_dim(table)
    out_base = out.ctypes.data
    for b in range(b0, b1):
        end = splits[b + 1]
        if vector:
            target = out_base + b * row_bytes
            _sum_bag(base, row_bytes, ids, weights, splits[b], end, target, dim, True)
            if combiner != SUM:
                wsum = np.float32(0)
                for k in range(splits[b], end):
                    w = weights[k]
                    wsum += w if combiner == MEAN else w * w
                denom = wsum if combiner == MEAN else np.float32(math.sqrt(wsum))
                o = out[b]
                for d in range(dim):
                    o[d] = o[d] / denom if denom != 0 else np.float32(0)
            continue
        for d in range(dim):
            acc[d] = 0
        wsum = np.float32(0)
        for k in range(splits[b], end):
            if k + PREFETCH_ROWS <= last:
                prefetch_row(base + ids[k + PREFETCH_ROWS] * row_bytes, row_bytes)
            r0 = table[ids[k]]
            w = weights[k]
            for d in range(dim):
                acc[d] += r0[d] * w
            wsum += w if combiner == MEAN else w * w
        o = out[b]
        if combiner != SUM:
            denom = wsum if combiner == MEAN else np.float32(math.sqrt(wsum))
            for d in range(dim):
                o[d] = acc[d] / denom if denom != 0 else np.float32(0)
        else:
            for d in range(dim):
                o[d] = acc[d]


@jit_inline
def _chunk_start(splits, c, chunks):  # type: ignore[no-untyped-def]
    """First bag of chunk ``c`` when the ids are cut into ``chunks`` equal runs."""
    n_bags = splits.shape[0] - 1
    if c <= 0:
        return 0
    if c >= chunks:
        return n_bags
    target = splits[n_bags] * c // chunks
    return min(np.searchsorted(splits, target), n_bags)


@jit
def pooled_serial(table, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    """Reduce every bag, one thread. ``weights`` of length 0 means unweighted."""
    if not (c_rows(table) and c_rows(out)):
        raise ValueError(LAYOUT_MESSAGE)
    acc = np.empty(table.shape[1], dtype=out.dtype)
    n_bags = splits.shape[0] - 1
    if weights.shape[0] == 0:
        _bags(table, ids, splits, combiner, out, 0, n_bags, acc)
    else:
        _bags_weighted(table, ids, weights, splits, combiner, out, 0, n_bags, acc)


@jit_parallel
def pooled_parallel(table, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    """Reduce every bag, runs of bags with equal id counts spread over the thread pool."""
    if not (c_rows(table) and c_rows(out)):
        raise ValueError(LAYOUT_MESSAGE)
    chunks = min(CHUNKS, max(splits.shape[0] - 1, 1))
    weighted = weights.shape[0] != 0
    for c in prange(chunks):
        acc = np.empty(table.shape[1], dtype=out.dtype)
        b0 = _chunk_start(splits, c, chunks)
        b1 = _chunk_start(splits, c + 1, chunks)
        if weighted:
            _bags_weighted(table, ids, weights, splits, combiner, out, b0, b1, acc)
        else:
            _bags(table, ids, splits, combiner, out, b0, b1, acc)
