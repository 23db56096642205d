"""Kernels address rows as ``base + id * row_bytes``: every entry point refuses a table (or an
output written by address) that is not laid out as C-ordered rows, instead of reading the wrong
rows or past the buffer (issue 10, item 13: ``pooled_serial`` on a Fortran table returned
``[256, 272, ...]`` for ``[16, 17, ...]``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from embserve.kernels.multi import gather_tables_parallel, gather_tables_serial, layout_row
from embserve.kernels.pooled import SUM, pooled_parallel, pooled_serial
from embserve.kernels.sequence import (
    gather_parallel,
    gather_serial,
    scatter_add_parallel,
    scatter_add_serial,
    sequence_parallel,
    sequence_serial,
)

ROWS = 40


def _table(dim: int) -> np.ndarray:
    return np.arange(ROWS * dim, dtype=np.float32).reshape(ROWS, dim)


def _layouts(dim: int) -> dict[str, np.ndarray]:
    """The same kind of table in layouts whose rows are not ``dim * 4`` bytes apart."""
    base = _table(dim)
    wide = np.arange(ROWS * dim * 2, dtype=np.float32).reshape(ROWS, dim * 2)
    tall = np.arange(ROWS * 2 * dim, dtype=np.float32).reshape(ROWS * 2, dim)
    return {
        "fortran": np.asfortranarray(base),
        "strided columns": wide[:, ::2],
        "strided rows": tall[::2],
        "reversed rows": base[::-1],
        "reversed columns": base[:, ::-1],
    }


def _output(shape: tuple[int, ...], order: str) -> np.ndarray:
    """NaN-filled output, C-ordered, Fortran-ordered, or every other row of a larger array."""
    if order == "strided":
        return np.full((shape[0] * 2, *shape[1:]), np.nan, np.float32)[::2]
    return np.full(shape, np.nan, np.float32, order=order)


def _pooled(kernel: Callable[..., Any]) -> Callable[[np.ndarray, str], np.ndarray]:
    def run(table: np.ndarray, order: str) -> np.ndarray:
        ids = np.arange(16, 32, dtype=np.int64)
        out = _output((2, table.shape[1]), order)
        kernel(table, ids, np.empty(0, np.float32), np.array([0, 4, 16], np.int64), SUM, out)
        return out

    return run


def _gather(kernel: Callable[..., Any]) -> Callable[[np.ndarray, str], np.ndarray]:
    def run(table: np.ndarray, order: str) -> np.ndarray:
        out = _output((4, table.shape[1]), order)
        kernel(table, np.arange(16, 20, dtype=np.int64), out)
        return out

    return run


def _sequence(kernel: Callable[..., Any]) -> Callable[[np.ndarray, str], np.ndarray]:
    def run(table: np.ndarray, order: str) -> np.ndarray:
        out = _output((2, 3, table.shape[1]), order)
        kernel(table, np.arange(16, 20, dtype=np.int64), np.array([0, 2, 4], np.int64), out)
        return out

    return run


def _scatter(kernel: Callable[..., Any]) -> Callable[[np.ndarray, str], np.ndarray]:
    def run(table: np.ndarray, order: str) -> np.ndarray:
        out = _output((2, 3, table.shape[1]), order)
        out[...] = 0
        ids = np.arange(16, 20, dtype=np.int64)
        cols = np.array([0, 1, 0, 2], np.int64)
        kernel(table, ids, cols, np.array([0, 2, 4], np.int64), out)
        return out

    return run


ENTRY_POINTS = {
    "pooled_serial": _pooled(pooled_serial),
    "pooled_parallel": _pooled(pooled_parallel),
    "gather_serial": _gather(gather_serial),
    "gather_parallel": _gather(gather_parallel),
    "sequence_serial": _sequence(sequence_serial),
    "sequence_parallel": _sequence(sequence_parallel),
    "scatter_add_serial": _scatter(scatter_add_serial),
    "scatter_add_parallel": _scatter(scatter_add_parallel),
}


@pytest.mark.parametrize("dim", [5, 16])  # 16: the register kernel, which reads by address
@pytest.mark.parametrize("layout", list(_layouts(4)))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_refuses_a_table_not_in_c_rows(entry: str, layout: str, dim: int) -> None:
    with pytest.raises(ValueError, match="C-ordered rows"):
        ENTRY_POINTS[entry](_layouts(dim)[layout], "C")


@pytest.mark.parametrize("dim", [5, 16])
@pytest.mark.parametrize("order", ["F", "strided"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_refuses_an_output_not_in_c_rows(
    entry: str, order: str, dim: int
) -> None:
    with pytest.raises(ValueError, match="C-ordered rows"):
        ENTRY_POINTS[entry](_table(dim), order)


@pytest.mark.parametrize("dim", [5, 16])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_c_ordered_tables_and_relaxed_layouts_are_served(entry: str, dim: int) -> None:
    """numpy calls an array contiguous when only the strides of length-1 dimensions differ;
    such arrays address correctly and are accepted (here: a one-column table whose column
    stride is 0): the same result as a compact copy."""
    assert np.isfinite(ENTRY_POINTS[entry](_table(dim), "C")).all()
    one_column = np.arange(ROWS, dtype=np.float32)[:, None]
    assert one_column.strides == (4, 0)
    assert one_column.flags.c_contiguous
    np.testing.assert_array_equal(
        ENTRY_POINTS[entry](one_column, "C"),
        ENTRY_POINTS[entry](np.ascontiguousarray(one_column), "C"),
    )


def test_fortran_table_gave_wrong_rows_before_the_check() -> None:
    """The verified symptom, stated positively: a C copy of the same table gives the right rows."""
    table = np.asfortranarray(_table(16))
    out = np.zeros((1, 16), np.float32)
    ids = np.array([1], np.int64)
    with pytest.raises(ValueError, match="C-ordered rows"):
        pooled_serial(table, ids, np.empty(0, np.float32), np.array([0, 1]), SUM, out)
    pooled_serial(
        np.ascontiguousarray(table), ids, np.empty(0, np.float32), np.array([0, 1]), SUM, out
    )
    assert out[0].tolist() == list(range(16, 32))


@pytest.mark.parametrize("layout", list(_layouts(4)))
def test_a_table_group_refuses_tables_not_in_c_rows(layout: str) -> None:
    from embserve.kernels.multi import TableGroup

    with pytest.raises(ValueError, match="C-ordered rows"):
        TableGroup([_table(4), _layouts(4)[layout]])


@pytest.mark.parametrize("kernel", [gather_tables_serial, gather_tables_parallel])
def test_fused_gather_refuses_an_output_not_in_c_rows(kernel: Callable[..., Any]) -> None:
    tables = [_table(4), _table(4)]
    addresses = np.array([t.ctypes.data for t in tables], np.int64)
    out = np.asfortranarray(np.full((2, 3, 4), np.nan, np.float32))
    layout = np.array([layout_row(t) for t in tables], np.int64)
    with pytest.raises(ValueError, match="C-ordered rows"):
        kernel(addresses, layout, np.zeros(6, np.int64), out)
    assert np.isnan(out).all()
