"""Kernels on SparseCore stacks: the id translation (``map_rows`` / ``RowMap``), kernels reading
the first ``dim`` columns of a wider C-ordered stack, and the fused gather with stacked layouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from embserve.kernels._native import address_of
from embserve.kernels.multi import (
    LAYOUT_COLUMNS,
    TableGroup,
    gather_stacked_parallel,
    gather_stacked_serial,
    layout_row,
)
from embserve.kernels.pooled import (
    MEAN,
    SQRTN,
    SUM,
    pooled_overflow,
    pooled_parallel,
    pooled_serial,
)
from embserve.kernels.sequence import (
    gather_parallel,
    gather_serial,
    scatter_add_parallel,
    scatter_add_serial,
    sequence_parallel,
    sequence_serial,
)
from embserve.kernels.stacked import RowMap, map_rows


def formula(r: np.ndarray, n: int, t: int, o: int, rot: int) -> np.ndarray:
    """SPARSECORE_FORMAT.md §3.1, written out."""
    return ((r % n + rot) % n) * t + o + r // n


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8, 16, 24])
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_map_rows_is_the_row_formula(n: int, id_dtype: Any) -> None:
    rng = np.random.default_rng(n)
    for _ in range(5):
        rows = int(rng.integers(1, 5000))
        t = -(-rows // n) + int(rng.integers(0, 9))
        o = int(rng.integers(0, t - -(-rows // n) + 1))
        rot = int(rng.integers(0, n))
        m = RowMap(rows, n, t, o, rot)
        assert m.misfit(n * t) is None
        ids = rng.integers(0, rows, 1000).astype(id_dtype)
        ids[:2] = [0, rows - 1]
        out = np.empty(ids.shape[0], np.int64)
        map_rows(ids, n, m.shift, t, o, rot, out)
        np.testing.assert_array_equal(out, formula(ids.astype(np.int64), n, t, o, rot))
        assert out.max() < n * t


def test_row_map_shift_identity_and_misfits() -> None:
    assert [RowMap(10, n, 10, 0, 0).shift for n in (1, 2, 4, 8, 6, 12)] == [0, 1, 2, 3, -1, -1]
    assert RowMap.plain(7) == RowMap(7, 1, 7, 0, 0)
    assert RowMap.plain(7).identity
    assert not RowMap(7, 1, 8, 1, 0).identity
    assert not RowMap(7, 2, 4, 0, 0).identity
    assert RowMap(10, 4, 5, 2, 3).misfit(20) is None
    assert "21 rows" in str(RowMap(10, 4, 5, 2, 3).misfit(21))
    assert "[3, 6)" in str(RowMap(10, 4, 5, 3, 3).misfit(20))
    for bad in (RowMap(0, 4, 5, 0, 0), RowMap(10, 0, 5, 0, 0), RowMap(10, 4, 5, -1, 0)):
        assert "invalid" in str(bad.misfit(20))
    assert "invalid" in str(RowMap(10, 4, 5, 0, 4).misfit(20))


# --- single-table kernels read the first dim columns of a wider stack -------------------------

WIDTH = 24
HEIGHT = 40


def _stack() -> np.ndarray:
    return np.arange(HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)


def _pooled(kernel: Callable[..., Any], table: np.ndarray, dim: int) -> np.ndarray:
    out = np.full((2, dim), np.nan, np.float32)
    ids = np.array([3, 39, 0, 17, 5], np.int64)
    kernel(table, ids, np.empty(0, np.float32), np.array([0, 2, 5], np.int64), SUM, out)
    return out


def _gather(kernel: Callable[..., Any], table: np.ndarray, dim: int) -> np.ndarray:
    out = np.full((3, dim), np.nan, np.float32)
    kernel(table, np.array([39, 0, 21], np.int64), out)
    return out


def _sequence(kernel: Callable[..., Any], table: np.ndarray, dim: int) -> np.ndarray:
    out = np.full((2, 3, dim), np.nan, np.float32)
    kernel(table, np.array([39, 0, 21, 4], np.int64), np.array([0, 1, 4], np.int64), out)
    return out


def _scatter(kernel: Callable[..., Any], table: np.ndarray, dim: int) -> np.ndarray:
    out = np.zeros((2, 3, dim), np.float32)
    ids = np.array([39, 0, 21, 4], np.int64)
    kernel(table, ids, np.array([2, 0, 0, 1], np.int64), np.array([0, 1, 4], np.int64), out)
    return out


ENTRY_POINTS = {
    "pooled_serial": (_pooled, pooled_serial),
    "pooled_parallel": (_pooled, pooled_parallel),
    "gather_serial": (_gather, gather_serial),
    "gather_parallel": (_gather, gather_parallel),
    "sequence_serial": (_sequence, sequence_serial),
    "sequence_parallel": (_sequence, sequence_parallel),
    "scatter_add_serial": (_scatter, scatter_add_serial),
    "scatter_add_parallel": (_scatter, scatter_add_parallel),
}


@pytest.mark.parametrize("dim", [1, 5, 16, 24])  # 16: the register kernel on a 24-float stride
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_kernels_read_the_first_dim_columns_of_a_wider_table(entry: str, dim: int) -> None:
    run, kernel = ENTRY_POINTS[entry]
    stack = _stack()
    got = run(kernel, stack, dim)
    want = run(kernel, np.ascontiguousarray(stack[:, :dim]), dim)
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_kernels_refuse_an_output_wider_than_the_table(entry: str) -> None:
    run, kernel = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match="wider than the table"):
        run(kernel, _stack(), WIDTH + 1)


@pytest.mark.parametrize("combiner", [SUM, MEAN, SQRTN])
def test_pooled_overflow_reads_the_first_dim_columns(combiner: int) -> None:
    """Bag 0 is inf from the table's own inf (served); bag 1 overflowed from rows that are
    finite in their first 4 columns (refused), though inf beyond them."""
    stack = np.zeros((4, 8), np.float32)
    stack[2, :4] = np.inf
    stack[1, :4] = 3e38
    stack[1, 4:] = np.inf  # beyond dim 4: never read
    out = np.full((2, 4), np.inf, np.float32)
    ids = np.array([2, 2, 1, 1], np.int64)
    splits = np.array([0, 2, 4], np.int64)
    assert pooled_overflow(stack, ids, np.empty(0, np.float32), splits, combiner, out, 0) == (1, 0)


# --- the fused gather with stacked layouts ----------------------------------------------------


def _stacked_group(
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[RowMap | None], list[np.ndarray]]:
    """Two tables in one 8-shard stack of width 12, one in a 6-shard stack of width 8, and a
    plain table; all read 8 wide. Returns arrays, placements, and the logical tables."""
    a = rng.standard_normal((8 * 21, 12)).astype(np.float32)
    b = rng.standard_normal((6 * 9, 8)).astype(np.float32)
    plain = rng.standard_normal((33, 8)).astype(np.float32)
    maps: list[RowMap | None] = [
        RowMap(100, 8, 21, 1, 3),  # rows [1, 14) of every shard
        RowMap(50, 8, 21, 14, 7),  # rows [14, 21)
        RowMap(40, 6, 9, 2, 5),
        None,
    ]
    arrays = [a, a, b, plain]
    logical = []
    for arr, m in zip(arrays, maps, strict=True):
        if m is None:
            logical.append(arr)
            continue
        r = np.arange(m.rows)
        logical.append(arr[formula(r, m.num_shards, m.shard_rows, m.row_offset, m.rotation), :8])
    return arrays, maps, logical


@pytest.mark.parametrize("kernel", [gather_stacked_serial, gather_stacked_parallel])
@pytest.mark.parametrize("n", [1, 15, 16, 65, 200])
def test_fused_gather_with_stacked_tables(kernel: Callable[..., Any], n: int) -> None:
    rng = np.random.default_rng(n)
    arrays, maps, logical = _stacked_group(rng)
    layout = np.array([layout_row(t, m) for t, m in zip(arrays, maps, strict=True)], np.int64)
    assert layout.shape == (4, len(LAYOUT_COLUMNS))
    ids = [rng.integers(0, t.shape[0], n) for t in logical]
    out = np.full((4, n, 8), np.nan, np.float32)
    addresses = np.array([address_of(t) for t in arrays], np.int64)
    flat = np.concatenate(ids)
    rows = np.empty(4 * n, np.int64)  # the kernel's scratch: it maps the checked ids into it
    assert kernel(addresses, layout, flat, rows, out) == -1
    for f in range(4):
        np.testing.assert_array_equal(out[f], logical[f][ids[f]])
        m = maps[f]
        if m is not None:
            r = formula(ids[f], m.num_shards, m.shard_rows, m.row_offset, m.rotation)
            np.testing.assert_array_equal(rows[f * n : (f + 1) * n], r)


@pytest.mark.parametrize("kernel", [gather_stacked_serial, gather_stacked_parallel])
@pytest.mark.parametrize("n", [3, 40])
def test_fused_gather_checks_logical_rows_before_writing(
    kernel: Callable[..., Any], n: int
) -> None:
    rng = np.random.default_rng(0)
    arrays, maps, _ = _stacked_group(rng)
    layout = np.array([layout_row(t, m) for t, m in zip(arrays, maps, strict=True)], np.int64)
    addresses = np.array([address_of(t) for t in arrays], np.int64)
    for f, bad in ((0, 100), (1, 50), (2, 40), (2, -1), (3, 33)):
        ids = np.zeros((4, n), np.int64)
        ids[f, n - 1] = bad
        out = np.full((4, n, 8), 7.0, np.float32)
        rows = np.empty(4 * n, np.int64)
        assert kernel(addresses, layout, ids.reshape(-1), rows, out) == f * n + n - 1
        assert (out == 7.0).all()


def test_table_group_with_placements() -> None:
    rng = np.random.default_rng(1)
    arrays, maps, logical = _stacked_group(rng)
    group = TableGroup(arrays, maps, 8)
    assert group.rows.tolist() == [100, 50, 40, 33]
    ids = np.concatenate([rng.integers(0, t.shape[0], 30) for t in logical])
    out = group.gather(ids, parallel=False)
    assert out is not None
    for f in range(4):
        np.testing.assert_array_equal(out[f], logical[f][ids[f * 30 : (f + 1) * 30]])
    bad = ids.copy()
    bad[30] = 50  # logical row count of table 1; the stack has that row
    assert group.gather(bad, parallel=True) is None


@pytest.mark.parametrize(
    ("placements", "dim", "words"),
    [
        ([RowMap(100, 8, 21, 1, 3)], 8, "does not fit"),  # 8 * 21 != 160 rows
        ([RowMap(100, 8, 20, 8, 3)], 8, "does not fit"),  # [8, 21) past a 20-row shard
        ([RowMap(100, 8, 20, 1, 8)], 8, "does not fit"),  # rotation >= N
        ([RowMap(100, 8, 20, 1, 3)], 13, "dim 12, not 13"),  # narrower than dim
        ([None], 8, "dim 12, not 8"),  # a plain table must be exactly dim wide
    ],
)
def test_table_group_refuses_placements_that_do_not_fit(
    placements: list[RowMap | None], dim: int, words: str
) -> None:
    stack = np.zeros((160, 12), np.float32)
    with pytest.raises(ValueError, match=words):
        TableGroup([stack], placements, dim)


@pytest.mark.parametrize("kernel", [gather_stacked_serial, gather_stacked_parallel])
def test_fused_gather_refuses_a_row_scratch_of_another_length(kernel: Callable[..., Any]) -> None:
    arrays, maps, _ = _stacked_group(np.random.default_rng(2))
    layout = np.array([layout_row(t, m) for t, m in zip(arrays, maps, strict=True)], np.int64)
    addresses = np.array([address_of(t) for t in arrays], np.int64)
    out = np.full((4, 5, 8), 7.0, np.float32)
    for length in (19, 21, 0):
        with pytest.raises(ValueError, match="scratch"):
            kernel(addresses, layout, np.zeros(20, np.int64), np.empty(length, np.int64), out)
    assert (out == 7.0).all()


def test_a_plain_group_layout_is_the_identity_row_of_every_table() -> None:
    tables = [np.zeros((r, 4), np.float32) for r in (10, 7, 1)]
    group = TableGroup(tables)
    assert group.layout.tolist() == [layout_row(t) for t in tables]
    assert group.layout.tolist()[1] == [7, 7, 4, 1, 0, 7, 0, 0]
    assert not group.mapped
    assert TableGroup([*tables, tables[0]], [None, None, None, RowMap(3, 2, 5, 1, 1)], 4).mapped
