"""Lookups under hostile or odd inputs (issue 10): tables in any memory layout, weights that
overflow float32, and declared sizes (``dense_shape``, row indices, ``output_shape``) far larger
than the ids sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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


# ---------------------------------------------------------------------------------------------
# Item 9: finite weights (or finite rows) whose combination overflows float32


def _bag_model(combiner: str, dim: int, rows: np.ndarray | None = None, **fc: Any) -> Any:
    table = es.TableConfig(10, dim, combiner=combiner, name="t")
    emb = es.TPUEmbeddingForServing({"f": es.FeatureConfig(table, **fc)}, None)
    values = np.full((10, dim), 2.0, np.float32) if rows is None else rows
    emb._set_variables({"t": {"parameters": values}})
    return emb


def _ragged_weighted(rows: list[list[int]], weights: list[list[float]]) -> tuple[Any, Any]:
    ids = es.RaggedTensor.from_list(rows)
    w = es.RaggedTensor.from_row_splits(
        np.array([x for r in weights for x in r], np.float32), ids.row_splits
    )
    return {"f": ids}, {"f": w}


def _sparse_weighted(rows: list[list[int]], weights: list[list[float]]) -> tuple[Any, Any]:
    indices = [[b, j] for b, r in enumerate(rows) for j in range(len(r))]
    values = [i for r in rows for i in r]
    shape = [len(rows), max(len(r) for r in rows)]
    sp = es.SparseTensor(indices, values, shape)
    w = es.SparseTensor(indices, np.array([x for r in weights for x in r], np.float32), shape)
    return {"f": sp}, {"f": w}


INPUT_FORMS = {
    "ragged": ({}, _ragged_weighted),
    "sparse validated": ({}, _sparse_weighted),
    "sparse plain": ({"validate_weights_and_indices": False}, _sparse_weighted),
}


@pytest.mark.parametrize("form", list(INPUT_FORMS))
@pytest.mark.parametrize("dim", [5, 16])
@pytest.mark.parametrize(
    ("combiner", "weights"),
    [
        ("sum", [[1.0], [3.4e38]]),  # 3.4e38 * 2.0: inf
        ("mean", [[1.0], [3.4e38]]),  # inf / 3.4e38: inf
        ("sqrtn", [[1.0], [3.4e38]]),  # Σ w² = inf: inf / inf = NaN (served as null)
        ("sqrtn", [[1.0], [1e30, 1.0]]),  # Σ w² = inf: 2e30 / inf = 0 (silently zero)
        ("mean", [[1.0], [3e38, 3e38]]),  # Σ w = inf
    ],
)
def test_finite_weights_that_overflow_are_refused(
    form: str, dim: int, combiner: str, weights: list[list[float]]
) -> None:
    fc, make = INPUT_FORMS[form]
    emb = _bag_model(combiner, dim, **fc)
    rows = [[1] * len(w) for w in weights]
    rows[-1] = list(range(1, len(weights[-1]) + 1))
    inputs, w = make(rows, weights)
    with pytest.raises(es.InputError, match=r"feature 'f'.*example 1.*overflow") as info:
        emb(inputs, w)
    assert "float32" in str(info.value)


@pytest.mark.parametrize("dim", [5, 16])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_finite_rows_whose_sum_overflows_are_refused(dim: int, combiner: str) -> None:
    rows = np.ones((10, dim), np.float32)
    rows[3] = 3e38
    emb = _bag_model(combiner, dim, rows)
    with pytest.raises(es.InputError, match=r"feature 'f'.*example 2.*overflow"):
        emb({"f": es.RaggedTensor.from_list([[1], [2, 3], [3, 3]])})


def test_a_sparse_sequence_whose_duplicates_overflow_is_refused() -> None:
    rows = np.ones((10, 4), np.float32)
    rows[3] = 3e38
    emb = _bag_model("sum", 4, rows, max_sequence_length=3)
    sp = es.SparseTensor([[0, 0], [1, 2], [1, 2], [1, 0]], [1, 3, 3, 2], [2, 3])
    with pytest.raises(es.InputError, match=r"feature 'f'.*example 1.*position 2.*overflow"):
        emb({"f": sp})
    ok = es.SparseTensor([[0, 0], [1, 2], [1, 1]], [1, 3, 3], [2, 3])
    assert np.isfinite(emb({"f": ok})["f"]).all()


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_a_table_holding_inf_or_nan_is_served_as_tensorflow_would(combiner: str) -> None:
    """Non-finite outputs from non-finite rows are the table's, not an overflow: returned."""
    rows = np.ones((10, 16), np.float32)
    rows[4] = np.inf
    rows[5] = np.nan
    emb = _bag_model(combiner, 16, rows)
    got = emb({"f": es.RaggedTensor.from_list([[1], [4, 1], [5], [2]])})["f"]
    assert np.isinf(got[1]).all()
    assert np.isnan(got[2]).all()
    assert np.isfinite(got[[0, 3]]).all()
    # ... but a finite bag that overflows after them is still refused.
    rows[6] = 3e38
    emb = _bag_model(combiner, 16, rows)
    with pytest.raises(es.InputError, match="example 2"):
        emb({"f": es.RaggedTensor.from_list([[1], [4, 1], [6, 6]])})
    # Plain copies (dense ids, sequences) return the rows as stored.
    assert np.isinf(emb({"f": np.array([4])})["f"]).all()
    seq = _bag_model(combiner, 16, rows, max_sequence_length=2)
    sp = es.SparseTensor([[0, 0], [0, 1]], [4, 5], [1, 2])
    got = seq({"f": sp})["f"]
    assert np.isinf(got[0, 0]).all()
    assert np.isnan(got[0, 1]).all()


