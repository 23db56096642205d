"""The spec as code: a plain NumPy embedding lookup, written for clarity, not speed.

This module restates SEMANTICS.md §3–§5 (TensorFlow 2.21's ``serving_embedding_lookup`` on the
CPU) as loops over bags. Tests compare embserve against it. It reads inputs only through the
public attribute names TensorFlow uses (``indices`` / ``values`` / ``dense_shape`` for sparse,
``values`` / ``row_splits`` for ragged) and the public attributes of the config objects
(``FeatureConfig.table / max_sequence_length / validate_weights_and_indices / output_shape``,
``TableConfig.combiner / name``). It never imports embserve, so it can be checked on its own.

Accumulation is in float64; the results are returned as float32, so compare with a tolerance.

Errors. The reference raises:

* ``ValueError`` / ``TypeError`` / ``KeyError`` / ``AttributeError`` where TensorFlow raises those
  Python built-ins (embserve raises a class derived from the same built-in);
* :class:`RefInputError` where TensorFlow raises ``InvalidArgumentError`` (embserve:
  ``InputError``), and for embserve's deliberate extra check: NaN / ±inf weights;
* :class:`RefIdOutOfRangeError` for an out-of-range (or not-allowed negative) id (embserve:
  ``IdOutOfRangeError``), with the attributes embserve reports.

Where the two are ordered in TensorFlow, the reference checks in the same order; tests avoid
inputs with two independent faults.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "RefIdOutOfRangeError",
    "RefInputError",
    "assert_same_structure",
    "flatten_with_paths",
    "is_ragged",
    "is_sparse",
    "pack_as",
    "reference_feature_lookup",
    "reference_lookup",
    "reference_serving_lookup",
]

COMBINERS = ("sum", "mean", "sqrtn")
ID_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


class RefInputError(ValueError):
    """TensorFlow's InvalidArgumentError (embserve ``InputError``), or a non-finite weight."""


class RefIdOutOfRangeError(RefInputError, IndexError):
    """An id outside ``[0, num_rows)`` (embserve ``IdOutOfRangeError``)."""

    def __init__(
        self,
        feature: str,
        table: str,
        row: int,
        position: Any,
        id: int,
        num_rows: int,
    ) -> None:
        self.feature = feature
        self.table = table
        self.row = row
        self.position = position
        self.id = id
        self.num_rows = num_rows
        super().__init__(
            f"feature {feature!r} table {table!r}: id {id} (row {row}, position {position}) "
            f"not in [0, {num_rows})"
        )


# ---------------------------------------------------------------------------------------------
# Input kinds (by attribute names, as embserve accepts real TF tensors duck-typed)


def is_sparse(x: Any) -> bool:
    return all(hasattr(x, a) for a in ("indices", "values", "dense_shape"))


def is_ragged(x: Any) -> bool:
    return not is_sparse(x) and hasattr(x, "values") and hasattr(x, "row_splits")


def _kind(x: Any) -> str:
    if is_sparse(x):
        return "sparse"
    if is_ragged(x):
        return "ragged"
    return "dense"


# ---------------------------------------------------------------------------------------------
# Structure (tf.nest order: dict keys sorted, sequences in order, namedtuples by field)


def _is_structure(x: Any) -> bool:
    if is_sparse(x) or is_ragged(x):
        return False
    return isinstance(x, (Mapping, list, tuple))


def _children(x: Any) -> list[tuple[Any, Any]]:
    if isinstance(x, Mapping):
        return [(k, x[k]) for k in sorted(x)]  # TypeError for unsortable keys, as tf.nest
    if isinstance(x, tuple) and hasattr(type(x), "_fields"):
        return list(zip(type(x)._fields, x, strict=True))
    return list(enumerate(x))


def _join(prefix: str, key: Any) -> str:
    return str(key) if prefix == "" else f"{prefix}/{key}"


def flatten_with_paths(structure: Any, leaf_paths: frozenset[str] = frozenset()) -> list:
    """``[(path, leaf), ...]`` in tf.nest order; a node at a path in ``leaf_paths`` is a leaf.

    ``leaf_paths`` is embserve's extension: a Python list of ids at a feature's own path is an
    input, not structure (TensorFlow would descend into it and fail the subset check).
    """
    out: list[tuple[str, Any]] = []

    def walk(node: Any, path: str) -> None:
        if path in leaf_paths or not _is_structure(node):
            out.append((path, node))
        else:
            for key, child in _children(node):
                walk(child, _join(path, key))

    walk(structure, "")
    return out


