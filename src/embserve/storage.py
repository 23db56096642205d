"""Storage types of served tables: float32 as trained, or float16, bfloat16, int8 / int4 row-wise.

Lookups are bound by memory traffic, and tables are the memory bill of a recommendation server.
A table may be *stored* in fewer bytes than float32 and dequantized on the fly inside the lookup
kernels, which accumulate in float32 and return float32 outputs as for a float32 table. This is
embserve's own feature: TensorFlow's ``TableConfig`` and its ``QuantizationConfig`` (which only
simulates quantization during TPU training) are untouched; the storage type is chosen per table by
``embserve quantize`` or the serving config's ``storage`` key, never by a TableConfig field.

Layouts (one stored row per logical row, rows C-ordered, little-endian):

==========  ==================  ================================================================
storage     stored row           value of element ``j``
==========  ==================  ================================================================
float32     ``dim`` × float32    as stored
float16     ``dim`` × IEEE half  widened exactly
bfloat16    ``dim`` × uint16     ``float32`` whose upper 16 bits are the stored bits (exact)
int8        ``dim`` × uint8,     ``scale * q[j] + bias``, ``q`` in ``[0, 255]``
            float32 scale,
            float32 bias
int4        ``ceil(dim / 2)``    ``scale * q[j] + bias``, ``q`` in ``[0, 15]``; element ``j`` is
            × uint8, float16     the low nibble of byte ``j // 2`` for even ``j``, the high
            scale, float16 bias  nibble for odd ``j`` (an odd ``dim`` leaves the last high
                                 nibble 0)
==========  ==================  ================================================================

The int8 and int4 rows are, byte for byte, FBGEMM's fused row-wise layouts (``weight`` of
``torch.ops.quantized.embedding_bag_byte_rowwise_offsets`` and
``embedding_bag_4bit_rowwise_offsets``): a quantized table can be handed to PyTorch unchanged,
which is how the benchmarks compare on the very same rows. The rounding is FBGEMM's too, with two
exceptions (tests/test_storage.py): codes computed in float64 may differ by one from FBGEMM's
float32 ones at a tie, and FBGEMM's int8 divides by ``range + 1e-8``, which shortens the top
codes of rows spanning less than about 5e-6 by up to 4 (those rows fall outside the bound below
in FBGEMM's bytes; ours stay inside it).

Rounding (:func:`quantize_rows`). float16 and bfloat16 round each value to nearest, ties to even
(bfloat16 as TensorFlow's cast). int8 stores ``bias = min(row)`` and ``scale = (max - min) / 255``
rounded to float32; int4 first rounds ``bias = min(row)`` to float16, then ``scale = (max - bias) /
15`` to float16 (a scale that rounds to 0 is stored as 1, so every code is 0). Codes are
``round((x - bias) / scale)``, ties to even, computed in float64 from the stored scale and bias,
then clamped to the code range. A row holding NaN or inf, or values that a type cannot hold (over
65,504 in magnitude for float16 and for int4's float16 scale and bias; past float32's range for
bfloat16 and int8's scale), is refused with :class:`~embserve.errors.QuantizationError` naming
the table and row: a quantized table never holds a value its float32 table did not.

Error bounds (:func:`row_error_bound`), per element, against the float32 value ``x``, with ``u =
2**-24`` float32's unit roundoff:

* float16: ``|e| <= 2**-11 |x| + 2**-25`` (half an ulp; the second term covers subnormals).
* bfloat16: ``|e| <= 2**-8 |x| + 2**-134``.
* int8 / int4: ``|e| <= max(|scale| / 2, bias - min, max - (bias + qmax * scale)) + 4 u M`` with
  ``M = max(|bias|, |bias + qmax * scale|)``: half a step where the code is rounded; where it is
  clamped, the distance to the end of the stored range (``bias - min`` is the rounding of int4's
  float16 bias, ``max - (bias + qmax scale)`` that of the scale); plus the float32 rounding of
  ``scale * q + bias`` (two operations on values no larger than ``2M``). An int4 scale can be
  negative: when a row's values all sit just below one float16 value, the bias rounds up past
  the row's max (FBGEMM does the same); ``bias - min`` covers it. The ``4 u M`` term is simple
  rather than tight (``u (qmax |scale| + M)`` is the exact rounding term; on rows far from zero
  with a small range the simple one is up to 3.4x larger, still far below ``|scale| / 2``).

This module needs numpy only; the kernels that read stored rows live in
:mod:`embserve.kernels.quantized`.
"""

from __future__ import annotations

