"""Input containers, and the conversion of one feature's input into validated flat arrays.

embserve speaks TensorFlow's three input kinds without importing TensorFlow:

* **dense** ids: numpy integer arrays of any rank (a real ``tf.Tensor`` converts through
  ``np.asarray``), Python ints, and, at a feature's own path, nested lists of ints;
* **sparse** ids: :class:`SparseTensor` (``indices``, ``values``, ``dense_shape``, TensorFlow's
  field names), or any object with those three attributes, such as a real ``tf.SparseTensor``;
* **ragged** ids: :class:`RaggedTensor` (``values`` and ``row_splits``), or any object with those
  attributes, such as a real ``tf.RaggedTensor`` of ragged rank 1.

The ``to_*`` functions turn a leaf into plain numpy arrays and check everything the kernels will
later trust (shapes, dtypes, split monotonicity, index bounds). Their errors are
:class:`~embserve.errors.InputError` and name the feature path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from embserve.errors import InputError
from embserve.kernels.check import first_bad_split, first_nonfinite

__all__ = [
    "DENSE",
    "RAGGED",
    "SPARSE",
    "RaggedParts",
    "RaggedTensor",
    "SparseParts",
    "SparseTensor",
    "kind_of",
    "memory_bytes",
    "to_dense_ids",
    "to_ragged",
    "to_sparse",
    "weight_values",
]

DENSE = "dense"
SPARSE = "sparse"
RAGGED = "ragged"

_ID_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _cgroup_limit(
    root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup"
) -> int | None:
    """The lowest memory limit on this process's cgroup or any cgroup above it, or None.

    The cgroup is the one ``membership`` names (``0::/path`` under cgroup v2, ``N:memory:/path``
    under v1). A container usually sees its own cgroup as the root of ``root``, but a systemd
    service (``MemoryMax=``) or a nested container does not: its limit sits at its path (this
    machine's sandbox: ``memory:/process_api/<id>``), and a parent's limit applies too.
    """
    try:
        with open(membership) as f:
            entries = [line.split(":", 2) for line in f.read().splitlines()]
    except OSError:
        entries = []
    files: list[str] = []
    for entry in entries:
        if len(entry) != 3:
            continue
        _, controllers, path = entry
        if controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        files += [os.path.join(base, *parts[:i], name) for i in range(len(parts), -1, -1)]
    if not files:  # no membership file: the roots of both hierarchies
        files = [
            os.path.join(root, "memory.max"),
            os.path.join(root, "memory", "memory.limit_in_bytes"),
        ]
    limits = []
    for file in files:
        try:
            with open(file) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means none
            limits.append(int(text))
    return min(limits) if limits else None


def memory_bytes() -> int:
    """The memory this process may use: physical memory, or its cgroup's limit when lower
    (a container's limit is what the OOM killer enforces). 1 TiB when neither is known."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        physical = 1 << 40
    limit = _cgroup_limit()
    return min(physical, limit) if limit else physical


# Row splits that from_value_rowids may allocate (8 bytes per row, and as much for the count):
# a quarter of this machine's memory, as embserve.lookup.MAX_OUTPUT_BYTES.
_MAX_SPLIT_BYTES = memory_bytes() // 4


def _where(path: str) -> str:
    return f"feature {path!r}"


class SparseTensor:
    """A sparse tensor in TensorFlow's COO form: ``indices``, ``values``, ``dense_shape``.

    Entry ``k`` holds ``values[k]`` at position ``indices[k]`` of a tensor shaped
    ``dense_shape``. For id features, row ``b`` of a rank-2 tensor is example ``b``'s bag of ids;
    for weights, only ``values`` is used (paired with the ids' values by position, as in
    TensorFlow).

    Args:
        indices: ``[N, rank]`` integer array.
        values: ``[N]`` array (ids: int32 / int64; weights: float32).
        dense_shape: ``[rank]`` non-negative integers.

    Raises:
        InputError: when the three parts do not fit together.
    """

    __slots__ = ("dense_shape", "indices", "values")

    def __init__(self, indices: Any, values: Any, dense_shape: Any) -> None:
        ind = np.asarray(indices)
        if ind.size == 0:
            ind = ind.astype(np.int64).reshape(0, len(np.asarray(dense_shape).reshape(-1)))
        self.indices: np.ndarray = ind
        self.values: np.ndarray = np.asarray(values)
        self.dense_shape: np.ndarray = np.asarray(dense_shape, dtype=np.int64).reshape(-1)
        _check_sparse_parts(self.indices, self.values, self.dense_shape, "SparseTensor")

    @property
    def shape(self) -> tuple[int, ...]:
        """The dense shape as a tuple of ints."""
        return tuple(int(d) for d in self.dense_shape)

    def __repr__(self) -> str:
        return (
            f"SparseTensor(indices={self.indices.tolist()}, values={self.values.tolist()}, "
            f"dense_shape={self.dense_shape.tolist()})"
        )


class RaggedTensor:
    """A rank-2 ragged tensor: ``values`` split into rows by ``row_splits``.

    Row ``b`` is ``values[row_splits[b]:row_splits[b + 1]]``; ``row_splits`` starts at 0, never
    decreases, and ends at ``len(values)``. Build one with the class methods named as in
    TensorFlow (``from_row_splits``, ``from_row_lengths``, ``from_value_rowids``) or from Python
    rows with :meth:`from_list`.

    Raises:
        InputError: when the splits are not valid for the values.
    """

    __slots__ = ("row_splits", "values")

    ragged_rank = 1

    def __init__(self, values: Any, row_splits: Any, validate: bool = True) -> None:
        self.values: np.ndarray = np.asarray(values)
        splits = np.asarray(row_splits)
        if splits.dtype.kind not in "iu":
            raise InputError(f"RaggedTensor: row_splits must be integers, got {splits.dtype}")
        self.row_splits: np.ndarray = splits.astype(np.int64, copy=False).reshape(-1)
        if validate:
            _check_splits(self.row_splits, self.values, "RaggedTensor")

    @classmethod
    def from_row_splits(cls, values: Any, row_splits: Any, validate: bool = True) -> RaggedTensor:
        """Rows ``values[row_splits[i]:row_splits[i + 1]]``."""
        return cls(values, row_splits, validate=validate)

    @classmethod
    def from_row_lengths(cls, values: Any, row_lengths: Any, validate: bool = True) -> RaggedTensor:
        """Consecutive rows of the given lengths."""
        lengths = np.asarray(row_lengths, dtype=np.int64).reshape(-1)
        if validate and lengths.size and lengths.min() < 0:
            raise InputError("RaggedTensor.from_row_lengths: row lengths must be >= 0")
        splits = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=splits[1:])
        return cls(values, splits, validate=validate)

    @classmethod
    def from_value_rowids(
        cls, values: Any, value_rowids: Any, nrows: int | None = None, validate: bool = True
    ) -> RaggedTensor:
        """Value ``k`` belongs to row ``value_rowids[k]`` (sorted); ``nrows`` keeps trailing
        empty rows."""
        rowids = np.asarray(value_rowids, dtype=np.int64).reshape(-1)
        if validate and rowids.size and (rowids.min() < 0 or np.any(np.diff(rowids) < 0)):
            raise InputError(
                "RaggedTensor.from_value_rowids: value_rowids must be non-negative and sorted"
            )
        n = int(rowids[-1]) + 1 if rowids.size else 0
        top = int(rowids.max()) + 1 if rowids.size else 0  # what bincount allocates
        for what, rows in (("value_rowids", top), ("nrows", 0 if nrows is None else int(nrows))):
            if 16 * rows > _MAX_SPLIT_BYTES:
                raise InputError(
                    f"RaggedTensor.from_value_rowids: {what} declares {rows:,} rows, whose row "
                    f"splits would need more than {_MAX_SPLIT_BYTES:,} bytes (a quarter of "
                    "this machine's memory)"
                )
        if nrows is not None:
            if validate and nrows < n:
                raise InputError(
                    f"RaggedTensor.from_value_rowids: nrows={nrows} but value_rowids "
                    f"reaches row {n - 1}"
                )
            n = int(nrows)
        splits = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rowids, minlength=n)[:n], out=splits[1:])
        return cls(values, splits, validate=validate)

    @classmethod
    def from_list(cls, rows: Sequence[Sequence[Any]], dtype: Any = None) -> RaggedTensor:
        """From Python rows such as ``[[1, 3], [], [2]]``.

        Without ``dtype``, integer rows become int64 ids and float rows float32 weights (the
        dtype TensorFlow's lookups require for weights).
        """
        lengths = [len(r) for r in rows]
        flat = [v for r in rows for v in r]
        values = np.asarray(flat) if dtype is None else np.asarray(flat, dtype=dtype)
        if dtype is None:
            if values.size == 0 or values.dtype.kind in "iub":
                values = values.astype(np.int64)
            elif values.dtype.kind == "f":
                values = values.astype(np.float32)
        return cls.from_row_lengths(values, lengths)

    def nrows(self) -> int:
        """Number of rows."""
        return int(self.row_splits.shape[0]) - 1

    def row_lengths(self) -> np.ndarray:
        """Length of every row."""
        return np.diff(self.row_splits)

    @property
    def flat_values(self) -> np.ndarray:
        """The values (a rank-2 ragged tensor has one level of splits)."""
        return self.values

    @property
    def shape(self) -> tuple[int | None, ...]:
        """``(nrows, None)`` plus the values' inner dimensions, as TensorFlow reports it."""
        return (self.nrows(), None, *self.values.shape[1:])

    def to_list(self) -> list[list[Any]]:
        """The rows as Python lists."""
        s = self.row_splits
        v = self.values.tolist()
        return [v[s[i] : s[i + 1]] for i in range(self.nrows())]

    def __repr__(self) -> str:
        return f"RaggedTensor({self.to_list()!r})"


