"""Quantized-table kernels against a plain NumPy dequantize-then-lookup reference.

The reference widens the stored rows with :func:`embserve.storage.dequantize_rows` and looks
them up in float64. Gathers, sequences and scatters must equal it exactly (every kernel widens
exactly and computes ``s * q + b`` as the reference does). Bags are compared within the float32
summation error the kernels' docstring derives: for a bag of ``n`` rows,
``(n + 2) u Σ |w_i| (|s_i q_ij| + |b_i|)`` before the division (one more rounding), with the
float64 reference exact to far below that; float16 / bfloat16 bags within ``(n + 1) u Σ |w_i
v_ij|``.
"""

from __future__ import annotations

import numpy as np
import pytest

from embserve.kernels import quantized as q
from embserve.kernels.check import LAYOUT_MESSAGE
from embserve.storage import codes, dequantize_rows, quantize_rows, scale_bias

U = 2.0**-24
STORAGES = ("float16", "bfloat16", "int8", "int4")
DIMS = (1, 3, 16, 64, 100)
NONE = np.empty(0, np.float32)


def _table(storage: str, dim: int, rows: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + dim)
    x = rng.standard_normal((rows, dim)).astype(np.float32) * np.float32(3)
    x[::7] += np.float32(10)  # rows with a large bias
    return quantize_rows(x, storage)