import operator
from typing import Any, Final, Literal

import numpy as np

from embserve.errors import ConfigError, QuantizationError

__all__ = [
    "QUANTIZED_TYPES",
    "STORAGE_TYPES",
    "QuantizedTable",
    "Storage",
    "codes",
    "dequantize_rows",
    "quantize_rows",
    "row_bytes",
    "row_error_bound",
    "scale_bias",
    "storage_dtype",
    "storage_of",
]

Storage = Literal["float32", "float16", "bfloat16", "int8", "int4"]

#: Every storage type, float32 (the trained table, served as it is) first.
STORAGE_TYPES: Final[tuple[str, ...]] = ("float32", "float16", "bfloat16", "int8", "int4")
#: The types a table is converted to: everything but float32.
QUANTIZED_TYPES: Final[tuple[str, ...]] = STORAGE_TYPES[1:]

_U: Final = 2.0**-24  # float32 unit roundoff
_HALF_MAX: Final = 65504.0
_F32_MAX: Final = float(np.finfo(np.float32).max)
# The largest float32 that rounds to a finite bfloat16 (0x7F7F7FFF; 0x7F7F8000 ties up to inf).
_BF16_LIMIT: Final = float(np.array(0x7F7F7FFF, np.uint32).view(np.float32))
_QMAX: Final = {"int8": 255, "int4": 15}


def _check_storage(storage: Any) -> str:
    if storage not in STORAGE_TYPES:
        raise ConfigError(f"storage must be one of {', '.join(STORAGE_TYPES)}; got {storage!r}")
    return str(storage)


def _check_dim(dim: Any) -> int:
    if isinstance(dim, (bool, np.bool_)):
        raise ConfigError(f"dim must be a positive integer, got {dim!r}")
    try:
        d = operator.index(dim)
    except TypeError:
        raise ConfigError(f"dim must be a positive integer, got {dim!r}") from None
    if d <= 0:
        raise ConfigError(f"dim must be a positive integer, got {d}")
    return d


def row_bytes(storage: str, dim: int) -> int:
    """Bytes of one stored row of a ``dim``-wide table in ``storage``."""
    storage, dim = _check_storage(storage), _check_dim(dim)
    if storage == "float32":
        return 4 * dim
    if storage in ("float16", "bfloat16"):
        return 2 * dim
    if storage == "int8":
        return dim + 8
    return (dim + 1) // 2 + 4


def storage_dtype(storage: str) -> np.dtype[Any]:
    """The numpy dtype of the stored array: float32, float16, uint16 (bfloat16 bits) or uint8."""
    storage = _check_storage(storage)
    return np.dtype(
        {
            "float32": np.float32,
            "float16": np.float16,
            "bfloat16": np.uint16,
            "int8": np.uint8,
            "int4": np.uint8,
        }[storage]
    )


def storage_of(dtype: Any, width: int, dim: int) -> str | None:
    """The storage type of a stored ``[rows, width]`` array of ``dtype`` for a ``dim``-wide
    table, or None when no type stores a table that way.

    Unambiguous: an int8 row (``dim + 8`` bytes) is always wider than an int4 row
    (``ceil(dim / 2) + 4``)."""
    dt = np.dtype(dtype)
    if dt == np.float32 and width == dim:
        return "float32"
    if dt == np.float16 and width == dim:
        return "float16"
    if dt == np.uint16 and width == dim:
        return "bfloat16"
    if dt == np.uint8:
        for storage in ("int8", "int4"):
            if width == row_bytes(storage, dim):
                return storage
    return None


# ---------------------------------------------------------------------------------------------
# Quantize


