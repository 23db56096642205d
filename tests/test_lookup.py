"""Lookups: embserve against tests/reference.py (the spec as code) and SEMANTICS.md's examples.

* worked examples: the numbers printed in SEMANTICS.md §3–§5, checked against BOTH the
  reference and embserve;
* a grid over input kind × combiner × weighted × max_sequence_length × output_shape × nesting;
* hypothesis properties over random tables, ids, bags and (finite) weights;
* every error of SEMANTICS §0 / §3 / §4, with IdOutOfRangeError's attributes;
* the input containers (RaggedTensor constructors, SparseTensor checks, TF-like duck types).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embserve as es
from tests.reference import (
    RefIdOutOfRangeError,
    RefInputError,
    flatten_with_paths,
    reference_lookup,
    reference_serving_lookup,
)

COMBINERS = ("sum", "mean", "sqrtn")
TOL = {"rtol": 1e-5, "atol": 1e-5}


# ---------------------------------------------------------------------------------------------
# Helpers


class ArrayInit:
    """A table initializer that returns a fixed array (called as ``init(shape, dtype=...)``)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.asarray(array, dtype=np.float32)

    def __call__(self, shape: Any, dtype: Any = None) -> np.ndarray:
        assert tuple(shape) == self.array.shape
        return self.array.copy()


def rowid_array(vocab: int = 10, dim: int = 2) -> np.ndarray:
    return np.repeat(np.arange(vocab, dtype=np.float32)[:, None], dim, axis=1)


def rowid_feature(combiner: str = "sum", vocab: int = 10, dim: int = 2, **fc: Any) -> Any:
    table = es.TableConfig(
        vocab, dim, initializer=es.RowIdInitializer(), combiner=combiner, name="rowid"
    )
    return es.FeatureConfig(table, **fc)


def sparse(indices: Any, values: Any, dense_shape: Any, dtype: Any = np.int64) -> Any:
    rank = len(dense_shape)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, rank)
    return es.SparseTensor(idx, np.asarray(values, dtype=dtype), np.asarray(dense_shape))


def weights_like(ids: Any, values: Any, dtype: Any = np.float32) -> Any:
    """Weights for a SparseTensor or RaggedTensor of ids (same indices / splits)."""
    if isinstance(ids, es.SparseTensor):
        return es.SparseTensor(ids.indices, np.asarray(values, dtype=dtype), ids.dense_shape)
    return es.RaggedTensor.from_row_splits(np.asarray(values, dtype=dtype), ids.row_splits)


def ragged(rows: list[list[int]], dtype: Any = np.int64) -> Any:
    lengths = [len(r) for r in rows]
    values = np.asarray([v for r in rows for v in r], dtype=dtype)
    return es.RaggedTensor.from_row_lengths(values, lengths)


def es_error_for(ref_exc: BaseException) -> type[BaseException]:
    """The embserve class expected where the reference raised ``ref_exc``."""
    if isinstance(ref_exc, RefIdOutOfRangeError):
        return es.IdOutOfRangeError
    if isinstance(ref_exc, RefInputError):
        return es.InputError
    return type(ref_exc)


def assert_id_error(err: Any, feature: str, table: str, row: int, position: Any, id_: int, n: int):
    got = (err.feature, err.table, err.row, err.position, err.id, err.num_rows)
    assert got == (feature, table, row, position, id_, n), f"IdOutOfRangeError attributes {got}"


def _assert_same_containers(got: Any, expected: Any, path: str = "") -> None:
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray), f"{path!r}: expected an ndarray, got {type(got)}"
        return
    assert type(got) is type(expected) or (
        isinstance(got, Mapping) and isinstance(expected, Mapping)
    ), f"container at {path!r}: {type(got).__name__} != {type(expected).__name__}"
    if isinstance(expected, Mapping):
        assert list(got) == list(expected), f"keys at {path!r}: {list(got)} != {list(expected)}"
        for k in expected:
            _assert_same_containers(got[k], expected[k], f"{path}/{k}")
    else:
        assert len(got) == len(expected), f"length at {path!r}"
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_same_containers(g, e, f"{path}/{i}")


def assert_same_outputs(got: Any, expected: Any) -> None:
    """Same structure, float32 arrays of the same shapes, close values; names the first path
    that differs."""
    _assert_same_containers(got, expected)
    got_flat = flatten_with_paths(got)
    exp_flat = flatten_with_paths(expected)
    assert [p for p, _ in got_flat] == [p for p, _ in exp_flat]
    for (path, g), (_, e) in zip(got_flat, exp_flat, strict=True):
        assert g.dtype == np.float32, f"feature {path!r}: dtype {g.dtype}"
        assert g.shape == e.shape, f"feature {path!r}: shape {g.shape}, expected {e.shape}"
        if not np.allclose(g, e, **TOL):
            where = np.argwhere(~np.isclose(g, e, **TOL))[0]
            raise AssertionError(
                f"first differing feature {path!r} at {tuple(where)}: got {g[tuple(where)]}, "
                f"expected {e[tuple(where)]}\n got {g!r}\n expected {e!r}"
            )


def compare_with_reference(
    run: Callable[[], Any], features: Any, weights: Any, tables: Any, config: Any
) -> Any:
    """Run embserve and the reference; same outputs, or the corresponding error."""
    try:
        expected = reference_serving_lookup(features, weights, tables, config)
    except (ValueError, TypeError, KeyError) as ref_exc:
        cls = es_error_for(ref_exc)
        with pytest.raises(cls) as info:
            run()
        if isinstance(ref_exc, RefIdOutOfRangeError):
            e = ref_exc
            assert_id_error(info.value, e.feature, e.table, e.row, e.position, e.id, e.num_rows)
        if cls is ValueError:
            assert isinstance(info.value, es.EmbserveError), repr(info.value)
        return None
    got = run()
    assert_same_outputs(got, expected)
    return got


def check_example(
    expected: Any, inp: Any, weight: Any = None, *, combiner: str = "sum", **fc: Any
) -> None:
    """A SEMANTICS.md worked example on the row-id table (row r is [r, r]): ``expected`` is the
    first column of the output; both the reference and embserve must give it."""
    exp = np.asarray(expected, dtype=np.float64)
    exp = np.repeat(exp[..., None], 2, axis=-1)
    feature = rowid_feature(combiner, **fc)
    results = {"reference": reference_lookup(feature, rowid_array(), inp, weight)}
    results["embserve"] = es.TPUEmbeddingForServing(feature, None)(inp, weight)
    for who, out in results.items():
        assert isinstance(out, np.ndarray), who
        assert out.dtype == np.float32, who
        assert out.shape == exp.shape, f"{who}: shape {out.shape}, expected {exp.shape}"
        np.testing.assert_allclose(out, exp, err_msg=who, **TOL)


def check_error(
    cls: type[BaseException],
    inp: Any,
    weight: Any = None,
    *,
    match: str | None = None,
    combiner: str = "sum",
    **fc: Any,
) -> BaseException:
    """Both the reference and embserve raise: embserve ``cls``, the reference its counterpart."""
    feature = rowid_feature(combiner, **fc)
    with pytest.raises((ValueError, TypeError, KeyError)) as ref_info:
        reference_lookup(feature, rowid_array(), inp, weight)
    assert issubclass(cls, es_error_for(ref_info.value)), (cls, ref_info.value)
    emb = es.TPUEmbeddingForServing(feature, None)
    with pytest.raises(cls, match=match) as info:
        emb(inp, weight)
    if issubclass(cls, ValueError):
        assert isinstance(info.value, es.EmbserveError), repr(info.value)
    return info.value


# ---------------------------------------------------------------------------------------------
# SEMANTICS.md worked examples (row-id table, vocabulary 10, dim 2)


class TestCombinerFormulas:
    def test_duplicates_count_once_per_occurrence(self):
        check_example([1], ragged([[1, 1, 1]]), combiner="mean")
        check_example([5 / math.sqrt(3)], ragged([[1, 1, 3]]), combiner="sqrtn")


class TestDenseExamples:
    def test_scalar_id(self):
        check_example(3, np.int64(3))
        check_example(3, np.array(3, dtype=np.int32))

    def test_empty(self):
        check_example(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int32))
        check_example(np.zeros(0), np.zeros(0, dtype=np.int64))

    def test_rank2_is_not_combined(self):
        check_example([[1, 2]], np.array([[1, 2]]), combiner="sum")

    def test_rank3(self):
        ids = np.arange(8, dtype=np.int32).reshape(2, 2, 2)
        check_example(ids, ids, combiner="mean")

    def test_output_shape_and_validate_ignored(self):
        check_example([1, 2], np.array([1, 2]), output_shape=[7])
        check_example([1, 2], np.array([1, 2]), validate_weights_and_indices=False)

    def test_sequence_feature_rejects_dense(self):
        check_error(ValueError, np.array([1]), match="sequence", max_sequence_length=2)

    def test_python_ints_and_lists_are_dense_ids(self):
        # embserve's extension: TensorFlow raises here (a list is structure there).
        check_example(4, 4)
        check_example([[1, 2], [3, 4]], [[1, 2], [3, 4]])
        tc = es.TableConfig(10, 2, initializer=es.RowIdInitializer(), name="t")
        emb = es.TPUEmbeddingForServing({"f": es.FeatureConfig(tc)}, None)
        out = emb({"f": [1, 2]})
        np.testing.assert_array_equal(out["f"], [[1, 1], [2, 2]])


# The §4.3 example: batch 4; row 0 ids [1, 3] weights [2, 0.5]; row 2 id 2 weight 3.
EX_IDS = sparse([[0, 0], [0, 1], [2, 0]], [1, 3, 2], [4, 2])
EX_W = weights_like(EX_IDS, [2, 0.5, 3])
EX_RESULTS = {
    "sum": ([4, 0, 2, 0], [3.5, 0, 6, 0]),
    "mean": ([2, 0, 2, 0], [1.4, 0, 2, 0]),
    "sqrtn": ([2.82843, 0, 2, 0], [1.69775, 0, 2, 0]),
}


