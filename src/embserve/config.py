"""Configuration objects: tables, features, simulated quantization, and two table initializers.

:class:`TableConfig`, :class:`FeatureConfig`, :class:`QuantizationConfig` and
:class:`RowIdInitializer` mirror the classes of the same names in
``tf.tpu.experimental.embedding``: same positional order, defaults, stored attributes, checks (in
TensorFlow's order, with :class:`~embserve.errors.ConfigError` where TensorFlow raises
``ValueError``) and reprs. Like TensorFlow's, the configs compare by **identity**: two tables with
equal fields are still two tables, and features share a table by sharing the object.

:class:`TruncatedNormal` is the table initializer used when ``TableConfig(initializer=None)``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from embserve.errors import ConfigError
from embserve.optimizers import _as_numpy_dtype, _Optimizer

__all__ = [
    "FeatureConfig",
    "QuantizationConfig",
    "RowIdInitializer",
    "TableConfig",
    "TruncatedNormal",
]

_COMBINERS = ("mean", "sum", "sqrtn")

# What TensorFlow accepts as `dtype=` is whatever `tf.float32 == x` or `tf.int32 == x` holds for;
# that converts `x` with `tf.as_dtype`, which knows these spellings besides numpy dtypes:
_DTYPE_ENUMS = {1: np.dtype(np.float32), 3: np.dtype(np.int32)}  # TensorFlow's DataType values
_TF_ENUM_VALUES = frozenset(range(1, 34)) | frozenset(range(101, 134))  # every DataType in 2.21
_DTYPE_NAMES = {"float32": np.float32, "float": np.float32, "int32": np.int32}
_DTYPE_TYPES: dict[type, type] = {float: np.float32, np.float32: np.float32, np.int32: np.int32}
_TABLE_DTYPES = (np.dtype(np.float32), np.dtype(np.int32))


def _table_dtype(dtype: Any) -> np.dtype[Any] | None:
    """The numpy dtype ``dtype`` stands for when that is float32 or int32, else None.

    Mirrors ``dtype in (tf.float32, tf.int32)``: numpy types and dtypes (any byte order), the
    names ``"float32"``, ``"int32"`` and ``"float"``, Python's ``float``, TensorFlow's enum values
    1 and 3, ``tf.DType`` objects (duck-typed), and objects with a float32 / int32 ``.dtype``.
    """
    if dtype is None:
        return None
    if isinstance(dtype, np.dtype):
        found: np.dtype[Any] | None = dtype
    elif isinstance(dtype, str):
        name = _DTYPE_NAMES.get(dtype)
        found = None if name is None else np.dtype(name)
    elif isinstance(dtype, type):
        kind = _DTYPE_TYPES.get(dtype)
        found = None if kind is None else np.dtype(kind)
    elif isinstance(dtype, int | float | np.number):
        # A number that hashes like a TensorFlow enum value is that enum (True, 1.0 and
        # np.float32(1.0) are float32); other numpy scalars are judged by their own dtype.
        if dtype in _TF_ENUM_VALUES:
            found = _DTYPE_ENUMS.get(int(dtype))
        elif isinstance(dtype, np.number):
            found = dtype.dtype
        else:
            found = None
    elif hasattr(dtype, "as_datatype_enum"):  # a real tf.DType; float32_ref (101) is not float32
        found = _DTYPE_ENUMS.get(dtype.as_datatype_enum)
    elif hasattr(dtype, "as_numpy_dtype"):  # other tf.DType look-alikes
        try:
            found = _as_numpy_dtype(dtype)
        except TypeError:
            found = None
    elif hasattr(dtype, "dtype"):  # arrays, tensors: TensorFlow looks at their .dtype
        try:
            found = np.dtype(dtype.dtype)
        except TypeError:
            found = None
    else:
        found = None
    if found is None:
        return None
    for table_dtype in _TABLE_DTYPES:
        if found.type is table_dtype.type:
            return table_dtype
    return None


class TruncatedNormal:
    """Initializer drawing from a normal distribution truncated at two standard deviations.

    Values more than ``2 * stddev`` away from ``mean`` are discarded and redrawn, so every value
    lies strictly inside ``(mean - 2 * stddev, mean + 2 * stddev)``; the resulting standard
    deviation is about ``0.8796 * stddev``. ``TableConfig(initializer=None)`` uses
    ``TruncatedNormal(mean=0.0, stddev=1 / sqrt(dim))``, as TensorFlow does.

    Args:
        mean: the centre of the distribution.
        stddev: the standard deviation of the normal before truncation.
        seed: None (fresh, unseeded draws on every call, like TensorFlow's default), an int (every
            call returns the same values), or a ``np.random.Generator`` to draw from (successive
            calls differ).
    """

    def __init__(
        self,
        mean: float = 0.0,
        stddev: float = 0.05,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.mean = mean
        self.stddev = stddev
        self.seed = seed

    def __call__(self, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
        """Returns a new ``shape``-shaped array of ``dtype`` (a floating type).

        Raises:
            ConfigError: ``dtype`` is not a floating-point type.
        """
        np_dtype = _as_numpy_dtype(dtype)
        if not np.issubdtype(np_dtype, np.floating):
            raise ConfigError(
                f"Argument `dtype` is expected to be floating point. Received: {np_dtype}."
            )
        rng = (
            self.seed
            if isinstance(self.seed, np.random.Generator)
            else np.random.default_rng(self.seed)
        )
        # Draw directly in float32 when that is the target: a 10M x 64 table stays 2.5 GB, not 5.
        work = np_dtype if np_dtype in (np.dtype(np.float32), np.dtype(np.float64)) else np.float64
        z = rng.standard_normal(tuple(shape), dtype=work)
        flat = z.reshape(-1)
        bad = np.flatnonzero(np.abs(flat) >= 2.0)
        # About 4.6% of draws fall outside; each round redraws only those.
        while bad.size:
            flat[bad] = rng.standard_normal(bad.size, dtype=work)
            bad = bad[np.abs(flat[bad]) >= 2.0]
        z *= self.stddev
        z += self.mean
        return z.astype(np_dtype, copy=False)

    def __repr__(self) -> str:
        return f"TruncatedNormal(mean={self.mean!r}, stddev={self.stddev!r}, seed={self.seed!r})"


class QuantizationConfig:
    """Settings for simulated quantization of a table's lookups (TPU training only).

    On the TPU, looked-up values are clipped to ``[lower, upper]`` and rounded to one of
    ``num_buckets`` evenly spaced levels before combining. **Ignored on the CPU**, as in
    TensorFlow: a table with a quantization config serves its raw stored rows.

    Args:
        num_buckets: the number of quantization levels; must be at least 2. Not checked to be an
            int.
        lower: the lower clipping bound. Not checked against ``upper``.
        upper: the upper clipping bound.

    Raises:
        ConfigError: ``num_buckets < 2``.
    """

    def __init__(self, num_buckets: int, lower: float, upper: float) -> None:
        if num_buckets < 2:
            raise ConfigError(
                f"num_buckets is {num_buckets}, must be at least 2 for simulated quantization."
            )
        self.num_buckets = num_buckets
        self.lower = lower
        self.upper = upper

    def __repr__(self) -> str:
        return (
            f"QuantizationConfig(num_buckets={self.num_buckets!r}, lower={self.lower!r}, "
            f"upper={self.upper!r})"
        )


# Bumped by every attribute assignment on a TableConfig or FeatureConfig. TensorFlow reads the
# configs on every lookup, so a changed combiner or max_sequence_length applies to the next call;
# lookup state derived from configs (the fused dense path) compares this one number instead of
# re-reading every feature's fields per call.
CHANGES = [0]


class _Tracked:
    """Counts assignments in :data:`CHANGES`."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        CHANGES[0] += 1  # after the store: a reader that sees the new count sees the new value


