"""Memory maps of checkpoint shards placed so that tables can sit on 2 MiB pages.

Lookups gather random rows from tables of gigabytes; with 4 KiB pages nearly every row costs a
TLB miss and a page walk on top of its DRAM miss. The kernel maps a file with 2 MiB entries only
where the virtual address and the file offset agree modulo 2 MiB and the page cache holds 2 MiB
folios. :func:`map_shard` takes care of the first condition (free: a reservation, then the file
mapped at its first 2 MiB boundary); :func:`collapse_huge_pages` brings about the second, on
request, with ``madvise(MADV_COLLAPSE)`` (Linux >= 6.1; it copies the pages, about 3.5 s per GiB
here, so it is never done implicitly). Measured with ``benchmarks/huge_pages.py`` on a 1 GiB
table: 26 one-hot features x B=1024 1,934 -> 1,267 us, bags of 1-40 ids 755 -> 504 us.

Everything degrades to a plain ``mmap`` (or to "not collapsed") where the platform says no.

:func:`overlay_zeros` is the other half of protecting a served checkpoint against its files
changing in place (see :class:`~embserve.checkpoint.BundleReader`'s ``lease`` and ``fence``):
it replaces a shard mapping's pages with private anonymous zero pages at the same addresses, so
arrays that still point there read zeros instead of faulting (SIGBUS) once the file shrinks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import platform
import sys
from typing import Any

import numpy as np

__all__ = [
    "HUGE_PAGE",
    "collapse_huge_pages",
    "huge_page_bytes",
    "map_shard",
    "mapped_range",
    "overlay_zeros",
]

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25
_MAP_SHARED = 0x01
_MAP_PRIVATE = 0x02
_MAP_FIXED = 0x10
_MAP_ANONYMOUS = 0x20
_PROT_READ = 0x1
_MAP_FAILED = ctypes.c_void_p(-1).value


def _load_libc() -> Any:
    # The flag values below are Linux's on x86-64 and arm64 (other architectures differ).
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.restype = ctypes.c_int
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


# libc for overlay_zeros, always where the flags above hold; for the aligned maps and collapsing
# only without the escape hatch (plain mmap everywhere, no collapsing).
_SYSTEM_LIBC = _load_libc()
_LIBC = None if os.environ.get("EMBSERVE_PLAIN_MMAP", "") not in ("", "0") else _SYSTEM_LIBC


def _address(buffer: Any) -> int:
    """Start address of a (possibly read-only) buffer."""
    return int(np.frombuffer(buffer, np.uint8, count=1).ctypes.data)


def map_shard(fileno: int, size: int) -> mmap.mmap | memoryview:
    """The first ``size`` bytes of the open file, mapped read-only and shared.

    On Linux the file is mapped at a 2 MiB-aligned address inside a Python-owned anonymous
    reservation: the returned memoryview keeps the reservation alive, and releasing the last
    view unmaps both. Elsewhere, or if that fails, a plain ``mmap.mmap``.
    """
    if _LIBC is None or size < HUGE_PAGE:
        return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    try:
        reserve = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    except OSError:  # address space limits: the plain map may still fit
        return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    base = _address(reserve)
    start = (base + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    placed = _LIBC.mmap(start, size, _PROT_READ, _MAP_SHARED | _MAP_FIXED, fileno, 0)
    if placed in (None, _MAP_FAILED) or placed != start:
        if placed not in (None, _MAP_FAILED):
            _LIBC.munmap(placed, size)  # placed elsewhere (cannot happen with MAP_FIXED)
        reserve.close()
        return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    return memoryview(reserve)[start - base : start - base + size]


def mapped_range(buf: mmap.mmap | memoryview) -> tuple[mmap.mmap, int, int]:
    """``(owner, address, length)`` of a :func:`map_shard` result: the ``mmap`` object whose
    lifetime is the mapping's (the reservation, for an aligned map), and the file's pages."""
    owner = buf.obj if isinstance(buf, memoryview) else buf
    if not isinstance(owner, mmap.mmap):
        raise TypeError(f"not a shard mapping: {type(owner).__name__}")
    return owner, _address(buf), len(buf)


def overlay_zeros(owner: mmap.mmap, address: int, length: int) -> bool:
    """Replace the pages of ``[address, address + length)`` with private anonymous zero pages.

    The range must be a file mapping that ``owner`` keeps alive (see :func:`mapped_range`): the
    caller holds ``owner``, so the addresses cannot have been unmapped and reused. Afterwards
    the range reads as zeros whatever happens to the file, and ``owner`` unmaps it as usual
    when it goes. One ``mmap(MAP_FIXED)`` call: atomic for threads reading the range meanwhile
    (they see the file's bytes or zeros, never a fault).

    Returns:
        ``False`` when ``owner`` is already closed (nothing mapped there any more).

    Raises:
        OSError: the platform has no such call (not Linux on x86-64 / arm64) or it failed.
    """
    if owner.closed:
        return False
    if _SYSTEM_LIBC is None:
        raise OSError(errno.ENOSYS, "anonymous MAP_FIXED overlays need Linux on x86-64 or arm64")
    length = -(-length // mmap.PAGESIZE) * mmap.PAGESIZE
    flags = _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_FIXED
    got = _SYSTEM_LIBC.mmap(address, length, _PROT_READ, flags, -1, 0)
    if got in (None, _MAP_FAILED) or got != address:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap(MAP_FIXED) over {length} bytes failed: {os.strerror(err)}")
    return True


def collapse_huge_pages(array: np.ndarray) -> int:
    """Ask the kernel to back ``array``'s memory with 2 MiB pages now; returns the bytes it
    collapsed (0 when the platform, the mapping or the kernel refuses).

    Works on tables restored from a checkpoint (mapped by :func:`map_shard`) and on anonymous
    arrays. Only whole 2 MiB pages inside the array are touched; its contents do not change.
    Costs a copy of the memory (seconds per GiB), so call it off the request path.
    """
    if _LIBC is None or array.nbytes < HUGE_PAGE:
        return 0
    first = int(array.ctypes.data)
    start = (first + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    end = (first + array.nbytes) // HUGE_PAGE * HUGE_PAGE
    if end <= start:
        return 0
    _LIBC.madvise(start, end - start, _MADV_HUGEPAGE)  # a hint; refused on some mappings
    if _LIBC.madvise(start, end - start, _MADV_COLLAPSE) != 0:
        return 0
    return end - start


def huge_page_bytes() -> int:
    """Bytes of this process's mappings currently backed by 2 MiB entries (``/proc`` figures:
    anonymous, shared-memory and file-backed)."""
    total = 0
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("AnonHugePages", "ShmemPmdMapped", "FilePmdMapped"):
                    total += int(rest.split()[0]) * 1024
    except OSError:
        return 0
    return total
