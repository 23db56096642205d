"""``serving_embedding_lookup``: TensorFlow's CPU lookup semantics over compiled kernels.

One call walks the features in ``tf.nest`` path order. For each feature it picks TensorFlow's
path for the input kind and options (see SEMANTICS.md, §0 has the table), turns the input into
flat validated arrays (:mod:`embserve.inputs`), checks every id that will be read against the
table's row count (:mod:`embserve.kernels.check`), and only then runs a kernel. The outputs are
packed back into the structure of ``inputs``.

Tables: a plain ``[rows, dim]`` array, or a :class:`~embserve.tables.StackedTable`, a logical
table inside a SparseCore stack ``[T·N, W]``. A stacked table is read in place: its ids are
checked against its logical rows, translated to rows of the stack in one compiled pass
(:mod:`embserve.kernels.stacked`), and the same kernels read the first ``dim`` columns of those
rows. No padding row or column is ever read. A :class:`~embserve.storage.QuantizedTable`
(float16, bfloat16, int8 or int4 rows) is also read in place: ids are checked against its rows,
and the kernels of :mod:`embserve.kernels.quantized` widen the stored rows they read to float32
on every path (dense, ragged, sparse validated and plain, sequence, weights, every combiner,
``output_shape``), so outputs are float32 of width ``dim`` and no float32 copy of the table is
made. The fused many-feature dense gather (:mod:`embserve.kernels.multi`) reads float32 tables
only: a request with a feature on a quantized table takes the general path, one kernel call
per feature.

Sizes: sizes the caller declares (a sparse ``dense_shape``, the largest row index on the plain
sparse path, ``output_shape``, ``max_sequence_length``) are checked against
:data:`MAX_OUTPUT_BYTES` before anything is allocated, and an allocation that still fails raises
:class:`~embserve.errors.InputError` naming the feature rather than ``MemoryError`` (TensorFlow
fails such lookups with ``ResourceExhausted``).

Overflow: a combined (pooled or scattered) output that is inf or NaN although the weights and the
table rows that fed it are finite raises :class:`~embserve.errors.InputError` naming the feature
and example, and so does a ``mean`` / ``sqrtn`` denominator (Σ w, Σ w²) that overflows float32,
which TensorFlow turns into silent zeros. TensorFlow returns such outputs; a table that itself
holds inf / NaN is served as TensorFlow serves it.

Structure is matched by joined string path, as TensorFlow does: ``inputs`` may be any subset of
``feature_config`` and may use other container types, as long as the paths agree. Beyond
TensorFlow, a Python list of ids sitting at a feature's own path is taken as that feature's dense
ids (TensorFlow treats it as more structure and fails).
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from embserve import config as _config
from embserve import nest
from embserve.config import FeatureConfig, TableConfig
from embserve.errors import ConfigError, FeatureConfigTypeError, IdOutOfRangeError, InputError
from embserve.inputs import (
    DENSE,
    RAGGED,
    SPARSE,
    RaggedParts,
    SparseParts,
    kind_of,
    memory_bytes,
    to_dense_ids,
    to_ragged,
    to_sparse,
    weight_values,
)
from embserve.kernels import _jit
from embserve.kernels.arena import OutputArena
from embserve.kernels.check import first_bad_id
from embserve.kernels.multi import GroupCache, TableGroup
from embserve.kernels.pooled import (
    MEAN,
    SQRTN,
    SUM,
    pooled_overflow,
    pooled_parallel,
    pooled_serial,
)
from embserve.kernels.quantized import KERNELS as _QUANTIZED_KERNELS
from embserve.kernels.quantized import Kernels as _QuantizedKernels
from embserve.kernels.quantized import pooled_overflow as _quantized_overflow
from embserve.kernels.quantized import stored_bytes, stored_width
from embserve.kernels.sequence import (
    gather_parallel,
    gather_serial,
    scatter_add_parallel,
    scatter_add_serial,
    sequence_parallel,
    sequence_serial,
)
from embserve.kernels.stacked import RowMap, map_rows
from embserve.storage import QuantizedTable
from embserve.tables import StackedTable

__all__ = [
    "MAX_OUTPUT_BYTES",
    "FeatureSpec",
    "LookupPlan",
    "flatten_feature_config",
    "kernel_threads",
    "serving_embedding_lookup",
]

_log = logging.getLogger("embserve")

_COMBINERS = {"sum": SUM, "mean": MEAN, "sqrtn": SQRTN}
_NO_WEIGHTS = np.empty(0, dtype=np.float32)
_TABLE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F32 = np.dtype(np.float32)
_FAST_ID_DTYPES = frozenset((np.dtype(np.int32), np.dtype(np.int64)))
# Key orders remembered per plan for the fused dense path (each group may hold output buffers).
_MAX_DENSE_GROUPS = 16
_NDARRAY = {np.ndarray}
_dtype_of = operator.attrgetter("dtype")

# The largest output one feature's lookup may allocate, with its per-example index arrays (16
# bytes per example or bag); checked before anything is allocated. Sizes a caller declares
# (a sparse dense_shape, a row index on the plain sparse path, an output_shape or
# max_sequence_length) can ask for any amount: [2**40, 4] once meant "Unable to allocate 72.8
# TiB", and with overcommit a merely large request is granted and then OOM-kills the process
# while it is filled. A quarter of the memory this process may use (physical, or its cgroup's
# limit): larger than any output a server could encode and send (JSON is 3-4x the float bytes),
# small enough to leave the tables' page cache and the caller's own copies room. Set it to
# change the bound; the server's per-request limits are the tighter, intended ones.
MAX_OUTPUT_BYTES: int = memory_bytes() // 4

# Below this many output floats a call runs on the calling thread: waking the pool costs more
# than the work (a parallel region costs ~15-20 µs here; 32k floats gather in about that time).
PARALLEL_MIN_FLOATS = 1 << 15

_warned: set[tuple[str, str]] = set()


def _warn_once(path: str, message: str) -> None:
    """TensorFlow logs these on every call; once per feature is enough to be seen."""
    if (path, message) not in _warned:
        _warned.add((path, message))
        _log.warning("feature %r: %s", path, message)


def _parallel(n_floats: int) -> bool:
    return _jit.PARALLEL and n_floats >= PARALLEL_MIN_FLOATS


def kernel_threads() -> int:
    """How many threads one lookup's parallel kernels use: numba's thread count for this
    thread (``NUMBA_NUM_THREADS``, or ``numba.set_num_threads``), or 1 when embserve runs its
    kernels serially (no working threading layer). A caller sizing its own pool of lookup
    threads divides its cores by this, since every thread that calls the parallel kernels
    starts its own team of this many threads."""
    return numba.get_num_threads() if _jit.PARALLEL else 1


def _table_name(table_config: TableConfig) -> str:
    return str(table_config.name) if table_config.name is not None else "<unnamed table>"


def _check_size(path: str, what: str, shape: tuple[int, ...], itemsize: int, bags: int) -> None:
    """Raise InputError, before anything is allocated, when an output of ``shape`` plus ``bags``
    examples' index arrays would exceed :data:`MAX_OUTPUT_BYTES`."""
    need = math.prod(shape) * itemsize + 16 * bags
    if need > MAX_OUTPUT_BYTES:
        raise InputError(
            f"feature {path!r}: {what} asks for an output of shape {list(shape)} ({need:,} bytes "
            f"with its index arrays), more than {MAX_OUTPUT_BYTES:,} bytes "
            "(embserve.lookup.MAX_OUTPUT_BYTES, a quarter of this machine's memory by default); "
            "TensorFlow would fail to allocate it (ResourceExhausted)"
        )