class TestSparseValidatedExamples:
    @pytest.mark.parametrize("combiner", COMBINERS)
    def test_table(self, combiner):
        plain, weighted = EX_RESULTS[combiner]
        check_example(plain, EX_IDS, combiner=combiner)
        check_example(weighted, EX_IDS, EX_W, combiner=combiner)

    @pytest.mark.parametrize("combiner", COMBINERS)
    def test_negative_ids_dropped(self, combiner):
        check_example(
            [3, 0, 2], sparse([[0, 0], [0, 1], [2, 0]], [-1, 3, 2], [3, 2]), combiner=combiner
        )

    @pytest.mark.parametrize(
        ("combiner", "expected"), [("sum", [1.5, 0, -6]), ("mean", [3, 0, 0]), ("sqrtn", [3, 0, 0])]
    )
    def test_non_positive_weights_dropped_except_sum(self, combiner, expected):
        ids = sparse([[0, 0], [0, 1], [2, 0]], [1, 3, 2], [3, 2])
        check_example(expected, ids, weights_like(ids, [0, 0.5, -3]), combiner=combiner)

    def test_negative_weight_dropped_in_mean(self):
        ids = sparse([[0, 0], [0, 1]], [1, 3], [1, 2])
        check_example([1], ids, weights_like(ids, [1, -1]), combiner="mean")

    def test_empty_batch_and_empty_rows(self):
        check_example(np.zeros(0), sparse([], [], [0, 3]))
        check_example([0, 0, 0], sparse([], [], [3, 5]), combiner="mean")
        check_example([0, 0, 5], sparse([[2, 1]], [5], [3, 5]))

    def test_unsorted_indices_are_fine(self):
        check_example([0, 1, 2], sparse([[2, 0], [0, 0], [1, 0]], [2, 0, 1], [3, 2]))

    def test_duplicate_indices_are_two_members(self):
        check_example([4], sparse([[0, 0], [0, 0]], [1, 3], [1, 2]))

    def test_column_beyond_dense_shape_is_accepted(self):
        check_example([3, 0], sparse([[0, 7]], [3], [2, 2]))

    def test_row_beyond_dense_shape_is_an_input_error(self):
        check_error(es.InputError, sparse([[5, 0]], [1], [3, 2]))

    def test_rank3(self):
        ids = sparse([[0, 0, 0], [0, 0, 1], [1, 1, 0]], [1, 2, 3], [2, 2, 3])
        check_example([[3, 0], [0, 3]], ids)
        check_example([[1.75, 0], [0, 3]], ids, weights_like(ids, [1, 3, 2]), combiner="mean")

    def test_rank4(self):
        ids = sparse([[0, 1, 0, 0], [0, 1, 0, 1]], [2, 5], [1, 2, 1, 2])
        check_example([[[0], [7]]], ids)

    def test_rank1_is_one_bag(self):
        check_example(4, sparse([[0], [2]], [1, 3], [4]))

    @pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
    def test_weights_must_be_float32(self, dtype):
        ids = sparse([[0, 0]], [3], [1, 2])
        check_error(ValueError, ids, weights_like(ids, [2], dtype=dtype))

    def test_id_too_large_raises(self):
        for combiner in COMBINERS:
            check_error(
                es.IdOutOfRangeError, sparse([[0, 0], [1, 0]], [1, 10], [2, 2]), combiner=combiner
            )


class TestSparsePlainExamples:
    V: ClassVar[dict[str, bool]] = {"validate_weights_and_indices": False}

    @pytest.mark.parametrize("combiner", COMBINERS)
    def test_trailing_empty_rows_vanish(self, combiner):
        plain, weighted = EX_RESULTS[combiner]
        check_example(plain[:3], EX_IDS, combiner=combiner, **self.V)
        check_example(weighted[:3], EX_IDS, EX_W, combiner=combiner, **self.V)

    def test_no_entries_no_rows(self):
        check_example(np.zeros(0), sparse([], [], [3, 5]), **self.V)
        check_example(np.zeros(0), sparse([], [], [0, 5]), **self.V)

    def test_row_beyond_dense_shape_extends_output(self):
        check_example([0, 0, 0, 0, 0, 4], sparse([[5, 0]], [4], [3, 2]), **self.V)

    def test_unsorted_rows_raise(self):
        check_error(es.InputError, sparse([[1, 0], [0, 0]], [1, 2], [2, 2]), **self.V)

    def test_column_order_does_not_matter(self):
        check_example([4], sparse([[0, 1], [0, 0]], [1, 3], [1, 2]), **self.V)

    def test_negative_id_raises(self):
        check_error(es.IdOutOfRangeError, sparse([[0, 0]], [-1], [1, 2]), **self.V)

    @pytest.mark.parametrize(
        ("combiner", "expected"),
        [("sum", [1.5, 0, -6]), ("mean", [3, 0, 2]), ("sqrtn", [3, 0, -2])],
    )
    def test_weights_used_as_given(self, combiner, expected):
        ids = sparse([[0, 0], [0, 1], [2, 0]], [1, 3, 2], [3, 2])
        check_example(expected, ids, weights_like(ids, [0, 0.5, -3]), combiner=combiner, **self.V)

    def test_weight_sum_zero_gives_zero(self):
        ids = sparse([[0, 0], [0, 1]], [1, 3], [1, 2])
        check_example([0], ids, weights_like(ids, [1, -1]), combiner="mean", **self.V)

    @pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
    def test_weights_are_cast(self, dtype):
        ids = sparse([[0, 0]], [3], [1, 2])
        check_example([6], ids, weights_like(ids, [2], dtype=dtype), **self.V)

    def test_rank1_each_position_is_a_bag(self):
        check_example([1, 0, 3], sparse([[0], [2]], [1, 3], [4]), **self.V)


class TestSparseSequenceExamples:
    IDS = sparse([[0, 0], [0, 1], [0, 2], [2, 1]], [1, 2, 3, 4], [3, 5])

    def test_window(self):
        check_example([[1, 2], [0, 0], [0, 4]], self.IDS, max_sequence_length=2)
        check_example([[1, 2, 3, 0], [0, 0, 0, 0], [0, 4, 0, 0]], self.IDS, max_sequence_length=4)

    def test_validate_false_is_the_same(self):
        check_example(
            [[1, 2], [0, 0], [0, 4]],
            self.IDS,
            max_sequence_length=2,
            validate_weights_and_indices=False,
        )

    def test_empty_batch(self):
        check_example(np.zeros((0, 3)), sparse([], [], [0, 4]), max_sequence_length=3)

    def test_duplicates_add(self):
        check_example([[4, 0]], sparse([[0, 0], [0, 0]], [1, 3], [1, 2]), max_sequence_length=2)

    def test_unsorted_is_fine(self):
        ids = sparse([[2, 1], [0, 0], [0, 1]], [4, 1, 2], [3, 5])
        check_example([[1, 2], [0, 0], [0, 4]], ids, max_sequence_length=2)

    def test_ids_outside_the_window_are_never_checked(self):
        check_example([[1]], sparse([[0, 0], [0, 1]], [1, 10], [1, 2]), max_sequence_length=1)
        check_example([[1], [0]], sparse([[0, 0], [5, 0]], [1, -3], [2, 2]), max_sequence_length=1)

    def test_bad_id_in_the_window_raises(self):
        check_error(es.IdOutOfRangeError, sparse([[0, 0]], [-1], [1, 3]), max_sequence_length=1)
        check_error(es.IdOutOfRangeError, sparse([[0, 0]], [10], [1, 3]), max_sequence_length=1)

    def test_rank3_ignores_max_sequence_length(self):
        ids = sparse([[0, 0, 0], [0, 1, 0]], [1, 2], [1, 2, 2])
        check_example([[1, 2]], ids, max_sequence_length=3)

    def test_output_shape_set_means_combining(self):
        check_example([6, 0, 4], self.IDS, max_sequence_length=2, output_shape=[])
        check_example(
            [6, 0, 4],
            self.IDS,
            max_sequence_length=2,
            output_shape=[3],
            validate_weights_and_indices=False,
        )


RAGGED_EX = [[1, 3], [], [2]]
RAGGED_W = [[2, 0.5], [], [3]]


class TestRaggedExamples:
    @pytest.mark.parametrize("combiner", COMBINERS)
    def test_combine(self, combiner):
        plain, weighted = EX_RESULTS[combiner]
        ids = ragged(RAGGED_EX)
        check_example(plain[:3], ids, combiner=combiner)
        check_example(weighted[:3], ids, weights_like(ids, [2, 0.5, 3]), combiner=combiner)
        check_example(plain[:3], ids, combiner=combiner, validate_weights_and_indices=False)

    @pytest.mark.parametrize(
        ("combiner", "expected"),
        [("sum", [1.5, 0, -6]), ("mean", [3, 0, 2]), ("sqrtn", [3, 0, -2])],
    )
    def test_nothing_is_pruned(self, combiner, expected):
        ids = ragged(RAGGED_EX)
        check_example(expected, ids, weights_like(ids, [0, 0.5, -3]), combiner=combiner)

    @pytest.mark.parametrize(
        ("combiner", "expected"), [("sum", -2), ("mean", 0), ("sqrtn", -1.41421)]
    )
    def test_cancelling_weights(self, combiner, expected):
        ids = ragged([[1, 3]])
        check_example([expected], ids, weights_like(ids, [1, -1]), combiner=combiner)

    def test_trailing_empty_rows_kept(self):
        check_example([3, 0, 0], ragged([[3], [], []]), combiner="mean")

    def test_empty_batch(self):
        check_example(np.zeros(0), ragged([]))
        check_example(np.zeros((0, 2)), ragged([]), max_sequence_length=2)

    def test_sequence(self):
        ids = ragged([[1, 2, 3], [], [4]])
        check_example([[1, 2], [0, 0], [4, 0]], ids, max_sequence_length=2)
        check_example([[1, 2, 3, 0], [0, 0, 0, 0], [4, 0, 0, 0]], ids, max_sequence_length=4)

    def test_sequence_checks_ids_beyond_the_window(self):
        check_error(es.IdOutOfRangeError, ragged([[1, 10]]), max_sequence_length=1)

    def test_negative_id_raises(self):
        check_error(es.IdOutOfRangeError, ragged([[1, -1]]))

    OS_IDS: ClassVar[list[list[int]]] = [[1, 3], [], [2], [4, 5, 6]]

    def test_output_shape_equal_batch_combines(self):
        check_example([[4, 0], [2, 15]], ragged(self.OS_IDS), output_shape=[2, 2])
        check_example([4, 0, 2, 15], ragged(self.OS_IDS), output_shape=[4], max_sequence_length=3)

    def test_output_shape_equal_batch_honours_weights(self):
        ids = ragged(self.OS_IDS)
        w = weights_like(ids, [1, 2, 3, 1, 1, 2])
        check_example([[7, 0], [6, 21]], ids, w, output_shape=[2, 2])

    def test_output_shape_multiple_of_batch_is_sequence(self):
        ids = ragged(self.OS_IDS)
        check_example([1, 3, 0, 0, 2, 0, 4, 5], ids, output_shape=[8], combiner="mean")
        check_example([[1, 3], [0, 0], [2, 0], [4, 5]], ids, output_shape=[4, 2])
        check_example([[1, 3, 0, 0], [2, 0, 4, 5]], ids, output_shape=[2, 4])
        check_example([1, 3, 0, 0, 2, 0, 4, 5], ids, output_shape=[8], max_sequence_length=1)

    def test_output_shape_sequence_ignores_weights(self):
        ids = ragged(self.OS_IDS)
        w = weights_like(ids, [9, 9, 9, 9, 9, 9])
        check_example([1, 3, 0, 0, 2, 0, 4, 5], ids, w, output_shape=[8], combiner="sqrtn")

    @pytest.mark.parametrize("output_shape", [[6], [3], [], [0], [5]])
    def test_output_shape_not_a_multiple(self, output_shape):
        check_error(ValueError, ragged(self.OS_IDS), match="factor", output_shape=output_shape)

    def test_empty_output_shape_single_row(self):
        check_example(4, ragged([[1, 3]]), output_shape=[])

    def test_empty_batch_with_output_shape(self):
        check_error(es.InputError, ragged([]), output_shape=[4])

    def test_empty_batch_with_empty_output_shape(self):
        # TensorFlow 2.21: output_shape [0] with batch 0 is "P == B", so it combines; shape (0, D).
        check_example(np.zeros(0), ragged([]), output_shape=[0])

    def test_weight_with_output_shape_and_sequence_length(self):
        ids = ragged(self.OS_IDS)
        w = weights_like(ids, [1] * 6)
        check_error(ValueError, ids, w, match="sequence", output_shape=[4], max_sequence_length=3)


