"""Tables served in place from a SparseCore stack (SPARSECORE_FORMAT.md §3).

A ``TPUEmbeddingV2`` checkpoint stores the tables that share a padded width as one *stack*
``[T·N, W]``: N SparseCore shards of T rows each, every table owning the block
``[row_offset, row_offset + Rp/N)`` of every shard, with its rows dealt round-robin over the
shards (and rotated). :class:`StackedTable` is one logical ``[rows, dim]`` table of such a stack.
It holds the stack (typically a read-only memory-mapped view of the checkpoint) and the layout,
never a copy: lookups address each id's stacked row directly, so restoring a multi-GB stack costs
no unstacking pass and no second copy of the rows. ``np.asarray(table)`` (or :meth:`unstack`)
gives a private plain ``[rows, dim]`` copy, for code that wants an ordinary array.

This module needs numpy only; the compiled lookups that read stacked tables live in
:mod:`embserve.lookup` and :mod:`embserve.kernels`.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from embserve.errors import ConfigError

__all__ = ["StackedTable"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _count(value: Any, what: str, label: str) -> int:
    """``value`` as a Python int (any integer type, not bool), else ConfigError naming it."""
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{label}: {what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(f"{label}: {what} must be an integer, got {value!r}") from None


class StackedTable:
    """A logical ``[rows, dim]`` table served from the rows of a SparseCore stack ``[T·N, W]``.

    Logical row ``r`` (``0 <= r < rows``) is stacked row
    ``((r mod N + rotation) mod N) · T + row_offset + r div N`` (SPARSECORE_FORMAT.md §3.1), and
    its values are the first ``dim`` of that row's W columns. Padding rows (``r >= rows``) and
    padding columns (``>= dim``) are never served: lookups check ids against ``rows``.

    The object is array-like: ``shape``, ``dtype``, ``ndim``, ``size``, ``nbytes`` and ``len``
    describe the logical table; ``np.asarray(table)`` and :meth:`unstack` return a private
    C-contiguous copy of it, and ``table[i]``, ``table[a:b]``, ``table[ids]`` (and a trailing
    column index, ``table[i, j]``) return copies of logical rows. Lookups
    (:func:`embserve.serving_embedding_lookup`, ``TPUEmbeddingForServing``) read the stack in
    place and never make that copy.

    Args:
        stack: the whole stack, a 2-D float32 (or float64) array ``[T·N, W]`` in native byte
            order with C-ordered rows (a memory map of the checkpoint is typical; it is kept, not
            copied, and never written to).
        rows: R, the logical vocabulary size.
        dim: D, the logical dimension; ``0 < dim <= W``.
        num_shards: N, SparseCores in the whole job (``num_sparse_cores``).
        shard_rows: T, rows of the stack per SparseCore shard
            (``total_rows_per_sparse_core_shard``).
        row_offset: o, this table's first row inside every shard
            (``sparse_core_shard_row_offset``).
        rotation: ρ, the table's shard rotation, ``0 <= rotation < num_shards``.
        name: the table's name, used in messages and the repr.

    Raises:
        ConfigError: (a ``ValueError``) ``stack`` is not such an array, or the layout does not fit
            it: ``stack.shape[0] != shard_rows * num_shards``, a count out of range, or the
            table's padded block ``[row_offset, row_offset + ceil(rows / N))`` reaching past
            ``shard_rows``. The message names the table.
    """

    __slots__ = (
        "_dim",
        "_name",
        "_num_shards",
        "_rotation",
        "_row_offset",
        "_rows",
        "_shard_rows",
        "_stack",
    )

    def __init__(
        self,
        stack: np.ndarray,
        *,
        rows: int,
        dim: int,
        num_shards: int,
        shard_rows: int,
        row_offset: int,
        rotation: int,
        name: str | None = None,
    ) -> None:
        label = f"stacked table {name!r}" if name is not None else "stacked table"
        rows = _count(rows, "rows", label)
        dim = _count(dim, "dim", label)
        num_shards = _count(num_shards, "num_shards", label)
        shard_rows = _count(shard_rows, "shard_rows", label)
        row_offset = _count(row_offset, "row_offset", label)
        rotation = _count(rotation, "rotation", label)
        if not isinstance(stack, np.ndarray):
            raise ConfigError(
                f"{label}: the stack must be a numpy array, got {type(stack).__name__}"
            )
        if stack.ndim != 2:
            raise ConfigError(f"{label}: the stack must be 2-D [T*N, W], got shape {stack.shape}")
        if stack.dtype not in _DTYPES:
            raise ConfigError(
                f"{label}: the stack's dtype must be float32 or float64 in native byte order, "
                f"got {stack.dtype.str}"
            )
        if not stack.flags.c_contiguous:
            raise ConfigError(
                f"{label}: the stack's rows must be C-ordered (strides {stack.strides} for shape "
                f"{stack.shape} and itemsize {stack.itemsize})"
            )
        if num_shards <= 0:
            raise ConfigError(f"{label}: num_shards must be positive, got {num_shards}")
        if shard_rows <= 0:
            raise ConfigError(f"{label}: shard_rows must be positive, got {shard_rows}")
        if stack.shape[0] != shard_rows * num_shards:
            raise ConfigError(
                f"{label}: the stack has {stack.shape[0]} rows, but shard_rows * num_shards = "
                f"{shard_rows} * {num_shards} = {shard_rows * num_shards}"
            )
        if rows <= 0:
            raise ConfigError(f"{label}: rows must be positive, got {rows}")
        width = stack.shape[1]
        if not 0 < dim <= width:
            raise ConfigError(
                f"{label}: dim must be in [1, {width}] (the stack's width), got {dim}"
            )
        if not 0 <= rotation < num_shards:
            raise ConfigError(
                f"{label}: rotation must be in [0, {num_shards}) (num_shards), got {rotation}"
            )
        if row_offset < 0:
            raise ConfigError(f"{label}: row_offset must be >= 0, got {row_offset}")
        per_shard = -(-rows // num_shards)
        if row_offset + per_shard > shard_rows:
            raise ConfigError(
                f"{label}: {rows} rows over {num_shards} shards need rows "
                f"[{row_offset}, {row_offset + per_shard}) of every shard, but a shard has "
                f"{shard_rows} rows"
            )
        # Read-only from here on: lookups trust that every logical row maps inside the stack.
        self._stack = stack
        self._rows = rows
        self._dim = dim
        self._num_shards = num_shards
        self._shard_rows = shard_rows
        self._row_offset = row_offset
        self._rotation = rotation
        self._name = name

    # --- the layout ---------------------------------------------------------------------------

    @property
    def stack(self) -> np.ndarray:
        """The whole stack ``[T·N, W]`` (shared with the other tables of the stack)."""
        return self._stack

    @property
    def rows(self) -> int:
        """R, the logical rows (the vocabulary size)."""
        return self._rows

    @property
    def dim(self) -> int:
        """D, the logical width."""
        return self._dim

    @property
    def num_shards(self) -> int:
        """N, the SparseCore shards of the stack."""
        return self._num_shards

    @property
    def shard_rows(self) -> int:
        """T, the rows of one shard."""
        return self._shard_rows

    @property
    def row_offset(self) -> int:
        """o, this table's first row inside every shard."""
        return self._row_offset

    @property
    def rotation(self) -> int:
        """ρ, this table's shard rotation."""
        return self._rotation

    # --- array-like description of the logical table ------------------------------------------

    @property
    def name(self) -> str | None:
        """The table's name (None when not given)."""
        return self._name

    @property
    def width(self) -> int:
        """W, the stack's padded width (columns ``[dim, W)`` are padding)."""
        return int(self.stack.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, dim)``, the logical shape."""
        return (self.rows, self.dim)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The stack's dtype (float32, or float64)."""
        return self.stack.dtype

    @property
    def ndim(self) -> int:
        """Always 2."""
        return 2

    @property
    def itemsize(self) -> int:
        """Bytes per value."""
        return int(self.stack.itemsize)

    @property
    def size(self) -> int:
        """``rows * dim``, the logical number of values."""
        return self.rows * self.dim

    @property
    def nbytes(self) -> int:
        """Bytes of the logical table (``rows * dim * itemsize``); the stack holds more."""
        return self.rows * self.dim * self.itemsize

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        name = "" if self._name is None else f"{self._name!r}, "
        return (
            f"StackedTable({name}shape=({self.rows}, {self.dim}), dtype={self.dtype}, "
            f"stack={tuple(self.stack.shape)}, num_shards={self.num_shards}, "
            f"shard_rows={self.shard_rows}, row_offset={self.row_offset}, "
            f"rotation={self.rotation})"
        )

    # --- rows ---------------------------------------------------------------------------------

    def stacked_rows(self, ids: Any) -> np.ndarray:
        """The stacked row (int64) of each logical row in ``ids``, in the same shape.

        ``ids`` must already be valid (``0 <= id < rows``); nothing is checked here.
        """
        r = np.asarray(ids, dtype=np.int64)
        n = self._num_shards
        shard = (r % n + self._rotation) % n
        out: np.ndarray = shard * self._shard_rows + (r // n + self._row_offset)
        return out

    def unstack(self) -> np.ndarray:
        """A private C-contiguous ``[rows, dim]`` copy of the logical table.

        This is what a ``copy=True`` restore holds, and what TensorFlow's ForServing restore
        builds (SPARSECORE_FORMAT.md §3.3). One strided copy per shard, no index arrays.
        """
        out = np.empty((self.rows, self.dim), dtype=self.dtype)
        n, t, o = self.num_shards, self.shard_rows, self.row_offset
        for k in range(min(n, self.rows)):
            count = len(range(k, self.rows, n))
            first = ((k + self.rotation) % n) * t + o
            out[k::n] = self.stack[first : first + count, : self.dim]
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(
                f"{self!r} cannot be converted to an array without a copy (its rows are "
                "interleaved with other tables' in the stack)"
            )
        out = self.unstack()
        if dtype is not None and np.dtype(dtype) != out.dtype:
            out = out.astype(dtype)
        return out

    def _logical_rows(self, key: Any) -> np.ndarray | int:
        """``key`` (int, slice, int or bool array) as validated logical row(s)."""
        if isinstance(key, slice):
            return np.arange(*key.indices(self.rows), dtype=np.int64)
        if isinstance(key, (bool, np.bool_)):
            raise IndexError(f"{self._label()}: a bool is not a row index")
        try:
            row = operator.index(key)
        except TypeError:
            pass
        else:
            if not -self.rows <= row < self.rows:
                raise IndexError(f"{self._label()}: row {row} is out of range for {self.rows} rows")
            return row + self.rows if row < 0 else row
        ids = np.asarray(key)
        if ids.dtype == np.bool_:
            if ids.shape != (self.rows,):
                raise IndexError(
                    f"{self._label()}: a boolean row mask must have shape ({self.rows},), "
                    f"got {ids.shape}"
                )
            return np.flatnonzero(ids)
        if ids.size == 0:
            ids = ids.astype(np.int64)
        if ids.dtype.kind not in "iu":
            raise IndexError(
                f"{self._label()}: rows must be indexed by ints, slices or int / bool arrays, "
                f"got {ids.dtype}"
            )
        ids = ids.astype(np.int64)
        bad = (ids < -self.rows) | (ids >= self.rows)
        if bad.any():
            raise IndexError(
                f"{self._label()}: row {int(ids[bad].flat[0])} is out of range for {self.rows} rows"
            )
        return np.where(ids < 0, ids + self.rows, ids)

    def __getitem__(self, key: Any) -> Any:
        """Copies of logical rows: ``t[i]``, ``t[a:b]``, ``t[ids]``, ``t[mask]``, and any of
        these followed by a column index (``t[i, j]``, ``t[:, :4]``)."""
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            if not key:
                return self.unstack()
            key, rest = key[0], key[1:]
        rows = self._logical_rows(key)
        picked = self.stack[self.stacked_rows(rows), : self.dim]
        if isinstance(picked, np.ndarray) and picked.base is not None and picked.ndim == 1:
            picked = picked.copy()  # one int row is a view of the stack: hand out a copy
        if not rest:
            return picked
        if picked.ndim == 1:
            return picked[rest]
        return picked[(slice(None), *rest)]

    def _label(self) -> str:
        return f"stacked table {self._name!r}" if self._name is not None else "stacked table"