def _prepare_table(
    table: Any, table_config: TableConfig
) -> tuple[np.ndarray | QuantizedTable, RowMap | None]:
    """The array the kernels read for ``table``, and where its logical rows sit in it.

    A plain table becomes a 2-D C-contiguous float array (converted only if it is not one
    already), read as it is (placement None). A :class:`~embserve.tables.StackedTable` is read
    in place: its whole stack ``[T·N, W]`` (a private view, so nobody can reshape the array the
    kernels were promised), with the :class:`~embserve.kernels.stacked.RowMap` of its rows; ids
    are checked against its logical rows, then translated. A
    :class:`~embserve.storage.QuantizedTable` is returned as it is (never converted: that
    would dequantize a copy); :class:`_QuantizedFeature` takes its stored rows.
    """
    if isinstance(table, np.ndarray):
        arr = table
    elif isinstance(table, StackedTable):
        stack = table.stack.view(np.ndarray)
        # The StackedTable checked all this when built, but its stack is the caller's array
        # object, whose shape can be reassigned in place: check what the kernels rely on.
        if (
            stack.ndim != 2
            or stack.dtype not in _TABLE_DTYPES
            or not stack.flags.c_contiguous
            or stack.shape[0] != table.shard_rows * table.num_shards
            or stack.shape[1] < table.dim
        ):
            raise InputError(
                f"table {_table_name(table_config)!r}: the stack of {table!r} no longer has "
                f"the layout it was built with (shape {stack.shape}, dtype {stack.dtype}, "
                f"strides {stack.strides})"
            )
        placement = RowMap(
            table.rows, table.num_shards, table.shard_rows, table.row_offset, table.rotation
        )
        return stack, placement
    elif isinstance(table, QuantizedTable):
        return table, None
    else:
        arr = np.asarray(table)
    if arr.ndim != 2:
        raise InputError(
            f"table {_table_name(table_config)!r}: expected a 2-D [rows, dim] table, "
            f"got shape {arr.shape}"
        )
    if arr.dtype not in _TABLE_DTYPES:
        raise InputError(
            f"table {_table_name(table_config)!r}: dtype {arr.dtype} is not served; "
            "tables must be float32 (or float64)"
        )
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr, None


# ---------------------------------------------------------------------------------------------
# Feature configs: flattened once, described once