class TableConfig(_Tracked):
    """One embedding table: its size, initial values, optimizer, combiner and name.

    Several features may look up one table by sharing the same ``TableConfig`` object; two
    objects are two tables even when every field is equal (identity equality, as in TensorFlow).
    ``TPUEmbeddingForServing`` fills in ``optimizer`` and ``name`` on the object when they are
    None.

    Attributes:
        vocabulary_size: the number of rows; valid ids are ``0 <= id < vocabulary_size``. A Python
            ``int`` >= 1 (``bool`` passes, as a subclass of ``int``; ``np.int64`` does not).
        dim: the embedding width, the number of columns. A Python ``int`` >= 1.
        initializer: called once per table as ``initializer((vocabulary_size, dim),
            dtype=np.float32)`` for the table's initial values. ``None`` at construction is
            replaced by ``TruncatedNormal(mean=0.0, stddev=1 / sqrt(dim))``.
        optimizer: the table's own optimizer (an ``SGD``, ``Adagrad``, ``AdagradMomentum``,
            ``Adam`` or ``FTRL``), overriding the global one; it decides which slot variables the
            table carries. Not checked here; ``TPUEmbeddingForServing`` rejects other objects.
        combiner: how a bag of ids is reduced to one vector: ``"mean"``, ``"sum"`` or
            ``"sqrtn"`` (the weighted sum divided by the root of the sum of squared weights).
            Case-sensitive.
        name: the table's name, used for its variables and checkpoint keys. None: named
            ``table_<i>`` by its position when the embedding is built. Not checked.
        quantization_config: a :class:`QuantizationConfig`, stored and ignored on the CPU.
        layout: a TPU sharding layout; stored, never used on the CPU.
        dtype: the table's declared type, float32 or int32 in any spelling TensorFlow accepts
            (``np.float32``, ``"float32"``, ``np.dtype("int32")``, a ``tf.DType``). Stored as
            given; tables are float32 on the CPU whatever it says.

    Raises:
        ConfigError: in this order: ``vocabulary_size`` or ``dim`` not an int >= 1;
            ``initializer`` neither None nor callable; ``combiner`` a string other than
            ``"mean"``, ``"sum"``, ``"sqrtn"``, or not a string; ``dtype`` neither float32 nor
            int32.
    """

    def __init__(
        self,
        vocabulary_size: int,
        dim: int,
        initializer: Callable[..., Any] | None = None,
        optimizer: _Optimizer | None = None,
        combiner: str = "mean",
        name: str | None = None,
        quantization_config: QuantizationConfig | None = None,
        layout: Any = None,
        dtype: Any = np.float32,
    ) -> None:
        if not isinstance(vocabulary_size, int) or vocabulary_size < 1:
            raise ConfigError(
                "Argument `vocabulary_size` must be an int and must be >= 1. "
                f"Received: {vocabulary_size}"
            )
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(
                f"Argument `dim` (embedding dimension) must be an int and must be >= 1. "
                f"Received: {dim}"
            )
        if initializer is not None and not callable(initializer):
            raise ConfigError(
                f"Argument `initializer` must be a callable (or None). Received: {initializer}"
            )
        if initializer is None:
            initializer = TruncatedNormal(mean=0.0, stddev=1 / math.sqrt(dim))
        if isinstance(combiner, str):
            if combiner not in _COMBINERS:
                raise ConfigError(
                    f"String argument `combiner` must be in {_COMBINERS}. Received: {combiner}"
                )
        else:
            # TensorFlow also accepts its TPU-only CustomCombiner here; embserve has none.
            raise ConfigError(
                "Argument `combiner` should either be a str or a CustomCombiner. "
                f"Received: {type(combiner)}"
            )
        # TensorFlow logs a warning for name=None (SparseCore wants names); it means nothing on
        # the CPU, where unnamed tables get their table_<i> names at build.
        if _table_dtype(dtype) is None:
            raise ConfigError(
                f"Argument `dtype` must be either float32 or int32. Received: {dtype}"
            )
        self.vocabulary_size = vocabulary_size
        self.dim = dim
        self.initializer: Callable[..., Any] = initializer
        self.optimizer = optimizer
        self.combiner = combiner
        self.name = name
        self.quantization_config = quantization_config
        self.layout = layout
        self.dtype = dtype

    def _has_default_initializer(self) -> bool:
        init = self.initializer
        if not isinstance(init, TruncatedNormal):
            return False
        try:
            return init.mean == 0.0 and math.isclose(init.stddev, 1 / math.sqrt(self.dim))
        except (TypeError, ValueError, ZeroDivisionError):  # dim mutated to something odd
            return False

    def __repr__(self) -> str:
        # The default initializer prints as None, TensorFlow's choice for readability; layout
        # and dtype are not shown (also TensorFlow's format).
        initializer = None if self._has_default_initializer() else self.initializer
        return (
            f"TableConfig(vocabulary_size={self.vocabulary_size!r}, dim={self.dim!r}, "
            f"initializer={initializer!r}, optimizer={self.optimizer!r}, "
            f"combiner={self.combiner!r}, name={self.name!r}, "
            f"quantization_config={self.quantization_config!r})"
        )


