"""The fused many-table gather: results, the id check before any write, serial = parallel."""

from __future__ import annotations

import numpy as np
import pytest

from embserve.kernels._native import address_of
from embserve.kernels.multi import gather_tables_parallel, gather_tables_serial, layout_row

KERNELS = [gather_tables_serial, gather_tables_parallel]


def _layout(tables: list[np.ndarray]) -> np.ndarray:
    return np.array([layout_row(t) for t in tables], np.int64)


def _tables(rows: list[int], dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((r, dim)).astype(np.float32) for r in rows]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 300])
def test_gathers_every_feature_from_its_own_table(kernel, id_dtype, n) -> None:  # type: ignore[no-untyped-def]
    rows = [5, 1000, 37]
    tables = _tables(rows, 9)
    rng = np.random.default_rng(n)
    ids = [rng.integers(0, r, n).astype(id_dtype) for r in rows]
    out = np.full((3, n, 9), np.nan, np.float32)
    addresses = np.array([address_of(t) for t in tables], np.int64)
    assert kernel(addresses, _layout(tables), np.concatenate(ids), out) == -1
    for f in range(3):
        np.testing.assert_array_equal(out[f], tables[f][ids[f]])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("feature", "position", "value"), [(0, 0, 5), (1, 99, 1000), (2, 3, -1), (1, 7, -1)]
)
def test_first_bad_id_is_reported_before_anything_is_written(
    kernel, feature, position, value
) -> None:  # type: ignore[no-untyped-def]
    rows = [5, 1000, 37]
    tables = _tables(rows, 4)
    ids = np.zeros((3, 100), np.int64)
    ids[feature, position] = value
    ids[2, 50] = 37  # a later bad id: the first one is reported
    out = np.full((3, 100, 4), 7.0, np.float32)
    addresses = np.array([address_of(t) for t in tables], np.int64)
    bad = kernel(addresses, _layout(tables), ids.reshape(-1), out)
    assert bad == feature * 100 + position
    assert (out == 7.0).all()
