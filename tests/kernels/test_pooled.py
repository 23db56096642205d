"""Pooled kernels against a float64 loop, serial and parallel variants alike."""

from __future__ import annotations

import numpy as np
import pytest

from embserve.kernels.pooled import MEAN, SQRTN, SUM, pooled_parallel, pooled_serial


def _expected(table, ids, weights, splits, combiner):  # type: ignore[no-untyped-def]
    out = np.zeros((len(splits) - 1, table.shape[1]))
    for b in range(len(splits) - 1):
        sl = slice(splits[b], splits[b + 1])
        w = np.ones(sl.stop - sl.start) if weights is None else weights[sl].astype(np.float64)
        acc = (table[ids[sl]].astype(np.float64) * w[:, None]).sum(axis=0)
        denom = {SUM: 1.0, MEAN: w.sum(), SQRTN: np.sqrt((w * w).sum())}[combiner]
        out[b] = acc / denom if denom != 0 else 0.0
    return out


@pytest.mark.parametrize("kernel", [pooled_serial, pooled_parallel])
@pytest.mark.parametrize("combiner", [SUM, MEAN, SQRTN])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_pooled_matches_loop(kernel, combiner, weighted, id_dtype) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(combiner * 4 + weighted)
    table = rng.standard_normal((50, 7)).astype(np.float32)
    lengths = rng.integers(0, 6, size=40)
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 50, size=splits[-1]).astype(id_dtype)
    weights = rng.uniform(-1, 2, size=splits[-1]).astype(np.float32) if weighted else None
    out = np.full((40, 7), np.nan, np.float32)
    kernel(table, ids, weights if weighted else np.empty(0, np.float32), splits, combiner, out)
    np.testing.assert_allclose(
        out, _expected(table, ids, weights, splits, combiner), rtol=2e-5, atol=2e-5
    )


def test_zero_weight_sum_gives_zeros_not_nan() -> None:
    table = np.ones((4, 3), np.float32)
    out = np.empty((1, 3), np.float32)
    pooled_serial(
        table, np.array([1, 2]), np.array([1.0, -1.0], np.float32), np.array([0, 2]), MEAN, out
    )
    assert out.tolist() == [[0.0, 0.0, 0.0]]


@pytest.mark.parametrize("kernel", [pooled_serial, pooled_parallel])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_bags_with_skewed_lengths_and_empty_runs(kernel, dtype) -> None:  # type: ignore[no-untyped-def]
    """More bags than the parallel driver's 64 work units, cut by id count: long bags, runs of
    empty bags at the start, middle and end must each be reduced exactly once."""
    rng = np.random.default_rng(7)
    table = rng.standard_normal((3000, 16)).astype(dtype)
    lengths = rng.integers(0, 4, size=500)
    lengths[:30] = 0
    lengths[200:260] = 0
    lengths[-40:] = 0
    lengths[100] = 2000  # one bag holding most ids
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 3000, size=splits[-1]).astype(np.int64)
    for combiner in (SUM, MEAN, SQRTN):
        out = np.full((500, 16), np.nan, dtype)
        kernel(table, ids, np.empty(0, np.float32), splits, combiner, out)
        np.testing.assert_allclose(
            out, _expected(table, ids, None, splits, combiner), rtol=1e-4, atol=1e-4
        )


def _sequential_float32(table, ids, weights, splits):  # type: ignore[no-untyped-def]
    """Bag sums accumulated row by row in float32, in bag order: what the kernels promise to
    reproduce bit for bit (the register kernel included)."""
    out = np.zeros((len(splits) - 1, table.shape[1]), np.float32)
    for b in range(len(splits) - 1):
        acc = np.zeros(table.shape[1], np.float32)
        for k in range(splits[b], splits[b + 1]):
            row = table[ids[k]]
            acc = acc + (row if weights is None else row * weights[k])
        out[b] = acc
    return out


@pytest.mark.parametrize("kernel", [pooled_serial, pooled_parallel])
@pytest.mark.parametrize("dim", [8, 16, 24, 48, 64, 80, 128, 256])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_sums_are_bit_identical_to_sequential_float32(kernel, dim, weighted, id_dtype) -> None:  # type: ignore[no-untyped-def]
    """Dims that are multiples of 16 take the register kernel, the others the array loop; both
    must add in bag order exactly (no reassociation), including bags longer than the prefetch
    distance and bags at the very end of ``ids``."""
    rng = np.random.default_rng(dim * 2 + weighted)
    table = rng.standard_normal((500, dim)).astype(np.float32)
    lengths = rng.integers(0, 50, size=90)
    lengths[-1] = 3
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 500, size=splits[-1]).astype(id_dtype)
    weights = rng.uniform(-1, 2, size=splits[-1]).astype(np.float32) if weighted else None
    out = np.full((90, dim), np.nan, np.float32)
    w = weights if weighted else np.empty(0, np.float32)
    kernel(table, ids, w, splits, SUM, out)
    np.testing.assert_array_equal(out, _sequential_float32(table, ids, weights, splits))
    for combiner in (MEAN, SQRTN):
        kernel(table, ids, w, splits, combiner, out)
        np.testing.assert_allclose(
            out, _expected(table, ids, weights, splits, combiner), rtol=3e-5, atol=3e-5
        )