def _parts(data: np.ndarray, storage: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``|s q|`` and ``|b|`` per element (the terms of the error bound)."""
    if storage in ("int8", "int4"):
        s, b = scale_bias(data, storage, dim)
        sq = np.abs(codes(data, storage, dim).astype(np.float64) * s[:, None].astype(np.float64))
        return sq, np.broadcast_to(np.abs(b.astype(np.float64))[:, None], sq.shape)
    v = np.abs(dequantize_rows(data, storage, dim).astype(np.float64))
    return v, np.zeros_like(v)


def _bags_reference(data, storage, dim, ids, weights, splits, combiner):  # type: ignore[no-untyped-def]
    """Exact (float64) bags of the stored values (``s q + b`` unrounded for int8 / int4), and
    the derived bound on each element."""
    if storage in ("int8", "int4"):
        s, b = (v.astype(np.float64) for v in scale_bias(data, storage, dim))
        values = codes(data, storage, dim).astype(np.float64) * s[:, None] + b[:, None]
    else:
        values = dequantize_rows(data, storage, dim).astype(np.float64)
    sq, b = _parts(data, storage, dim)
    nb = len(splits) - 1
    out = np.zeros((nb, dim))
    bound = np.zeros((nb, dim))
    for i in range(nb):
        sl = slice(splits[i], splits[i + 1])
        n = sl.stop - sl.start
        w = np.ones(n) if weights is None else weights[sl].astype(np.float64)
        rows = ids[sl]
        total = (values[rows] * w[:, None]).sum(axis=0)
        mag = (np.abs(w)[:, None] * (sq[rows] + b[rows])).sum(axis=0)
        if combiner == q.SUM:
            denom = 1.0
        elif weights is None:
            denom = float(n) if combiner == q.MEAN else float(np.sqrt(np.float32(n)))
        else:
            w32 = weights[sl]
            acc = np.float32(0)
            for x in w32:  # the kernels' float32 denominator, in bag order
                acc = np.float32(acc + (x if combiner == q.MEAN else x * x))
            denom = float(acc if combiner == q.MEAN else np.float32(np.sqrt(acc)))
        if n == 0 or denom == 0:
            continue
        out[i] = total / denom
        k = n + 3 if storage in ("int8", "int4") else n + 1  # + the division's rounding
        bound[i] = (k * U * mag / abs(denom)) * (1 + 4 * k * U) + 2.0**-149
    return out, bound


def _bags(rng: np.random.Generator, rows: int, nbags: int, most: int = 6):  # type: ignore[no-untyped-def]
    lengths = rng.integers(0, most + 1, size=nbags)
    lengths[::5] = 0  # empty bags
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, rows, size=int(splits[-1])).astype(np.int64)
    return ids, splits


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("driver", ["serial", "parallel"])
def test_gather_equals_dequantized_rows(storage: str, dim: int, driver: str) -> None:
    data = _table(storage, dim)
    kernels = q.KERNELS[storage]
    kernel = kernels.gather_serial if driver == "serial" else kernels.gather_parallel
    ids = np.random.default_rng(dim).integers(0, data.shape[0], 300).astype(np.int64)
    out = np.full((300, dim), np.nan, np.float32)
    kernel(q.stored_bytes(data), ids, out)
    expected = dequantize_rows(data, storage, dim)[ids]
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dim", [3, 16])
@pytest.mark.parametrize("driver", ["serial", "parallel"])
def test_sequence_packs_cuts_and_pads(storage: str, dim: int, driver: str) -> None:
    data = _table(storage, dim)
    kernels = q.KERNELS[storage]
    kernel = kernels.sequence_serial if driver == "serial" else kernels.sequence_parallel
    rng = np.random.default_rng(3)
    ids, splits = _bags(rng, data.shape[0], 30)
    length = 4
    out = np.full((30, length, dim), np.nan, np.float32)
    kernel(q.stored_bytes(data), ids, splits, out)
    values = dequantize_rows(data, storage, dim)
    expected = np.zeros_like(out)
    for b in range(30):
        row = ids[splits[b] : splits[b + 1]][:length]
        expected[b, : len(row)] = values[row]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dim", [5, 16])
@pytest.mark.parametrize("driver", ["serial", "parallel"])
def test_scatter_adds_dequantized_rows(storage: str, dim: int, driver: str) -> None:
    data = _table(storage, dim)
    kernels = q.KERNELS[storage]
    kernel = kernels.scatter_add_serial if driver == "serial" else kernels.scatter_add_parallel
    ids = np.array([3, 4, 5, 7, 1], np.int64)
    cols = np.array([0, 0, 2, 1, 1], np.int64)  # entries 0 and 1 share a position
    splits = np.array([0, 3, 3, 5], np.int64)
    out = np.zeros((3, 3, dim), np.float32)
    assert kernel(q.stored_bytes(data), ids, cols, splits, out) == -1
    v = dequantize_rows(data, storage, dim)
    expected = np.zeros_like(out)
    for b in range(3):
        for k in range(splits[b], splits[b + 1]):
            expected[b, cols[k]] += v[ids[k]]  # float32, in entry order, as the kernels
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("driver", ["serial", "parallel"])
def test_bags_within_the_derived_bound(storage: str, dim: int, weighted: bool, driver: str) -> None:
    data = _table(storage, dim)
    kernels = q.KERNELS[storage]
    kernel = kernels.pooled_serial if driver == "serial" else kernels.pooled_parallel
    rng = np.random.default_rng(dim * 2 + weighted)
    ids, splits = _bags(rng, data.shape[0], 150, most=40)
    weights = rng.uniform(-1, 2, size=ids.shape[0]).astype(np.float32) if weighted else None
    for combiner in (q.SUM, q.MEAN, q.SQRTN):
        out = np.full((150, dim), np.nan, np.float32)
        w = weights if weights is not None else NONE
        assert kernel(q.stored_bytes(data), ids, w, splits, combiner, out) == -1
        expected, bound = _bags_reference(data, storage, dim, ids, weights, splits, combiner)
        error = np.abs(out.astype(np.float64) - expected)
        worst = np.unravel_index(np.argmax(error - bound), error.shape)
        assert (error <= bound).all(), (combiner, worst, error[worst], bound[worst])
        empty = splits[1:] == splits[:-1]
        assert (out[empty] == 0).all()


def _sequential(values, ids, weights, splits, combiner):  # type: ignore[no-untyped-def]
    """The float32 kernels' arithmetic on widened rows: acc += [w *] v in bag order, then one
    division (TensorFlow's div_no_nan)."""
    out = np.zeros((len(splits) - 1, values.shape[1]), np.float32)
    for b in range(len(splits) - 1):
        acc = np.zeros(values.shape[1], np.float32)
        wsum = np.float32(0)
        for k in range(splits[b], splits[b + 1]):
            if weights is None:
                acc = acc + values[ids[k]]
            else:
                acc = acc + values[ids[k]] * weights[k]
                wsum = np.float32(wsum + (weights[k] if combiner == q.MEAN else weights[k] ** 2))
        n = splits[b + 1] - splits[b]
        if combiner == q.SUM:
            out[b] = acc
        elif weights is None:
            if n:
                d = np.float32(n) if combiner == q.MEAN else np.float32(np.sqrt(n))
                out[b] = acc / d
        else:
            d = wsum if combiner == q.MEAN else np.float32(np.sqrt(wsum))
            out[b] = acc / d if d != 0 else 0
    return out


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
@pytest.mark.parametrize("dim", [3, 16, 64])
@pytest.mark.parametrize("weighted", [False, True])
def test_16_bit_bags_are_the_float32_arithmetic_on_widened_rows(
    storage: str, dim: int, weighted: bool
) -> None:
    data = _table(storage, dim)
    rng = np.random.default_rng(5)
    ids, splits = _bags(rng, data.shape[0], 80, most=30)
    weights = rng.uniform(-1, 2, size=ids.shape[0]).astype(np.float32) if weighted else None
    values = dequantize_rows(data, storage, dim)
    for combiner in (q.SUM, q.MEAN, q.SQRTN):
        out = np.empty((80, dim), np.float32)
        w = weights if weights is not None else NONE
        q.KERNELS[storage].pooled_serial(q.stored_bytes(data), ids, w, splits, combiner, out)
        expected = _sequential(values, ids, weights, splits, combiner)
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("storage", ["int8", "int4"])
@pytest.mark.parametrize("dim", [8, 24, 64, 72])
def test_register_and_array_loops_give_the_same_bits(storage: str, dim: int) -> None:
    """dim % 8 == 0 takes the register kernel; the same rows read as a table of dim - 1 plus
    one column cannot, so compare against the factored form computed in NumPy float32."""
    data = _table(storage, dim)
    rng = np.random.default_rng(11)
    ids, splits = _bags(rng, data.shape[0], 60, most=30)
    weights = rng.uniform(0.5, 2, size=ids.shape[0]).astype(np.float32)
    s, b = scale_bias(data, storage, dim)
    qv = codes(data, storage, dim).astype(np.float32)
    out = np.empty((60, dim), np.float32)
    q.KERNELS[storage].pooled_serial(q.stored_bytes(data), ids, weights, splits, q.SUM, out)
    for i in range(60):
        acc = np.zeros(dim, np.float32)
        beta = np.float32(0)
        for k in range(splits[i], splits[i + 1]):
            r = ids[k]
            acc = acc + (s[r] * weights[k]) * qv[r]
            beta = np.float32(beta + b[r] * weights[k])
        np.testing.assert_array_equal(out[i], acc + beta)


@pytest.mark.parametrize("storage", STORAGES)
def test_many_bags_with_skewed_lengths_in_parallel(storage: str) -> None:
    """More bags than the parallel driver's 64 work units: each bag reduced exactly once."""
    dim = 16
    data = _table(storage, dim, rows=500)
    rng = np.random.default_rng(7)
    lengths = rng.integers(0, 4, size=400)
    lengths[:30] = 0
    lengths[100] = 1500
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 500, size=int(splits[-1])).astype(np.int64)
    k = q.KERNELS[storage]
    serial = np.empty((400, dim), np.float32)
    parallel = np.full((400, dim), np.nan, np.float32)
    k.pooled_serial(q.stored_bytes(data), ids, NONE, splits, q.MEAN, serial)
    k.pooled_parallel(q.stored_bytes(data), ids, NONE, splits, q.MEAN, parallel)
    np.testing.assert_array_equal(serial, parallel)


@pytest.mark.parametrize("storage", STORAGES)
def test_int32_ids(storage: str) -> None:
    data = _table(storage, 16)
    ids = np.array([1, 2, 3, 59], np.int32)
    out = np.empty((4, 16), np.float32)
    q.KERNELS[storage].gather_serial(q.stored_bytes(data), ids, out)
    np.testing.assert_array_equal(out, dequantize_rows(data, storage, 16)[ids])


# ---------------------------------------------------------------------------------------------
# Refusals: layout and width are checked before any row is read


def _every_entry(storage: str, data: np.ndarray, out: np.ndarray) -> list:  # type: ignore[type-arg]
    k = q.KERNELS[storage]
    ids = np.zeros(out.shape[0], np.int64)
    splits = np.array([0, out.shape[0]], np.int64)
    bag_out = out[:1]
    seq_out = out.reshape(1, out.shape[0], out.shape[1]) if out.ndim == 2 else out
    cols = np.zeros(out.shape[0], np.int64)
    return [
        lambda: k.gather_serial(data, ids, out),
        lambda: k.gather_parallel(data, ids, out),
        lambda: k.pooled_serial(data, ids, NONE, splits, q.SUM, bag_out),
        lambda: k.pooled_parallel(data, ids, NONE, splits, q.SUM, bag_out),
        lambda: k.sequence_serial(data, ids, splits, seq_out),
        lambda: k.sequence_parallel(data, ids, splits, seq_out),
        lambda: k.scatter_add_serial(data, ids, cols, splits, seq_out),
        lambda: k.scatter_add_parallel(data, ids, cols, splits, seq_out),
    ]


@pytest.mark.parametrize("storage", STORAGES)
def test_a_width_that_is_not_the_stored_rows_is_refused(storage: str) -> None:
    """An output of another width would place int8 / int4 scales at other bytes (and read
    16-bit rows past their end). int4 dims 15 and 16 share a stored width (the last high nibble
    of an odd dim is padding), so the widths tried differ in bytes for every type."""
    data = q.stored_bytes(_table(storage, 16))
    for dim in (13, 14, 17, 32):
        assert q.stored_width(q.KINDS[storage], dim) != data.shape[1]
        out = np.zeros((4, dim), np.float32)
        for call in _every_entry(storage, data, out):
            with pytest.raises(ValueError, match="exactly as wide"):
                call()


@pytest.mark.parametrize("storage", STORAGES)
def test_non_c_ordered_rows_are_refused(storage: str) -> None:
    base = q.stored_bytes(_table(storage, 16))
    fortran = np.asfortranarray(base)
    reversed_rows = base[::-1]
    for data in (fortran, reversed_rows):
        out = np.zeros((4, 16), np.float32)
        for call in _every_entry(storage, data, out):
            with pytest.raises(ValueError, match=LAYOUT_MESSAGE.split("(")[0].strip()):
                call()
    strided_out = np.zeros((4, 32), np.float32)[:, ::2]
    for call in _every_entry(storage, base, strided_out):
        with pytest.raises(ValueError, match="C-ordered"):
            call()


@pytest.mark.parametrize("storage", STORAGES)
def test_a_float64_output_is_refused(storage: str) -> None:
    data = q.stored_bytes(_table(storage, 16))
    out = np.zeros((4, 16), np.float64)
    for call in _every_entry(storage, data, out):
        with pytest.raises(ValueError, match="float32"):
            call()


# ---------------------------------------------------------------------------------------------
# Overflow: pooled.py's rules


def _int8_row(scale: float, bias: float, dim: int, code: int = 255) -> np.ndarray:
    row = np.zeros((1, dim + 8), np.uint8)
    row[0, :dim] = code
    row[0, dim : dim + 8] = np.array([scale, bias], "<f4").view(np.uint8)
    return row


@pytest.mark.parametrize("driver", ["serial", "parallel"])
@pytest.mark.parametrize("dim", [5, 16])
def test_a_bag_whose_sum_overflows_is_reported(driver: str, dim: int) -> None:
    big = np.float32(3e38) / np.float32(255)
    data = np.concatenate([_int8_row(float(big), 0.0, dim), _int8_row(1.0, 0.0, dim)])
    k = q.KERNELS["int8"]
    kernel = k.pooled_serial if driver == "serial" else k.pooled_parallel
    ids = np.array([1, 0, 0], np.int64)
    splits = np.array([0, 1, 3], np.int64)
    out = np.empty((2, dim), np.float32)
    first = kernel(data, ids, NONE, splits, q.SUM, out)
    assert 0 <= first <= 1
    assert q.pooled_overflow(data, q.INT8, ids, NONE, splits, q.SUM, out, first) == (1, 0)


@pytest.mark.parametrize("combiner", [q.MEAN, q.SQRTN])
def test_a_denominator_that_overflows_is_reported(combiner: int) -> None:
    data = _table("int8", 16)
    ids = np.array([1, 2], np.int64)
    weights = np.array([3e38, 3e38] if combiner == q.MEAN else [1e30, 1.0], np.float32)
    splits = np.array([0, 2], np.int64)
    out = np.empty((1, 16), np.float32)
    first = q.KERNELS["int8"].pooled_serial(data, ids, weights, splits, combiner, out)
    assert first == 0
    assert q.pooled_overflow(data, q.INT8, ids, weights, splits, combiner, out, first) == (0, 1)


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_non_finite_stored_values_are_the_tables_not_an_overflow(storage: str) -> None:
    data = _table(storage, 16)
    inf_bits = 0x7C00 if storage == "float16" else 0x7F80
    data = data.view(np.uint16).copy()
    data[2, 3] = inf_bits
    ids = np.array([1, 2], np.int64)
    splits = np.array([0, 1, 2], np.int64)
    out = np.empty((2, 16), np.float32)
    first = q.KERNELS[storage].pooled_serial(q.stored_bytes(data), ids, NONE, splits, q.SUM, out)
    assert first >= 0
    assert np.isinf(out[1, 3])
    kind = q.KINDS[storage]
    assert q.pooled_overflow(q.stored_bytes(data), kind, ids, NONE, splits, q.SUM, out, first) == (
        -1,
        0,
    )


def test_clean_bags_return_minus_one_and_overflow_refuses_unknown_kinds() -> None:
    data = _table("int4", 16)
    ids = np.array([1, 2], np.int64)
    splits = np.array([0, 2], np.int64)
    out = np.empty((1, 16), np.float32)
    assert q.KERNELS["int4"].pooled_serial(data, ids, NONE, splits, q.SUM, out) == -1
    with pytest.raises(ValueError, match="unknown storage kind"):
        q.pooled_overflow(data, 9, ids, NONE, splits, q.SUM, out, 0)