def pack_as(structure: Any, leaves: list, leaf_paths: frozenset[str] = frozenset()) -> Any:
    """Rebuild ``structure`` with its leaves replaced, in flatten order, by ``leaves``."""
    it = iter(leaves)

    def build(node: Any, path: str) -> Any:
        if path in leaf_paths or not _is_structure(node):
            return next(it)
        kids = {k: build(child, _join(path, k)) for k, child in _children(node)}
        if isinstance(node, Mapping):
            return {k: kids[k] for k in node}
        if isinstance(node, tuple) and hasattr(type(node), "_fields"):
            return type(node)(*kids.values())
        if isinstance(node, tuple):
            return tuple(kids.values())
        return list(kids.values())

    return build(structure, "")


def _seq_type(x: Any) -> Any:
    if isinstance(x, Mapping):
        return "mapping"
    return type(x)


def assert_same_structure(a: Any, b: Any, leaf_paths: frozenset[str] = frozenset()) -> None:
    """tf.nest.assert_same_structure(check_types=True): TypeError for a different container
    type (list vs tuple, dict vs list, namedtuple vs tuple), ValueError for anything else."""

    def walk(x: Any, y: Any, path: str) -> None:
        x_leaf = path in leaf_paths or not _is_structure(x)
        y_leaf = path in leaf_paths or not _is_structure(y)
        if x_leaf and y_leaf:
            return
        if x_leaf or y_leaf:
            raise ValueError("The two structures don't have the same nested structure.")
        if _seq_type(x) != _seq_type(y):
            raise TypeError("The two structures don't have the same nested structure.")
        xc, yc = _children(x), _children(y)
        if [k for k, _ in xc] != [k for k, _ in yc]:
            raise ValueError("The two structures don't have the same nested structure.")
        for (k, xv), (_, yv) in zip(xc, yc, strict=True):
            walk(xv, yv, _join(path, k))

    walk(a, b, "")


# ---------------------------------------------------------------------------------------------
# Combining


def _combine(
    table: np.ndarray,
    nrows: int,
    rows: list[int],
    ids: list[int],
    weights: list[float],
    combiner: str,
) -> np.ndarray:
    """One output row per bag: sum / mean / sqrtn, divide-or-zero (SEMANTICS §4)."""
    dim = table.shape[1]
    numerator = np.zeros((nrows, dim), dtype=np.float64)
    weight_sum = np.zeros(nrows, dtype=np.float64)
    weight_sq_sum = np.zeros(nrows, dtype=np.float64)
    for r, i, w in zip(rows, ids, weights, strict=True):
        numerator[r] += w * table[i]
        weight_sum[r] += w
        weight_sq_sum[r] += w * w
    out = np.zeros((nrows, dim), dtype=np.float64)
    for r in range(nrows):
        if combiner == "sum":
            out[r] = numerator[r]
        elif combiner == "mean":
            out[r] = numerator[r] / weight_sum[r] if weight_sum[r] != 0 else 0.0
        elif combiner == "sqrtn":
            den = math.sqrt(weight_sq_sum[r])
            out[r] = numerator[r] / den if den != 0 else 0.0
        else:
            raise AssertionError(f"unknown combiner {combiner!r}")
    return out


def _locate(index: tuple[int, ...]) -> tuple[int, Any]:
    """(row, position) of a dense or sparse index, as embserve reports them: the row is the
    first coordinate; the position is the rest (an int for one coordinate, a tuple for several,
    ``0`` for none)."""
    index = tuple(int(i) for i in index)
    if not index:
        return 0, 0
    rest = index[1:]
    if not rest:
        return index[0], 0
    return index[0], rest[0] if len(rest) == 1 else rest


def _check_id(value: int, num_rows: int, path: str, table_name: str, index: tuple) -> None:
    """Raise for an id outside ``[0, num_rows)``; ``index`` locates it (see :func:`_locate`)."""
    if not 0 <= value < num_rows:
        row, position = _locate(index)
        raise RefIdOutOfRangeError(path, table_name, row, position, int(value), num_rows)


