"""Durable, atomic file replacement: what every checkpoint writer here uses.

A file is written to a sibling temporary name, flushed and fsynced, then ``os.replace``d over
the target, so a reader (or a live memory map of the old file) never sees a partial file.
"""

from __future__ import annotations

import os

__all__ = ["atomic_write", "fsync_dir"]


def atomic_write(path: str, data: bytes, tag: str) -> None:
    """Write ``path`` via a sibling temporary file, fsync, then ``os.replace``."""
    tmp = path + tag
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def fsync_dir(directory: str) -> None:
    """Make renames durable where the platform allows (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
