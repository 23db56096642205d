"""First-offender checks that guard every kernel."""

from __future__ import annotations

import numpy as np
import pytest

from embserve.kernels.check import first_bad_id, first_bad_split, first_nonfinite


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_first_bad_id(dtype: type) -> None:
    ids = np.array([0, 3, 9, 10, -1], dtype=dtype)
    assert first_bad_id(ids, 10, False) == 3
    assert first_bad_id(ids, 11, False) == 4
    assert first_bad_id(ids, 11, True) == -1
    assert first_bad_id(ids[:0], 1, False) == -1
    assert first_bad_id(ids, 0, True) == 0


def test_int64_ids_are_not_wrapped() -> None:
    ids = np.array([2**32 + 1], dtype=np.int64)  # would be 1 if narrowed to int32
    assert first_bad_id(ids, 5, False) == 0


def test_first_nonfinite() -> None:
    assert first_nonfinite(np.array([1.0, 0.0, -3.0], np.float32)) == -1
    assert first_nonfinite(np.array([1.0, np.nan], np.float32)) == 1
    assert first_nonfinite(np.array([np.inf, 1.0], np.float32)) == 0
    assert first_nonfinite(np.array([1.0, -np.inf], np.float32)) == 1


@pytest.mark.parametrize(
    ("splits", "n", "bad"),
    [
        ([0, 2, 2, 3], 3, -1),
        ([0], 0, -1),
        ([1, 2], 2, 0),
        ([0, 2, 1, 3], 3, 2),
        ([0, 2, 4], 3, 2),
        ([], 0, 0),
    ],
)
def test_first_bad_split(splits: list[int], n: int, bad: int) -> None:
    assert first_bad_split(np.array(splits, dtype=np.int64), n) == bad