def _check_sparse_parts(
    indices: np.ndarray, values: np.ndarray, dense_shape: np.ndarray, where: str
) -> None:
    rank = dense_shape.shape[0]
    if rank == 0:
        raise InputError(f"{where}: dense_shape must have at least one dimension")
    if indices.dtype.kind not in "iu":
        raise InputError(f"{where}: indices must be integers, got {indices.dtype}")
    if indices.ndim != 2 or indices.shape[1] != rank:
        raise InputError(
            f"{where}: indices must be shaped [N, {rank}] for dense_shape "
            f"{dense_shape.tolist()}, got {list(indices.shape)}"
        )
    if values.ndim != 1 or values.shape[0] != indices.shape[0]:
        raise InputError(
            f"{where}: values must be shaped [{indices.shape[0]}] to match indices, "
            f"got {list(values.shape)}"
        )
    if dense_shape.size and dense_shape.min() < 0:
        raise InputError(f"{where}: dense_shape {dense_shape.tolist()} has a negative dimension")


def _check_splits(splits: np.ndarray, values: np.ndarray, where: str) -> None:
    if values.ndim == 0:
        raise InputError(f"{where}: values must be at least 1-D")
    bad = first_bad_split(splits, values.shape[0]) if splits.size else 0
    if bad >= 0:
        raise InputError(
            f"{where}: invalid row_splits (must start at 0, never decrease and end at "
            f"len(values)={values.shape[0]}); problem at split {bad} of {splits.tolist()[:20]}"
        )


