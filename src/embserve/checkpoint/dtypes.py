"""TensorFlow element types as stored in checkpoints, and their numpy representations.

A bundle entry names its element type by TensorFlow's ``DataType`` enum number
(CHECKPOINT_FORMAT.md §3.3). :class:`DataType` lists the numbers; :data:`SUPPORTED` says how each
readable type maps to numpy.

bfloat16 has no numpy dtype (and the format layer may not depend on ``ml_dtypes``), so a
bfloat16 tensor is represented by its raw bits: a ``uint16`` array whose values are the upper 16
bits of the float32 pattern. :func:`bfloat16_to_float32` widens it exactly; a caller that has
``ml_dtypes`` can also ``arr.view(ml_dtypes.bfloat16)`` at zero cost.
:func:`float32_to_bfloat16` rounds like TensorFlow's cast (nearest even, every NaN to 0x7FC0).

Strings (``DT_STRING``) are numpy ``object`` arrays of ``bytes``. Every numeric type is read and
written little-endian whatever the host.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "SUPPORTED",
    "DTypeInfo",
    "DataType",
    "bfloat16_to_float32",
    "dtype_info",
    "float32_to_bfloat16",
    "from_numpy",
]


class DataType(enum.IntEnum):
    """TensorFlow's ``DataType`` enum values (``types.proto``)."""

    INVALID = 0
    FLOAT = 1
    DOUBLE = 2
    INT32 = 3
    UINT8 = 4
    INT16 = 5
    INT8 = 6
    STRING = 7
    COMPLEX64 = 8
    INT64 = 9
    BOOL = 10
    QINT8 = 11
    QUINT8 = 12
    QINT32 = 13
    BFLOAT16 = 14
    QINT16 = 15
    QUINT16 = 16
    UINT16 = 17
    COMPLEX128 = 18
    HALF = 19
    RESOURCE = 20
    VARIANT = 21
    UINT32 = 22
    UINT64 = 23
    FLOAT8_E5M2 = 24
    FLOAT8_E4M3FN = 25
    FLOAT8_E4M3FNUZ = 26
    FLOAT8_E4M3B11FNUZ = 27
    FLOAT8_E5M2FNUZ = 28
    INT4 = 29
    UINT4 = 30
    INT2 = 31
    UINT2 = 32
    FLOAT4_E2M1FN = 33


@dataclass(frozen=True)
class DTypeInfo:
    """How one checkpoint element type is represented.

    Attributes:
        dtype: the :class:`DataType`.
        name: TensorFlow's Python name (``tf.DType.name``): ``"float32"``, ``"bfloat16"``, ...
        numpy: the little-endian numpy dtype of the stored elements (``uint16`` for bfloat16,
            ``object`` for strings).
        itemsize: bytes per element in the data file (0 for variable-size strings).
    """

    dtype: DataType
    name: str
    numpy: np.dtype[np.generic]
    itemsize: int


def _info(dtype: DataType, name: str, np_dtype: str) -> DTypeInfo:
    nd = np.dtype(np_dtype)
    return DTypeInfo(dtype, name, nd, 0 if nd.kind == "O" else nd.itemsize)


SUPPORTED: dict[DataType, DTypeInfo] = {
    info.dtype: info
    for info in (
        _info(DataType.FLOAT, "float32", "<f4"),
        _info(DataType.DOUBLE, "float64", "<f8"),
        _info(DataType.HALF, "float16", "<f2"),
        _info(DataType.BFLOAT16, "bfloat16", "<u2"),
        _info(DataType.INT8, "int8", "i1"),
        _info(DataType.INT16, "int16", "<i2"),
        _info(DataType.INT32, "int32", "<i4"),
        _info(DataType.INT64, "int64", "<i8"),
        _info(DataType.UINT8, "uint8", "u1"),
        _info(DataType.UINT16, "uint16", "<u2"),
        _info(DataType.UINT32, "uint32", "<u4"),
        _info(DataType.UINT64, "uint64", "<u8"),
        _info(DataType.BOOL, "bool", "?"),
        _info(DataType.COMPLEX64, "complex64", "<c8"),
        _info(DataType.COMPLEX128, "complex128", "<c16"),
        _info(DataType.STRING, "string", "O"),
    )
}

_BY_NUMPY: dict[np.dtype[np.generic], DataType] = {
    np.dtype(np.float32): DataType.FLOAT,
    np.dtype(np.float64): DataType.DOUBLE,
    np.dtype(np.float16): DataType.HALF,
    np.dtype(np.int8): DataType.INT8,
    np.dtype(np.int16): DataType.INT16,
    np.dtype(np.int32): DataType.INT32,
    np.dtype(np.int64): DataType.INT64,
    np.dtype(np.uint8): DataType.UINT8,
    np.dtype(np.uint16): DataType.UINT16,
    np.dtype(np.uint32): DataType.UINT32,
    np.dtype(np.uint64): DataType.UINT64,
    np.dtype(np.bool_): DataType.BOOL,
    np.dtype(np.complex64): DataType.COMPLEX64,
    np.dtype(np.complex128): DataType.COMPLEX128,
}


def dtype_info(value: int) -> DTypeInfo | None:
    """The representation of the enum number ``value``, or ``None`` when not supported."""
    try:
        return SUPPORTED.get(DataType(value))
    except ValueError:
        return None


def type_name(value: int) -> str:
    """A readable name for an enum number, known or not (for error messages)."""
    try:
        return "DT_" + DataType(value).name
    except ValueError:
        return f"DataType {value}"


def from_numpy(dtype: npt.DTypeLike) -> DataType:
    """The checkpoint type that stores numpy ``dtype`` (byte order ignored).

    ``object``, ``bytes`` and ``str`` arrays map to ``STRING``; ``uint16`` maps to ``UINT16``
    (pass ``DataType.BFLOAT16`` explicitly to the writer for bfloat16 bits).

    Raises:
        TypeError: numpy has no checkpoint equivalent for ``dtype``.
    """
    nd = np.dtype(dtype)
    if nd.kind in "OSU":
        return DataType.STRING
    found = _BY_NUMPY.get(nd.newbyteorder("=") if nd.byteorder not in "=|" else nd)
    if found is None:
        raise TypeError(f"numpy dtype {nd} has no TensorFlow checkpoint equivalent")
    return found


def bfloat16_to_float32(bits: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Widen bfloat16 bit patterns (``uint16``) to float32 values, exactly."""
    u = np.asarray(bits, dtype=np.uint16)
    return (u.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bfloat16(values: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """Round float32 values to bfloat16 bit patterns like TensorFlow's cast.

    Round to nearest, ties to even; every NaN becomes the quiet NaN ``0x7FC0``.
    """
    f = np.ascontiguousarray(values, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    out[np.isnan(f)] = 0x7FC0
    return out