class TestServingFunctionExamples:
    """§5, with the table arange(20).reshape(10, 2) and the sum combiner."""

    def setup_method(self):
        self.table_config = es.TableConfig(10, 2, combiner="sum", name="t")
        self.table = np.arange(20, dtype=np.float32).reshape(10, 2)

    def lookup(self, inp, weight=None, **fc):
        config = {"f": es.FeatureConfig(self.table_config, **fc)}
        tables = {self.table_config: self.table}
        weights = None if weight is None else {"f": weight}
        ref = reference_serving_lookup({"f": inp}, weights, tables, config)["f"]
        got = es.serving_embedding_lookup({"f": inp}, weights, tables, config)["f"]
        assert got.dtype == np.float32
        np.testing.assert_allclose(ref, got, **TOL)
        return got

    def test_dense(self):
        np.testing.assert_array_equal(self.lookup(np.array([1, 2])), [[2, 3], [4, 5]])

    def test_sparse_weighted(self):
        ids = sparse([[0, 0], [0, 1]], [1, 2], [1, 2])
        got = self.lookup(ids, weights_like(ids, [1, 2]))
        np.testing.assert_array_equal(got, [[10, 13]])

    def test_sequence(self):
        got = self.lookup(sparse([[0, 0]], [3], [1, 2]), max_sequence_length=2)
        np.testing.assert_array_equal(got, [[[6, 7], [0, 0]]])

    def test_missing_table_is_key_error(self):
        config = {"f": es.FeatureConfig(self.table_config)}
        with pytest.raises(KeyError):
            es.serving_embedding_lookup({"f": np.array([1])}, None, {}, config)
        with pytest.raises(KeyError):
            es.serving_embedding_lookup({"f": np.array([1])}, None, {"t": self.table}, config)

    def test_table_shape_not_checked_against_config(self):
        config = {"f": es.FeatureConfig(self.table_config)}
        small = {self.table_config: self.table[:3]}
        np.testing.assert_array_equal(
            es.serving_embedding_lookup({"f": np.array([2])}, None, small, config)["f"], [[4, 5]]
        )
        with pytest.raises(es.IdOutOfRangeError) as info:
            es.serving_embedding_lookup({"f": np.array([5])}, None, small, config)
        assert_id_error(info.value, "f", "t", 0, 0, 5, 3)

    def test_sparse_weights_pair_by_position(self):
        ids = sparse([[0, 0], [1, 0]], [3, 4], [2, 2])
        w = es.SparseTensor(
            np.array([[0, 1], [1, 1]]), np.array([2, 5], dtype=np.float32), np.array([5, 5])
        )
        np.testing.assert_array_equal(self.lookup(ids, w)[:, 0], [12, 40])


# ---------------------------------------------------------------------------------------------
# The grid


class Pair(NamedTuple):
    f: Any
    z: Any