def kind_of(x: Any) -> str | None:
    """``"sparse"``, ``"ragged"`` or ``"dense"`` for an input leaf, ``None`` if it is none.

    Real TensorFlow tensors are recognised by their attributes, never by importing TensorFlow.
    """
    if isinstance(x, SparseTensor):
        return SPARSE
    if isinstance(x, RaggedTensor):
        return RAGGED
    if isinstance(x, np.ndarray):
        return DENSE
    if hasattr(x, "indices") and hasattr(x, "values") and hasattr(x, "dense_shape"):
        return SPARSE
    if hasattr(x, "row_splits") and hasattr(x, "values"):
        return RAGGED
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, np.integer, list, tuple)):
        return DENSE
    if hasattr(x, "__array__") or hasattr(x, "numpy"):
        return DENSE
    return None


def _ids_array(raw: Any, path: str, what: str, allow_int16: bool = False) -> np.ndarray:
    try:
        ids = np.asarray(raw)
    except (ValueError, TypeError) as e:
        raise InputError(
            f"{_where(path)}: {what} cannot be read as an integer array ({e}); ragged rows "
            "need a RaggedTensor"
        ) from None
    if ids.dtype.kind == "f" and ids.size == 0 and isinstance(raw, (list, tuple)):
        ids = ids.astype(np.int64)  # np.asarray([]) is float64; an empty list of ids is fine
    if allow_int16 and ids.dtype == np.int16:
        return ids.astype(np.int32)
    if ids.dtype not in _ID_DTYPES:
        raise InputError(
            f"{_where(path)}: {what} must be int32 or int64, got {ids.dtype} "
            "(TensorFlow: 'Value for attr Tindices ... is not in the list of allowed values: "
            "int32, int64')"
        )
    return ids


def to_dense_ids(x: Any, path: str) -> np.ndarray:
    """Dense ids as an int32 / int64 array of the input's shape."""
    return _ids_array(x, path, "dense ids")


