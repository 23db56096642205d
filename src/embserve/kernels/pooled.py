"""Pooled lookups: each bag of ids (a CSR row) reduced to one vector by its combiner.

With ``e(x)`` the table row of id ``x`` and weights ``w`` (all 1 when unweighted)::

    sum   = Σ w_i e(x_i)
    mean  = Σ w_i e(x_i) / Σ w_i
    sqrtn = Σ w_i e(x_i) / sqrt(Σ w_i²)

Division is TensorFlow's ``div_no_nan``: a zero denominator (an empty bag, or weights summing to
zero under ``mean``) gives a zero vector. Accumulation is in the table's dtype in bag order, like
TensorFlow's segment sums, so float32 results agree to the last bit or two.

Overflow. Finite weights and rows can combine to inf or NaN in float32 (``3.4e38 * 2``), and a
denominator can overflow while the output stays finite: ``sqrtn`` with weights ``[1e30, 1]``
squares 1e30 to inf, and the finite sum divided by inf is a silent zero vector. The drivers test
every output value and denominator while the bag is in registers or cache and return -1 when all
are finite, else a bag at or before the first that is not; :func:`pooled_overflow` then finds,
exactly, the first bag whose non-finite result came from finite inputs (a table may hold inf or
NaN: such outputs are the table's and are returned as TensorFlow returns them). Cost, B=1024
bags of 1-40 ids, both versions interleaved in one process: within noise (±5%) for sum, and mean
/ sqrtn got 5-12% faster because the register kernel now divides before its one store.

Callers guarantee: ``ids`` within ``[0, table.shape[0])``, ``splits`` non-decreasing from 0 to
``len(ids)``, ``out`` shaped ``[len(splits) - 1, dim]`` in the table's dtype with ``dim <=
table.shape[1]``, ``weights`` as long as ``ids`` (or empty: unweighted). The first ``dim`` values
of each table row are combined: all of a plain table's, or a logical table's columns of a
SparseCore stack passed whole. Rows are read and written by address, so both entry points raise
``ValueError`` unless ``table`` and ``out`` are C-ordered rows and ``out`` is no wider than the
table (:func:`embserve.kernels.check.readable`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from embserve.kernels._jit import jit, jit_inline, jit_parallel
from embserve.kernels._native import PREFETCH_ROWS, prefetch_row, sum_rows
from embserve.kernels.check import readable

__all__ = [
    "CHUNKS",
    "MEAN",
    "SQRTN",
    "SUM",
    "pooled_overflow",
    "pooled_parallel",
    "pooled_serial",
]

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
def _vector_dim(table, dim):  # type: ignore[no-untyped-def]
    """Whether the register kernel serves this table: float32 rows read in a multiple of 16
    floats."""
    return table.itemsize == 4 and dim % 16 == 0


@jit_inline
def _sum_bag(base, row_bytes, ids, weights, start, end, target, dim, weighted, denom):  # type: ignore[no-untyped-def]
    """Bag sum divided by ``denom`` into the row at address ``target``, in column blocks of 64
    then 16 floats; each row scaled by its weight first when ``weighted`` (a literal: callers
    write True or False, which numba carries into this inlined body and on to
    :func:`sum_rows`). Whether any stored value is inf or NaN."""
    bad = False
    col = 0
    while dim - col >= 64:  # 8 vectors of 8 floats per pass
        rows, dest = base + 4 * col, target + 4 * col
        bad |= sum_rows(rows, row_bytes, ids, weights, start, end, dest, weighted, 8, denom)  # type: ignore[call-arg]
        col += 64
    while col < dim:  # the rest, 2 vectors per pass (sum_rows needs nvec as a literal)
        rows, dest = base + 4 * col, target + 4 * col
        bad |= sum_rows(rows, row_bytes, ids, weights, start, end, dest, weighted, 2, denom)  # type: ignore[call-arg]
        col += 16
    return bad


@jit_inline
def _rows_nonfinite(out, b0, b1):  # type: ignore[no-untyped-def]
    """Whether rows ``b0 .. b1`` of ``out`` hold an inf or NaN: one flat, branch-free pass over
    the rows just written (a view: ``out`` is C-ordered rows, checked at entry)."""
    flat = out[b0:b1].ravel()
    bad = False
    for i in range(flat.shape[0]):
        v = flat[i]
        bad |= (v - v) != 0  # NaN exactly when v is NaN or ±inf
    return bad


@jit_inline
def _nonfinite(o, dim):  # type: ignore[no-untyped-def]
    """Whether the row ``o`` holds an inf or NaN."""
    bad = False
    for d in range(dim):
        v = o[d]
        bad |= (v - v) != 0
    return bad


# Each driver runs one of four bag loops: register (vector) or array accumulation, weighted or
# not. The array loops write their output rows in the loop body itself and test them afterwards
# in one flat pass over the run of rows (B=1024 bags of 1-40 ids, dims 5 and 20, cache-resident
# table, against no test: the division in an inlined helper was 15-23% slower; the test row by
# row 8-15%, in the writing loop 0-7%, one flat pass 0-4%).


@jit_inline
def _bags_vector(table, ids, splits, combiner, out, b0, b1):  # type: ignore[no-untyped-def]
    """Unweighted bags ``b0 .. b1`` through the register kernel; whether an output value is inf
    or NaN (tested in registers by :func:`sum_rows`)."""
    dim = out.shape[1]
    row_bytes = table.shape[1] * table.itemsize
    out_bytes = dim * out.itemsize
    base = table.ctypes.data
    out_base = out.ctypes.data
    bad = False
    for b in range(b0, b1):
        start = splits[b]
        end = splits[b + 1]
        denom = np.float32(1)  # sum, and empty bags (their sum is zeros)
        if end > start and combiner == MEAN:
            denom = np.float32(end - start)
        elif end > start and combiner == SQRTN:
            denom = np.float32(math.sqrt(end - start))
        target = out_base + b * out_bytes
        bad |= _sum_bag(base, row_bytes, ids, ids, start, end, target, dim, False, denom)
    return bad


@jit_inline
def _bags_vector_weighted(table, ids, weights, splits, combiner, out, b0, b1):  # type: ignore[no-untyped-def]
    """Weighted bags ``b0 .. b1`` through the register kernel; whether an output value or a
    denominator is inf or NaN."""
    dim = out.shape[1]
    row_bytes = table.shape[1] * table.itemsize
    out_bytes = dim * out.itemsize
    base = table.ctypes.data
    out_base = out.ctypes.data
    bad = False
    for b in range(b0, b1):
        start = splits[b]
        end = splits[b + 1]
        denom = np.float32(1)
        if combiner != SUM:
            wsum = np.float32(0)
            for k in range(start, end):
                w = weights[k]
                wsum += w if combiner == MEAN else w * w
            denom = wsum if combiner == MEAN else np.float32(math.sqrt(wsum))
            bad |= (denom - denom) != 0  # NaN exactly when denom is NaN or ±inf
        if denom == 0:  # TF's div_no_nan: weights summing to 0 give zeros
            o = out[b]
            for d in range(dim):
                o[d] = 0
        else:
            target = out_base + b * out_bytes
            bad |= _sum_bag(base, row_bytes, ids, weights, start, end, target, dim, True, denom)
    return bad


@jit_inline
def _bags_array(table, ids, splits, combiner, out, b0, b1, acc):  # type: ignore[no-untyped-def]
    """Unweighted bags ``b0 .. b1`` through an accumulator array; whether an output value is
    inf or NaN."""
    dim = out.shape[1]
    row_bytes = table.shape[1] * table.itemsize
    used = dim * table.itemsize
    base = table.ctypes.data
    last = ids.shape[0] - 1
    for b in range(b0, b1):
        start = splits[b]
        end = splits[b + 1]
        for d in range(dim):
            acc[d] = 0
        for k in range(start, end):
            if k + PREFETCH_ROWS <= last:
                prefetch_row(base + ids[k + PREFETCH_ROWS] * row_bytes, used)
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
    return _rows_nonfinite(out, b0, b1)


@jit_inline
def _bags_array_weighted(table, ids, weights, splits, combiner, out, b0, b1, acc):  # type: ignore[no-untyped-def]
    """Weighted bags ``b0 .. b1`` through an accumulator array; whether an output value or a
    denominator is inf or NaN."""
    dim = out.shape[1]
    row_bytes = table.shape[1] * table.itemsize
    used = dim * table.itemsize
    base = table.ctypes.data
    last = ids.shape[0] - 1
    bad = False
    for b in range(b0, b1):
        end = splits[b + 1]
        for d in range(dim):
            acc[d] = 0
        wsum = np.float32(0)
        for k in range(splits[b], end):
            if k + PREFETCH_ROWS <= last:
                prefetch_row(base + ids[k + PREFETCH_ROWS] * row_bytes, used)
            r0 = table[ids[k]]
            w = weights[k]
            for d in range(dim):
                acc[d] += r0[d] * w
            wsum += w if combiner == MEAN else w * w
        o = out[b]
        if combiner != SUM:
            denom = wsum if combiner == MEAN else np.float32(math.sqrt(wsum))
            bad |= (denom - denom) != 0  # NaN exactly when denom is NaN or ±inf
            for d in range(dim):
                o[d] = acc[d] / denom if denom != 0 else np.float32(0)
        else:
            for d in range(dim):
                o[d] = acc[d]
    return bad | _rows_nonfinite(out, b0, b1)


@jit_inline
def _bags(table, ids, weights, splits, combiner, out, b0, b1, acc):  # type: ignore[no-untyped-def]
    """Reduce bags ``b0 .. b1`` (``weights`` empty: unweighted); whether an output value or a
    denominator is inf or NaN."""
    if _vector_dim(table, out.shape[1]):
        if weights.shape[0] == 0:
            return _bags_vector(table, ids, splits, combiner, out, b0, b1)
        return _bags_vector_weighted(table, ids, weights, splits, combiner, out, b0, b1)
    if weights.shape[0] == 0:
        return _bags_array(table, ids, splits, combiner, out, b0, b1, acc)
    return _bags_array_weighted(table, ids, weights, splits, combiner, out, b0, b1, acc)


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
    """Reduce every bag, one thread. ``weights`` of length 0 means unweighted.

    Returns -1 when every output value and every denominator is finite, else 0: the bag from
    which :func:`pooled_overflow` looks for the first one that is not (the check runs while
    the rows are in cache; the search only on that rare path).
    """
    readable(table, out)
    acc = np.empty(out.shape[1], dtype=out.dtype)
    bad = _bags(table, ids, weights, splits, combiner, out, 0, splits.shape[0] - 1, acc)
    return 0 if bad else -1


@jit_parallel
def pooled_parallel(table, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    """:func:`pooled_serial` with runs of bags of equal id counts spread over the thread pool;
    returns -1, or the first bag of the first run holding a non-finite value."""
    readable(table, out)
    chunks = min(CHUNKS, max(splits.shape[0] - 1, 1))
    # One flag per run: a prange reduction over the inlined bag loops does not compile (numba
    # 0.68: "unexpected cycle in lookup()").
    flagged = np.empty(chunks, dtype=np.bool_)
    for c in prange(chunks):
        acc = np.empty(out.shape[1], dtype=out.dtype)
        b0 = _chunk_start(splits, c, chunks)
        b1 = _chunk_start(splits, c + 1, chunks)
        flagged[c] = _bags(table, ids, weights, splits, combiner, out, b0, b1, acc)
    for c in range(chunks):  # runs are in bag order
        if flagged[c]:
            return _chunk_start(splits, c, chunks)
    return -1


@jit
def pooled_overflow(table, ids, weights, splits, combiner, out, start):  # type: ignore[no-untyped-def]
    """Whether finite inputs overflowed, after a driver returned ``start``: ``(bag, why)``.

    ``why`` is 1 when the bag's denominator overflowed (Σ w under mean, Σ w² under sqrtn,
    summed in the kernels' order and dtype: weights are finite, so that is always an overflow
    of the weights) and 0 when its output row is not finite although every table row it read is
    finite. Returns ``(-1, 0)`` when every non-finite output from ``start`` on came from a
    non-finite table row (a table may hold inf / NaN; the output is then TensorFlow's). The
    rare path only: the drivers' own check costs a pass over each hot output row.
    """
    dim = out.shape[1]
    weighted = weights.shape[0] != 0
    for b in range(start, splits.shape[0] - 1):
        if weighted and combiner != SUM:
            wsum = np.float32(0)
            for k in range(splits[b], splits[b + 1]):
                w = weights[k]
                wsum += w if combiner == MEAN else w * w
            denom = wsum if combiner == MEAN else np.float32(math.sqrt(wsum))
            if not math.isfinite(denom):
                return b, 1
        if not _nonfinite(out[b], dim):
            continue
        rows_finite = True
        for k in range(splits[b], splits[b + 1]):
            r = table[ids[k]]
            for d in range(dim):
                if not math.isfinite(r[d]):
                    rows_finite = False
        if rows_finite:
            return b, 0
    return -1, 0