KINDS = ("dense", "sparse2_validated", "sparse2_plain", "sparse3", "ragged")
NESTINGS = ("lone", "dict", "nested", "namedtuple")
B = 4
VOCAB = 7
DIM = 3
OUTPUT_SHAPES = {"none": None, "B": [B], "2B": [2 * B], "2xB/2": [2, B // 2], "B/2": [B // 2]}
WEIGHT_CHOICES = np.array([-1.0, 0.0, 0.5, 1.0, 2.0], dtype=np.float32)


def _rng(*key: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _table(rng: np.random.Generator, vocab: int, dim: int) -> np.ndarray:
    return (rng.integers(-16, 17, size=(vocab, dim)) / 4).astype(np.float32)


def _grid_input(kind: str, rng: np.random.Generator, weighted: bool) -> tuple[Any, Any]:
    id_dtype = np.int32 if rng.integers(2) else np.int64
    if kind == "dense":
        ids = rng.integers(0, VOCAB, size=(B, 2)).astype(id_dtype)
        # A weight for dense input is an error (SEMANTICS §3.2).
        return ids, (np.ones((B, 2), dtype=np.float32) if weighted else None)
    if kind.startswith("sparse2"):
        # row 0: three entries (one beyond max_sequence_length 3), row 1 empty, row 2 starts at
        # column 1, row 3 empty (trailing: vanishes on the plain path).
        indices = np.array([[0, 0], [0, 1], [0, 4], [2, 1], [2, 2]])
        dense_shape = [B, 5]
    elif kind == "sparse3":
        indices = np.array([[0, 0, 0], [0, 0, 2], [0, 1, 1], [2, 1, 0], [2, 1, 1], [3, 0, 2]])
        dense_shape = [B, 2, 3]
    else:
        lengths = [2, 0, 1, 4]
        values = rng.integers(0, VOCAB, size=sum(lengths)).astype(id_dtype)
        values[1] = values[0]  # a duplicate id in a bag
        ids = es.RaggedTensor.from_row_lengths(values, lengths)
        w = rng.choice(WEIGHT_CHOICES, size=values.shape[0]).astype(np.float32)
        return ids, (es.RaggedTensor.from_row_lengths(w, lengths) if weighted else None)
    values = rng.integers(0, VOCAB, size=indices.shape[0]).astype(id_dtype)
    values[1] = values[0]
    ids = es.SparseTensor(indices, values, np.array(dense_shape))
    w = rng.choice(WEIGHT_CHOICES, size=values.shape[0]).astype(np.float32)
    return ids, (es.SparseTensor(indices, w, np.array(dense_shape)) if weighted else None)


def _nest(
    nesting: str, fc: Any, inp: Any, weight: Any, rng: np.random.Generator
) -> tuple[Any, Any, Any, dict]:
    """(config, features, weights, extra tables) placing the feature under test in a structure
    with companions: a dense feature on another table and a ragged one sharing its table."""
    comp_array = _table(rng, 5, DIM)
    comp_table = es.TableConfig(5, DIM, initializer=ArrayInit(comp_array), name="companion")
    tables = {comp_table: comp_array}
    dense_ids = rng.integers(0, 5, size=(B,))
    if nesting == "lone":
        return fc, inp, weight, tables
    if nesting == "dict":
        config = {"f": fc, "a": es.FeatureConfig(comp_table)}
        return config, {"f": inp, "a": dense_ids}, {"f": weight, "a": None}, tables
    if nesting == "namedtuple":
        config = Pair(f=fc, z=es.FeatureConfig(comp_table))
        return config, Pair(f=inp, z=dense_ids), Pair(f=weight, z=None), tables
    shared_ids = es.RaggedTensor.from_row_lengths(rng.integers(0, VOCAB, size=5), [1, 2, 0, 2])
    shared_w = es.RaggedTensor.from_row_lengths(
        rng.choice(WEIGHT_CHOICES[2:], size=5).astype(np.float32), [1, 2, 0, 2]
    )
    config = {
        "g": [es.FeatureConfig(comp_table), (fc, es.FeatureConfig(fc.table))],
        "b": es.FeatureConfig(comp_table, name="b"),
    }
    features = {"g": [dense_ids, (inp, shared_ids)], "b": dense_ids[::-1].copy()}
    weights = {"g": [None, (weight, shared_w)], "b": None}
    return config, features, weights, tables


@pytest.mark.parametrize("nesting", NESTINGS)
@pytest.mark.parametrize("output_shape", list(OUTPUT_SHAPES))
@pytest.mark.parametrize("max_sequence_length", [0, 1, 3])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("kind", KINDS)
def test_grid_matches_reference(
    kind, combiner, weighted, max_sequence_length, output_shape, nesting
):
    rng = _rng(kind, combiner, weighted, max_sequence_length, output_shape, nesting)
    table = _table(rng, VOCAB, DIM)
    table_config = es.TableConfig(
        VOCAB, DIM, initializer=ArrayInit(table), combiner=combiner, name="under_test"
    )
    validate = kind != "sparse2_plain" and (kind not in ("dense", "ragged") or combiner != "mean")
    fc = es.FeatureConfig(
        table_config,
        max_sequence_length=max_sequence_length,
        validate_weights_and_indices=validate,
        output_shape=OUTPUT_SHAPES[output_shape],
    )
    inp, weight = _grid_input(kind, rng, weighted)
    config, features, weights, tables = _nest(nesting, fc, inp, weight, rng)
    tables[table_config] = table
    if not weighted:
        weights = None

    emb = es.TPUEmbeddingForServing(config, None)
    compare_with_reference(lambda: emb(features, weights), features, weights, tables, config)
    compare_with_reference(
        lambda: emb.embedding_lookup(features, weights), features, weights, tables, config
    )
    compare_with_reference(
        lambda: es.serving_embedding_lookup(features, weights, tables, config),
        features,
        weights,
        tables,
        config,
    )


# ---------------------------------------------------------------------------------------------
# Hypothesis properties

dyadic_weights = st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
positive_weights = st.floats(0.125, 4.0, width=32)


@st.composite
def tables_(draw: Any) -> tuple[int, int, np.ndarray, Any]:
    vocab = draw(st.integers(1, 50))
    dim = draw(st.integers(1, 17))
    seed = draw(st.integers(0, 2**32 - 1))
    table = np.random.default_rng(seed).normal(size=(vocab, dim)).astype(np.float32)
    return vocab, dim, table, draw(st.sampled_from([np.int32, np.int64]))


@st.composite
def bags_(draw: Any, vocab: int, max_len: int = 6) -> list[list[int]]:
    batch = draw(st.integers(0, 20))
    return draw(
        st.lists(
            st.lists(st.integers(0, vocab - 1), max_size=max_len), min_size=batch, max_size=batch
        )
    )


def _weights_for(draw: Any, n: int) -> np.ndarray:
    elements = draw(st.sampled_from([dyadic_weights, positive_weights]))
    return np.asarray(draw(st.lists(elements, min_size=n, max_size=n)), dtype=np.float32)


@st.composite
def sparse_case(draw: Any) -> tuple:
    vocab, _, table, id_dtype = draw(tables_())
    rank = draw(st.sampled_from([1, 2, 2, 2, 3]))
    combiner = draw(st.sampled_from(COMBINERS))
    validate = draw(st.booleans())
    seq_len = draw(st.sampled_from([0, 0, 1, 2, 5]))
    output_shape = draw(st.sampled_from([None, None, [], [3]]))
    if rank == 1:
        n_cols = draw(st.integers(1, 8))
        cols = sorted(draw(st.sets(st.integers(0, n_cols - 1))))
        indices = np.array([[c] for c in cols], dtype=np.int64).reshape(-1, 1)
        dense_shape = [n_cols]
    else:
        bags = draw(bags_(vocab))
        width = max([len(b) for b in bags] + [1]) + draw(st.integers(0, 2))
        inner = draw(st.integers(1, 3)) if rank == 3 else 1
        entries = []
        for b, bag in enumerate(bags):
            cols = draw(st.permutations(range(width * inner)))[: len(bag)]
            for c in sorted(cols):
                entries.append([b, c // width, c % width] if rank == 3 else [b, c])
        indices = np.array(entries, dtype=np.int64).reshape(-1, rank)
        dense_shape = [len(bags), inner, width] if rank == 3 else [len(bags), width]
        if validate and indices.shape[0] > 1 and draw(st.booleans()):
            indices = indices[draw(st.permutations(range(indices.shape[0])))]
    n = indices.shape[0]
    ids = np.asarray(draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n)))
    inp = es.SparseTensor(indices, ids.astype(id_dtype), np.array(dense_shape))
    weight = None
    if seq_len == 0 and draw(st.booleans()):
        weight = es.SparseTensor(indices, _weights_for(draw, n), np.array(dense_shape))
    fc = dict(
        max_sequence_length=seq_len,
        validate_weights_and_indices=validate,
        output_shape=output_shape,
    )
    return table, combiner, fc, inp, weight


@st.composite
def ragged_case(draw: Any) -> tuple:
    vocab, _, table, id_dtype = draw(tables_())
    bags = draw(bags_(vocab))
    batch = len(bags)
    combiner = draw(st.sampled_from(COMBINERS))
    seq_len = draw(st.sampled_from([0, 0, 1, 3]))
    shapes = [None, None, [batch], [2 * batch], [3 * batch], [batch + 1]]
    if batch and batch % 2 == 0:
        shapes.append([2, batch // 2])
    if batch == 0:
        # [0] with batch 0 is pinned in TestRaggedExamples (embserve raises, TensorFlow doesn't).
        shapes = [None, None, [3]]
    output_shape = draw(st.sampled_from(shapes))
    values = np.array([v for bag in bags for v in bag], dtype=id_dtype)
    lengths = [len(bag) for bag in bags]
    inp = es.RaggedTensor.from_row_lengths(values, lengths)
    weight = None
    if seq_len == 0 and draw(st.booleans()):
        weight = es.RaggedTensor.from_row_lengths(_weights_for(draw, values.shape[0]), lengths)
    fc = dict(max_sequence_length=seq_len, output_shape=output_shape)
    return table, combiner, fc, inp, weight


@st.composite
def dense_case(draw: Any) -> tuple:
    vocab, _, table, id_dtype = draw(tables_())
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    if shape:
        shape = (draw(st.integers(0, 20)), *shape[1:])
    n = math.prod(shape)
    ids = np.asarray(draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n)))
    inp = ids.astype(id_dtype).reshape(shape)
    fc = dict(output_shape=draw(st.sampled_from([None, [3]])))
    return table, draw(st.sampled_from(COMBINERS)), fc, inp, None


def _check_case(case: tuple, path: str = "f") -> None:
    table, combiner, fc_kwargs, inp, weight = case
    vocab, dim = table.shape
    table_config = es.TableConfig(vocab, dim, combiner=combiner, name="hyp")
    config = {path: es.FeatureConfig(table_config, **fc_kwargs)}
    tables = {table_config: table}
    weights = None if weight is None else {path: weight}
    compare_with_reference(
        lambda: es.serving_embedding_lookup({path: inp}, weights, tables, config),
        {path: inp},
        weights,
        tables,
        config,
    )


@settings(deadline=None, max_examples=80)
@given(sparse_case())
def test_random_sparse_matches_reference(case):
    _check_case(case)


@settings(deadline=None, max_examples=80)
@given(ragged_case())
def test_random_ragged_matches_reference(case):
    _check_case(case)


@settings(deadline=None, max_examples=40)
@given(dense_case())
def test_random_dense_matches_reference(case):
    _check_case(case)


@settings(deadline=None, max_examples=30)
@given(st.lists(st.one_of(sparse_case(), ragged_case(), dense_case()), min_size=1, max_size=4))
def test_random_multi_feature_call_matches_reference(cases):
    config, features, weights, tables = {}, {}, {}, {}
    for i, (table, combiner, fc_kwargs, inp, weight) in enumerate(cases):
        tc = es.TableConfig(*table.shape, combiner=combiner, name=f"t{i}")
        key = f"k{i}"
        config[key] = es.FeatureConfig(tc, **fc_kwargs)
        features[key], weights[key], tables[tc] = inp, weight, table
    emb_tables = tables
    compare_with_reference(
        lambda: es.serving_embedding_lookup(features, weights, emb_tables, config),
        features,
        weights,
        tables,
        config,
    )


@settings(deadline=None, max_examples=40)
@given(st.one_of(sparse_case(), ragged_case(), dense_case()), st.data())
def test_random_out_of_range_id_is_reported(case, data):
    """One id replaced by a bad one: the same error (with attributes) or the same result."""
    table, combiner, fc_kwargs, inp, weight = case
    vocab = table.shape[0]
    values = np.asarray(inp if isinstance(inp, np.ndarray) else inp.values)
    if values.size == 0:
        return
    k = data.draw(st.integers(0, values.size - 1))
    bad = data.draw(st.sampled_from([-1, -5, vocab, vocab + 7, 2**31 + 3]))
    if bad > np.iinfo(values.dtype).max:
        values = values.astype(np.int64)
    values = values.copy()
    values.reshape(-1)[k] = bad
    if isinstance(inp, np.ndarray):
        inp = values
    elif isinstance(inp, es.SparseTensor):
        inp = es.SparseTensor(inp.indices, values, inp.dense_shape)
    else:
        inp = es.RaggedTensor.from_row_splits(values, inp.row_splits)
    _check_case((table, combiner, fc_kwargs, inp, weight), path="p/q")


# ---------------------------------------------------------------------------------------------
# Structure (SEMANTICS §3.1, §3.2)


def _two_features() -> tuple[Any, Any, Any]:
    tc = es.TableConfig(10, 2, initializer=es.RowIdInitializer(), combiner="sum", name="t")
    return tc, es.FeatureConfig(tc), es.FeatureConfig(tc)


class TestStructure:
    def test_features_may_be_a_subset(self):
        _, fa, fb = _two_features()
        emb = es.TPUEmbeddingForServing({"a": fa, "b": fb}, None)
        out = emb({"b": np.array([3])})
        assert list(out) == ["b"]
        np.testing.assert_array_equal(out["b"], [[3, 3]])

    def test_path_not_in_config(self):
        _, fa, fb = _two_features()
        emb = es.TPUEmbeddingForServing({"a": fa, "m": fb}, None)
        with pytest.raises(ValueError, match="subset") as info:
            emb({"q": np.array([1]), "a": np.array([1])})
        assert isinstance(info.value, es.EmbserveError)

    def test_feature_name_is_not_a_path(self):
        tc = es.TableConfig(10, 2, name="t")
        emb = es.TPUEmbeddingForServing({"a": es.FeatureConfig(tc, name="named")}, None)
        with pytest.raises(ValueError, match="subset"):
            emb({"named": np.array([1])})

    def test_matching_is_by_path_string(self):
        _, fa, fb = _two_features()
        emb = es.TPUEmbeddingForServing([fa, fb], None)
        out = emb((np.array([1]), np.array([2])))
        assert type(out) is tuple
        out = emb({"1": np.array([2]), "0": np.array([1])})
        assert list(out) == ["1", "0"]  # the caller's key order is kept
        np.testing.assert_array_equal(out["1"], [[2, 2]])
        emb2 = es.TPUEmbeddingForServing(Pair(f=fa, z=fb), None)
        out = emb2({"z": np.array([4])})
        np.testing.assert_array_equal(out["z"], [[4, 4]])
        emb3 = es.TPUEmbeddingForServing({"x": {"y": fa}}, None)
        out = emb3({"x/y": np.array([5])})
        assert list(out) == ["x/y"]
        np.testing.assert_array_equal(out["x/y"], [[5, 5]])

    def test_lone_feature(self):
        _, fa, _ = _two_features()
        emb = es.TPUEmbeddingForServing(fa, None)
        np.testing.assert_array_equal(emb(np.array([7])), [[7, 7]])
        # TensorFlow: "not a subset" (path "a" vs ""); embserve takes whatever sits at the lone
        # feature's path "" as its input, so it is an unreadable input instead. Both ValueError.
        with pytest.raises(es.InputError):
            emb({"a": np.array([7])})

    def test_empty_features(self):
        _, fa, fb = _two_features()
        assert es.TPUEmbeddingForServing({"a": fa, "b": fb}, None)({}) == {}

    def test_none_features(self):
        _, fa, fb = _two_features()
        with pytest.raises(ValueError, match="subset"):
            es.TPUEmbeddingForServing({"a": fa, "b": fb}, None)(None)
        with pytest.raises(es.InputError):
            es.TPUEmbeddingForServing(fa, None)(None)

    def test_unsortable_feature_keys(self):
        _, fa, _ = _two_features()
        emb = es.TPUEmbeddingForServing({"a": fa}, None)
        with pytest.raises(TypeError):
            emb({1: np.array([1]), "a": np.array([1])})

    def test_leaves_processed_in_path_order(self):
        tc = es.TableConfig(10, 2, name="t")
        emb = es.TPUEmbeddingForServing(
            {"z": es.FeatureConfig(tc), "a": es.FeatureConfig(tc)}, None
        )
        with pytest.raises(es.IdOutOfRangeError) as info:
            emb({"z": np.array([11]), "a": np.array([12])})
        assert (info.value.feature, info.value.id) == ("a", 12)

    def test_mixed_kinds_in_one_call(self):
        _, fa, fb = _two_features()
        fc = es.FeatureConfig(fa.table)
        emb = es.TPUEmbeddingForServing({"d": fa, "s": fb, "r": fc}, None)
        out = emb(
            {
                "d": np.array([1, 2]),
                "s": sparse([[0, 0], [1, 0], [1, 1]], [3, 4, 5], [2, 2]),
                "r": ragged([[6], [7, 8]]),
            }
        )
        np.testing.assert_array_equal(out["d"][:, 0], [1, 2])
        np.testing.assert_array_equal(out["s"][:, 0], [3, 9])
        np.testing.assert_array_equal(out["r"][:, 0], [6, 15])


class TestWeightStructure:
    def setup_method(self):
        _, self.fa, self.fb = _two_features()
        self.emb = es.TPUEmbeddingForServing({"a": self.fa, "b": self.fb}, None)
        self.ids = sparse([[0, 0], [0, 1]], [1, 3], [1, 2])
        self.features = {"a": self.ids, "b": np.array([2])}

    def test_none_entries(self):
        out = self.emb(self.features, {"a": None, "b": None})
        np.testing.assert_array_equal(out["a"], [[4, 4]])
        out = self.emb(self.features, {"a": weights_like(self.ids, [2, 1]), "b": None})
        np.testing.assert_array_equal(out["a"], [[5, 5]])

    def test_missing_key(self):
        with pytest.raises(ValueError, match="same nested structure") as info:
            self.emb(self.features, {"a": None})
        assert isinstance(info.value, es.EmbserveError)
        with pytest.raises(ValueError, match="same nested structure"):
            self.emb(self.features, {})

    def test_container_type_mismatch_is_type_error(self):
        with pytest.raises(TypeError, match="same"):
            self.emb(self.features, [None, None])
        emb = es.TPUEmbeddingForServing([self.fa, self.fb], None)
        with pytest.raises(TypeError, match="same"):
            emb([self.ids, np.array([1])], (None, None))

    def test_leaf_against_structure(self):
        # TensorFlow: "same nested structure"; embserve stops at feature paths, so a list
        # there is a (wrong-typed) weight. Both ValueError.
        with pytest.raises(es.InputError):
            self.emb(self.features, {"a": [None], "b": None})
        with pytest.raises(ValueError, match="same nested structure"):
            self.emb(self.features, {"a": None, "b": None, "c": None})

    # Per leaf, in TensorFlow's order: dense, then type mismatch, then sequence feature.
    def test_weight_for_dense_input(self):
        w = weights_like(self.ids, [1, 1])
        check_error(ValueError, np.array([1, 2]), w, match="dense")
        check_error(ValueError, np.array([1, 2]), np.ones(2, np.float32), match="dense")
        check_error(ValueError, np.array([1]), w, match="dense", max_sequence_length=2)

    def test_weight_type_must_match_input(self):
        ids, r = self.ids, ragged([[1, 3]])
        check_error(ValueError, ids, weights_like(r, [1, 1]), match="does not match")
        check_error(ValueError, ids, np.ones(2, np.float32), match="does not match")
        check_error(ValueError, r, weights_like(ids, [1, 1]), match="does not match")
        check_error(ValueError, r, np.ones(2, np.float32), match="does not match")
        check_error(
            ValueError, r, weights_like(ids, [1, 1]), match="does not match", max_sequence_length=2
        )

    def test_weight_for_sequence_feature(self):
        ids, r = self.ids, ragged([[1, 3]])
        check_error(
            ValueError, ids, weights_like(ids, [1, 1]), match="sequence", max_sequence_length=2
        )
        check_error(ValueError, r, weights_like(r, [1, 1]), match="sequence", max_sequence_length=2)
        # even where the sequence setting is not used
        ids3 = sparse([[0, 0, 0]], [1], [1, 1, 2])
        check_error(
            ValueError, ids3, weights_like(ids3, [1]), match="sequence", max_sequence_length=2
        )
        check_error(
            ValueError,
            r,
            weights_like(r, [1, 1]),
            match="sequence",
            max_sequence_length=2,
            output_shape=[1],
        )


# ---------------------------------------------------------------------------------------------
# Id dtypes (§3.3) and out-of-range ids (§3.4)

PATH_OPTIONS = {
    "sparse_validated": {},
    "sparse_plain": {"validate_weights_and_indices": False},
    "sparse_sequence": {"max_sequence_length": 3},
    "ragged": {},
    "ragged_sequence": {"max_sequence_length": 3},
    "ragged_output_shape": {"output_shape": [4]},
}


def _ids_on_path(path: str, values: list[int], dtype: Any) -> Any:
    """Bags [[v0], [v1], ...] (one id per row) as the input kind of ``path``."""
    if path.startswith("sparse"):
        return sparse([[i, 0] for i in range(len(values))], values, [len(values), 2], dtype)
    if path == "dense":
        return np.asarray(values, dtype=dtype)
    return ragged([[v] for v in values], dtype)


class TestIdDtypes:
    @pytest.mark.parametrize("path", ["dense", *PATH_OPTIONS])
    def test_int32_and_int64_agree(self, path):
        fc = PATH_OPTIONS.get(path, {})
        feature = rowid_feature("mean", **fc)
        emb = es.TPUEmbeddingForServing(feature, None)
        a = emb(_ids_on_path(path, [1, 5, 9, 0], np.int32))
        b = emb(_ids_on_path(path, [1, 5, 9, 0], np.int64))
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)

    @pytest.mark.parametrize("path", ["dense", *PATH_OPTIONS])
    def test_int64_ids_are_not_narrowed(self, path):
        fc = PATH_OPTIONS.get(path, {})
        for big in (2**32 + 3, 2**31, 2**63 - 1):
            err = check_error(
                es.IdOutOfRangeError, _ids_on_path(path, [1, big, 2, 3], np.int64), **fc
            )
            assert err.id == big
            assert err.num_rows == 10

    @pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.bool_, str])
    @pytest.mark.parametrize(
        "path", ["dense", "sparse_validated", "sparse_plain", "sparse_sequence"]
    )
    def test_other_dtypes_rejected(self, path, dtype):
        # TensorFlow 2.21 raises InvalidArgumentError on all of these except two accidents:
        # int16 ids WORK on its sparse sequence path (tf.gather allows int16), and bool / string
        # ids on the validated sparse path fail with TypeError while pruning. embserve matches
        # the first (int16 ids on the sparse sequence path are widened to int32) and raises
        # InputError for the rest.
        fc = PATH_OPTIONS.get(path, {})
        values = np.array([1, 0, 1]).astype(dtype)
        if path == "dense":
            inp = values
        else:
            inp = es.SparseTensor(np.array([[0, 0], [1, 0], [2, 0]]), values, np.array([3, 2]))
        if path == "sparse_sequence" and dtype is np.int16:
            as_int32 = es.SparseTensor(inp.indices, values.astype(np.int32), inp.dense_shape)
            feature = rowid_feature("sum", **fc)
            emb = es.TPUEmbeddingForServing(feature, None)
            np.testing.assert_array_equal(emb(inp), emb(as_int32))
            np.testing.assert_array_equal(emb(inp), reference_lookup(feature, rowid_array(), inp))
            return
        check_error(es.InputError, inp, **fc)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.bool_, str])
    @pytest.mark.parametrize("path", ["ragged", "ragged_sequence"])
    def test_other_dtypes_rejected_ragged(self, path, dtype):
        values = np.array([1, 0, 1]).astype(dtype)
        inp = es.RaggedTensor.from_row_splits(values, [0, 2, 3])
        check_error(ValueError, inp, **PATH_OPTIONS[path])

    def test_python_scalars_that_are_not_ids(self):
        tc = es.TableConfig(10, 2, name="t")
        emb = es.TPUEmbeddingForServing({"f": es.FeatureConfig(tc)}, None)
        for bad in (None, 1.5, "a", True, [1.5, 2.0], [[1], [2, 3]]):
            with pytest.raises(es.InputError):
                emb({"f": bad})