def test_rank3_validated_sparse_names_the_bag_by_its_index() -> None:
    emb = _bag_model("sum", 4)
    sp = es.SparseTensor([[0, 0, 0], [1, 1, 0]], [1, 2], [2, 2, 3])
    w = es.SparseTensor(sp.indices, np.array([1.0, 3.4e38], np.float32), sp.dense_shape)
    with pytest.raises(es.InputError, match=r"example \[1, 1\]"):
        emb({"f": sp}, {"f": w})


# ---------------------------------------------------------------------------------------------
# Item 1 (library): sizes declared in the input, not the ids sent, are bounded before allocating


HUGE = 2**40  # rows: with dim 4 a 16 TiB output ("Unable to allocate 72.8 TiB" was the symptom)


def _model(**fc: Any) -> Any:
    table = es.TableConfig(10, 4, name="t")
    return es.TPUEmbeddingForServing({"f": es.FeatureConfig(table, **fc)}, None)


DECLARED = {
    "validated dense_shape": ({}, lambda: es.SparseTensor([[0, 0]], [1], [HUGE, 4])),
    "validated, no entries": (
        {},
        lambda: es.SparseTensor(np.zeros((0, 2)), np.zeros(0, np.int64), [HUGE, 4]),
    ),
    "validated rank 3": ({}, lambda: es.SparseTensor([[0, 0, 0]], [1], [HUGE, 2, 4])),
    "plain row index": (
        {"validate_weights_and_indices": False},
        lambda: es.SparseTensor([[HUGE, 0]], [1], [HUGE + 1, 1]),
    ),
    "sequence dense_shape": (
        {"max_sequence_length": 3},
        lambda: es.SparseTensor([[0, 0]], [1], [HUGE, 3]),
    ),
    "ragged output_shape": ({"output_shape": [HUGE]}, lambda: es.RaggedTensor.from_list([[1]])),
    "ragged sequence length": (
        {"max_sequence_length": HUGE},
        lambda: es.RaggedTensor.from_list([[1], [2]]),
    ),
}


@pytest.mark.parametrize("case", list(DECLARED))
def test_a_huge_declared_size_is_an_input_error_naming_the_feature(case: str) -> None:
    fc, make = DECLARED[case]
    with pytest.raises(es.InputError, match=r"feature 'f'.*MAX_OUTPUT_BYTES") as info:
        _model(**fc)({"f": make()})
    assert "TensorFlow" in str(info.value)  # ... would fail with ResourceExhausted


def test_a_shape_whose_element_count_overflows_int64_is_refused() -> None:
    """The rank-3 reshape's linear index would wrap around in int64 and land in a wrong row."""
    sp = es.SparseTensor([[1, 0, 0]], [1], [2, 2, 2**62])  # 4 bags, 2**64 elements
    with pytest.raises(es.InputError, match=r"feature 'f'.*dense_shape.*int64"):
        _model()({"f": sp})