class SparseParts(NamedTuple):
    """A sparse input as plain arrays: ``indices`` int64 ``[N, rank]``, ``values`` (1-D,
    C-contiguous, ready for the kernels), shape."""

    indices: np.ndarray
    values: np.ndarray
    dense_shape: tuple[int, ...]


def to_sparse(x: Any, path: str, allow_int16: bool = False) -> SparseParts:
    """A sparse leaf's parts, checked for consistency (ids dtype included).

    ``allow_int16`` widens int16 ids to int32: TensorFlow's sparse sequence path gathers with
    ``tf.gather``, which takes int16 indices, while every other path rejects them.
    """
    dense_shape = np.asarray(x.dense_shape).astype(np.int64, copy=False).reshape(-1)
    indices = np.asarray(x.indices)
    if indices.size == 0:
        indices = indices.astype(np.int64).reshape(0, dense_shape.shape[0])
    values = _ids_array(x.values, path, "sparse ids", allow_int16)
    _check_sparse_parts(indices, values, dense_shape, _where(path))
    return SparseParts(
        indices.astype(np.int64, copy=False),
        np.ascontiguousarray(values),
        tuple(int(d) for d in dense_shape),
    )


class RaggedParts(NamedTuple):
    """A rank-2 ragged input as C-contiguous arrays: ``values`` and int64 ``row_splits``."""

    values: np.ndarray
    row_splits: np.ndarray


def _ragged_rank(x: Any) -> int:
    """The full rank of a ragged leaf (2 for rows of scalars)."""
    shape = getattr(x, "shape", None)
    rank = getattr(shape, "rank", None)  # tf.TensorShape
    if rank is None and shape is not None:
        try:
            rank = len(shape)
        except TypeError:
            rank = None
    if rank is None:
        rank = 1 + int(getattr(x, "ragged_rank", 1)) + max(np.ndim(x.values) - 1, 0)
    return int(rank)


def to_ragged(x: Any, path: str) -> RaggedParts:
    """A ragged leaf's values and splits, checked (rank 2 only, as in TensorFlow)."""
    rank = _ragged_rank(x)
    if rank != 2:
        raise InputError(
            f"{_where(path)}: Only rank 2 ragged tensor is supported, but got rank {rank}"
        )
    try:
        values = np.asarray(x.values)
    except (ValueError, TypeError) as e:
        raise InputError(f"{_where(path)}: ragged values cannot be read as an array: {e}") from None
    if values.dtype not in _ID_DTYPES:
        raise InputError(
            f"{_where(path)}: The values contained by the inputs have type {values.dtype} and "
            "cannot be processed. All values should be indices, either of type `int32` or "
            "`int64`."
        )
    splits = np.asarray(x.row_splits)
    if splits.dtype.kind not in "iu":
        raise InputError(f"{_where(path)}: row_splits must be integers, got {splits.dtype}")
    splits = splits.astype(np.int64, copy=False).reshape(-1)
    _check_splits(splits, values, _where(path))
    return RaggedParts(np.ascontiguousarray(values), np.ascontiguousarray(splits))


def weight_values(w: Any, n: int, path: str, *, cast: bool) -> np.ndarray:
    """The float32 weight values of a sparse or ragged weight leaf, paired with ``n`` ids.

    Args:
        w: the weight leaf (its ``values`` are used, by position).
        n: number of id values they pair with.
        path: feature path, for messages.
        cast: cast any real dtype to float32 (TensorFlow's plain sparse path); when false only
            float32 is accepted (its validated sparse and ragged paths).

    Raises:
        InputError: wrong length or dtype, or a NaN / inf weight (an embserve check: TensorFlow
            silently propagates them into the output).
    """
    values = np.asarray(w.values)
    if values.ndim != 1 or values.shape[0] != n:
        raise InputError(
            f"{_where(path)}: weights have {values.shape[0] if values.ndim else 0} values "
            f"but the ids have {n}; they pair by position and must match"
        )
    if values.dtype != np.float32:
        if not cast or values.dtype.kind not in "fiu":
            raise InputError(
                f"{_where(path)}: weights must be float32 here, got {values.dtype} "
                "(TensorFlow rejects other dtypes on this path)"
            )
        values = values.astype(np.float32)
    values = np.ascontiguousarray(values)
    bad = first_nonfinite(values)
    if bad >= 0:
        raise InputError(
            f"{_where(path)}: weight {values[bad]} at value position {bad} is not finite; "
            "weights must be finite numbers"
        )
    return values
