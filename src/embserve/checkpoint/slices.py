"""Sliced (partitioned) tensors: TensorFlow's "ordered code" slice keys and slice geometry.

A sliced tensor is stored as one *full* entry (dtype, full shape, the list of slices) plus one
ordinary entry per slice under a binary key built from the tensor name and the slice's extents
(CHECKPOINT_FORMAT.md §5.2)::

    00 | name with 00 -> 00 FF and FF -> FF 00, then 00 01 | rank | (start, length) per dimension

``rank`` uses the unsigned order-preserving code (a length byte, then big-endian bytes) and each
start / length the signed one; a whole-dimension extent is written as start 0, length -1.
"""

from __future__ import annotations

from collections.abc import Sequence

from embserve.checkpoint._wire import Malformed

__all__ = [
    "Extent",
    "decode_signed",
    "decode_slice_key",
    "encode_signed",
    "slice_key",
]

# One dimension of a slice: (start, length); length None means "the whole dimension".
Extent = tuple[int, int | None]

_STRING_TERMINATOR = b"\x00\x01"


def _encode_unsigned(value: int) -> bytes:
    if not 0 <= value < 1 << 64:
        raise ValueError(f"unsigned ordered code out of range: {value}")
    body = value.to_bytes(8, "big").lstrip(b"\x00")
    return bytes((len(body),)) + body


def _decode_unsigned(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise Malformed(pos, "slice key ends inside a number")
    n = buf[pos]
    if n > 8 or pos + 1 + n > len(buf):
        raise Malformed(pos, f"bad unsigned number length {n} in slice key")
    return int.from_bytes(buf[pos + 1 : pos + 1 + n], "big"), pos + 1 + n


def encode_signed(value: int) -> bytes:
    """TensorFlow's ``OrderedCode::WriteSignedNumIncreasing`` for a 64-bit signed integer.

    ``n`` bytes hold the value in two's complement with its ``n`` leading bits inverted, where
    ``n`` is the least count such that the value fits in ``7n`` bits including its sign; the
    inverted run tells a reader the length and keeps bytewise order equal to numeric order.
    """
    if not -(1 << 63) <= value < 1 << 63:
        raise ValueError(f"signed ordered code out of range: {value}")
    x = value if value >= 0 else ~value
    n = max(1, -(-(x.bit_length() + 1) // 7))  # ceil((bits + 1) / 7)
    bits = 8 * n
    encoded = (value & ((1 << bits) - 1)) ^ (((1 << n) - 1) << (bits - n))
    return encoded.to_bytes(n, "big")


def _leading_ones(byte: int) -> int:
    return 8 - (~byte & 0xFF).bit_length()


def decode_signed(buf: bytes, pos: int) -> tuple[int, int]:
    """Inverse of :func:`encode_signed`; returns ``(value, position after it)``.

    Raises:
        Malformed: truncated, longer than 10 bytes, or not the canonical encoding.
    """
    if pos >= len(buf):
        raise Malformed(pos, "slice key ends inside a signed number")
    flip = 0x00 if buf[pos] & 0x80 else 0xFF  # a clear top bit means negative: invert first
    n = _leading_ones(buf[pos] ^ flip)
    if n == 8:
        if pos + 1 >= len(buf):
            raise Malformed(pos, "slice key ends inside a signed number")
        n += _leading_ones(buf[pos + 1] ^ flip)
    if n > 10 or pos + n > len(buf):
        raise Malformed(pos, "bad signed number in slice key")
    raw = int.from_bytes(bytes(b ^ flip for b in buf[pos : pos + n]), "big")
    x = raw & ((1 << (7 * n)) - 1)
    if x >= 1 << 63:
        raise Malformed(pos, "signed number out of the int64 range in slice key")
    value = ~x if flip else x
    if encode_signed(value) != buf[pos : pos + n]:
        raise Malformed(pos, "non-canonical signed number in slice key")
    return value, pos + n


def slice_key(name: str | bytes, extents: Sequence[Extent]) -> bytes:
    """The index key of one slice of tensor ``name`` (TensorFlow's ``EncodeTensorNameSlice``)."""
    raw = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    out = bytearray(b"\x00")
    for byte in raw:  # one pass: 00 -> 00 FF and FF -> FF 00
        out += b"\x00\xff" if byte == 0x00 else b"\xff\x00" if byte == 0xFF else bytes((byte,))
    out += _STRING_TERMINATOR
    out += _encode_unsigned(len(extents))
    for start, length in extents:
        out += encode_signed(start if length is not None else 0)
        out += encode_signed(length if length is not None else -1)
    return bytes(out)


def decode_slice_key(key: bytes) -> tuple[bytes, list[Extent]]:
    """Split a slice key into the tensor name (bytes) and its extents.

    Raises:
        Malformed: the key is not a well-formed slice key.
    """
    if not key or key[0] != 0:
        raise Malformed(0, "slice key does not start with 00")
    name = bytearray()
    pos = 1
    while True:
        if pos + 1 >= len(key):
            raise Malformed(pos, "slice key name is not terminated")
        byte = key[pos]
        if byte == 0x00:
            nxt = key[pos + 1]
            if nxt == 0x01:
                pos += 2
                break
            if nxt != 0xFF:
                raise Malformed(pos, "bad escape 00 in slice key name")
            name.append(0x00)
            pos += 2
        elif byte == 0xFF:
            if key[pos + 1] != 0x00:
                raise Malformed(pos, "bad escape FF in slice key name")
            name.append(0xFF)
            pos += 2
        else:
            name.append(byte)
            pos += 1
    rank, pos = _decode_unsigned(key, pos)
    if rank > 64:
        raise Malformed(pos, f"slice key rank {rank} is implausible")
    extents: list[Extent] = []
    for _ in range(rank):
        start, pos = decode_signed(key, pos)
        length, pos = decode_signed(key, pos)
        extents.append((start, None) if length == -1 else (start, length))
    if pos != len(key):
        raise Malformed(pos, "trailing bytes after slice key")
    return bytes(name), extents