def _refuse_rows(bad: np.ndarray, first_row: int, table: str, why: str) -> None:
    if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        raise QuantizationError(table, row, why)


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bits, round to nearest even (inputs finite and within range)."""
    u = x.view(np.uint32)
    return (
        (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    ).astype(np.uint16)


def _codes(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, qmax: int) -> np.ndarray:
    """Round-half-even codes of ``x`` (float64 arithmetic) clamped to ``[0, qmax]``, uint8."""
    t = (x.astype(np.float64) - bias[:, None]) / scale[:, None]
    return np.clip(np.rint(t), 0, qmax).astype(np.uint8)


def quantize_rows(
    rows: np.ndarray, storage: str, *, table: str = "table", first_row: int = 0
) -> np.ndarray:
    """Stored rows of ``storage`` for a float32 block ``rows`` ``[n, dim]`` (see the module
    docstring for the rounding). Pure: callers stream a large table through it in blocks.

    Args:
        rows: the float32 values (float64 or other real arrays are converted to float32 first).
        storage: one of :data:`STORAGE_TYPES`.
        table: the table's name, for messages.
        first_row: the table row of ``rows[0]``, for messages.

    Returns:
        A new C-ordered array ``[n, width]`` of :func:`storage_dtype` (``width`` is ``dim``, or
        :func:`row_bytes` for int8 / int4).

    Raises:
        QuantizationError: a row holds NaN / inf or a value the type cannot hold; names the
            table and the row.
        ConfigError: an unknown storage type, or ``rows`` not 2-D.
    """
    storage = _check_storage(storage)
    x = np.asarray(rows)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ConfigError(f"table {table!r}: rows must be a 2-D [n, dim] block, got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    _refuse_rows(~np.isfinite(x).all(axis=1), first_row, table, "holds NaN or inf")
    n, dim = x.shape
    if storage == "float32":
        return x.copy() if x is rows else x
    if storage == "float16":
        _refuse_rows(
            (np.abs(x) > _HALF_MAX).any(axis=1),
            first_row,
            table,
            f"holds a value beyond float16's range (±{_HALF_MAX:g})",
        )
        return x.astype(np.float16)
    if storage == "bfloat16":
        _refuse_rows(
            (np.abs(x) > _BF16_LIMIT).any(axis=1),
            first_row,
            table,
            "holds a value that rounds past bfloat16's range",
        )
        return _bf16_bits(x)
    lo = x.min(axis=1) if n else np.zeros(0, np.float32)
    hi = x.max(axis=1) if n else np.zeros(0, np.float32)
    out = np.zeros((n, row_bytes(storage, dim)), np.uint8)
    if storage == "int8":
        with np.errstate(over="ignore", invalid="ignore"):
            span = hi - lo  # float32, may overflow to inf
            scale = (span / np.float32(255)).astype(np.float32)
        _refuse_rows(~np.isfinite(span), first_row, table, "spans more than float32's range")
        bias = lo
        safe = np.where(scale == 0, np.float32(1), scale)
        q = _codes(x, safe.astype(np.float64), bias.astype(np.float64), 255)
        out[:, :dim] = q
        out[:, dim : dim + 4] = scale.astype("<f4").view(np.uint8).reshape(n, 4)
        out[:, dim + 4 : dim + 8] = bias.astype("<f4").view(np.uint8).reshape(n, 4)
        return out
    # int4: FBGEMM's rule, float16 bias first, then a float16 scale over what is left.
    _refuse_rows(
        (np.abs(lo) > _HALF_MAX) | (np.abs(hi) > _HALF_MAX),
        first_row,
        table,
        f"int4 stores scale and bias as float16, and the row holds a value beyond ±{_HALF_MAX:g}",
    )
    bias16 = lo.astype(np.float16)
    with np.errstate(over="ignore"):
        scale16 = ((hi.astype(np.float64) - bias16.astype(np.float64)) / 15).astype(np.float16)
    _refuse_rows(~np.isfinite(scale16), first_row, table, "spans more than float16's range")
    scale16 = np.where(scale16 == 0, np.float16(1), scale16)
    q = _codes(x, scale16.astype(np.float64), bias16.astype(np.float64), 15)
    half = (dim + 1) // 2
    packed = np.zeros((n, half), np.uint8)
    packed[:, : (dim + 1) // 2] |= q[:, 0::2]
    packed[:, : dim // 2] |= q[:, 1::2] << np.uint8(4)
    out[:, :half] = packed
    out[:, half : half + 2] = scale16.astype("<f2").view(np.uint8).reshape(n, 2)
    out[:, half + 2 : half + 4] = bias16.astype("<f2").view(np.uint8).reshape(n, 2)
    return out


# ---------------------------------------------------------------------------------------------
# Dequantize: the plain NumPy reference of what the kernels compute per element


def scale_bias(data: np.ndarray, storage: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(scale, bias)`` of each stored int8 / int4 row of ``data``."""
    storage, dim = _check_storage(storage), _check_dim(dim)
    n = data.shape[0]
    if storage == "int8":
        tail = np.ascontiguousarray(data[:, dim : dim + 8])
        sb = tail.view("<f4").reshape(n, 2).astype(np.float32)
    elif storage == "int4":
        half = (dim + 1) // 2
        tail = np.ascontiguousarray(data[:, half : half + 4])
        sb = tail.view("<f2").reshape(n, 2).astype(np.float32)
    else:
        raise ConfigError(f"{storage} rows have no scale and bias")
    return sb[:, 0], sb[:, 1]