class TestOutOfRangeIds:
    """IdOutOfRangeError names feature path, table, row (first index), position (the rest of
    the index; the offset in the row for ragged), the id and the table's row count."""

    def lookup_error(self, config: Any, features: Any, weights: Any = None) -> Any:
        emb = es.TPUEmbeddingForServing(config, None)
        tables = emb.embedding_tables
        with pytest.raises(RefIdOutOfRangeError) as ref:
            reference_serving_lookup(features, weights, tables, config)
        with pytest.raises(es.IdOutOfRangeError) as info:
            emb(features, weights)
        err = info.value
        r = ref.value
        assert_id_error(err, r.feature, r.table, r.row, r.position, r.id, r.num_rows)
        assert isinstance(err, IndexError)
        assert isinstance(err, es.InputError)
        for word in (repr(err.feature), str(err.id), str(err.num_rows)):
            assert word in str(err), (word, str(err))
        return err

    @pytest.mark.parametrize(
        ("ids", "row", "position"),
        [
            (np.array(11), 0, 0),
            (np.array([1, 12, 3]), 1, 0),
            (np.array([[1, 2], [3, -4]]), 1, 1),
            (np.array([[[1, 2], [3, 4]], [[5, 6], [17, 8]]]), 1, (1, 0)),
            (np.array([[1, 10], [11, 12]]), 0, 1),  # the first bad id in C order
        ],
    )
    def test_dense(self, ids, row, position):
        config = {"a": {"b": [rowid_feature()]}}
        err = self.lookup_error(config, {"a": {"b": [ids]}})
        bad = ids.reshape(-1)[np.flatnonzero((ids.reshape(-1) < 0) | (ids.reshape(-1) >= 10))[0]]
        assert_id_error(err, "a/b/0", "rowid", row, position, int(bad), 10)

    @pytest.mark.parametrize(
        ("path", "options"),
        [
            ("sparse_validated", {}),
            ("sparse_plain", {"validate_weights_and_indices": False}),
            ("sparse_sequence", {"max_sequence_length": 3}),
            (
                "sparse_sequence_plain",
                {"max_sequence_length": 3, "validate_weights_and_indices": False},
            ),
        ],
    )
    def test_sparse_rank2(self, path, options):
        ids = sparse([[0, 0], [2, 0], [2, 1]], [1, 2, 13], [3, 4])
        err = self.lookup_error({"s": rowid_feature(**options)}, {"s": ids})
        assert_id_error(err, "s", "rowid", 2, 1, 13, 10)

    def test_sparse_negative_ids(self):
        ids = sparse([[0, 0], [1, 0]], [1, -2], [2, 2])
        for options in ({"validate_weights_and_indices": False}, {"max_sequence_length": 1}):
            err = self.lookup_error({"s": rowid_feature(**options)}, {"s": ids})
            assert_id_error(err, "s", "rowid", 1, 0, -2, 10)

    def test_sparse_rank3_and_rank1(self):
        ids = sparse([[0, 0, 0], [1, 1, 2]], [1, 10], [2, 2, 3])
        err = self.lookup_error({"s": rowid_feature()}, {"s": ids})
        assert_id_error(err, "s", "rowid", 1, (1, 2), 10, 10)
        ids = sparse([[1], [3]], [1, 10], [4])
        err = self.lookup_error({"s": rowid_feature()}, {"s": ids})
        assert_id_error(err, "s", "rowid", 3, 0, 10, 10)

    @pytest.mark.parametrize(
        "options", [{}, {"max_sequence_length": 1}, {"output_shape": [2]}, {"output_shape": [4]}]
    )
    def test_ragged(self, options):
        err = self.lookup_error({"r": rowid_feature(**options)}, {"r": ragged([[1], [2, 3, 99]])})
        assert_id_error(err, "r", "rowid", 1, 2, 99, 10)

    def test_auto_named_table(self):
        tc = es.TableConfig(3, 2)
        config = [es.FeatureConfig(tc)]
        err = self.lookup_error(config, [np.array([0, 3])])
        assert_id_error(err, "0", "table_0", 1, 0, 3, 3)

    def test_pickles(self):
        import pickle

        err = self.lookup_error({"r": rowid_feature()}, {"r": ragged([[1, 99]])})
        again = pickle.loads(pickle.dumps(err))
        assert_id_error(again, "r", "rowid", 0, 1, 99, 10)

    def test_validated_path_prunes_before_looking_up(self):
        # TensorFlow 2.21 drops entries with weight <= 0 (mean / sqrtn) before the gather, so a
        # too-large id with such a weight is never looked up (verified with TF: result [1]).
        ids = sparse([[0, 0], [0, 1]], [1, 99], [1, 2])
        w = weights_like(ids, [1, 0])
        check_example([1], ids, w, combiner="mean")
        check_example([1], ids, weights_like(ids, [1, -1]), combiner="sqrtn")
        check_error(es.IdOutOfRangeError, ids, w, combiner="sum")


