"""Reusable output memory for lookups.

A lookup returns new arrays, and fresh memory is expensive: above glibc's mmap threshold every
allocation comes from the kernel as zero-filled pages that fault in on first write. For 26
features × 1,024 rows × 64 floats that was most of the call: 7.4 ms with fresh arrays against
1.5 ms when the allocator kept its memory (serial kernels, 26 tables of 250k × 64).

An :class:`OutputArena` keeps the last few output buffers and hands one out again once nobody
else refers to it. Every array a lookup returns is a view whose ``base`` is the buffer, so the
buffer's reference count says whether any result (or view of one) is still alive; while one is,
the buffer is left alone and a fresh one is allocated. A caller that keeps its results therefore
never sees them overwritten; a serving loop that drops them gets warm, already-mapped memory.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

__all__ = ["OutputArena"]


def _free_refs_probe() -> int:
    """``sys.getrefcount`` of a buffer just popped from a pool, as ``take`` sees it: 2 on
    CPython 3.11-3.13 (the local variable and the call's argument)."""
    pool = [np.empty(1)]
    buf = pool.pop()
    return sys.getrefcount(buf)


# Reuse is sound only where the reference count is exact and the GIL makes pop() atomic. CPython
# 3.14 borrows local references (getrefcount drops by one, so a buffer one result still uses
# would look free) and free-threaded builds count approximately: there every take allocates.
_FREE_REFS = _free_refs_probe()
REUSE = _FREE_REFS == 2 and bool(getattr(sys, "_is_gil_enabled", lambda: True)())

# A pooled buffer serves a request only if it is at most this many times larger: a batch-1 row
# a caller keeps must not pin a buffer sized for a batch of thousands.
_MAX_OVERSIZE = 4


class OutputArena:
    """A small pool of output buffers, reused only when no result refers to them.

    Thread-safe without a lock: a buffer is popped from the pool (atomic under the GIL) before
    its reference count is read, so no other thread can reach it in between except through a
    live result, which the count would show. Where that reasoning does not hold (see
    :data:`REUSE`) every call allocates.

    Args:
        keep: how many buffers to retain (one per concurrent caller is enough to never allocate).
        max_bytes: buffers larger than this are never retained, bounding the memory kept.
    """

    __slots__ = ("_keep", "_max_bytes", "_pool")

    def __init__(self, keep: int = 2, max_bytes: int = 128 << 20) -> None:
        self._keep = keep
        self._max_bytes = max_bytes
        self._pool: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A C-ordered array of ``shape`` and ``dtype`` with undefined contents: a free pooled
        buffer (or a view of its start) when one fits, else newly allocated memory."""
        if not REUSE:
            return np.empty(shape, dtype)
        pool = self._pool
        try:
            buf = pool.pop()
        except IndexError:
            buf = None
        if buf is not None:
            if sys.getrefcount(buf) == _FREE_REFS and buf.dtype == dtype:
                if buf.shape == shape:
                    pool.append(buf)
                    return buf
                count = math.prod(shape)
                if count <= buf.size <= _MAX_OVERSIZE * count:
                    pool.append(buf)
                    return buf.reshape(-1)[:count].reshape(shape)
                # free but too small or far too large: the new buffer below takes its place
            elif len(pool) < self._keep:
                pool.insert(0, buf)  # busy (a result still uses it): look again later
        fresh = np.empty(shape, dtype)
        if fresh.nbytes <= self._max_bytes:
            pool.append(fresh)
            if len(pool) > self._keep:
                del pool[0]
        return fresh

    def clear(self) -> None:
        """Drop the retained buffers (results still referring to them keep theirs alive)."""
        self._pool.clear()