def codes(data: np.ndarray, storage: str, dim: int) -> np.ndarray:
    """The integer codes ``[n, dim]`` (uint8) of int8 / int4 stored rows."""
    storage, dim = _check_storage(storage), _check_dim(dim)
    if storage == "int8":
        return np.ascontiguousarray(data[:, :dim])
    if storage != "int4":
        raise ConfigError(f"{storage} rows have no codes")
    packed = data[:, : (dim + 1) // 2]
    q = np.empty((data.shape[0], 2 * packed.shape[1]), np.uint8)
    q[:, 0::2] = packed & np.uint8(0x0F)
    q[:, 1::2] = packed >> np.uint8(4)
    return q[:, :dim]


def dequantize_rows(data: np.ndarray, storage: str, dim: int) -> np.ndarray:
    """float32 ``[n, dim]`` values of stored rows: what every lookup path reads for them.

    int8 / int4 values are ``scale * q + bias`` in float32 (a product rounded, then a sum
    rounded); the kernels may fuse the multiply-add (a difference of at most one rounding,
    within :func:`row_error_bound`'s ``4 u M`` term).
    """
    storage, dim = _check_storage(storage), _check_dim(dim)
    if storage == "float32":
        return np.array(data[:, :dim], dtype=np.float32, order="C")
    if storage == "float16":
        return np.asarray(data[:, :dim], dtype=np.float16).astype(np.float32)
    if storage == "bfloat16":
        bits = np.asarray(data[:, :dim], dtype=np.uint16).astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32)
    scale, bias = scale_bias(data, storage, dim)
    q = codes(data, storage, dim).astype(np.float32)
    out: np.ndarray = q * scale[:, None] + bias[:, None]
    return out.astype(np.float32, copy=False)


def row_error_bound(original: np.ndarray, data: np.ndarray, storage: str) -> np.ndarray:
    """The derived bound (module docstring) on ``|dequantized - original|`` for every element
    (float16 / bfloat16 / float32) or every row (int8 / int4, one bound per row), as float64.

    ``original`` is the float32 block ``[n, dim]`` and ``data`` its stored rows.
    """
    storage = _check_storage(storage)
    x = np.asarray(original, dtype=np.float32).astype(np.float64)
    if storage == "float32":
        return np.zeros_like(x)
    if storage == "float16":
        return 2.0**-11 * np.abs(x) + 2.0**-25
    if storage == "bfloat16":
        return 2.0**-8 * np.abs(x) + 2.0**-134
    dim = x.shape[1]
    scale, bias = (v.astype(np.float64) for v in scale_bias(data, storage, dim))
    qmax = _QMAX[storage]
    top = bias + qmax * scale
    big = np.maximum(np.abs(bias), np.abs(top))
    step = np.maximum.reduce(
        [np.abs(scale) / 2, bias - x.min(axis=1), x.max(axis=1) - top, np.zeros_like(scale)]
    )
    bound: np.ndarray = step + 4 * _U * big
    return bound


# ---------------------------------------------------------------------------------------------
# The served object