# ---------------------------------------------------------------------------------------------
# Weights: non-finite values (embserve's deliberate check) and pairing errors

NONFINITE_PATHS = {
    "sparse_validated_sum": ("sparse", "sum", {}),
    "sparse_validated_mean": ("sparse", "mean", {}),
    "sparse_plain": ("sparse", "mean", {"validate_weights_and_indices": False}),
    "sparse_rank3": ("sparse3", "sqrtn", {}),
    "ragged": ("ragged", "sum", {}),
    "ragged_output_shape": ("ragged", "mean", {"output_shape": [1, 3]}),
}


class TestWeights:
    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    @pytest.mark.parametrize("where", list(NONFINITE_PATHS))
    def test_non_finite_weights_raise(self, where, value):
        kind, combiner, options = NONFINITE_PATHS[where]
        if kind == "sparse":
            ids = sparse([[0, 0], [0, 1], [2, 0]], [1, 3, 2], [3, 2])
        elif kind == "sparse3":
            ids = sparse([[0, 0, 0], [0, 0, 1], [2, 1, 0]], [1, 3, 2], [3, 2, 2])
        else:
            ids = ragged([[1, 3], [], [2]])
        w = weights_like(ids, [1.0, value, 2.0])
        table = es.TableConfig(10, 2, combiner=combiner, name="t")
        config = {"outer": {"feat": es.FeatureConfig(table, **options)}}
        emb = es.TPUEmbeddingForServing(config, None)
        with pytest.raises(RefInputError):
            reference_serving_lookup(
                {"outer": {"feat": ids}}, {"outer": {"feat": w}}, emb.embedding_tables, config
            )
        with pytest.raises(es.InputError, match="outer/feat"):
            emb({"outer": {"feat": ids}}, {"outer": {"feat": w}})

    @pytest.mark.parametrize("options", [{}, {"validate_weights_and_indices": False}])
    def test_sparse_weight_count_mismatch(self, options):
        ids = sparse([[0, 0], [0, 1], [1, 0]], [1, 3, 2], [2, 2])
        w = es.SparseTensor(np.array([[0, 0], [0, 1]]), np.ones(2, np.float32), np.array([2, 2]))
        check_error(ValueError, ids, w, **options)

    def test_ragged_weight_splits_must_match(self):
        ids = ragged([[1, 3], [2]])
        same_count = es.RaggedTensor.from_row_splits(np.ones(3, np.float32), [0, 1, 3])
        check_error(es.InputError, ids, same_count)
        fewer = es.RaggedTensor.from_row_splits(np.ones(2, np.float32), [0, 1, 2])
        check_error(es.InputError, ids, fewer)
        other_rows = es.RaggedTensor.from_row_splits(np.ones(3, np.float32), [0, 3])
        check_error(es.InputError, ids, other_rows)
        check_error(es.InputError, ids, same_count, output_shape=[2])

    @pytest.mark.parametrize("dtype", [np.float64, np.int32])
    def test_ragged_weights_must_be_float32(self, dtype):
        ids = ragged([[1, 3], [2]])
        check_error(es.InputError, ids, weights_like(ids, [1, 2, 3], dtype=dtype))

    def test_int32_row_splits(self):
        ids = es.RaggedTensor.from_row_splits(np.array([1, 3, 2]), np.array([0, 2, 3], np.int32))
        w = es.RaggedTensor.from_row_splits(
            np.array([1, 2, 3], np.float32), np.array([0, 2, 3], np.int32)
        )
        check_example([7, 6], ids, w)


# ---------------------------------------------------------------------------------------------
# Inputs: empty batches, sparse consistency, output_shape errors


class TestEmptyBatches:
    @pytest.mark.parametrize(
        ("inp", "options", "shape"),
        [
            (np.zeros(0, np.int64), {}, (0, 2)),
            (np.zeros((0, 3), np.int32), {}, (0, 3, 2)),
            (sparse([], [], [0, 3]), {}, (0, 2)),
            (sparse([], [], [0, 3]), {"validate_weights_and_indices": False}, (0, 2)),
            (sparse([], [], [0, 3]), {"max_sequence_length": 4}, (0, 4, 2)),
            (sparse([], [], [0, 2, 3]), {}, (0, 2, 2)),
            (sparse([], [], [2, 0, 3]), {}, (2, 0, 2)),
            (ragged([]), {}, (0, 2)),
            (ragged([]), {"max_sequence_length": 3}, (0, 3, 2)),
        ],
    )
    @pytest.mark.parametrize("combiner", COMBINERS)
    def test_shapes(self, inp, options, shape, combiner):
        check_example(np.zeros(shape[:-1]), inp, combiner=combiner, **options)

    @pytest.mark.parametrize("options", [{}, {"validate_weights_and_indices": False}])
    def test_with_empty_weights(self, options):
        ids = sparse([], [], [0, 3])
        check_example(np.zeros(0), ids, weights_like(ids, []), combiner="mean", **options)
        r = ragged([])
        check_example(np.zeros(0), r, weights_like(r, []), combiner="sqrtn")