def _id_array(raw: Any, path: str, extra: tuple[Any, ...] = ()) -> np.ndarray:
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise RefInputError(f"{path}: ids are not an array: {e}") from None
    if arr.dtype.kind == "f" and arr.size == 0 and isinstance(raw, (list, tuple)):
        arr = arr.astype(np.int64)  # [] is float64 to numpy; an empty list of ids is fine
    if arr.dtype not in ID_DTYPES + extra:
        raise RefInputError(f"{path}: ids must be int32 or int64, got {arr.dtype}")
    return arr


def _weight_values(weight: Any, n: int, path: str, *, float32_only: bool, as_tf: type) -> list:
    """The weight values paired by position with ``n`` ids.

    ``as_tf`` is the class TensorFlow raises for a wrong count / dtype on this path.
    """
    values = np.asarray(weight.values)
    if values.ndim != 1 or values.shape[0] != n:
        raise as_tf(f"{path}: {values.shape} weights for {n} ids")
    if values.dtype != np.float32:
        if float32_only or values.dtype.kind not in "fiu":
            raise as_tf(f"{path}: weights must be float32, got {values.dtype}")
        values = values.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise RefInputError(f"{path}: non-finite weight (embserve rejects NaN / inf weights)")
    return [float(v) for v in values]


# ---------------------------------------------------------------------------------------------
# One feature


def reference_feature_lookup(
    inp: Any,
    weight: Any,
    table: Any,
    *,
    combiner: str = "mean",
    max_sequence_length: int = 0,
    validate_weights_and_indices: bool = True,
    output_shape: tuple[int, ...] | None = None,
    path: str = "",
    table_name: str = "",
) -> np.ndarray:
    """The float32 output of one feature's lookup, or the exception TensorFlow would raise.

    ``output_shape`` is ``None`` ("not set") or a tuple of ints (``()`` is set, product 1).
    """
    table64 = np.asarray(table, dtype=np.float64)
    seq_len = max_sequence_length
    kind = _kind(inp)

    if inp is None:
        raise ValueError(f"Input {path} is type NoneType. Tensor, SparseTensor or RaggedTensor")

    # §3.2: weight checks, in TensorFlow's order.
    if weight is not None:
        if kind == "dense":
            raise ValueError(f"Weight specified for {path}, but input is dense.")
        if _kind(weight) != kind:
            raise ValueError(f"Weight for {path} does not match the type of the input.")
        if seq_len > 0:
            raise ValueError(f"Weight specified for {path}, but this is a sequence feature.")

    if kind == "dense":
        return _dense(inp, table64, seq_len, path, table_name)
    if kind == "sparse":
        return _sparse(
            inp,
            weight,
            table64,
            combiner,
            seq_len,
            validate_weights_and_indices,
            output_shape,
            path,
            table_name,
        )
    return _ragged(inp, weight, table64, combiner, seq_len, output_shape, path, table_name)


def _dense(inp: Any, table: np.ndarray, seq_len: int, path: str, table_name: str) -> np.ndarray:
    """§4.1: a plain gather, output ``ids.shape + [D]``; no combiner, output_shape ignored."""
    if seq_len > 0:
        raise ValueError(f"Feature {path} is a sequence feature but a dense tensor was passed.")
    ids = _id_array(inp, path)
    num_rows, dim = table.shape
    out = np.zeros((*ids.shape, dim), dtype=np.float64)
    for index in np.ndindex(*ids.shape):
        value = int(ids[index])
        _check_id(value, num_rows, path, table_name, index)
        out[index] = table[value]
    return out.astype(np.float32)


