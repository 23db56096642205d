"""Low-level encodings shared by the checkpoint modules: varints, fixed-width integers, errors.

Every decoder here takes an explicit ``limit`` and raises :class:`Malformed` (offset + what was
expected) instead of reading past it, so a corrupt length can never make a reader run off the
end of a buffer. Callers that know the file name turn :class:`Malformed` into a
:class:`~embserve.errors.CorruptCheckpointError` with :func:`corrupt`.
"""

from __future__ import annotations

import os
import struct

from embserve.errors import CorruptCheckpointError

__all__ = [
    "Malformed",
    "corrupt",
    "decode_varint",
    "encode_varint",
    "u32_at",
]

_U32 = struct.Struct("<I")


class Malformed(Exception):  # noqa: N818 - internal signal, always converted before escaping
    """A decoding failure at ``offset`` (relative to the buffer being decoded)."""

    def __init__(self, offset: int, what: str) -> None:
        super().__init__(offset, what)
        self.offset = offset
        self.what = what


def corrupt(path: str | os.PathLike[str], offset: int | None, what: str) -> CorruptCheckpointError:
    """Build the error every reader raises: it names the file, the byte offset and the problem."""
    where = f" at offset {offset}" if offset is not None else ""
    return CorruptCheckpointError(f"corrupt checkpoint file {os.fspath(path)!r}{where}: {what}")


def encode_varint(value: int) -> bytes:
    """Base-128 varint (protobuf / LevelDB) of a non-negative integer."""
    if value < 0:
        raise ValueError(f"varint of a negative number: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes, pos: int, limit: int, max_bytes: int = 10) -> tuple[int, int]:
    """Decode a varint starting at ``buf[pos]`` that must end before ``limit``.

    Args:
        buf: the buffer.
        pos: where the varint starts.
        limit: one past the last byte the varint may use.
        max_bytes: 5 for a varint32, 10 for a varint64.

    Returns:
        ``(value, position after the varint)``.

    Raises:
        Malformed: the varint runs past ``limit``, is longer than ``max_bytes``, is not in its
            shortest form, or its value does not fit in 32 / 64 bits.
    """
    result = 0
    shift = 0
    start = pos
    bits = 32 if max_bytes <= 5 else 64
    while True:
        if pos >= limit:
            raise Malformed(start, "varint runs past the end of its region")
        if pos - start >= max_bytes:
            raise Malformed(start, f"varint longer than {max_bytes} bytes")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - start > 1:
                # Writers never pad a varint with a zero group; accepting one would let a flipped
                # continuation bit go unnoticed where no checksum covers the bytes (the footer).
                raise Malformed(start, "non-canonical varint (zero final group)")
            if result >> bits:
                raise Malformed(start, f"varint value does not fit in {bits} bits")
            return result, pos
        shift += 7


def u32_at(buf: bytes, pos: int) -> int:
    """Little-endian uint32 at ``buf[pos:pos+4]`` (the caller has checked the bounds)."""
    value: int = _U32.unpack_from(buf, pos)[0]
    return value