def _dimension(value: Any) -> int | None:
    """One dimension, as ``tf.compat.v1.Dimension(value).value`` (None: unknown)."""
    if value is None:
        return None
    if isinstance(value, int):
        size = int(value)
    else:
        try:
            index = value.__index__
        except AttributeError:
            raise TypeError(
                "Dimension value must be integer or None or have an __index__ method, got value "
                f"'{value!r}' with type '{type(value)!r}'"
            ) from None
        size = int(index())
    if size < 0:
        raise ConfigError(f"Dimension {size} must be >= 0")
    return size


def _to_shape(value: Any) -> tuple[int | None, ...] | None:
    """Converts ``output_shape`` as ``tf.TensorShape(value)`` does; None is the unknown shape."""
    if value is None:
        return None
    if hasattr(value, "rank") and hasattr(value, "as_list"):  # a tf.TensorShape
        if value.rank is None:
            return None
        return tuple(_dimension(d) for d in value.as_list())
    if isinstance(value, list | tuple):
        return tuple(_dimension(d) for d in value)
    try:
        items = iter(value)
    except TypeError:
        return (_dimension(value),)  # a single dimension: 5 -> (5,)
    dims: list[int | None] = []
    for item in items:
        try:
            dims.append(_dimension(item))
        except TypeError as e:
            raise TypeError(
                f"Failed to convert '{value!r}' to a shape: '{item!r}' could not be converted to "
                "a dimension. A shape should either be single dimension (e.g. 10), or an iterable "
                "of dimensions (e.g. [1, 10, None])."
            ) from e
    return tuple(dims)


