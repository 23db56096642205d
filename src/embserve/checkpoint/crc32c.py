"""CRC-32C and LevelDB's "masked" CRC, as TensorFlow's checkpoint files store them.

TensorFlow never stores a raw CRC next to data it covers: it stores ``mask(crc)`` (rotate right
by 15 bits, add a constant), because a CRC computed over bytes that themselves contain CRCs is
weak. Index block trailers and every tensor entry use the masked form (CHECKPOINT_FORMAT.md §2.2).

The CRC itself comes from ``google-crc32c`` (hardware accelerated where the CPU allows). Its C
functions accept only ``bytes``-like objects that own no exported buffer (not ``memoryview`` or
``mmap``), so :func:`value_of_buffer` feeds large buffers in bounded chunks: memory stays
bounded and no whole-tensor copy is ever made.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

import google_crc32c

__all__ = ["MASK_DELTA", "extend", "mask", "masked_value", "unmask", "value", "value_of_buffer"]

MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF

# 4 MiB: large enough that per-call overhead is negligible (crc32c runs at several GB/s), small
# enough that the temporary copy of a chunk never matters.
_CHUNK = 4 << 20


def value(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    return int(google_crc32c.value(data))


def extend(crc: int, data: bytes) -> int:
    """Continue the CRC-32C ``crc`` over ``data``."""
    return int(google_crc32c.extend(crc, data))


def mask(crc: int) -> int:
    """LevelDB/TensorFlow masking: rotate right by 15 bits and add :data:`MASK_DELTA`."""
    crc &= _U32
    return ((((crc >> 15) | (crc << 17)) & _U32) + MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    """Inverse of :func:`mask`."""
    rot = (masked - MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def masked_value(data: bytes) -> int:
    """``mask(value(data))``: the checksum TensorFlow stores for ``data``."""
    return mask(value(data))


def value_of_buffer(
    buf: bytes | bytearray | memoryview | mmap.mmap,
    start: int = 0,
    stop: int | None = None,
    crc: int = 0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """CRC-32C of ``buf[start:stop]`` continued from ``crc``, read in bounded chunks.

    Args:
        buf: anything sliceable to ``bytes`` (``bytes``, ``mmap.mmap``, ``memoryview``).
        start: first byte.
        stop: one past the last byte (default: the end of ``buf``).
        crc: CRC to continue (0 starts a fresh one).
        progress: called with the number of bytes just processed after each chunk, so a caller
            can draw a progress bar over a multi-gigabyte tensor.
    """
    end = len(buf) if stop is None else stop
    pos = start
    while pos < end:
        nxt = min(end, pos + _CHUNK)
        chunk = buf[pos:nxt]
        crc = extend(crc, chunk if isinstance(chunk, bytes) else bytes(chunk))
        if progress is not None:
            progress(nxt - pos)
        pos = nxt
    return crc
