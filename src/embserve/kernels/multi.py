"""One call for many features: dense ids of every feature gathered from their own tables.

A serving request carries tens of features, each with its own table. Looking them up one kernel
call at a time costs a Python round trip and, for large batches, one wake-up of the thread pool
per feature (26 one-hot features of 1,024 ids: 26 parallel regions). These kernels take every
feature at once: the tables as base addresses (``addresses[f]``) and one row of ``layout[f]``
each (all float32, read ``dim = out.shape[2]`` columns wide), the ids of feature ``f`` at
``ids[f * n : (f + 1) * n]``, and ``out[f, i]`` as the row for id ``i`` of feature ``f``.

``layout[f]`` (int64, see :data:`LAYOUT_COLUMNS`) describes the array at ``addresses[f]``
(``height`` rows of ``width >= dim`` floats, C-ordered) and where the feature's logical rows
sit in it: ``rows`` logical rows, and the SparseCore placement (:mod:`embserve.kernels.stacked`)
``num_shards``, ``shift``, ``shard_rows``, ``row_offset``, ``rotation``. A plain table is
``[rows, rows, dim, 1, 0, rows, 0, 0]``: the identity.

``gather_tables_*`` serve groups of plain tables: the ids are the rows they read.
``gather_stacked_*`` serve groups with a stacked table: they take ``ids``, the logical ids they
check, and ``rows``, an int64 scratch array as long as ``ids`` that they fill from the ids
through each feature's placement (one pass, a mask and a shift per id when N is a power of two)
and then read. Each kernel has one copy loop: a second one, inlined for the mapped case into the
same kernel, made the copies slower (4 features x 1,024 ids from a 1 GiB stack, 4 KiB pages,
one thread, rows not in cache: 250 µs against 218 µs for the same tables stored plainly; with
one loop 238 against 234).

Unlike the single-table kernels these check the ids themselves, all of them, against the
logical ``rows``, before the first row is read: the return value is -1 when every id was in
range (and ``out`` is filled), else the flat index of the first bad id (and ``out`` is
untouched).

:class:`TableGroup` is the Python side: it checks the tables once (float32, one ``dim``, C-ordered
rows, a placement that stays inside the array: the kernels rebuild each table from its address
and trust its layout row), keeps them alive while their addresses are in use, and owns the
group's output arena. :class:`GroupCache` keeps a bounded number of groups by key (a lookup keys
them by the request's feature order).
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
from embserve.kernels.stacked import RowMap, map_range

__all__ = [
    "LAYOUT_COLUMNS",
    "GroupCache",
    "TableGroup",
    "gather_stacked_parallel",
    "gather_stacked_serial",
    "gather_tables_parallel",
    "gather_tables_serial",
    "layout_row",
]

# The columns of a layout row, in order.
LAYOUT_COLUMNS = (
    "rows",
    "height",
    "width",
    "num_shards",
    "shift",
    "shard_rows",
    "row_offset",
    "rotation",
)
_ROWS, _HEIGHT, _WIDTH, _SHARDS, _SHIFT, _SHARD_ROWS, _OFFSET, _ROTATION = range(8)
ROWS_MESSAGE = "the row scratch must be as long as the ids"

# Rows per work unit of the parallel driver (units never straddle two features).
_CHUNK = 64


@jit_inline
def _first_bad(layout, ids, n):  # type: ignore[no-untyped-def]
    if n == 0:
        return -1
    # A vectorized min / max per feature; the scan for the offender runs only when one exists.
    for f in range(layout.shape[0]):
        first = f * n
        rows = layout[f, _ROWS]
        lo = ids[first]
        hi = ids[first]
        for i in range(first, first + n):
            v = ids[i]
            lo = min(lo, v)
            hi = max(hi, v)
        if lo < 0 or hi >= rows:
            for i in range(first, first + n):
                if ids[i] < 0 or ids[i] >= rows:
                    return i
    return -1


@jit_inline
def _map_all(layout, ids, rows):  # type: ignore[no-untyped-def]
    """``rows[f * n + i]`` = the array row of feature ``f``'s id ``i`` (``n = len(ids) //
    len(layout)``), through each feature's placement; harmless arithmetic on any id (the
    kernels read ``rows`` only after every id passed the check)."""
    n = ids.shape[0] // layout.shape[0]
    for f in range(layout.shape[0]):
        lf = layout[f]
        lo = f * n
        shards = lf[_SHARDS]
        shift = lf[_SHIFT]
        shard_rows = lf[_SHARD_ROWS]
        offset = lf[_OFFSET]
        rotation = lf[_ROTATION]
        map_range(ids, shards, shift, shard_rows, offset, rotation, rows, lo, lo + n)


@jit_inline
def _copy_rows(addresses, layout, rows, out, f, i0, i1):  # type: ignore[no-untyped-def]
    """Rows ``i0 .. i1`` of feature ``f``: the single-table gather on its slice of the call."""
    n = out.shape[1]
    table = table_at(addresses[f], layout[f, _HEIGHT], layout[f, _WIDTH])
    _gather_range(table, rows[f * n : (f + 1) * n], out[f], i0, i1)


@jit_inline
def _check_call(layout, ids, rows, out):  # type: ignore[no-untyped-def]
    if not c_rows(out):
        raise ValueError(LAYOUT_MESSAGE)
    if rows.shape[0] != ids.shape[0]:
        raise ValueError(ROWS_MESSAGE)


@jit_inline
def _serial(addresses, layout, ids, rows, out, mapped):  # type: ignore[no-untyped-def]
    """The serial kernel; ``mapped`` is a constant of each entry point (numba folds it)."""
    _check_call(layout, ids, rows, out)
    n = out.shape[1]
    if mapped:
        _map_all(layout, ids, rows)
    if n < PREFETCH_ROWS:
        # Few ids per feature (a latency-bound request): _copy_rows prefetches only within a
        # feature, so start every row's load up front, before the id check (a prefetch never
        # faults, even for an id the check then refuses). Batch 1 x 26 features from 26 x 1M x
        # 64 tables, rows not in cache: 5.6 us without, 2.0 us with one prefetch per row,
        # 1.4 us with one per cache line the row touches.
        used = out.shape[2] * 4
        for f in range(addresses.shape[0]):
            row_bytes = layout[f, _WIDTH] * 4
            for i in range(f * n, (f + 1) * n):
                prefetch_row(addresses[f] + rows[i] * row_bytes, used)
    bad = _first_bad(layout, ids, n)
    if bad >= 0:
        return bad
    for f in range(addresses.shape[0]):
        _copy_rows(addresses, layout, rows, out, f, 0, n)
    return -1


@jit
def gather_tables_serial(addresses, layout, ids, out):  # type: ignore[no-untyped-def]
    """Check every id, then ``out[f, i] = table_f[ids[f * n + i]]`` on the calling thread
    (plain tables: the ids are the rows)."""
    return _serial(addresses, layout, ids, ids, out, False)


@jit
def gather_stacked_serial(addresses, layout, ids, rows, out):  # type: ignore[no-untyped-def]
    """:func:`gather_tables_serial` for a group with stacked tables: ``rows`` (int64, as long
    as ``ids``) receives the array rows of the ids, which the copies read. A separate entry
    point so that plain groups keep a four-argument call (each argument costs the dispatcher
    some 25 ns; batch-1 gathers take under 1 µs)."""
    return _serial(addresses, layout, ids, rows, out, True)


@jit_parallel
def gather_tables_parallel(addresses, layout, ids, out):  # type: ignore[no-untyped-def]
    """:func:`gather_tables_serial` with the copies in one parallel region for all features."""
    _check_call(layout, ids, ids, out)
    n = out.shape[1]
    bad = _first_bad(layout, ids, n)
    if bad >= 0:
        return bad
    per_feature = (n + _CHUNK - 1) // _CHUNK
    for u in prange(addresses.shape[0] * per_feature):
        f = u // per_feature
        i0 = (u - f * per_feature) * _CHUNK
        _copy_rows(addresses, layout, ids, out, f, i0, min(i0 + _CHUNK, n))
    return -1


@jit_parallel
def gather_stacked_parallel(addresses, layout, ids, rows, out):  # type: ignore[no-untyped-def]
    """:func:`gather_stacked_serial` with the copies in one parallel region for all features
    (the mapping pass runs before it, on the calling thread)."""
    _check_call(layout, ids, rows, out)
    n = out.shape[1]
    bad = _first_bad(layout, ids, n)
    if bad >= 0:
        return bad
    _map_all(layout, ids, rows)
    per_feature = (n + _CHUNK - 1) // _CHUNK
    for u in prange(addresses.shape[0] * per_feature):
        f = u // per_feature
        i0 = (u - f * per_feature) * _CHUNK
        _copy_rows(addresses, layout, rows, out, f, i0, min(i0 + _CHUNK, n))
    return -1


def layout_row(table: np.ndarray, placement: RowMap | None = None) -> list[int]:
    """The layout row (:data:`LAYOUT_COLUMNS`) of ``table`` read through ``placement`` (None:
    a plain table)."""
    m = placement if placement is not None else RowMap.plain(int(table.shape[0]))
    return [
        m.rows,
        int(table.shape[0]),
        int(table.shape[1]),
        m.num_shards,
        m.shift,
        m.shard_rows,
        m.row_offset,
        m.rotation,
    ]


class TableGroup:
    """Tables gathered by one kernel call: float32 arrays read ``dim`` columns wide.

    Args:
        tables: the arrays the kernels read, in the order their ids are stacked: plain ``[rows,
            dim]`` tables, or whole SparseCore stacks ``[T·N, W]`` (``W >= dim``).
        placements: per table, None (a plain table) or the :class:`RowMap` of its logical rows
            inside the array.
        dim: the width read from every table (default: the first table's ``shape[1]``).

    Raises:
        ValueError: no tables, a table that is not a 2-D float32 array in C-ordered rows
            (numpy's ``c_contiguous``), a table narrower than ``dim`` (or, plain, of another
            width), or a placement that does not fit its array.
    """

    __slots__ = ("addresses", "arena", "dim", "layout", "mapped", "row_arena", "rows", "tables")

    def __init__(
        self,
        tables: Sequence[np.ndarray],
        placements: Sequence[RowMap | None] | None = None,
        dim: int | None = None,
    ) -> None:
        if not tables:
            raise ValueError("a table group needs at least one table")
        if placements is None:
            placements = [None] * len(tables)
        if len(placements) != len(tables):
            raise ValueError(f"{len(tables)} tables but {len(placements)} placements")
        if dim is None:
            dim = tables[0].shape[1] if tables[0].ndim == 2 else -1
        flat: list[int] = []  # the layout rows, one after another
        mapped = False
        for i, (t, m) in enumerate(zip(tables, placements, strict=True)):
            if not isinstance(t, np.ndarray) or t.ndim != 2 or t.dtype != np.float32:
                raise ValueError(f"table {i} of the group is not a 2-D float32 array")
            if not t.flags.c_contiguous:
                raise ValueError(f"table {i} of the group: {LAYOUT_MESSAGE}")
            height, width = t.shape
            if width < dim or (m is None and width != dim):
                raise ValueError(f"table {i} of the group has dim {width}, not {dim}")
            if m is None:
                flat += (height, height, width, 1, 0, height, 0, 0)
                continue
            misfit = m.misfit(height)
            if misfit is not None:
                raise ValueError(f"table {i} of the group: its placement does not fit: {misfit}")
            flat += layout_row(t, m)
            mapped |= not m.identity
        self.tables = list(tables)  # keeps the memory behind the addresses alive
        self.addresses = np.array([address_of(t) for t in self.tables], dtype=np.int64)
        # A group is built per serving_embedding_lookup call: one flat list into numpy (26
        # tables: 2.9 us, where a list of rows took 4.5).
        self.layout = np.array(flat, dtype=np.int64).reshape(len(tables), len(LAYOUT_COLUMNS))
        self.rows = self.layout[:, 0]  # logical rows: ids are checked against these
        self.mapped = mapped
        self.dim: int = int(dim)
        self.arena = OutputArena()
        # The kernels' row scratch, when a table is stacked.
        self.row_arena = OutputArena() if mapped else None

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
        if self.row_arena is None:
            kernel = gather_tables_parallel if parallel else gather_tables_serial
            bad = kernel(self.addresses, self.layout, ids, out)
        else:  # a stacked table: the kernel maps the ids into rows of the arrays
            rows = self.row_arena.take(ids.shape, np.int64)
            stacked = gather_stacked_parallel if parallel else gather_stacked_serial
            bad = stacked(self.addresses, self.layout, ids, rows, out)
        return None if bad >= 0 else out


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