class TestSparseInputs:
    def test_indices_rows_must_match_values(self):
        with pytest.raises(es.InputError):
            es.SparseTensor(np.array([[0, 0], [1, 0]]), np.array([1]), np.array([2, 2]))

    def test_indices_columns_must_match_rank(self):
        with pytest.raises(es.InputError):
            es.SparseTensor(np.array([[0, 0, 0]]), np.array([1]), np.array([2, 2]))

    def test_duck_typed_inconsistent_parts(self):
        bad = FakeTfSparseTensor([[0, 0], [1, 0]], [1], [2, 2])
        check_error(es.InputError, bad)
        bad = FakeTfSparseTensor([[0, 0, 0]], [1], [2, 2])
        check_error(es.InputError, bad)

    def test_row_beyond_dense_shape_validated(self):
        check_error(es.InputError, sparse([[0, 0], [3, 0]], [1, 2], [3, 2]))
        check_error(es.InputError, sparse([[0, 5, 0]], [1], [2, 2, 3]))
        check_error(es.InputError, sparse([[2, 0, 0]], [1], [2, 2, 3]))

    def test_rank1_index_beyond_dense_shape_validated(self):
        # TensorFlow 2.21 reshapes [n] to [1, n]; index 7 of dense_shape [3] becomes row 2 >= 1:
        # InvalidArgumentError "indices(0, 0) is invalid: 2 >= 1" (verified).
        check_error(es.InputError, sparse([[7]], [1], [3]))
        check_example(1, sparse([[2]], [1], [3]))

    def test_row_beyond_dense_shape_sequence_is_dropped(self):
        check_example([[1], [0]], sparse([[0, 0], [3, 0]], [1, 2], [2, 2]), max_sequence_length=1)


class TestOutputShapeErrors:
    @pytest.mark.parametrize(
        ("rows", "output_shape"),
        [
            ([[1], [2], [3]], [2]),  # P < B
            ([[1], [2], [3]], [4]),  # not a multiple
            ([[1], [2], [3]], [2, 2]),
            ([[1], [2]], []),  # P = 1 < B
            ([[1], [2]], [0]),
        ],
    )
    def test_not_a_factor(self, rows, output_shape):
        check_error(ValueError, ragged(rows), match="factor", output_shape=output_shape)

    @pytest.mark.parametrize("output_shape", [[1], [3], [2, 2]])
    def test_empty_batch(self, output_shape):
        check_error(es.InputError, ragged([]), output_shape=output_shape)

    def test_ignored_for_dense_and_sparse(self):
        check_example([1, 2], np.array([1, 2]), output_shape=[5])
        check_example([3], sparse([[0, 0], [0, 1]], [1, 2], [1, 2]), output_shape=[5, 5])


# ---------------------------------------------------------------------------------------------
# Ragged containers, and TensorFlow-like duck types


class TestRaggedTensor:
    ROWS: ClassVar[list[list[int]]] = [[1, 3], [], [2], [4, 5, 6], []]

    def constructions(self) -> list[Any]:
        values = np.array([1, 3, 2, 4, 5, 6])
        return [
            es.RaggedTensor.from_row_splits(values, [0, 2, 2, 3, 6, 6]),
            es.RaggedTensor.from_row_lengths(values, [2, 0, 1, 3, 0]),
            es.RaggedTensor.from_value_rowids(values, [0, 0, 2, 3, 3, 3], nrows=5),
            es.RaggedTensor.from_list(self.ROWS),
        ]

    def test_constructors_agree(self):
        feature = rowid_feature("sum")
        emb = es.TPUEmbeddingForServing(feature, None)
        outs = []
        for rt in self.constructions():
            np.testing.assert_array_equal(np.asarray(rt.row_splits), [0, 2, 2, 3, 6, 6])
            np.testing.assert_array_equal(np.asarray(rt.values), [1, 3, 2, 4, 5, 6])
            assert np.asarray(rt.values).dtype.kind == "i"
            outs.append(emb(rt))
        for out in outs:
            np.testing.assert_array_equal(out[:, 0], [4, 0, 2, 15, 0])

    def test_value_rowids_without_nrows_drops_trailing_rows(self):
        rt = es.RaggedTensor.from_value_rowids(np.array([1, 2]), [0, 2])
        np.testing.assert_array_equal(np.asarray(rt.row_splits), [0, 1, 1, 2])

    def test_from_list_empty(self):
        rt = es.RaggedTensor.from_list([[], []])
        np.testing.assert_array_equal(np.asarray(rt.row_splits), [0, 0, 0])
        check_example([0, 0], rt)

    @pytest.mark.parametrize(
        "splits", [[0, 2, 1, 3], [1, 2, 3], [0, 1, 2], [0, 1, 4], [], [0, -1, 3]]
    )
    def test_invalid_splits(self, splits):
        with pytest.raises(es.InputError):
            es.RaggedTensor.from_row_splits(np.array([1, 2, 3]), splits)

    @pytest.mark.parametrize("splits", [[0, 2, 1, 3], [1, 2, 3], [0, 1, 2], [0, 1, 4]])
    def test_invalid_splits_duck_typed(self, splits):
        check_error(es.InputError, FakeTfRaggedTensor([1, 2, 3], splits))

    def test_invalid_lengths_and_rowids(self):
        with pytest.raises(es.InputError):
            es.RaggedTensor.from_row_lengths(np.array([1, 2, 3]), [2, -1, 2])
        with pytest.raises(es.InputError):
            es.RaggedTensor.from_row_lengths(np.array([1, 2, 3]), [1, 1])
        with pytest.raises(es.InputError):
            es.RaggedTensor.from_value_rowids(np.array([1, 2, 3]), [0, 2, 1])
        with pytest.raises(es.InputError):
            es.RaggedTensor.from_value_rowids(np.array([1, 2, 3]), [0, 1, 2], nrows=2)

    def test_rank3_ragged_rejected(self):
        inp = es.RaggedTensor.from_row_splits(np.array([[1, 2], [3, 4]]), [0, 1, 2])
        check_error(ValueError, inp, match="rank 2")
        check_error(ValueError, FakeTfRaggedTensor([[1, 2], [3, 4]], [0, 1, 2]), match="rank 2")


class FakeTensor:
    """Stands in for a tf.Tensor: converts with np.asarray, has .numpy() and .dtype."""

    def __init__(self, value: Any, dtype: Any = None) -> None:
        self._value = np.asarray(value, dtype=dtype)
        self.dtype = self._value.dtype
        self.shape = self._value.shape

    def numpy(self) -> np.ndarray:
        return self._value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._value if dtype is None else self._value.astype(dtype)


class FakeTensorShape:
    """Stands in for tf.TensorShape (rank, len, iteration)."""

    def __init__(self, dims: tuple) -> None:
        self.dims = dims
        self.rank = len(dims)

    def __len__(self) -> int:
        return len(self.dims)

    def __iter__(self) -> Any:
        return iter(self.dims)

    def __getitem__(self, i: int) -> Any:
        return self.dims[i]


class FakeTfSparseTensor:
    """tf.SparseTensor's attribute names, with tensor-like (not numpy) components."""

    def __init__(self, indices: Any, values: Any, dense_shape: Any, dtype: Any = np.int64):
        indices = np.asarray(indices, dtype=np.int64)
        self.indices = FakeTensor(
            indices.reshape(-1, len(dense_shape)) if indices.size == 0 else indices
        )
        self.values = FakeTensor(values, dtype=dtype)
        self.dense_shape = FakeTensor(dense_shape, dtype=np.int64)
        self.shape = FakeTensorShape(tuple(dense_shape))
        self.dtype = self.values.dtype


class FakeTfRaggedTensor:
    """tf.RaggedTensor's attribute names: values, row_splits, shape, ragged_rank."""

    def __init__(self, values: Any, row_splits: Any, dtype: Any = np.int64):
        self.values = FakeTensor(values, dtype=dtype)
        self.row_splits = FakeTensor(row_splits, dtype=np.int64)
        self.ragged_rank = 1
        nrows = len(row_splits) - 1
        self.shape = FakeTensorShape((nrows, None, *self.values.shape[1:]))
        self.dtype = self.values.dtype


class TestDuckTypes:
    def test_tf_like_containers_accepted(self):
        tc = es.TableConfig(10, 2, initializer=es.RowIdInitializer(), combiner="mean", name="t")
        config = {
            "d": es.FeatureConfig(tc),
            "s": es.FeatureConfig(tc),
            "r": es.FeatureConfig(tc),
            "q": es.FeatureConfig(tc, max_sequence_length=2),
        }
        emb = es.TPUEmbeddingForServing(config, None)
        idx = [[0, 0], [0, 1], [2, 0]]
        fake = {
            "d": FakeTensor([1, 2]),
            "s": FakeTfSparseTensor(idx, [1, 3, 2], [3, 2]),
            "r": FakeTfRaggedTensor([1, 3, 2], [0, 2, 2, 3]),
            "q": FakeTfRaggedTensor([1, 3, 2], [0, 2, 2, 3], dtype=np.int32),
        }
        fake_w = {
            "d": None,
            "s": FakeTfSparseTensor(idx, [2, 0.5, 3], [3, 2], dtype=np.float32),
            "r": FakeTfRaggedTensor([2, 0.5, 3], [0, 2, 2, 3], dtype=np.float32),
            "q": None,
        }
        ours = {
            "d": np.array([1, 2]),
            "s": sparse(idx, [1, 3, 2], [3, 2]),
            "r": ragged(RAGGED_EX),
            "q": ragged(RAGGED_EX, np.int32),
        }
        ours_w = {
            "d": None,
            "s": weights_like(ours["s"], [2, 0.5, 3]),
            "r": weights_like(ours["r"], [2, 0.5, 3]),
            "q": None,
        }
        got = emb(fake, fake_w)
        assert_same_outputs(got, emb(ours, ours_w))
        assert_same_outputs(
            got, reference_serving_lookup(ours, ours_w, emb.embedding_tables, config)
        )
        np.testing.assert_allclose(got["s"][:, 0], [1.4, 0, 2], **TOL)
        assert_same_outputs(emb(fake), emb(ours))

    def test_tf_like_out_of_range(self):
        emb = es.TPUEmbeddingForServing({"s": rowid_feature()}, None)
        with pytest.raises(es.IdOutOfRangeError) as info:
            emb({"s": FakeTfSparseTensor([[0, 0], [1, 1]], [1, 10], [2, 2])})
        assert_id_error(info.value, "s", "rowid", 1, 1, 10, 10)


