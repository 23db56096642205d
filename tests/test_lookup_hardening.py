"""Lookups under hostile or odd inputs (issue 10): tables in any memory layout, weights that
overflow float32, and declared sizes (``dense_shape``, row indices, ``output_shape``) far larger
than the ids sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import embserve as es

# ---------------------------------------------------------------------------------------------
# Item 13: table layouts


def _layouts(table: np.ndarray) -> dict[str, np.ndarray]:
    """``table``'s values in layouts whose rows are not ``dim * itemsize`` bytes apart."""
    rows, dim = table.shape
    wide = np.zeros((rows, dim * 2), table.dtype)
    wide[:, ::2] = table
    tall = np.zeros((rows * 2, dim), table.dtype)
    tall[::2] = table
    flipped = np.ascontiguousarray(table[::-1])
    mirrored = np.ascontiguousarray(table[:, ::-1])
    return {
        "fortran": np.asfortranarray(table),
        "strided columns": wide[:, ::2],
        "strided rows": tall[::2],
        "reversed rows": flipped[::-1],
        "reversed columns": mirrored[:, ::-1],
    }


def _all_paths(dim: int) -> tuple[dict[str, Any], Callable[[], tuple[Any, Any]]]:
    """One table behind every lookup path, and a request that exercises each of them."""
    table = es.TableConfig(60, dim, combiner="mean", name="t")
    fc = {
        "dense": es.FeatureConfig(table),
        "dense2": es.FeatureConfig(table),
        "bag": es.FeatureConfig(table),
        "seq": es.FeatureConfig(table, max_sequence_length=3),
        "sp_validated": es.FeatureConfig(table),
        "sp_plain": es.FeatureConfig(table, validate_weights_and_indices=False),
        "sp_seq": es.FeatureConfig(table, max_sequence_length=2),
        "shaped": es.FeatureConfig(table, output_shape=[2, 3]),
    }

    def request() -> tuple[Any, Any]:
        bag = es.RaggedTensor.from_list([[16, 17, 18], [], [59]])
        sp = es.SparseTensor([[0, 0], [0, 1], [2, 0]], [16, 40, 59], [3, 4])
        sp_dup = es.SparseTensor([[0, 0], [0, 0], [1, 1]], [16, 40, 59], [2, 3])
        inputs = {
            "dense": np.array([[16, 17], [0, 59]]),
            "dense2": np.array([[1, 2], [3, 4]]),
            "bag": bag,
            "seq": es.RaggedTensor.from_list([[16, 17, 18, 19], [5]]),
            "sp_validated": sp,
            "sp_plain": sp,
            "sp_seq": sp_dup,
            "shaped": es.RaggedTensor.from_list([[16], [17, 18], [20, 21, 22]]),
        }
        weights = {k: None for k in inputs}
        weights["bag"] = es.RaggedTensor.from_row_splits(
            np.array([0.5, 2.0, 1.0, 3.0], np.float32), bag.row_splits
        )
        weights["sp_validated"] = es.SparseTensor(
            sp.indices, np.array([1, 2, 3], np.float32), sp.dense_shape
        )
        return inputs, weights

    return fc, request


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dim", [5, 16])  # 16: the register kernel, reading rows by address
@pytest.mark.parametrize("layout", list(_layouts(np.zeros((2, 2)))))
def test_serving_lookup_gives_the_same_rows_for_any_table_layout(
    layout: str, dim: int, dtype: type
) -> None:
    fc, request = _all_paths(dim)
    table = np.arange(60 * dim, dtype=dtype).reshape(60, dim)
    odd = _layouts(table)[layout]
    assert not odd.flags.c_contiguous
    np.testing.assert_array_equal(odd, table)
    cfg = fc["dense"].table
    for weighted in (False, True):
        inputs, weights = request()
        expected = es.serving_embedding_lookup(
            inputs, weights if weighted else None, {cfg: table}, fc
        )
        got = es.serving_embedding_lookup(inputs, weights if weighted else None, {cfg: odd}, fc)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # The fused dense path (a flat dict of dense ids, float32 tables) through a serving object.
    if dtype is np.float32:
        emb = es.TPUEmbeddingForServing(fc, None)
        emb._set_variables({"t": {"parameters": odd}})
        ids = {"dense": np.array([16, 17, 59]), "dense2": np.array([0, 1, 2])}
        got = emb(ids)
        for name, v in ids.items():
            np.testing.assert_array_equal(got[name], table[v])