class FeatureConfig(_Tracked):
    """One input feature: the table it looks up and how its lookups are shaped.

    Features are matched to inputs by their position in the nested ``feature_config`` structure
    (their path), never by ``name``.

    Attributes:
        table: the :class:`TableConfig` this feature looks up. Share the object to share a table.
        max_sequence_length: 0 for a pooled feature (each example's ids are combined into one
            vector); ``L > 0`` for a sequence feature (each example yields ``L`` vectors, one per
            position, truncated or zero-padded). A Python ``int`` >= 0.
        validate_weights_and_indices: for sparse input on the CPU, drop negative ids (and, for
            ``mean`` / ``sqrtn``, non-positive weights) and keep empty rows as zero vectors, at
            some extra cost. A ``bool``.
        output_shape: the shape of the feature's output without the embedding dimension, or None
            (not set). Stored as a tuple converted as ``tf.TensorShape`` converts: ``5`` gives
            ``(5,)``, ``[2, 3]`` gives ``(2, 3)``, ``[]`` gives ``()`` (set, one element); a
            ``None`` inside (``(None, 2)``) is stored and fails at lookup.
        name: a label, stored and never used.

    Raises:
        ConfigError: in this order: ``table`` not a :class:`TableConfig`;
            ``max_sequence_length`` not an int >= 0; a negative ``output_shape`` dimension;
            ``validate_weights_and_indices`` not a bool.
        TypeError: ``output_shape`` cannot be converted to a shape (``"ab"``, ``2.0``).
    """

    def __init__(
        self,
        table: TableConfig,
        max_sequence_length: int = 0,
        validate_weights_and_indices: bool = True,
        output_shape: Any = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(table, TableConfig):
            raise ConfigError(
                f"Argument `table` has invalid type {type(table)}. "
                "Expected `tf.tpu.experimental.embedding.TableConfig`."
            )
        if not isinstance(max_sequence_length, int) or max_sequence_length < 0:
            raise ConfigError(
                "Argument `max_sequence_length` must be an int and must be >= 0. "
                f"Received: {max_sequence_length}"
            )
        # output_shape is converted before validate_weights_and_indices is checked (TF's order).
        shape = _to_shape(output_shape)
        if not isinstance(validate_weights_and_indices, bool):
            raise ConfigError(
                "Argument `validate_weights_and_indices` must be a boolean. "
                f"Received: {validate_weights_and_indices}"
            )
        self.table = table
        self.max_sequence_length = max_sequence_length
        self.validate_weights_and_indices = validate_weights_and_indices
        self.output_shape: tuple[int | None, ...] | None = shape
        self.name = name

    def __repr__(self) -> str:
        return (
            f"FeatureConfig(table={self.table!r}, "
            f"max_sequence_length={self.max_sequence_length!r}, "
            f"validate_weights_and_indices={self.validate_weights_and_indices!r}, "
            f"output_shape={self.output_shape!r}, name={self.name!r})"
        )


class RowIdInitializer:
    """Table initializer whose row ``r`` holds ``offset + r`` in every column.

    Handy for tests: a lookup of id ``i`` returns ``offset + i``, so combined results can be read
    off directly.

    Args:
        offset: the value of row 0. Not validated (``-2`` and ``0.5`` work).
    """

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def __call__(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """Returns an array of ``shape`` and ``dtype`` (both required, as in TensorFlow).

        Computed as TensorFlow does, ``(offset + arange(shape[0]))[:, None] * ones(shape)``: for
        the 2-D table shapes embserve asks for, row ``r`` is ``offset + r``.

        Raises:
            TypeError: a Python float ``offset`` with an integer ``dtype``.
        """
        np_dtype = _as_numpy_dtype(dtype)
        dims = tuple(operator.index(d) for d in shape)
        offset = self.offset
        # TensorFlow refuses a Python float for an integer tensor, but casts numpy floats
        # (truncating: np.float32(2.5) gives rows 2, 3, ...).
        is_python_float = isinstance(offset, float) and not isinstance(offset, np.floating)
        if is_python_float and not np.issubdtype(np_dtype, np.inexact):
            raise TypeError(f"Cannot convert {offset} to an array of dtype {np_dtype}")
        rows = (offset + np.arange(dims[0], dtype=np.int64)).astype(np_dtype)
        return rows[:, None] * np.ones(dims, dtype=np_dtype)
