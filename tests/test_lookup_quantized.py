"""Lookups on QuantizedTable tables through every path, against the same lookups on float32.

Two references:

* the float32 table the quantized one stands for, ``QuantizedTable.dequantize()``: gathers,
  sequences and sparse scatters must be bit-identical for every type, and so must float16 /
  bfloat16 bags (the kernels widen exactly and combine as the float32 kernels do). int8 / int4
  bags are factored (``(w s) q`` summed, ``Σ w b`` added once); each side is within ``(n + 3) u
  Σ |w_i| (|s_i q_ij| + |b_i|) / |denom|`` of the exact bag (kernel docstring), so they differ by
  at most twice that;
* the ORIGINAL float32 table: every output is within ``Σ |w_i| e_i / |denom|`` of the exact
  float64 bag of the original rows, ``e_i`` being :func:`embserve.storage.row_error_bound`, plus
  the same float32 rounding term. This proves the storage error bounds hold end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

import embserve as es
from embserve.errors import IdOutOfRangeError, InputError
from embserve.storage import QuantizedTable, codes, quantize_rows, row_error_bound, scale_bias

U = 2.0**-24
STORAGES = ("float16", "bfloat16", "int8", "int4")
ROWS = 300


def _original(dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + dim)
    x = rng.standard_normal((ROWS, dim)).astype(np.float32)
    x[::9] *= np.float32(20)
    return x


def _setup(storage: str, dim: int, combiner: str = "sum", **feature: object):  # type: ignore[no-untyped-def]
    x = _original(dim)
    data = quantize_rows(x, storage, table="t")
    qt = QuantizedTable(data, storage, dim, name="t")
    table = es.TableConfig(vocabulary_size=ROWS, dim=dim, name="t", combiner=combiner)
    fc = {"f": es.FeatureConfig(table=table, **feature)}  # type: ignore[arg-type]
    return x, data, qt, table, fc


def _magnitude(data: np.ndarray, storage: str, dim: int) -> np.ndarray:
    """Per element ``|s q| + |b|`` (int8 / int4) or ``|v|`` (16-bit), float64."""
    if storage in ("int8", "int4"):
        s, b = scale_bias(data, storage, dim)
        sq = np.abs(codes(data, storage, dim) * s[:, None].astype(np.float64))
        return sq + np.abs(b.astype(np.float64))[:, None]
    qt = QuantizedTable(data, storage, dim)
    return np.abs(qt.dequantize().astype(np.float64))


def _bag_bounds(data, storage, dim, x, ids, weights, splits, combiner):  # type: ignore[no-untyped-def]
    """Per bag and element: (exact float64 bag of the ORIGINAL rows, bound against it, float32
    rounding bound of one lookup against the exact bag of the stored values)."""
    mag = _magnitude(data, storage, dim)
    err = row_error_bound(x, data, storage)
    if err.ndim == 1:
        err = np.broadcast_to(err[:, None], x.shape)
    nb = len(splits) - 1
    exact = np.zeros((nb, dim))
    total = np.zeros((nb, dim))
    rounding = np.zeros((nb, dim))
    for i in range(nb):
        sl = slice(splits[i], splits[i + 1])
        n = sl.stop - sl.start
        rows = ids[sl]
        w = np.ones(n) if weights is None else weights[sl].astype(np.float64)
        if combiner == "sum":
            denom = 1.0
        elif weights is None:
            denom = float(n) if combiner == "mean" else float(np.float32(np.sqrt(n)))
        else:
            acc = np.float32(0)
            for v in weights[sl]:
                acc = np.float32(acc + (v if combiner == "mean" else v * v))
            denom = float(acc if combiner == "mean" else np.float32(np.sqrt(acc)))
        if n == 0 or denom == 0:
            continue
        k = n + 3
        exact[i] = (x[rows].astype(np.float64) * w[:, None]).sum(axis=0) / denom
        scaled = np.abs(w)[:, None]
        rounding[i] = k * U * (scaled * mag[rows]).sum(axis=0) / abs(denom) * (1 + 4 * k * U)
        total[i] = (scaled * err[rows]).sum(axis=0) / abs(denom) + rounding[i] + 2.0**-149
    return exact, total, rounding


def _ragged(ids: np.ndarray, splits: np.ndarray) -> es.RaggedTensor:
    return es.RaggedTensor.from_row_splits(ids, splits)


def _bags(seed: int, nbags: int = 40, most: int = 30):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, most + 1, size=nbags)
    lengths[::7] = 0
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, ROWS, size=int(splits[-1])).astype(np.int64)
    weights = rng.uniform(0.1, 2.0, size=ids.shape[0]).astype(np.float32)
    return ids, splits, weights


# ---------------------------------------------------------------------------------------------
# Gathers: bit-identical


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dim", [1, 3, 16, 64, 100])
def test_dense_ids_are_bit_identical_to_the_dequantized_table(storage: str, dim: int) -> None:
    _, _, qt, table, fc = _setup(storage, dim)
    ids = np.random.default_rng(dim).integers(0, ROWS, size=(7, 5))
    for id_dtype in (np.int32, np.int64):
        got = es.serving_embedding_lookup({"f": ids.astype(id_dtype)}, None, {table: qt}, fc)
        want = es.serving_embedding_lookup(
            {"f": ids.astype(id_dtype)}, None, {table: qt.dequantize()}, fc
        )
        assert got["f"].dtype == np.float32
        assert got["f"].shape == (7, 5, dim)
        np.testing.assert_array_equal(got["f"].view(np.uint32), want["f"].view(np.uint32))


@pytest.mark.parametrize("storage", STORAGES)
def test_a_large_gather_runs_in_parallel_and_matches(storage: str) -> None:
    _, _, qt, table, fc = _setup(storage, 64)
    ids = np.random.default_rng(1).integers(0, ROWS, size=2048)  # over PARALLEL_MIN_FLOATS
    got = es.serving_embedding_lookup({"f": ids}, None, {table: qt}, fc)["f"]
    want = es.serving_embedding_lookup({"f": ids}, None, {table: qt.dequantize()}, fc)["f"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dim", [3, 16])
def test_sequences_from_ragged_and_sparse_are_bit_identical(storage: str, dim: int) -> None:
    _, _, qt, table, fc = _setup(storage, dim, max_sequence_length=4)
    ids, splits, _ = _bags(dim, nbags=20, most=8)
    ragged = _ragged(ids, splits)
    rows = np.repeat(np.arange(20), np.diff(splits))
    cols = np.arange(ids.shape[0]) - splits[rows]
    cols[::5] = 0  # duplicate positions: the sparse sequence path adds them
    sparse = es.SparseTensor(np.stack([rows, cols], axis=1), ids, (20, 10))
    for inputs in ({"f": ragged}, {"f": sparse}):
        got = es.serving_embedding_lookup(inputs, None, {table: qt}, fc)["f"]
        want = es.serving_embedding_lookup(inputs, None, {table: qt.dequantize()}, fc)["f"]
        assert got.shape == (20, 4, dim)
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Bags: every path, combiner and weighting


def _paths(ids, splits, weights, weighted):  # type: ignore[no-untyped-def]
    """(name, inputs, weights, bag splits the output rows follow) for the ragged, validated
    sparse and plain sparse paths over the same bags."""
    nb = len(splits) - 1
    rows = np.repeat(np.arange(nb), np.diff(splits))
    cols = np.arange(ids.shape[0]) - splits[rows]
    index = np.stack([rows, cols], axis=1)
    dense_shape = (nb, int(max(np.diff(splits).max(), 1)))
    sparse = es.SparseTensor(index, ids, dense_shape)
    sparse_w = es.SparseTensor(index, weights, dense_shape) if weighted else None
    ragged_w = _ragged(weights, splits) if weighted else None
    # The plain path's output has 1 + the largest row index rows: trailing empty bags vanish.
    last = int(rows[-1]) + 1 if rows.shape[0] else 0
    return [
        ("ragged", {"f": _ragged(ids, splits)}, None if ragged_w is None else {"f": ragged_w}, nb),
        ("sparse", {"f": sparse}, None if sparse_w is None else {"f": sparse_w}, nb),
        ("plain", {"f": sparse}, None if sparse_w is None else {"f": sparse_w}, last),
    ]


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dim", [1, 3, 16, 64, 100])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("weighted", [False, True])
def test_bags_on_every_path_within_the_derived_bounds(
    storage: str, dim: int, combiner: str, weighted: bool
) -> None:
    ids, splits, weights = _bags(dim + 3 * weighted)
    for name, inputs, w, nb in _paths(ids, splits, weights, weighted):
        validate = name != "plain"
        x, data, qt, table, fc = _setup(
            storage, dim, combiner, validate_weights_and_indices=validate
        )
        got = es.serving_embedding_lookup(inputs, w, {table: qt}, fc)["f"]
        f32 = es.serving_embedding_lookup(inputs, w, {table: qt.dequantize()}, fc)["f"]
        assert got.dtype == np.float32
        assert got.shape == (nb, dim)
        exact, total, rounding = _bag_bounds(
            data, storage, dim, x, ids, weights if weighted else None, splits, combiner
        )
        if storage in ("float16", "bfloat16"):
            np.testing.assert_array_equal(got, f32, err_msg=name)
        else:
            diff = np.abs(got.astype(np.float64) - f32)
            assert (diff <= 2 * rounding[:nb] + 2.0**-149).all(), name
        # End to end: against the original float32 rows.
        error = np.abs(got.astype(np.float64) - exact[:nb])
        worst = np.unravel_index(np.argmax(error - total[:nb]), error.shape)
        assert (error <= total[:nb]).all(), (name, worst, error[worst], total[:nb][worst])


@pytest.mark.parametrize("storage", STORAGES)
def test_a_large_bag_lookup_runs_in_parallel_and_matches_serial_rules(storage: str) -> None:
    ids, splits, weights = _bags(5, nbags=1500, most=40)  # over PARALLEL_MIN_FLOATS floats
    x, data, qt, table, fc = _setup(storage, 64, "mean")
    inputs = {"f": _ragged(ids, splits)}
    got = es.serving_embedding_lookup(inputs, {"f": _ragged(weights, splits)}, {table: qt}, fc)
    exact, total, _ = _bag_bounds(data, storage, 64, x, ids, weights, splits, "mean")
    assert (np.abs(got["f"].astype(np.float64) - exact) <= total).all()


@pytest.mark.parametrize("storage", STORAGES)
def test_output_shape_applies_to_quantized_bags_and_sequences(storage: str) -> None:
    ids, splits, _ = _bags(2, nbags=4, most=5)
    for shape in ([2, 2], [8]):  # a reshape of the batch, or TF's sequence reading
        _, _, qt, table, fc = _setup(storage, 16, "mean", output_shape=shape)
        inputs = {"f": _ragged(ids, splits)}
        got = es.serving_embedding_lookup(inputs, None, {table: qt}, fc)["f"]
        want = es.serving_embedding_lookup(inputs, None, {table: qt.dequantize()}, fc)["f"]
        assert got.shape == want.shape == (*shape, 16)
        if storage in ("float16", "bfloat16") or shape == [8]:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("storage", STORAGES)
def test_validated_sparse_drops_negative_ids_and_non_positive_weights(storage: str) -> None:
    _, _, qt, table, fc = _setup(storage, 16, "mean")
    index = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    sp = es.SparseTensor(index, np.array([-1, 5, 7, 8]), (2, 2))
    w = es.SparseTensor(index, np.array([1.0, 2.0, 0.0, 3.0], np.float32), (2, 2))
    got = es.serving_embedding_lookup({"f": sp}, {"f": w}, {table: qt}, fc)["f"]
    want = es.serving_embedding_lookup({"f": sp}, {"f": w}, {table: qt.dequantize()}, fc)["f"]
    # What is left: bag 0 = id 5 (weight 2), bag 1 = id 8 (weight 3).
    kept = np.array([5, 8]), np.array([0, 1, 2]), np.array([2.0, 3.0], np.float32)
    x = _original(16)
    _, _, rounding = _bag_bounds(qt.data, storage, 16, x, *kept[:1], kept[2], kept[1], "mean")
    assert (np.abs(got.astype(np.float64) - want) <= 2 * rounding).all()


# ---------------------------------------------------------------------------------------------
# Errors, the fused dense group, TPUEmbeddingForServing


@pytest.mark.parametrize("storage", STORAGES)
def test_ids_out_of_range_name_feature_table_row_and_position(storage: str) -> None:
    _, _, qt, table, fc = _setup(storage, 8)
    cases = [
        {"f": np.array([[1, 2], [3, ROWS]])},
        {"f": _ragged(np.array([1, ROWS + 5]), np.array([0, 1, 2]))},
        {"f": es.SparseTensor(np.array([[0, 0], [1, 0]]), np.array([2, -1]), (2, 1))},
    ]
    for inputs in cases:
        cfg = fc["f"]
        cfg.validate_weights_and_indices = isinstance(inputs["f"], es.RaggedTensor)
        with pytest.raises(IdOutOfRangeError, match=r"feature 'f' \(table 't'\)"):
            es.serving_embedding_lookup(inputs, None, {table: qt}, fc)
    with pytest.raises(IdOutOfRangeError, match="row 1, position 1"):
        es.serving_embedding_lookup({"f": np.array([[1, 2], [3, ROWS]])}, None, {table: qt}, fc)


def test_a_quantized_table_whose_rows_were_reshaped_is_refused() -> None:
    _, data, qt, table, fc = _setup("int8", 16)
    data.shape = (ROWS * 2, 12)  # the caller's array object, reshaped in place
    with pytest.raises(InputError, match="no longer have the layout"):
        es.serving_embedding_lookup({"f": np.array([1])}, None, {table: qt}, fc)


def test_many_dense_features_mixing_quantized_and_float32_tables() -> None:
    """The fused dense gather reads float32 tables only: a request with a quantized table
    takes the general path, and every feature is still right."""
    x = _original(16)
    tables = [es.TableConfig(vocabulary_size=ROWS, dim=16, name=f"t{i}") for i in range(3)]
    fc = {f"f{i}": es.FeatureConfig(table=t) for i, t in enumerate(tables)}
    qt = QuantizedTable(quantize_rows(x, "int8"), "int8", 16)
    values = {tables[0]: x, tables[1]: qt, tables[2]: x}
    ids = {f"f{i}": np.array([i, 5, 299]) for i in range(3)}
    got = es.serving_embedding_lookup(ids, None, values, fc)
    np.testing.assert_array_equal(got["f0"], x[[0, 5, 299]])
    np.testing.assert_array_equal(got["f1"], qt.dequantize()[[1, 5, 299]])
    np.testing.assert_array_equal(got["f2"], x[[2, 5, 299]])


@pytest.mark.parametrize("storage", STORAGES)
def test_tpu_embedding_for_serving_serves_quantized_tables(storage: str) -> None:
    x = _original(16)
    table = es.TableConfig(vocabulary_size=ROWS, dim=16, name="t", combiner="sqrtn")
    fc = {
        "bag": es.FeatureConfig(table=table),
        "seq": es.FeatureConfig(table=table, max_sequence_length=3),
    }
    emb = es.TPUEmbeddingForServing(fc, optimizer=None)
    qt = QuantizedTable(quantize_rows(x, storage), storage, 16, name="t")
    emb._set_variables({"t": {"parameters": qt}})
    assert emb.embedding_tables[table] is qt
    ids, splits, _ = _bags(9, nbags=10, most=6)
    inputs = {"bag": _ragged(ids, splits), "seq": _ragged(ids, splits)}
    got = emb(inputs)
    plain = es.TPUEmbeddingForServing(fc, optimizer=None)
    plain._set_variables({"t": {"parameters": qt.dequantize()}})
    want = plain(inputs)
    np.testing.assert_array_equal(got["seq"], want["seq"])
    if storage in ("float16", "bfloat16"):
        np.testing.assert_array_equal(got["bag"], want["bag"])
    else:
        _, _, rounding = _bag_bounds(qt.data, storage, 16, x, ids, None, splits, "sqrtn")
        assert (np.abs(got["bag"].astype(np.float64) - want["bag"]) <= 2 * rounding).all()
    # Dense ids on the same object (the fused path declines, the general path serves).
    dense = emb({"bag": np.array([0, 7, 299])})
    np.testing.assert_array_equal(dense["bag"], qt.dequantize()[[0, 7, 299]])
