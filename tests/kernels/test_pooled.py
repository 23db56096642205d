"""Pooled kernels against a float64 loop, serial and parallel variants alike."""

from __future__ import annotations

import numpy as np
import pytest

from embserve.kernels.pooled import (
    MEAN,
    SQRTN,
    SUM,
    pooled_overflow,
    pooled_parallel,
    pooled_serial,
)


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
    w = weights if weighted else np.empty(0, np.float32)
    assert kernel(table, ids, w, splits, combiner, out) == -1
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


# Overflow (issue 10, item 9): every driver returns -1 when every output value and denominator
# is finite, else a bag at or before the first one that is not; pooled_overflow then finds it
# and decides, exactly, whether finite inputs produced it.

BIG = np.float32(3e38)


def _run(kernel, table, bags, weights, combiner):  # type: ignore[no-untyped-def]
    lengths = [len(b) for b in bags]
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.array([i for b in bags for i in b], np.int64)
    w = np.empty(0, np.float32) if weights is None else np.asarray(weights, np.float32)
    out = np.full((len(bags), table.shape[1]), np.nan, table.dtype)
    first = kernel(table, ids, w, splits, combiner, out)
    return first, out, (table, ids, w, splits, combiner, out)


@pytest.mark.parametrize("kernel", [pooled_serial, pooled_parallel])
@pytest.mark.parametrize("dim", [7, 16])
@pytest.mark.parametrize("combiner", [SUM, MEAN, SQRTN])
def test_a_bag_whose_sum_overflows_is_reported(kernel, dim, combiner) -> None:  # type: ignore[no-untyped-def]
    table = np.ones((8, dim), np.float32)
    table[3] = BIG
    bags = [[1, 2]] * 70 + [[3, 3]] + [[3]] * 5  # bag 70: 6e38 overflows; bag 71+: finite
    first, out, args = _run(kernel, table, bags, None, combiner)
    assert 0 <= first <= 70
    assert not np.isfinite(out[70]).any()
    assert pooled_overflow(*args, first) == (70, 0)


@pytest.mark.parametrize("kernel", [pooled_serial, pooled_parallel])
@pytest.mark.parametrize("dim", [7, 16])
@pytest.mark.parametrize("combiner", [SUM, MEAN, SQRTN])
def test_a_weight_that_overflows_the_product_is_reported(kernel, dim, combiner) -> None:  # type: ignore[no-untyped-def]
    table = np.full((8, dim), 2.0, np.float32)
    first, _, args = _run(kernel, table, [[1], [2]], [1.0, 3.4e38], combiner)
    assert 0 <= first <= 1
    assert pooled_overflow(*args, first)[0] == 1


@pytest.mark.parametrize("kernel", [pooled_serial, pooled_parallel])
@pytest.mark.parametrize("dim", [7, 16])
@pytest.mark.parametrize(
    ("combiner", "weights"),
    [(SQRTN, [1e30, 1.0]), (MEAN, [3e38, 3e38]), (SQRTN, [2e19, 2e19])],
)
def test_a_denominator_that_overflows_is_reported(kernel, dim, combiner, weights) -> None:  # type: ignore[no-untyped-def]
    """sqrtn divides by sqrt(Σ w²): w = 1e30 squares to inf in float32, and the finite numerator
    divided by inf gave a silent zero vector; mean's Σ w overflows the same way."""
    table = np.full((8, dim), 1e-9, np.float32)
    first, _out, args = _run(kernel, table, [[1], [1, 2]], [1.0, *weights], combiner)
    assert 0 <= first <= 1
    assert pooled_overflow(*args, first) == (1, 1)


@pytest.mark.parametrize("kernel", [pooled_serial, pooled_parallel])
@pytest.mark.parametrize("dim", [7, 16])
def test_non_finite_rows_are_the_tables_not_an_overflow(kernel, dim) -> None:  # type: ignore[no-untyped-def]
    """A table may hold inf / NaN: the output is what TensorFlow returns, and only a bag whose
    own rows were all finite counts as an overflow, even after such a bag."""
    table = np.ones((8, dim), np.float32)
    table[4] = np.inf
    table[5] = np.nan
    table[6] = BIG
    first, out, args = _run(kernel, table, [[1], [4, 1], [5], [2]], None, SUM)
    assert 0 <= first <= 1
    assert np.isinf(out[1]).all()
    assert np.isnan(out[2]).all()
    assert pooled_overflow(*args, first) == (-1, 0)
    first, out, args = _run(kernel, table, [[1], [4, 1], [6, 6], [5]], None, SUM)
    assert 0 <= first <= 1
    assert pooled_overflow(*args, first) == (2, 0)


@pytest.mark.parametrize("kernel", [pooled_serial, pooled_parallel])
@pytest.mark.parametrize("dim", [7, 16])
@pytest.mark.parametrize("weighted", [False, True])
def test_clean_lookups_return_minus_one(kernel, dim, weighted) -> None:  # type: ignore[no-untyped-def]
    table = np.full((8, dim), 1e30, np.float32)
    weights = [2.0, 3.0, 0.0] if weighted else None
    for combiner in (SUM, MEAN, SQRTN):
        first, out, _args = _run(kernel, table, [[1, 2], [], [3]], weights, combiner)
        assert first == -1
        assert np.isfinite(out).all()


@pytest.mark.parametrize("kernel", [pooled_serial, pooled_parallel])
@pytest.mark.parametrize("dim", [16, 64, 128])
@pytest.mark.parametrize("weighted", [False, True])
def test_rows_starting_mid_cache_line_are_summed_exactly(kernel, dim, weighted) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint's table starts 8 bytes into the data file, so its rows start mid cache line
    (the bag kernel prefetches every line such a row touches, BAG_PREFETCH_ROWS ids ahead):
    the sums stay bit-identical, with bags longer than the prefetch distance, the last row of the
    table read near the end of ``ids`` (the prefetch never reaches past ``ids``)."""
    rng = np.random.default_rng(dim + weighted)
    rows = 300
    raw = np.empty(rows * dim + 2, np.float32)
    table = raw[2:].reshape(rows, dim)  # 8 bytes past the array's (aligned) start
    table[:] = rng.standard_normal((rows, dim))
    assert table.ctypes.data % 64 != 0
    lengths = np.array([0, 1, 70, 33, 5, 0, 40, 2])
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, rows, size=splits[-1]).astype(np.int64)
    ids[-3:] = rows - 1
    weights = rng.uniform(-1, 2, size=splits[-1]).astype(np.float32) if weighted else None
    out = np.full((len(lengths), dim), np.nan, np.float32)
    w = weights if weighted else np.empty(0, np.float32)
    assert kernel(table, ids, w, splits, SUM, out) == -1
    np.testing.assert_array_equal(out, _sequential_float32(table, ids, weights, splits))
