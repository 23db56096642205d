"""Gather, ragged sequence and sparse scatter kernels, serial and parallel."""

from __future__ import annotations

import numpy as np
import pytest

from embserve.kernels.sequence import (
    gather_parallel,
    gather_serial,
    scatter_add_parallel,
    scatter_add_serial,
    sequence_parallel,
    sequence_serial,
)

TABLE = np.arange(40, dtype=np.float32).reshape(20, 2)


@pytest.mark.parametrize("kernel", [gather_serial, gather_parallel])
def test_gather(kernel) -> None:  # type: ignore[no-untyped-def]
    ids = np.array([3, 0, 19, 3], np.int32)
    out = np.empty((4, 2), np.float32)
    kernel(TABLE, ids, out)
    np.testing.assert_array_equal(out, TABLE[ids])


@pytest.mark.parametrize("kernel", [sequence_serial, sequence_parallel])
@pytest.mark.parametrize("length", [1, 2, 4])
def test_sequence_packs_left_cuts_and_pads(kernel, length) -> None:  # type: ignore[no-untyped-def]
    rows = [[1, 2, 3], [], [4]]
    ids = np.array([1, 2, 3, 4], np.int64)
    splits = np.array([0, 3, 3, 4], np.int64)
    out = np.full((3, length, 2), np.nan, np.float32)
    kernel(TABLE, ids, splits, out)
    expected = np.zeros((3, length, 2), np.float32)
    for b, r in enumerate(rows):
        for j, i in enumerate(r[:length]):
            expected[b, j] = TABLE[i]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kernel", [scatter_add_serial, scatter_add_parallel])
def test_scatter_adds_duplicates(kernel) -> None:  # type: ignore[no-untyped-def]
    ids = np.array([1, 3, 4], np.int64)
    cols = np.array([0, 0, 1], np.int64)
    splits = np.array([0, 2, 2, 3], np.int64)
    out = np.zeros((3, 2, 2), np.float32)
    kernel(TABLE, ids, cols, splits, out)
    expected = np.zeros((3, 2, 2), np.float32)
    expected[0, 0] = TABLE[1] + TABLE[3]
    expected[2, 1] = TABLE[4]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kernel", [scatter_add_serial, scatter_add_parallel])
def test_scatter_reports_the_first_row_with_a_non_finite_output(kernel) -> None:  # type: ignore[no-untyped-def]
    """Duplicate positions add up, so two finite rows can overflow (issue 10, item 9): the
    kernel returns the first example whose output holds inf / NaN, -1 when none does."""
    table = np.ones((5, 3), np.float32)
    table[2] = 3e38
    ids = np.array([1, 1, 2, 2, 2], np.int64)
    cols = np.array([0, 0, 1, 1, 0], np.int64)
    splits = np.array([0, 2, 2, 5], np.int64)
    out = np.zeros((3, 2, 3), np.float32)
    assert kernel(table, ids, cols, splits, out) == 2
    assert np.isinf(out[2, 1]).all()
    out[...] = 0
    assert kernel(table, ids[:2], cols[:2], np.array([0, 2, 2, 2], np.int64), out) == -1
