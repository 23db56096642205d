"""One call for many features: dense ids of every feature gathered from their own tables.

A serving request carries tens of features, each with its own table. Looking them up one kernel
call at a time costs a Python round trip and, for large batches, one wake-up of the thread pool
per feature (26 one-hot features of 1,024 ids: 26 parallel regions). These kernels take every
feature at once: the tables as base addresses (``addresses[f]``, ``rows[f]``; all float32 with the
same ``dim``), the ids of feature ``f`` at ``ids[f * n : (f + 1) * n]``, and ``out[f, i]`` as the
row for id ``i`` of feature ``f``.

Unlike the single-table kernels these check the ids themselves, all of them, before the first
row is read: the return value is -1 when every id was in range (and ``out`` is filled), else the
flat index of the first bad id (and ``out`` is untouched).

:class:`TableGroup` is the Python side: it checks the tables once (float32, one ``dim``, C-ordered
rows: the kernels rebuild each table from its address and cannot see its strides), keeps them
alive while their addresses are in use, and owns the group's output arena. :class:`GroupCache`
keeps a bounded number of groups by key (a lookup keys them by the request's feature order).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
from numba import prange

from embserve.kernels._jit import jit, jit_inline, jit_parallel
from embserve.kernels._native import PREFETCH_ROWS, address_of, prefetch_row, table_at
from embserve.kernels.arena import OutputArena
from embserve.kernels.check import LAYOUT_MESSAGE, c_rows
from embserve.kernels.sequence import _gather_range

__all__ = ["GroupCache", "TableGroup", "gather_tables_parallel", "gather_tables_serial"]

# Rows per work unit of the parallel driver (units never straddle two features).
_CHUNK = 64


@jit_inline
def _first_bad(rows, ids, n):  # type: ignore[no-untyped-def]
    if n == 0:
        return -1
    # A vectorized min / max per feature; the scan for the offender runs only when one exists.
    for f in range(rows.shape[0]):
        first = f * n
        lo = ids[first]
        hi = ids[first]
        for i in range(first, first + n):
            v = ids[i]
            lo = min(lo, v)
            hi = max(hi, v)
        if lo < 0 or hi >= rows[f]:
            for i in range(first, first + n):
                if ids[i] < 0 or ids[i] >= rows[f]:
                    return i
    return -1


@jit_inline
def _copy_rows(addresses, rows, ids, out, f, i0, i1):  # type: ignore[no-untyped-def]
    """Rows ``i0 .. i1`` of feature ``f``: the single-table gather on its slice of the call."""
    n = out.shape[1]
    table = table_at(addresses[f], rows[f], out.shape[2])
    _gather_range(table, ids[f * n : (f + 1) * n], out[f], i0, i1)


@jit
def gather_tables_serial(addresses, rows, ids, out):  # type: ignore[no-untyped-def]
    """Check every id, then ``out[f, i] = table_f[ids[f * n + i]]`` on the calling thread."""
    if not c_rows(out):
        raise ValueError(LAYOUT_MESSAGE)
    n = out.shape[1]
    if n < PREFETCH_ROWS:
        # Few ids per feature (a latency-bound request): _copy_rows prefetches only within a
        # feature, so start every row's load up front, before the id check (a prefetch never
        # faults, even for an id the check then refuses). Batch 1 x 26 features from 26 x 1M x
        # 64 tables, rows not in cache: 5.6 us without, 2.0 us with one prefetch per row,
        # 1.4 us with one per cache line the row touches.
        row_bytes = out.shape[2] * 4
        for f in range(addresses.shape[0]):
            for i in range(f * n, (f + 1) * n):
                prefetch_row(addresses[f] + ids[i] * row_bytes, row_bytes)
    bad = _first_bad(rows, ids, n)
    if bad >= 0:
        return bad
    for f in range(addresses.shape[0]):
        _copy_rows(addresses, rows, ids, out, f, 0, n)
    return -1


@jit_parallel
def gather_tables_parallel(addresses, rows, ids, out):  # type: ignore[no-untyped-def]
    """:func:`gather_tables_serial` with the copies in one parallel region for all features."""
    if not c_rows(out):
        raise ValueError(LAYOUT_MESSAGE)
    n = out.shape[1]
    bad = _first_bad(rows, ids, n)
    if bad >= 0:
        return bad
    per_feature = (n + _CHUNK - 1) // _CHUNK
    for u in prange(addresses.shape[0] * per_feature):
        f = u // per_feature
        i0 = (u - f * per_feature) * _CHUNK
        _copy_rows(addresses, rows, ids, out, f, i0, min(i0 + _CHUNK, n))
    return -1


class TableGroup:
    """Tables gathered by one kernel call: float32 ``[rows, dim]`` arrays of one ``dim``.

    Args:
        tables: the tables, in the order their ids are stacked.

    Raises:
        ValueError: no tables, a table that is not a 2-D float32 array in C-ordered rows
            (numpy's ``c_contiguous``), or tables of different ``dim``.
    """

    __slots__ = ("addresses", "arena", "dim", "rows", "tables")

    def __init__(self, tables: Sequence[np.ndarray]) -> None:
        if not tables:
            raise ValueError("a table group needs at least one table")
        dim = tables[0].shape[1] if tables[0].ndim == 2 else -1
        for i, t in enumerate(tables):
            if not isinstance(t, np.ndarray) or t.ndim != 2 or t.dtype != np.float32:
                raise ValueError(f"table {i} of the group is not a 2-D float32 array")
            if not t.flags.c_contiguous:
                raise ValueError(f"table {i} of the group: {LAYOUT_MESSAGE}")
            if t.shape[1] != dim:
                raise ValueError(f"table {i} of the group has dim {t.shape[1]}, not {dim}")
        self.tables = list(tables)  # keeps the memory behind the addresses alive
        self.addresses = np.array([address_of(t) for t in self.tables], dtype=np.int64)
        self.rows = np.array([t.shape[0] for t in self.tables], dtype=np.int64)
        self.dim: int = dim
        self.arena = OutputArena()

    def gather(self, ids: np.ndarray, parallel: bool) -> np.ndarray | None:
        """``out[f, i] = tables[f][ids[f * n + i]]`` for ``n = len(ids) // len(tables)``.

        Args:
            ids: C-contiguous int32 / int64 ids, ``n`` per table, stacked in table order.
            parallel: run on the thread pool.

        Returns:
            ``[len(tables), n, dim]`` float32 from the group's arena, or ``None`` when an id is
            outside its table (nothing was gathered; the caller finds and names it).
        """
        n = ids.shape[0] // len(self.tables)
        out = self.arena.take((len(self.tables), n, self.dim), np.float32)
        kernel = gather_tables_parallel if parallel else gather_tables_serial
        if kernel(self.addresses, self.rows, ids, out) >= 0:
            return None
        return out


class GroupCache:
    """Table groups (or ``None``: not eligible) by key, at most ``capacity`` of them.

    Callers choose keys (a lookup keys groups by the order of a request's features), so the
    cache must not grow with them: when full, it is emptied before the next group is stored
    (groups hold output buffers; rebuilding one costs a few microseconds per table).
    """

    __slots__ = ("_capacity", "_groups")

    def __init__(self, capacity: int = 16) -> None:
        self._capacity = capacity
        self._groups: dict[Hashable, TableGroup | None] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._groups

    def __getitem__(self, key: Hashable) -> TableGroup | None:
        return self._groups[key]

    def get(self, key: Hashable, build: Callable[[], TableGroup | None]) -> TableGroup | None:
        """The group stored for ``key``, built by ``build()`` (and stored) the first time."""
        groups = self._groups
        try:
            return groups[key]
        except KeyError:
            pass
        if len(groups) >= self._capacity:
            groups.clear()
        group = groups[key] = build()
        return group