class QuantizedTable:
    """A logical float32 ``[rows, dim]`` table served from stored rows of a narrower type.

    It holds the stored array (typically a read-only memory map of a quantized checkpoint), never
    a float32 copy: lookups (:func:`embserve.serving_embedding_lookup`,
    ``TPUEmbeddingForServing``) dequantize the rows they read inside the kernels. The object is
    array-like: ``shape``, ``dtype`` (float32, what lookups return), ``ndim``, ``size`` and
    ``len`` describe the logical table, ``nbytes`` counts the stored bytes; ``np.asarray(table)``
    returns a private dequantized float32 copy and ``table[i]``, ``table[a:b]``, ``table[ids]``
    dequantized copies of rows.

    Args:
        data: the stored rows, 2-D and C-ordered, of :func:`storage_dtype` ``(storage)`` and
            width ``dim`` (float16, bfloat16 bits) or :func:`row_bytes` (int8, int4).
        storage: ``"float16"``, ``"bfloat16"``, ``"int8"`` or ``"int4"``.
        dim: the logical width.
        name: the table's name, for messages and the repr.
        check: look at every row's scale and bias (int8 / int4): a NaN or inf is refused with
            the first such row named. Reads those bytes of every row (the whole table's pages);
            a caller that has just quantized the rows itself may skip it.

    Raises:
        ConfigError: ``data`` does not store a ``dim``-wide table in ``storage``.
        QuantizationError: ``check`` found a scale or bias that is NaN or inf.
    """

    __slots__ = ("_data", "_dim", "_name", "_storage")

    def __init__(
        self,
        data: np.ndarray,
        storage: str,
        dim: int,
        *,
        name: str | None = None,
        check: bool = True,
    ) -> None:
        label = f"quantized table {name!r}" if name is not None else "quantized table"
        storage = _check_storage(storage)
        dim = _check_dim(dim)
        if storage == "float32":
            raise ConfigError(f"{label}: float32 tables are served as plain arrays")
        if not isinstance(data, np.ndarray):
            raise ConfigError(f"{label}: the rows must be a numpy array, got {type(data).__name__}")
        want = storage_dtype(storage)
        width = dim if storage in ("float16", "bfloat16") else row_bytes(storage, dim)
        if data.ndim != 2 or data.shape[1] != width or data.shape[0] == 0:
            raise ConfigError(
                f"{label}: {storage} rows of a {dim}-wide table are [rows, {width}] arrays, got "
                f"shape {data.shape}"
            )
        if data.dtype != want or not data.dtype.isnative:
            raise ConfigError(f"{label}: {storage} rows are {want}, got {data.dtype.str}")
        if not data.flags.c_contiguous:
            raise ConfigError(f"{label}: the rows must be C-ordered (strides {data.strides})")
        self._data = data
        self._storage = storage
        self._dim = dim
        self._name = name
        if check and storage in ("int8", "int4"):
            self.check_scales()

    def check_scales(self, chunk_rows: int = 1 << 16) -> None:
        """Raise QuantizationError naming the first row whose scale or bias is NaN or inf."""
        n = self.rows
        for start in range(0, n, chunk_rows):
            block = self._data[start : start + chunk_rows]
            scale, bias = scale_bias(block, self._storage, self._dim)
            bad = ~(np.isfinite(scale) & np.isfinite(bias))
            if bad.any():
                row = start + int(np.flatnonzero(bad)[0])
                raise QuantizationError(
                    self._name or "table",
                    row,
                    f"has a non-finite scale or bias ({scale[row - start]!r}, "
                    f"{bias[row - start]!r})",
                )

    @property
    def data(self) -> np.ndarray:
        """The stored rows (shared, never written)."""
        return self._data

    @property
    def storage(self) -> str:
        """The storage type."""
        return self._storage

    @property
    def name(self) -> str | None:
        """The table's name (None when not given)."""
        return self._name

    @property
    def rows(self) -> int:
        """Logical rows."""
        return int(self._data.shape[0])

    @property
    def dim(self) -> int:
        """Logical width."""
        return self._dim

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, dim)``."""
        return (self.rows, self._dim)

    @property
    def dtype(self) -> np.dtype[Any]:
        """float32: what lookups and conversions return."""
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        """Always 2."""
        return 2

    @property
    def size(self) -> int:
        """``rows * dim``."""
        return self.rows * self._dim

    @property
    def itemsize(self) -> int:
        """4: the logical (float32) bytes per value."""
        return 4

    @property
    def nbytes(self) -> int:
        """The stored bytes (what the table costs in memory)."""
        return int(self._data.nbytes)

    @property
    def bytes_per_row(self) -> int:
        """Stored bytes per row."""
        return int(self._data.shape[1] * self._data.itemsize)

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        name = "" if self._name is None else f"{self._name!r}, "
        return (
            f"QuantizedTable({name}shape=({self.rows}, {self._dim}), storage={self._storage}, "
            f"nbytes={self.nbytes})"
        )

    def dequantize(self) -> np.ndarray:
        """A private float32 ``[rows, dim]`` copy of the values lookups read."""
        return dequantize_rows(self._data, self._storage, self._dim)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(f"{self!r} cannot be converted to float32 without a copy")
        out = self.dequantize()
        if dtype is not None and np.dtype(dtype) != out.dtype:
            out = out.astype(dtype)
        return out

    def __getitem__(self, key: Any) -> Any:
        """Dequantized copies of rows: ``t[i]``, ``t[a:b]``, ``t[ids]``, ``t[mask]``, each
        optionally followed by a column index (``t[i, j]``, ``t[:, :4]``)."""
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            if not key:
                return self.dequantize()
            key, rest = key[0], key[1:]
        picked = self._data[key]
        single = picked.ndim == 1
        values = dequantize_rows(picked.reshape(-1, self._data.shape[1]), self._storage, self._dim)
        if single:
            values = values[0]
        if not rest:
            return values
        if single:
            return values[rest]
        return values[(slice(None), *rest)]