class TestPlanReuse:
    """The per-feature state a TPUEmbeddingForServing reuses across calls never goes stale."""

    def test_strided_inputs_and_weights_match_contiguous_ones(self):
        t = es.TableConfig(10, 2, initializer=es.RowIdInitializer(), combiner="mean", name="t")
        fc = {"r": es.FeatureConfig(t), "s": es.FeatureConfig(t), "d": es.FeatureConfig(t)}
        emb = es.TPUEmbeddingForServing(fc, None)
        wide = np.array([[1, 9], [3, 9], [2, 9]])  # column 0 is a strided view
        wts = np.array([[2.0, 0.0], [0.5, 0.0], [3.0, 0.0]], np.float32)
        ind = np.array([[0, 0], [0, 1], [1, 0]])
        strided = emb(
            {
                "r": es.RaggedTensor.from_row_splits(wide[:, 0], [0, 2, 3]),
                "s": es.SparseTensor(ind, wide[:, 0], [2, 2]),
                "d": wide[:, 0],
            },
            {
                "r": es.RaggedTensor.from_row_splits(wts[:, 0], [0, 2, 3]),
                "s": es.SparseTensor(ind, wts[:, 0], [2, 2]),
                "d": None,
            },
        )
        ids, w = np.array([1, 3, 2]), np.array([2.0, 0.5, 3.0], np.float32)
        plain = emb(
            {
                "r": es.RaggedTensor.from_row_splits(ids, [0, 2, 3]),
                "s": es.SparseTensor(ind, ids, [2, 2]),
                "d": ids,
            },
            {
                "r": es.RaggedTensor.from_row_splits(w, [0, 2, 3]),
                "s": es.SparseTensor(ind, w, [2, 2]),
                "d": None,
            },
        )
        for name in plain:
            np.testing.assert_array_equal(strided[name], plain[name])

    def test_new_tables_and_combiners_are_seen_after_a_first_call(self):
        t = es.TableConfig(10, 2, initializer=es.RowIdInitializer(), combiner="sum", name="t")
        emb = es.TPUEmbeddingForServing({"f": es.FeatureConfig(t)}, None)
        bag = {"f": ragged([[1, 3]])}
        assert emb(bag)["f"].tolist() == [[4.0, 4.0]]
        t.combiner = "mean"  # TensorFlow reads the config on every call
        assert emb(bag)["f"].tolist() == [[2.0, 2.0]]
        emb._set_variables({"t": {"parameters": np.full((10, 2), 7.0, np.float32)}})
        assert emb(bag)["f"].tolist() == [[7.0, 7.0]]
        # The functional form with a replaced table object reads the new table too.
        tables = {t: np.zeros((10, 2), np.float32)}
        fc = {"f": es.FeatureConfig(t)}
        assert es.serving_embedding_lookup(bag, None, tables, fc)["f"].tolist() == [[0.0, 0.0]]

    def test_flat_dict_fast_path_falls_back_for_the_errors(self):
        t = es.TableConfig(10, 2, name="t")
        emb = es.TPUEmbeddingForServing({"a": es.FeatureConfig(t), "b": es.FeatureConfig(t)}, None)
        ids = np.array([1])
        with pytest.raises(es.InputError, match="not a subset"):
            emb({"a": ids, "z": ids})
        with pytest.raises(es.InputError, match="same nested structure"):
            emb({"a": ids, "b": ids}, {"a": None})
        out = emb({"b": ids, "a": ids}, {"b": None, "a": None})
        assert list(out) == ["b", "a"]  # the caller's key order, as tf.nest packs dicts


class TestFusedDense:
    """The all-dense flat-dict path: one kernel for every feature, outputs from an arena."""

    @staticmethod
    def _model(dims: tuple[int, ...] = (4, 4, 4), rows: int = 50) -> Any:
        tables = [es.TableConfig(rows, d, name=f"t{i}") for i, d in enumerate(dims)]
        fc = {f"f{i}": es.FeatureConfig(t) for i, t in enumerate(tables)}
        emb = es.TPUEmbeddingForServing(fc, None)
        rng = np.random.default_rng(len(dims))
        emb._set_variables(
            {
                t.name: {"parameters": rng.standard_normal((rows, t.dim)).astype(np.float32)}
                for t in tables
            }
        )
        return emb, fc

    @pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 2), (3000,)])  # 3000: parallel
    def test_matches_reference_for_any_id_shape_and_dtype_mix(self, shape):
        emb, fc = self._model()
        rng = np.random.default_rng(1)
        inputs = {
            "f2": rng.integers(0, 50, shape).astype(np.int32),
            "f0": rng.integers(0, 50, shape),
            "f1": rng.integers(0, 50, shape),
        }
        got = emb(inputs)
        assert list(got) == ["f2", "f0", "f1"]
        assert emb._plan._dense[2][("f2", "f0", "f1")] is not None  # the fused path ran
        want = reference_serving_lookup(inputs, None, emb.embedding_tables, fc)
        for k in inputs:
            assert got[k].shape == (*shape, 4)
            np.testing.assert_array_equal(got[k], want[k])

    def test_results_kept_by_the_caller_are_never_overwritten(self):
        emb, _ = self._model()
        first = emb({"f0": np.array([1, 2]), "f1": np.array([3, 4])})
        saved = {k: v.copy() for k, v in first.items()}
        one = first["f1"]
        del first
        for i in range(5):
            emb({"f0": np.array([i, i]), "f1": np.array([i, i])})
        np.testing.assert_array_equal(one, saved["f1"])

    @pytest.mark.skipif(
        not __import__("embserve.kernels.arena").kernels.arena.REUSE, reason="no reuse here"
    )
    def test_dropped_results_let_the_next_call_reuse_memory(self):
        emb, _ = self._model()
        ids = {"f0": np.arange(30), "f1": np.arange(30)}
        address = emb(ids)["f0"].ctypes.data
        assert emb(ids)["f0"].ctypes.data == address

    def test_out_of_range_id_names_the_first_feature_in_path_order(self):
        emb, _ = self._model()
        inputs = {"f1": np.array([0, 50]), "f0": np.array([3, -1])}
        with pytest.raises(es.IdOutOfRangeError) as err:
            emb(inputs)
        e = err.value
        assert (e.feature, e.table, e.row, e.id, e.num_rows) == ("f0", "t0", 1, -1, 50)

    def test_a_config_change_applies_to_the_next_call(self):
        emb, fc = self._model()
        ids = {"f0": np.array([1]), "f1": np.array([2])}
        emb(ids)
        fc["f1"].max_sequence_length = 3
        with pytest.raises(es.InputError, match="sequence feature"):
            emb(ids)
        fc["f1"].max_sequence_length = 0
        assert emb(ids)["f1"].shape == (1, 4)

    def test_mixed_dims_shapes_and_restored_tables(self):
        emb, _fc = self._model(dims=(4, 6))
        got = emb({"f0": np.array([1, 2]), "f1": np.array([3, 4])})
        assert got["f0"].shape == (2, 4)
        assert got["f1"].shape == (2, 6)
        emb2, _ = self._model()
        uneven = emb2({"f0": np.array([1, 2]), "f1": np.array([3])})
        assert uneven["f0"].shape == (2, 4)
        assert uneven["f1"].shape == (1, 4)
        emb2({"f0": np.array([1])})
        emb2._set_variables(
            {f"t{i}": {"parameters": np.full((50, 4), float(i), np.float32)} for i in range(3)}
        )
        assert emb2({"f0": np.array([1]), "f2": np.array([2])})["f2"].tolist() == [[2.0] * 4]

    def test_key_orders_chosen_by_callers_keep_the_cache_bounded(self):
        """4 features give 64 key orders, four times the cap: the cache stays bounded and every
        order still gets its own features' rows, including orders evicted and built again."""
        import itertools

        from embserve import lookup

        emb, _ = self._model(dims=(4, 4, 4, 4))
        tables = {f"f{i}": t for i, t in enumerate(emb.embedding_tables.values())}
        ids = np.array([1, 2])
        orders = [
            order
            for n in range(1, 5)
            for order in itertools.permutations(["f0", "f1", "f2", "f3"], n)
        ]
        assert len(orders) == 64 > 2 * lookup._MAX_DENSE_GROUPS
        for _ in range(2):
            for order in orders:
                got = emb({k: ids for k in order})
                assert list(got) == list(order)
                for k in order:
                    np.testing.assert_array_equal(got[k], tables[k][ids])
                assert len(emb._plan._dense[2]) <= lookup._MAX_DENSE_GROUPS
        assert tuple(orders[-1]) in emb._plan._dense[2]  # the fused path ran and was cached

    def test_a_plan_run_with_other_tables_uses_them(self):
        """The fused groups hold table addresses: a call with another tables mapping (same
        TableConfigs) must not reuse groups built from the previous one."""
        from embserve.lookup import LookupPlan

        _, fc = self._model()
        plan = LookupPlan(fc)
        ids = {"f0": np.array([1, 2]), "f1": np.array([3, 4])}
        for value in (1.0, 2.0, 3.0):
            tables = {f.table: np.full((50, 4), value, np.float32) for f in fc.values()}
            got = plan.run(ids, None, tables)
            assert got["f0"].tolist() == [[value] * 4] * 2
            assert plan._dense[2][("f0", "f1")] is not None  # the fused path ran

    def test_a_restore_releases_the_previous_tables(self):
        """The plan's per-feature state and fused groups refer to the tables: installing new
        ones must drop those references at once (a restored checkpoint's old maps would
        otherwise stay mapped until the next call)."""
        import gc
        import weakref

        emb, _ = self._model()
        old = emb.variables["t0"]["parameters"]
        emb({"f0": np.array([1]), "f1": np.array([2])})  # fused path
        emb({"f0": es.RaggedTensor.from_list([[1, 2]])})  # general path
        gone = weakref.ref(old)
        del old
        emb._set_variables(
            {f"t{i}": {"parameters": np.zeros((50, 4), np.float32)} for i in range(3)}
        )
        gc.collect()
        assert gone() is None

    def test_an_unsupported_combiner_fails_the_same_on_both_paths(self):
        emb, fc = self._model()
        fc["f0"].table.combiner = "max"
        with pytest.raises(es.InputError, match="combiner 'max'"):
            emb({"f0": np.array([1]), "f1": np.array([2])})
        with pytest.raises(es.InputError, match="combiner 'max'"):
            emb({"f0": [1]})

    def test_an_empty_batch_gives_empty_outputs(self):
        emb, _ = self._model()
        empty = np.zeros(0, np.int64)
        got = emb({"f0": empty, "f1": empty})
        assert got["f0"].shape == (0, 4)
        assert got["f1"].shape == (0, 4)
        assert emb({"f0": np.zeros((3, 0), np.int32)})["f0"].shape == (3, 0, 4)
