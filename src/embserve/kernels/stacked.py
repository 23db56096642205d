"""Logical rows of a table in a SparseCore stack → rows of the stack (SPARSECORE_FORMAT.md §3.1).

A table of a ``TPUEmbeddingV2`` stack ``[T·N, W]`` keeps logical row ``r`` at stacked row
``((r mod N + ρ) mod N) · T + o + r div N``. Lookups on such a table check ids against the
logical row count, translate the checked ids with :func:`map_rows` (one pass, a few integer
operations per id: a mask and a shift when N is a power of two, as it is on every TPU, else one
division), and run the ordinary kernels on the whole stack, which read the first ``dim``
columns of each stacked row (:func:`embserve.kernels.check.readable`). The fused many-table
gather (:mod:`embserve.kernels.multi`) maps inside its kernel with :func:`map_range`.

Why translate instead of computing the address inside every kernel: the kernels stay one code
path (the register kernel of :mod:`embserve.kernels.pooled` is LLVM IR that indexes rows by id),
plain tables pay nothing, and the translation is a sequential pass over the ids, cheap next to
the random row reads it precedes (``benchmarks/stacked.py`` measures stacked against plain).

Measured against the alternative (prototype kernels, one thread, N = 8, ids uniform): bags of 1-40
ids (20k ids, B=1024, dim 64, array accumulator), cache-resident table: translate + bag loop
144.9 µs, mapping inside the bag loop 156.5 µs, no mapping 138.0 µs; 1 GiB stack: 382 against 412
µs. A 4,096-row gather: 25.3 µs translated, 25.2 µs mapped inside. The translation is kept.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from embserve.kernels._jit import jit, jit_inline

__all__ = ["RowMap", "map_range", "map_rows"]


class RowMap(NamedTuple):
    """Where a logical table's rows sit in the array a kernel reads.

    ``RowMap.plain(rows)`` is the identity (an ordinary table: one shard, no offset).

    Attributes:
        rows: R, the logical rows; ids are checked against it.
        num_shards: N.
        shard_rows: T.
        row_offset: o.
        rotation: ρ.
    """

    rows: int
    num_shards: int
    shard_rows: int
    row_offset: int
    rotation: int

    @classmethod
    def plain(cls, rows: int) -> RowMap:
        """The identity map of an ordinary ``[rows, dim]`` table."""
        return cls(rows, 1, rows, 0, 0)

    @property
    def identity(self) -> bool:
        """Logical row r is row r of the array."""
        return self.num_shards == 1 and self.row_offset == 0

    @property
    def shift(self) -> int:
        """log2(N) when N is a power of two (r div N and r mod N are a shift and a mask), else
        -1 (they are a division)."""
        n = self.num_shards
        return n.bit_length() - 1 if n > 0 and n & (n - 1) == 0 else -1

    def misfit(self, height: int) -> str | None:
        """Why this map does not fit an array of ``height`` rows, or None when every logical row
        lands inside it."""
        n, t, o = self.num_shards, self.shard_rows, self.row_offset
        if self.rows <= 0 or n <= 0 or t <= 0 or o < 0 or not 0 <= self.rotation < n:
            return f"invalid layout {tuple(self)}"
        if height != n * t:
            return f"{height} rows, not shard_rows * num_shards = {t} * {n}"
        if o + -(-self.rows // n) > t:
            return f"rows [{o}, {o - (-self.rows // n)}) of a {t}-row shard"
        return None


@jit_inline
def map_range(ids, num_shards, shift, shard_rows, row_offset, rotation, out, lo, hi):  # type: ignore[no-untyped-def]
    """``out[k]`` = the stacked row of logical row ``ids[k]``, for ``k`` in ``[lo, hi)``.

    The ids must be in ``[0, rows)``. One branch per call, not per id: with ``shift >= 0`` the
    loop is a mask, an add, a mask, a multiply-add and a shift per id (vectorized); otherwise
    one division per id.
    """
    if shift >= 0:
        mask = num_shards - 1
        base = row_offset
        for k in range(lo, hi):
            r = np.int64(ids[k])
            out[k] = (((r & mask) + rotation) & mask) * shard_rows + base + (r >> shift)
    else:
        for k in range(lo, hi):
            r = np.int64(ids[k])
            q = r // num_shards
            s = r - q * num_shards + rotation
            if s >= num_shards:
                s -= num_shards
            out[k] = s * shard_rows + row_offset + q


@jit
def map_rows(ids, num_shards, shift, shard_rows, row_offset, rotation, out):  # type: ignore[no-untyped-def]
    """:func:`map_range` over all of ``ids`` (int32 / int64) into ``out`` (int64, as long)."""
    map_range(ids, num_shards, shift, shard_rows, row_offset, rotation, out, 0, ids.shape[0])