@pytest.mark.parametrize("case", list(DECLARED))
def test_the_bound_is_checked_before_allocating(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same inputs at a size that fits: served; with the limit just below it: refused."""
    from embserve import lookup

    fc = DECLARED[case][0]
    small = {
        "validated dense_shape": lambda: es.SparseTensor([[0, 0]], [1], [50, 4]),
        "validated, no entries": lambda: es.SparseTensor(
            np.zeros((0, 2)), np.zeros(0, np.int64), [50, 4]
        ),
        "validated rank 3": lambda: es.SparseTensor([[0, 0, 0]], [1], [25, 2, 4]),
        "plain row index": lambda: es.SparseTensor([[49, 0]], [1], [50, 1]),
        "sequence dense_shape": lambda: es.SparseTensor([[0, 0]], [1], [50, 1]),
        "ragged output_shape": lambda: es.RaggedTensor.from_list([[1]]),
        "ragged sequence length": lambda: es.RaggedTensor.from_list([[1], [2]]),
    }[case]
    fc = dict(fc)
    if "output_shape" in fc:
        fc["output_shape"] = [50]
    if fc.get("max_sequence_length") == HUGE:
        fc["max_sequence_length"] = 25
    out = _model(**fc)({"f": small()})["f"]
    assert out.nbytes in (50 * 4 * 4, 50 * 3 * 4 * 4)
    monkeypatch.setattr(lookup, "MAX_OUTPUT_BYTES", out.nbytes - 1)
    with pytest.raises(es.InputError, match=f"more than {out.nbytes - 1:,} bytes"):
        _model(**fc)({"f": small()})


def test_the_bound_also_covers_dense_ids_and_the_fused_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from embserve import lookup

    monkeypatch.setattr(lookup, "MAX_OUTPUT_BYTES", 99 * 4 * 4)
    emb = _model()
    assert emb({"f": np.arange(99) % 10})["f"].shape == (99, 4)
    with pytest.raises(es.InputError, match=r"feature 'f'.*MAX_OUTPUT_BYTES"):
        emb({"f": np.arange(100) % 10})


def test_a_memory_error_below_the_bound_becomes_an_input_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the bound lifted, the allocation itself fails: still an error naming the feature."""
    from embserve import lookup

    monkeypatch.setattr(lookup, "MAX_OUTPUT_BYTES", 2**62)
    with pytest.raises(es.InputError, match=r"feature 'f'.*could not allocate") as info:
        _model()({"f": es.SparseTensor([[0, 0]], [1], [2**54, 4])})
    assert isinstance(info.value.__cause__, MemoryError) or info.value.__cause__ is None


def test_the_default_bound_is_a_quarter_of_this_machines_memory() -> None:
    import os

    from embserve import lookup

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < lookup.MAX_OUTPUT_BYTES <= physical // 4


def test_ragged_rows_declared_by_nrows_are_bounded() -> None:
    with pytest.raises(es.InputError, match="nrows"):
        es.RaggedTensor.from_value_rowids([1], [0], nrows=HUGE * 1024)
    with pytest.raises(es.InputError, match="value_rowids"):
        es.RaggedTensor.from_value_rowids([1], [HUGE * 1024])


def _cgroup_files(root: Path, files: dict[str, str], membership: str) -> tuple[str, str]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    (root / "self-cgroup").write_text(membership)
    return str(root / "fs"), str(root / "self-cgroup")


@pytest.mark.parametrize(
    ("files", "membership", "limit"),
    [
        # cgroup v2, a service nested two levels down (systemd MemoryMax=), none above it
        (
            {"fs/memory.max": "max", "fs/a/memory.max": "max", "fs/a/b/memory.max": "1073741824"},
            "0::/a/b\n",
            1 << 30,
        ),
        # ... and a parent's lower limit applies to it as well
        (
            {"fs/a/memory.max": "500000000", "fs/a/b/memory.max": "1073741824"},
            "0::/a/b\n",
            500_000_000,
        ),
        # cgroup v1: the memory controller's own path (this machine's sandbox looks like this)
        (
            {
                "fs/memory/memory.limit_in_bytes": "9223372036854771712",
                "fs/memory/box/id/memory.limit_in_bytes": "2147483648",
            },
            "5:cpu:/other\n4:memory:/box/id\n0::/\n",
            2 << 30,
        ),
        # a container that sees its cgroup as the root
        ({"fs/memory.max": "3221225472"}, "0::/\n", 3 << 30),
        ({"fs/memory.max": "max"}, "0::/\n", None),
    ],
)
def test_the_memory_bound_reads_the_limit_of_this_process_cgroup(
    tmp_path: Path, files: dict[str, str], membership: str, limit: int | None
) -> None:
    from embserve.inputs import _cgroup_limit

    root, self_cgroup = _cgroup_files(tmp_path, files, membership)
    assert _cgroup_limit(root, self_cgroup) == limit