def _sparse_parts(
    inp: Any, path: str, sequence: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    dense_shape = tuple(int(d) for d in np.asarray(inp.dense_shape).reshape(-1))
    indices = np.asarray(inp.indices)
    if indices.size == 0:
        indices = np.zeros((0, len(dense_shape)), dtype=np.int64)
    # TensorFlow's sparse sequence path gathers with tf.gather, which also takes int16 ids.
    values = _id_array(inp.values, path, (np.dtype(np.int16),) if sequence else ())
    if (
        indices.ndim != 2
        or indices.shape[1] != len(dense_shape)
        or values.ndim != 1
        or values.shape[0] != indices.shape[0]
    ):
        raise RefInputError(f"{path}: sparse indices / values / dense_shape do not fit")
    return indices.astype(np.int64), values, dense_shape


def _sparse(
    inp: Any,
    weight: Any,
    table: np.ndarray,
    combiner: str,
    seq_len: int,
    validate: bool,
    output_shape: tuple[int, ...] | None,
    path: str,
    table_name: str,
) -> np.ndarray:
    rank = np.size(inp.dense_shape)
    sequence = output_shape is None and seq_len > 0 and rank == 2
    indices, values, dense_shape = _sparse_parts(inp, path, sequence)
    num_rows, dim = table.shape
    n = values.shape[0]

    # §4.2 (1) and §4.6: the sequence path.
    if output_shape is None and seq_len > 0 and rank == 2:
        batch = dense_shape[0]
        out = np.zeros((batch, seq_len, dim), dtype=np.float64)
        for k in range(n):
            b, j = int(indices[k, 0]), int(indices[k, 1])
            if 0 <= b < batch and 0 <= j < seq_len:  # outside the window: never looked up
                _check_id(int(values[k]), num_rows, path, table_name, (b, j))
                out[b, j] += table[int(values[k])]  # duplicates add up (scatter_nd)
        return out.astype(np.float32)

    # §4.2 (3) and §4.4: the plain combining path.
    if not validate and rank <= 2:
        weights = (
            [1.0] * n
            if weight is None
            else _weight_values(weight, n, path, float32_only=False, as_tf=ValueError)
        )
        rows = [int(r) for r in indices[:, 0]]
        for k in range(n):
            _check_id(int(values[k]), num_rows, path, table_name, tuple(indices[k]))
        for k in range(1, n):
            if rows[k] < rows[k - 1]:
                raise RefInputError(f"{path}: segment ids are not increasing")
        nrows = max(rows) + 1 if rows else 0  # trailing empty rows vanish
        return _combine(table, nrows, rows, values.tolist(), weights, combiner).astype(np.float32)

    # §4.2 (4) and §4.3: the validated ("safe") path; the last axis is the bag axis.
    weights = (
        [1.0] * n
        if weight is None
        else _weight_values(weight, n, path, float32_only=True, as_tf=ValueError)
    )
    nrows = math.prod(dense_shape[:-1])
    if rank == 2:
        lin_rows = [int(r) for r in indices[:, 0]]
    else:  # sparse_reshape: linearise over the whole dense shape, then split off the last axis
        strides = [math.prod(dense_shape[d + 1 :]) for d in range(rank)]
        lin_rows = [
            sum(int(i) * s for i, s in zip(indices[k], strides, strict=True)) // dense_shape[-1]
            for k in range(n)
        ]
    keep = [k for k in range(n) if values[k] >= 0]  # negative ids are dropped
    if combiner != "sum" and weight is not None:
        keep = [k for k in keep if weights[k] > 0]  # so are weights <= 0 (mean / sqrtn)
    for k in keep:
        if not 0 <= lin_rows[k] < nrows:
            raise RefInputError(f"{path}: indices({k}, 0) is invalid: {lin_rows[k]} >= {nrows}")
    for k in keep:
        _check_id(int(values[k]), num_rows, path, table_name, tuple(indices[k]))
    out = _combine(
        table,
        nrows,
        [lin_rows[k] for k in keep],
        [int(values[k]) for k in keep],
        [weights[k] for k in keep],
        combiner,
    )
    return out.reshape(*dense_shape[:-1], dim).astype(np.float32)


def _ragged(
    inp: Any,
    weight: Any,
    table: np.ndarray,
    combiner: str,
    seq_len: int,
    output_shape: tuple[int, ...] | None,
    path: str,
    table_name: str,
) -> np.ndarray:
    """§4.7: rank-2 ragged; nothing is ever pruned; validate is ignored."""
    if is_ragged(inp.values) or np.ndim(inp.values) != 1:
        raise ValueError(f"{path}: Only rank 2 ragged tensor is supported")
    values = np.asarray(inp.values)
    if values.dtype not in ID_DTYPES:
        raise ValueError(f"{path}: values should be indices, either of type int32 or int64")
    splits = [int(s) for s in np.asarray(inp.row_splits).reshape(-1)]
    if (
        not splits
        or splits[0] != 0
        or any(b < a for a, b in itertools.pairwise(splits))
        or splits[-1] != values.shape[0]
    ):
        raise RefInputError(f"{path}: invalid row_splits {splits}")
    batch = len(splits) - 1
    num_rows, dim = table.shape

    def check_all_ids() -> None:  # every id is looked up, even those a window will cut
        for r in range(batch):
            for pos, k in enumerate(range(splits[r], splits[r + 1])):
                _check_id(int(values[k]), num_rows, path, table_name, (r, pos))

    def combine() -> np.ndarray:
        check_all_ids()
        weights = [1.0] * values.shape[0]
        if weight is not None:
            w_splits = [int(s) for s in np.asarray(weight.row_splits).reshape(-1)]
            if w_splits != splits:
                raise RefInputError(f"{path}: Condition x == y did not hold (weight splits)")
            weights = _weight_values(
                weight, values.shape[0], path, float32_only=True, as_tf=RefInputError
            )
        rows = [r for r in range(batch) for _ in range(splits[r], splits[r + 1])]
        return _combine(table, batch, rows, values.tolist(), weights, combiner)

    def sequence(length: int) -> np.ndarray:
        check_all_ids()
        out = np.zeros((batch, length, dim), dtype=np.float64)
        for r in range(batch):
            for pos, k in enumerate(range(splits[r], min(splits[r + 1], splits[r] + length))):
                out[r, pos] = table[int(values[k])]
        return out

    if output_shape is not None:
        p = math.prod(output_shape)
        if p == batch:
            return combine().reshape(*output_shape, dim).astype(np.float32)
        if p > batch and batch == 0:
            raise RefInputError(f"{path}: Integer division by zero")
        if p > batch and p % batch == 0:
            # Sequence mode of length P / B: combiner and weights are ignored silently.
            return sequence(p // batch).reshape(*output_shape, dim).astype(np.float32)
        raise ValueError(
            "Output shape set in the FeatureConfig should be the factor of the input data "
            f"batch size. But instead got output shape {output_shape}, input data batch size "
            f"{batch}"
        )
    if seq_len > 0:
        return sequence(seq_len).astype(np.float32)
    return combine().astype(np.float32)


def reference_lookup(fc: Any, table: Any, inp: Any, weight: Any = None, path: str = "") -> Any:
    """One feature, with its options read from a FeatureConfig (public attributes only)."""
    output_shape = fc.output_shape
    if output_shape is not None:
        output_shape = tuple(int(d) for d in output_shape)
    return reference_feature_lookup(
        inp,
        weight,
        table,
        combiner=fc.table.combiner,
        max_sequence_length=fc.max_sequence_length,
        validate_weights_and_indices=fc.validate_weights_and_indices,
        output_shape=output_shape,
        path=path,
        table_name=str(fc.table.name),
    )


# ---------------------------------------------------------------------------------------------
# The whole call


def reference_serving_lookup(inputs: Any, weights: Any, tables: Any, feature_config: Any) -> Any:
    """``serving_embedding_lookup(inputs, weights, tables, feature_config)`` (§3, §5).

    ``tables`` maps each TableConfig object (by identity) to its array.
    """
    features = dict(flatten_with_paths(feature_config))
    leaf_paths = frozenset(features)
    flat_inputs = flatten_with_paths(inputs, leaf_paths)
    flat_weights: list[Any] = [None] * len(flat_inputs)
    if weights is not None:
        assert_same_structure(inputs, weights, leaf_paths)
        flat_weights = [w for _, w in flatten_with_paths(weights, leaf_paths)]
    input_paths = {p for p, _ in flat_inputs}
    if not input_paths <= set(features):
        raise ValueError(
            f"Inputs are not a subset of feature_config. Inputs keys are {input_paths}, but "
            f"feature_config keys are {features.keys()}"
        )
    outputs = []
    for (path, inp), weight in zip(flat_inputs, flat_weights, strict=True):
        fc = features[path]
        table = tables[fc.table]  # KeyError when missing
        outputs.append(reference_lookup(fc, table, inp, weight, path))
    return pack_as(inputs, outputs, leaf_paths)