def flatten_feature_config(
    feature_config: Any, *, unique_paths: bool = False
) -> dict[str, FeatureConfig]:
    """``tf.nest`` path → ``FeatureConfig`` for a feature_config structure, in tf.nest order.

    Paths join dict keys (visited in sorted order), namedtuple field names and list / tuple
    indices with ``/``; a lone ``FeatureConfig`` has path ``""``. Inputs are matched to features
    by these paths, by lookups and by the server's requests alike.

    Args:
        feature_config: a ``FeatureConfig`` or nested dicts, lists, tuples and namedtuples of
            them.
        unique_paths: refuse two leaves with the same path (``{"a/b": x, "a": {"b": y}}``).
            TensorFlow keeps the last one silently, so lookups leave this off; a serving config
            should turn it on.

    Raises:
        FeatureConfigTypeError: a leaf is not a ``FeatureConfig`` (TensorFlow's
            ``AttributeError``, and a ``ConfigError``), naming its path.
        TypeError: the keys of a dict cannot be sorted (as ``tf.nest``), naming its path.
        ConfigError: with ``unique_paths``, two leaves share a path.
    """
    flat = nest.flatten_with_paths(feature_config)
    features: dict[str, FeatureConfig] = {}
    for path, leaf in flat:
        if not isinstance(leaf, FeatureConfig):
            raise FeatureConfigTypeError(
                f"feature_config leaf at path {path!r} is a {type(leaf).__name__}, not a "
                f"FeatureConfig ({type(leaf).__name__!r} object has no attribute "
                "'output_shape')"
            )
        if unique_paths and path in features:
            raise ConfigError(
                f"feature_config has two features at path {path!r}; inputs are matched to "
                "features by path, so one of them could never be looked up"
            )
        features[path] = leaf
    return features


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What a feature accepts and what its lookup returns, decided in one place.

    The lookup itself reads these rules from here; so can anything that prepares inputs or
    describes outputs (a REST codec, a metadata route, a smoke check). A snapshot of the
    ``FeatureConfig`` and its ``TableConfig`` when made (:meth:`of`): make a new one after
    changing a config. Shapes use the table config's ``dim``; a lookup with tables of another
    width returns that width.

    Attributes:
        path: the feature's path in the feature_config.
        table: the table's name (``None`` before ``TPUEmbeddingForServing`` names it).
        dim: the table config's embedding width.
        combiner: ``"sum"``, ``"mean"`` or ``"sqrtn"``.
        max_sequence_length: 0 for a pooled feature.
        output_shape: the configured output shape without ``dim``, or ``None``.
        validate_weights_and_indices: the sparse path (validated, or TF's plain one).
    """

    path: str
    table: str | None
    dim: int
    combiner: str
    max_sequence_length: int
    output_shape: tuple[int | None, ...] | None
    validate_weights_and_indices: bool

    @classmethod
    def of(cls, path: str, config: FeatureConfig) -> FeatureSpec:
        """The spec of ``config`` as it is now."""
        table = config.table
        shape = config.output_shape
        return cls(
            path=path,
            table=None if table.name is None else str(table.name),
            dim=int(table.dim),
            combiner=str(table.combiner),
            max_sequence_length=int(config.max_sequence_length),
            output_shape=None if shape is None else tuple(shape),
            validate_weights_and_indices=bool(config.validate_weights_and_indices),
        )

    @property
    def sequence(self) -> bool:
        """A sequence feature: ragged or rank-2 sparse ids give ``[batch, L, dim]``."""
        return self.max_sequence_length > 0

    @property
    def accepts_dense(self) -> bool:
        """Dense ids are accepted (not for sequence features). They give one row per id and
        ignore ``output_shape``, as in TensorFlow: send bags to have it applied."""
        return not self.sequence

    @property
    def accepts_weights(self) -> bool:
        """Sparse / ragged weights are accepted (not for sequence features)."""
        return not self.sequence

    @property
    def example_shape(self) -> tuple[int, ...] | None:
        """One example's output when given as a bag: ``(dim,)`` pooled, ``(L, dim)`` for a
        sequence feature; ``None`` when ``output_shape`` shapes the whole output instead."""
        if self.output_shape is not None:
            return None
        if self.sequence:
            return (self.max_sequence_length, self.dim)
        return (self.dim,)

    def ragged_length(self, batch: int) -> int:
        """How ragged input of ``batch`` rows is read: 0 when each row is pooled into one
        vector, else the sequence length ``L`` each row is cut or padded to (the feature's
        ``max_sequence_length``, or ``size // batch`` when an ``output_shape`` of ``size``
        elements exceeds the batch: TensorFlow then ignores the combiner and weights).

        Raises:
            InputError: an ``output_shape`` that cannot apply to this batch (TensorFlow's
                errors: partially known, empty batch, not a multiple of the batch).
        """
        shape = self.output_shape
        if shape is None:
            return self.max_sequence_length
        if any(d is None for d in shape):
            raise InputError(
                f"feature {self.path!r}: Cannot convert a partially known TensorShape "
                f"{shape} to a Tensor (output_shape must be fully known)"
            )
        size = math.prod(int(d) for d in shape if d is not None)
        if size == batch:
            return 0
        if batch == 0:
            raise InputError(
                f"feature {self.path!r}: output_shape {shape} cannot be applied to an empty "
                "batch (TensorFlow: 'Integer division by zero')"
            )
        if size > batch and size % batch == 0:
            return size // batch
        raise InputError(
            "Output shape set in the FeatureConfig should be the factor of the input data "
            f"batch size. But instead got output shape {shape}, input data batch size "
            f"{batch} (feature {self.path!r})"
        )

    def ragged_output_shape(self, batch: int) -> tuple[int, ...]:
        """The output shape for ragged input of ``batch`` rows (raises as
        :meth:`ragged_length`)."""
        length = self.ragged_length(batch)
        if self.output_shape is not None:
            return (*(int(d) for d in self.output_shape if d is not None), self.dim)
        return (batch, length, self.dim) if length else (batch, self.dim)

    def sparse_sequence(self, rank: int) -> bool:
        """Whether sparse input of this rank takes the sequence path (rank 2, no
        ``output_shape``); otherwise ``max_sequence_length`` is ignored and bags are pooled."""
        return self.sequence and self.output_shape is None and rank == 2

    def sparse_output_shape(self, dense_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for sparse input of ``dense_shape`` (``output_shape`` does not
        apply to sparse input). On the plain path (``validate_weights_and_indices=False``,
        rank <= 2) the output has ``1 + largest row index`` rows instead of
        ``dense_shape[0]``."""
        if self.sparse_sequence(len(dense_shape)):
            return (dense_shape[0], self.max_sequence_length, self.dim)
        return (*dense_shape[:-1], self.dim)

    def check_dense(self) -> None:
        """Raise :class:`InputError` unless dense ids are accepted (TensorFlow's message)."""
        if not self.accepts_dense:
            raise InputError(
                f"Feature {self.path} is a sequence feature but a dense tensor was passed. "
                "Sequence features need sparse or ragged input."
            )

    def check_weights(self) -> None:
        """Raise :class:`InputError` unless weights are accepted (TensorFlow's message)."""
        if not self.accepts_weights:
            raise InputError(f"Weight specified for {self.path}, but this is a sequence feature.")

    def dense_output_shape(self, ids_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for dense ids of ``ids_shape``: one row per id.

        Raises:
            InputError: a sequence feature (it needs sparse or ragged input).
        """
        self.check_dense()
        return (*ids_shape, self.dim)


class _Feature:
    """What one feature's lookup needs, read from its FeatureConfig once per call.

    ``table`` is the array the kernels read: the table itself, or the whole stack of a
    :class:`~embserve.tables.StackedTable`. ``rows`` and ``dim`` are the logical table's: ids
    are checked against ``rows``, outputs are ``dim`` wide. :meth:`array_rows` turns checked ids
    into rows of ``table``.

    ``kernels`` is None here (float32 and float64 tables); :class:`_QuantizedFeature` sets it to
    the quantized kernels of its table's storage type, which read ``data``.
    """

    # A class attribute, not a slot: float32 features pay no assignment for it.
    kernels: _QuantizedKernels | None = None
    data: np.ndarray  # a slot of _QuantizedFeature only

    __slots__ = (
        "arena",
        "changes",
        "combiner",
        "combiner_name",
        "dim",
        "path",
        "placement",
        "row_arena",
        "rows",
        "shape_map",
        "source",
        "spec",
        "table",
        "table_name",
    )

    def __init__(
        self,
        path: str,
        config: FeatureConfig,
        spec: FeatureSpec,
        prepared: tuple[np.ndarray | QuantizedTable, RowMap | None],
        source: Any,
        changes: int,
    ) -> None:
        self.changes = changes  # the config change count the spec is at least as new as
        self.path = path
        self.spec = spec
        table, placement = prepared
        self.table = table
        self.placement = placement
        if placement is None:
            self.rows, self.dim = table.shape
            self.shape_map: tuple[int, int, int, int, int] | None = None
            self.row_arena: OutputArena | None = None
        else:
            self.rows = placement.rows
            self.dim = int(source.dim)
            m = placement
            self.shape_map = (m.num_shards, m.shift, m.shard_rows, m.row_offset, m.rotation)
            self.row_arena = OutputArena()
        self.source = source  # the table object the caller passed, before _prepare_table
        self.table_name = _table_name(config.table)
        combiner = spec.combiner
        if combiner not in _COMBINERS:
            raise InputError(f"feature {path!r}: combiner {combiner!r} is not supported on CPU")
        self.combiner_name = combiner
        self.combiner = _COMBINERS[combiner]
        self.arena = OutputArena()

    def output(self, shape: tuple[int, ...], zero: bool = False) -> np.ndarray:
        """An output array of ``shape`` in the table's dtype, from this feature's arena (within
        :data:`MAX_OUTPUT_BYTES`)."""
        if math.prod(shape) * self.table.itemsize > MAX_OUTPUT_BYTES:
            _check_size(self.path, "the input", shape, self.table.itemsize, 0)
        out = self.arena.take(shape, self.table.dtype)
        if zero:
            out.fill(0)
        return out

    def array_rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows of :attr:`table` the kernels read for checked 1-D ``ids``: ``ids`` itself
        for a plain table, else their stacked rows (int64, one compiled pass)."""
        m = self.shape_map
        if m is None:
            return ids
        assert self.row_arena is not None
        rows = self.row_arena.take(ids.shape, np.int64)
        map_rows(ids, m[0], m[1], m[2], m[3], m[4], rows)
        return rows

    def check_ids(
        self, ids: np.ndarray, allow_negative: bool, locate: Any, subset: np.ndarray | None = None
    ) -> None:
        """Raise IdOutOfRangeError for the first id outside the table (``locate(k)`` → row,
        position of value ``k``; ``subset`` maps checked ids back to value positions)."""
        bad = first_bad_id(ids, self.rows, allow_negative)
        if bad >= 0:
            k = int(subset[bad]) if subset is not None else bad
            row, position = locate(k)
            raise IdOutOfRangeError(
                self.path, self.table_name, row, position, int(ids[bad]), self.rows
            )


class _QuantizedFeature(_Feature):
    """A feature whose table is a :class:`~embserve.storage.QuantizedTable`.

    ``table`` is the QuantizedTable itself (array-like: float32 ``dtype`` and ``itemsize`` 4, so
    outputs and size checks are float32's; a few rows read through it on the rare overflow
    path are dequantized copies); ``data`` is a private ``uint8`` view of its stored rows, which
    the quantized kernels read in place.
    """

    __slots__ = ("data", "kernels")

    def __init__(
        self,
        path: str,
        config: FeatureConfig,
        spec: FeatureSpec,
        prepared: tuple[np.ndarray | QuantizedTable, RowMap | None],
        source: Any,
        changes: int,
    ) -> None:
        table = prepared[0]
        assert isinstance(table, QuantizedTable)
        stored = table.data
        kernels = _QUANTIZED_KERNELS[table.storage]
        # The QuantizedTable checked all this when built, but its array is the caller's object,
        # whose shape can be reassigned in place: check what the kernels rely on, on a private
        # view that nobody else can reshape.
        data = stored_bytes(stored) if isinstance(stored, np.ndarray) else None
        if (
            data is None
            or data.ndim != 2
            or not data.flags.c_contiguous
            or data.shape[0] == 0
            or data.shape[1] != stored_width(kernels.kind, table.dim)
        ):
            raise InputError(
                f"table {_table_name(config.table)!r}: the rows of {table!r} no longer have "
                f"the layout it was built with"
            )
        self.data = data.view(np.ndarray)
        self.kernels = kernels
        super().__init__(path, config, spec, (table, None), source, changes)
        self.rows = int(self.data.shape[0])


# ---------------------------------------------------------------------------------------------
# Dense


def _dense_locate(shape: tuple[int, ...]) -> Any:
    def locate(k: int) -> tuple[int, Any]:
        if len(shape) == 0:
            return 0, 0
        idx = np.unravel_index(k, shape)
        rest = tuple(int(i) for i in idx[1:])
        return int(idx[0]), (rest[0] if len(rest) == 1 else rest) if rest else 0

    return locate


def _lookup_dense(f: _Feature, raw: Any) -> np.ndarray:
    f.spec.check_dense()
    ids = to_dense_ids(raw, f.path)
    flat = ids.reshape(-1)  # a view when contiguous, else a contiguous copy
    if first_bad_id(flat, f.rows, False) >= 0:
        f.check_ids(flat, False, _dense_locate(ids.shape))  # raises, naming row and position
    dim = f.dim
    out = f.output((flat.shape[0], dim))
    kernels = f.kernels
    if kernels is None:
        (gather_parallel if _parallel(out.size) else gather_serial)(
            f.table, f.array_rows(flat), out
        )
    else:
        (kernels.gather_parallel if _parallel(out.size) else kernels.gather_serial)(
            f.data, flat, out
        )
    return out.reshape((*ids.shape, dim))


# ---------------------------------------------------------------------------------------------
# Shared CSR helpers


def _splits_from_rows(rows: np.ndarray, nrows: int) -> np.ndarray:
    """CSR splits for entries already grouped by (non-decreasing) row."""
    splits = np.zeros(nrows + 1, dtype=np.int64)
    if rows.shape[0]:
        np.cumsum(np.bincount(rows, minlength=nrows), out=splits[1:])
    return splits


def _pool(
    f: _Feature,
    ids: np.ndarray,
    weights: np.ndarray,
    splits: np.ndarray,
    nbags: int,
    bag_name: Any = str,
) -> np.ndarray:
    out = f.output((nbags, f.dim))
    kernels = f.kernels
    if kernels is None:
        kernel = pooled_parallel if _parallel(ids.shape[0] * f.dim) else pooled_serial
        rows = f.array_rows(ids)
        first = kernel(f.table, rows, weights, splits, f.combiner, out)
    else:
        parallel = _parallel(ids.shape[0] * f.dim)
        kernel = kernels.pooled_parallel if parallel else kernels.pooled_serial
        rows = ids
        first = kernel(f.data, ids, weights, splits, f.combiner, out)
    if first >= 0:
        _refuse_overflow(f, rows, weights, splits, out, first, bag_name)
    return out


def _refuse_overflow(
    f: _Feature,
    ids: np.ndarray,
    weights: np.ndarray,
    splits: np.ndarray,
    out: np.ndarray,
    first: int,
    bag_name: Any,
) -> None:
    """Raise when finite inputs overflowed in the bags from ``first`` on (the kernel flagged
    ``first``); return when every non-finite output came from the table's own inf / NaN.
    ``ids`` are the rows of ``f.table`` the kernel read (:meth:`_Feature.array_rows`)."""
    kernels = f.kernels
    if kernels is None:
        bag, why = pooled_overflow(f.table, ids, weights, splits, f.combiner, out, first)
    else:
        data = f.data
        bag, why = _quantized_overflow(
            data, kernels.kind, ids, weights, splits, f.combiner, out, first
        )
    if bag < 0:
        return
    dtype = f.table.dtype
    if why == 1:
        what = "sum of the weights" if f.combiner == MEAN else "sum of the squared weights"
        raise InputError(
            f"feature {f.path!r}: the {what} of example {bag_name(bag)} overflows float32, "
            f"the denominator of its {f.combiner_name} (the weights are finite, the result "
            "would be zeros or NaN); use smaller weights"
        )
    raise InputError(
        f"feature {f.path!r}: the combined embedding of example {bag_name(bag)} overflows "
        f"{dtype} (inf or NaN from finite weights and table rows); use smaller weights"
    )


def _sparse_locate(indices: np.ndarray) -> Any:
    def locate(k: int) -> tuple[int, Any]:
        idx = [int(i) for i in indices[k]]
        rest = idx[1:]
        return idx[0], (rest[0] if len(rest) == 1 else tuple(rest)) if rest else 0

    return locate


def _ragged_locate(splits: np.ndarray) -> Any:
    def locate(k: int) -> tuple[int, int]:
        row = int(np.searchsorted(splits, k, side="right")) - 1
        return row, k - int(splits[row])

    return locate


# ---------------------------------------------------------------------------------------------
# Sparse


def _lookup_sparse(f: _Feature, raw: Any, weight: Any) -> np.ndarray:
    spec = f.spec
    rank = np.size(raw.dense_shape)
    if spec.sparse_sequence(rank):
        sp = to_sparse(raw, f.path, allow_int16=True)
        return _sparse_sequence(f, sp, spec.max_sequence_length)
    sp = to_sparse(raw, f.path)
    if spec.sequence:
        _warn_once(
            f.path,
            f"max_sequence_length setting will be ignored because the rank of the input "
            f"tensor is {rank} which is not 2"
            + (" (or output_shape is set)" if spec.output_shape is not None else ""),
        )
    if not spec.validate_weights_and_indices and rank <= 2:
        return _sparse_plain(f, sp, weight)
    return _sparse_validated(f, sp, weight)


def _sparse_sequence(f: _Feature, sp: SparseParts, seq_len: int) -> np.ndarray:
    """Entry ``[b, j]`` lands at ``out[b, j]`` when ``b < dense_shape[0]`` and ``j < L``."""
    batch = sp.dense_shape[0]
    shape = (batch, seq_len, f.dim)
    _check_size(f.path, f"dense_shape {list(sp.dense_shape)}", shape, f.table.itemsize, batch)
    rows = sp.indices[:, 0]
    cols = sp.indices[:, 1]
    if rows.shape[0] and (rows.min() < 0 or cols.min() < 0):
        k = int(np.flatnonzero((rows < 0) | (cols < 0))[0])
        raise InputError(
            f"feature {f.path!r}: sparse index {sp.indices[k].tolist()} (entry {k}) is negative"
        )
    keep = (rows < batch) & (cols < seq_len)
    subset: np.ndarray | None = None
    ids, rows_k, cols_k = sp.values, rows, cols
    if not keep.all():
        subset = np.flatnonzero(keep)
        ids, rows_k, cols_k = ids[subset], rows[subset], cols[subset]
    # Ids outside the [B, L] window are never read, so (as in TensorFlow) never checked.
    f.check_ids(ids, False, _sparse_locate(sp.indices), subset)
    if rows_k.shape[0] > 1 and np.any(rows_k[1:] < rows_k[:-1]):
        order = np.argsort(rows_k, kind="stable")
        ids, rows_k, cols_k = ids[order], rows_k[order], cols_k[order]
    splits = _splits_from_rows(rows_k, batch)
    out = f.output(shape, zero=True)
    parallel = _parallel(ids.shape[0] * f.dim)
    cols_k = np.ascontiguousarray(cols_k)  # a column slice of the indices
    kernels = f.kernels
    if kernels is None:
        kernel = scatter_add_parallel if parallel else scatter_add_serial
        array_rows = f.array_rows(ids)
        first = kernel(f.table, array_rows, cols_k, splits, out)
    else:
        kernel = kernels.scatter_add_parallel if parallel else kernels.scatter_add_serial
        array_rows = ids
        first = kernel(f.data, ids, cols_k, splits, out)
    if first >= 0:
        _refuse_scatter_overflow(f, array_rows, rows_k, cols_k, out, first)
    return out


def _refuse_scatter_overflow(
    f: _Feature,
    ids: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    out: np.ndarray,
    first: int,
) -> None:
    """Raise when entries sharing a position summed finite rows to inf / NaN (the kernel
    flagged example ``first``); positions fed by a non-finite table row are the table's.
    ``ids`` are the rows of ``f.table`` the kernel read (:meth:`_Feature.array_rows`)."""
    bad = ~np.isfinite(out[first:]).all(axis=-1)  # [examples from first, L]
    later = rows >= first
    hit = np.zeros(rows.shape[0], dtype=bool)
    hit[later] = bad[rows[later] - first, cols[later]]
    fed_by_nonfinite = ~np.isfinite(f.table[ids[hit], : f.dim]).all(axis=1)
    bad[rows[hit][fed_by_nonfinite] - first, cols[hit][fed_by_nonfinite]] = False
    refused = np.argwhere(bad)
    if refused.shape[0]:
        b, j = (int(x) for x in refused[0])
        raise InputError(
            f"feature {f.path!r}: the sum of the sparse entries at example {b + first}, "
            f"position {j} overflows {f.table.dtype} (entries with the same index are added; "
            "their table rows are finite)"
        )


def _sparse_plain(f: _Feature, sp: SparseParts, weight: Any) -> np.ndarray:
    """TensorFlow's ``embedding_lookup_sparse``: bags are runs of equal row index, nothing is
    dropped, and the output has ``1 + max row`` rows (trailing empty rows vanish)."""
    rows = sp.indices[:, 0]
    n = rows.shape[0]
    if n and rows.min() < 0:
        k = int(np.flatnonzero(rows < 0)[0])
        raise InputError(
            f"feature {f.path!r}: sparse index {sp.indices[k].tolist()} (entry {k}) is negative"
        )
    if n > 1 and np.any(rows[1:] < rows[:-1]):
        k = int(np.flatnonzero(rows[1:] < rows[:-1])[0]) + 1
        raise InputError(
            f"feature {f.path!r}: segment ids are not increasing: entry {k} has row "
            f"{int(rows[k])} after row {int(rows[k - 1])}. With validate_weights_and_indices="
            "False the sparse indices must be sorted by row."
        )
    f.check_ids(sp.values, False, _sparse_locate(sp.indices))
    weights = _NO_WEIGHTS if weight is None else weight_values(weight, n, f.path, cast=True)
    nrows = int(rows[-1]) + 1 if n else 0
    dim = f.dim
    _check_size(f.path, f"row index {nrows - 1}", (nrows, dim), f.table.itemsize, nrows)
    return _pool(f, sp.values, weights, _splits_from_rows(rows, nrows), nrows)


def _validated_rows(f: _Feature, sp: SparseParts) -> tuple[np.ndarray, int]:
    """Bag (row) of every entry on the validated path, and the number of bags.

    TensorFlow reshapes any rank other than 2 to ``[prod(dense_shape[:-1]), dense_shape[-1]]``
    through the row-major linear index, so a coordinate past its dimension spills into a
    neighbouring row rather than failing ([0, 0, 4] in [2, 2, 3] lands in row 1) and only the
    resulting row is checked. Rank 2 is used as is: the row index is checked, the column not.
    """
    shape = sp.dense_shape
    nbags = math.prod(shape[:-1])
    out_shape = (*shape[:-1], f.dim)
    _check_size(f.path, f"dense_shape {list(shape)}", out_shape, f.table.itemsize, nbags)
    if len(shape) > 2 and math.prod(shape) >= 2**63:
        raise InputError(
            f"feature {f.path!r}: dense_shape {list(shape)} has {math.prod(shape):,} elements, "
            "more than an int64 index can address"
        )
    if len(shape) == 2:
        rows = sp.indices[:, 0]
    elif sp.indices.shape[0] == 0:
        rows = np.zeros(0, dtype=np.int64)
    elif shape[-1] == 0:
        raise InputError(
            f"feature {f.path!r}: sparse input has {sp.indices.shape[0]} entries but its "
            f"dense_shape {list(shape)} holds none"
        )
    else:
        strides = np.ones(len(shape), dtype=np.int64)
        strides[:-1] = np.cumprod(np.asarray(shape[:0:-1], dtype=np.int64))[::-1]
        linear = sp.indices @ strides
        last = shape[-1]
        # C++ division truncates toward zero, so small negative offsets stay in row 0.
        rows = np.where(linear >= 0, linear // last, -((-linear) // last))
    bad = (rows < 0) | (rows >= nbags)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"feature {f.path!r}: indices({k}, 0) is invalid: sparse index "
            f"{sp.indices[k].tolist()} falls in row {int(rows[k])}, outside [0, {nbags}) for "
            f"dense_shape {list(shape)}"
        )
    return rows, nbags


def _sparse_validated(f: _Feature, sp: SparseParts, weight: Any) -> np.ndarray:
    """TensorFlow's ``safe_embedding_lookup_sparse``: the last axis is the bag; negative ids are
    dropped, and so are weights ``<= 0`` for mean / sqrtn; empty bags give zeros."""
    rows, nbags = _validated_rows(f, sp)
    n = rows.shape[0]
    ids = sp.values
    weights = _NO_WEIGHTS if weight is None else weight_values(weight, n, f.path, cast=False)
    keep = ids >= 0
    if weight is not None and f.combiner != SUM:
        keep &= weights > 0
    subset: np.ndarray | None = None
    if not keep.all():
        subset = np.flatnonzero(keep)
        ids, rows = ids[subset], rows[subset]
        if weight is not None:
            weights = weights[subset]
    # Pruned entries are never read, so (as in TensorFlow) their ids are not checked.
    f.check_ids(ids, False, _sparse_locate(sp.indices), subset)
    if rows.shape[0] > 1 and np.any(rows[1:] < rows[:-1]):
        order = np.argsort(rows, kind="stable")
        ids, rows = ids[order], rows[order]
        if weight is not None:
            weights = weights[order]
    # ids / weights are contiguous: the parts from inputs.py, or new arrays from indexing.
    bags = sp.dense_shape[:-1]
    name: Any = str
    if len(bags) > 1:

        def name(b: int) -> str:
            return str([int(i) for i in np.unravel_index(b, bags)])

    out = _pool(f, ids, weights, _splits_from_rows(rows, nbags), nbags, name)
    return out.reshape((*bags, f.dim))


# ---------------------------------------------------------------------------------------------
# Ragged


def _sequence(f: _Feature, rg: RaggedParts, seq_len: int) -> np.ndarray:
    batch = rg.row_splits.shape[0] - 1
    out = f.output((batch, seq_len, f.dim))
    kernels = f.kernels
    if kernels is None:
        kernel = sequence_parallel if _parallel(out.size) else sequence_serial
        kernel(f.table, f.array_rows(rg.values), rg.row_splits, out)
    else:
        kernel = kernels.sequence_parallel if _parallel(out.size) else kernels.sequence_serial
        kernel(f.data, rg.values, rg.row_splits, out)
    return out


def _lookup_ragged(f: _Feature, raw: Any, weight: Any) -> np.ndarray:
    rg = to_ragged(raw, f.path)
    # TensorFlow looks every id up before packing, so an id beyond max_sequence_length still
    # has to be valid.
    f.check_ids(rg.values, False, _ragged_locate(rg.row_splits))
    weights = _NO_WEIGHTS
    if weight is not None:
        w_splits = getattr(weight, "row_splits", None)
        if w_splits is None or not np.array_equal(np.asarray(w_splits), rg.row_splits):
            raise InputError(
                f"feature {f.path!r}: ragged weights must have the same row_splits as the ids "
                "(TensorFlow: 'Condition x == y did not hold')"
            )
        weights = weight_values(weight, rg.values.shape[0], f.path, cast=False)
    batch = rg.row_splits.shape[0] - 1
    length = f.spec.ragged_length(batch)  # 0: pooled; raises for an output_shape that misfits
    # length > 0: a sequence feature, or TensorFlow's sequence reading of an output_shape
    # larger than the batch (the combiner and weights are then ignored).
    out = _sequence(f, rg, length) if length else _pool(f, rg.values, weights, rg.row_splits, batch)
    shape = f.spec.output_shape
    if shape is None:
        return out
    return out.reshape((*(int(d) for d in shape if d is not None), f.dim))


# ---------------------------------------------------------------------------------------------
# The call


def _check_weight(path: str, kind: str, raw: Any, weight: Any, spec: FeatureSpec) -> None:
    """TensorFlow's per-leaf weight rules, in its order."""
    if weight is None:
        return
    if kind == DENSE:
        raise InputError(f"Weight specified for {path}, but input is dense.")
    if kind_of(weight) != kind:
        raise InputError(
            f"Weight for {path} is of type {type(weight)} but it does not match type of the "
            f"input which is {type(raw)}."
        )
    spec.check_weights()


class LookupPlan:
    """A feature_config flattened once: paths in tf.nest order and their FeatureConfigs.

    Building the plan validates the structure (every leaf a FeatureConfig); running it does one
    lookup call. ``TPUEmbeddingForServing`` keeps one plan for its lifetime.
    """

    __slots__ = ("_cache", "_dense", "_specs", "features", "paths", "stop_paths")

    def __init__(self, feature_config: Any) -> None:
        self.features: dict[str, FeatureConfig] = flatten_feature_config(feature_config)
        self.paths: list[str] = list(self.features)
        self.stop_paths: frozenset[str] = frozenset(self.paths)
        # (config change count, path -> FeatureSpec): rebuilt after any config change.
        self._specs: tuple[int, dict[str, FeatureSpec]] = (-1, {})
        # path -> the _Feature of the last call, reused while the same table object is passed:
        # building it (table checks, names, combiner) cost ~1.5 µs per feature per call.
        self._cache: dict[str, _Feature] = {}
        # (tables mapping, config change count, key order of a flat dict of dense ids -> fused
        # group or None when not eligible): replaced whole, never edited in place for another
        # mapping, so a group built from old tables cannot land among the new ones.
        self._dense: tuple[Any, int, GroupCache] = (None, -1, GroupCache(_MAX_DENSE_GROUPS))

    def spec(self, path: str) -> FeatureSpec:
        """The :class:`FeatureSpec` of the feature at ``path``, for the configs as they are."""
        changes = _config.CHANGES[0]
        seen, specs = self._specs
        if seen != changes:
            specs = {}
            self._specs = (changes, specs)
        spec = specs.get(path)
        if spec is None:
            spec = specs[path] = FeatureSpec.of(path, self.features[path])
        return spec

    def forget_tables(self) -> None:
        """Drop cached references to tables (after a restore replaced them)."""
        self._cache.clear()
        self._dense = (None, -1, GroupCache(_MAX_DENSE_GROUPS))

    def _dense_group(
        self, keys: tuple[str, ...], tables: Mapping[TableConfig, Any]
    ) -> TableGroup | None:
        """The fused group for ``keys``, or None when a feature needs the general path."""
        prepared: list[np.ndarray] = []
        placements: list[RowMap | None] = []
        dim = -1
        for key in keys:
            cfg = self.features.get(key) if type(key) is str else None
            if cfg is None or not self.spec(key).accepts_dense or cfg.table not in tables:
                return None
            try:  # the general path's per-feature state: prepared table, combiner checked
                f = self._feature(key, cfg, tables[cfg.table])
            except InputError:
                return None  # the general path raises it, in its order
            table = f.table
            # Quantized tables are not fused (multi.py reads float32 rows): general path.
            if not isinstance(table, np.ndarray) or table.dtype != _F32:
                return None
            if prepared and f.dim != dim:
                return None
            dim = f.dim
            prepared.append(table)
            placements.append(f.placement)
        return TableGroup(prepared, placements, dim) if prepared else None

    def _run_dense(self, inputs: dict[Any, Any], tables: Mapping[TableConfig, Any]) -> Any:
        """All features dense, one shape, int32/int64 ids: one kernel call for the whole request
        (ids checked inside it). None when the call does not qualify or an id is out of range;
        the general path then runs (and raises the error naming feature, row and position)."""
        state = self._dense
        if state[0] is not tables or state[1] != _config.CHANGES[0]:
            state = self._dense = (tables, _config.CHANGES[0], GroupCache(_MAX_DENSE_GROUPS))
        keys = tuple(inputs)
        group = state[2].get(keys, lambda: self._dense_group(keys, tables))
        if group is None:
            return None
        values = list(inputs.values())
        # C-level passes over types and dtypes (for 26 features a Python loop testing type, dtype
        # and shape took 4.1 µs, these 2.1 µs). np.array then both stacks the ids and refuses
        # unequal shapes (4.3 µs, where checking shapes then concatenating took 2.6 + 4.4 µs).
        if set(map(type, values)) != _NDARRAY or not set(map(_dtype_of, values)) <= _FAST_ID_DTYPES:
            return None
        try:
            stacked = np.array(values)
        except ValueError:
            return None  # ids of different shapes
        shape: tuple[int, ...] = stacked.shape[1:]
        n = values[0].size
        if n == 0:
            return None
        dim = group.dim
        floats = len(keys) * n * dim
        if 4 * floats > MAX_OUTPUT_BYTES:
            return None  # the general path names the feature
        out = group.gather(stacked.reshape(-1), _parallel(floats))
        if out is None:
            return None
        if len(shape) == 1:
            return dict(zip(keys, out))  # noqa: B905 (equal lengths by construction; 1 µs)
        full = (*shape, dim)
        return {k: o.reshape(full) for k, o in zip(keys, out, strict=True)}

    def _feature(self, path: str, cfg: FeatureConfig, source: Any) -> _Feature:
        f = self._cache.get(path)
        changes = _config.CHANGES[0]
        if f is not None and f.source is source and f.changes == changes:
            return f
        spec = self.spec(path)  # read after the count: at least as new as it
        prepared = _prepare_table(source, cfg.table)
        # One isinstance per feature build (builds are cached across calls): float32 tables
        # keep the plain class, whose kernels attribute is None without an assignment.
        cls = _QuantizedFeature if isinstance(prepared[0], QuantizedTable) else _Feature
        f = cls(path, cfg, spec, prepared, source, changes)
        self._cache[path] = f
        return f

    def _flat_dict(
        self, inputs: Any, weights: Any
    ) -> tuple[list[tuple[str, Any]], list[Any]] | None:
        """The common case without the general walk: a flat dict keyed by feature paths (and
        weights ``None`` or a dict with the same keys). ``None`` when the general walk is
        needed, which also produces the errors."""
        if type(inputs) is not dict or (weights is not None and type(weights) is not dict):
            return None
        features = self.features
        for key in inputs:
            if type(key) is not str or key not in features:
                return None
        order = sorted(inputs)
        flat = [(k, inputs[k]) for k in order]
        if weights is None:
            return flat, [None] * len(order)
        if weights.keys() != inputs.keys():
            return None
        return flat, [weights[k] for k in order]

    def run(self, inputs: Any, weights: Any, tables: Mapping[TableConfig, Any]) -> Any:
        """Look up ``inputs`` (with ``weights``) in ``tables``; outputs in the inputs' structure."""
        if weights is None and type(inputs) is dict and inputs:
            fused = self._run_dense(inputs, tables)
            if fused is not None:
                return fused
        fast = self._flat_dict(inputs, weights)
        if fast is not None:
            flat_inputs, flat_weights = fast
        else:
            flat_inputs = nest.flatten_with_paths(inputs, self.stop_paths)
            unknown = [p for p, _ in flat_inputs if p not in self.features]
            if unknown:
                raise InputError(
                    "Inputs are not a subset of feature_config. Inputs keys are "
                    f"{ {p for p, _ in flat_inputs} }, but feature_config keys are "
                    f"{list(self.features)}"
                )
            if weights is None:
                flat_weights = [None] * len(flat_inputs)
            else:
                nest.assert_same_structure(inputs, weights, self.stop_paths)
                flat_weights = [w for _, w in nest.flatten_with_paths(weights, self.stop_paths)]

        outputs = []
        for (path, raw), weight in zip(flat_inputs, flat_weights, strict=True):
            cfg = self.features[path]
            kind = kind_of(raw)
            if kind is None:
                raise InputError(
                    f"Input {path} is type {type(raw)}. Tensor, SparseTensor or RaggedTensor "
                    "expected."
                )
            if weight is not None:
                _check_weight(path, kind, raw, weight, self.spec(path))
            # KeyError naming the TableConfig when it is missing, as in TensorFlow.
            f = self._feature(path, cfg, tables[cfg.table])
            try:
                if kind == DENSE:
                    outputs.append(_lookup_dense(f, raw))
                elif kind == SPARSE:
                    outputs.append(_lookup_sparse(f, raw, weight))
                else:
                    assert kind == RAGGED
                    outputs.append(_lookup_ragged(f, raw, weight))
            except MemoryError as exc:  # below MAX_OUTPUT_BYTES, but not available now
                raise InputError(
                    f"feature {path!r}: the lookup could not allocate its output ({exc}); "
                    "TensorFlow would fail the same way (ResourceExhausted)"
                ) from exc
        if fast is not None:
            by_path = dict(zip([p for p, _ in flat_inputs], outputs, strict=True))
            return {k: by_path[k] for k in inputs}
        return nest.pack_sequence_as(inputs, outputs, self.stop_paths)


def serving_embedding_lookup(
    inputs: Any, weights: Any | None, tables: Mapping[TableConfig, Any], feature_config: Any
) -> Any:
    """Look up ``inputs`` in ``tables`` exactly as TensorFlow's CPU serving path does.

    Args:
        inputs: a nested structure (matched to ``feature_config`` by path) of dense id arrays,
            :class:`~embserve.SparseTensor` s or :class:`~embserve.RaggedTensor` s (real
            TensorFlow tensors are accepted too).
        weights: ``None``, or the same structure as ``inputs`` with ``None`` or float32 sparse /
            ragged weights paired with the ids by position.
        tables: ``TableConfig`` → ``[rows, dim]`` float array, a
            :class:`~embserve.tables.StackedTable` (a table of a SparseCore stack, read in
            place: ids are checked against its logical rows), or a
            :class:`~embserve.storage.QuantizedTable` (float16, bfloat16, int8 or int4 rows,
            widened inside the kernels; outputs are float32), keyed by identity.
        feature_config: the nested structure of ``FeatureConfig`` s.

    Returns:
        The structure of ``inputs`` with one float array per feature (shapes as in TensorFlow;
        see SEMANTICS.md §0).

    Raises:
        IdOutOfRangeError: an id outside its table, naming feature, table, row and position.
        InputError: malformed inputs or weights (TensorFlow's ValueError or
            InvalidArgumentError cases).
        KeyError: a feature's TableConfig is not in ``tables``.
    """
    return LookupPlan(feature_config).run(inputs, weights, tables)
