"""Checkpoint files on disk: opening them safely for reading, replacing them atomically.

Reading (:func:`open_regular`, :func:`read_regular`). A checkpoint path comes from a user or a
watched directory, so what is there is not trusted either: a FIFO would block ``open`` (and
then ``read``) until some writer appears, a link to ``/dev/zero`` or ``/dev/urandom`` never
ends, a symlink loop or a mode bit fails with a bare ``OSError``. Files are therefore opened with
``O_NONBLOCK`` (opening a FIFO returns at once) and checked with ``fstat`` on the opened
descriptor, not on the path, so nothing swapped in between a check and the open can slip
through; only regular files are accepted, and a file is read only after its size is checked
against a cap. Every failure is a :class:`~embserve.errors.CheckpointError` naming the file:
``CheckpointNotFoundError`` when it is missing, ``CorruptCheckpointError`` when it is not a
regular file or is too large, and the base ``CheckpointError`` for any other OS error
(permissions, a symlink loop, too many open files), which may well be transient.

Writing (:func:`atomic_write`). A file is written to a sibling temporary name, flushed and
fsynced, then ``os.replace``d over the target, so a reader (or a live memory map of the old
file) never sees a partial file.
"""

from __future__ import annotations

import os
import stat

from embserve.checkpoint._wire import corrupt
from embserve.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["atomic_write", "fsync_dir", "open_regular", "os_error", "read_regular"]

# O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer (on a
# regular file it changes nothing, except that an open that would break a lease fails instead
# of waiting). O_CLOEXEC: a server's child processes must not inherit checkpoint descriptors.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), f"file type {stat.S_IFMT(mode):#o}")


def os_error(path: str | os.PathLike[str], what: str, exc: OSError) -> CheckpointError:
    """The error for an OS failure on a checkpoint file: names the file and the OS's reason."""
    reason = exc.strerror or str(exc)
    return CheckpointError(f"cannot read {what} {os.fspath(path)!r}: {reason} (errno {exc.errno})")


def open_regular(path: str | os.PathLike[str], what: str) -> tuple[int, os.stat_result]:
    """Open ``path`` read-only without ever blocking; accept a regular file only.

    Args:
        path: the file.
        what: how errors name it (``"checkpoint index"``, ``"checkpoint data shard"``).

    Returns:
        ``(fd, stat of the opened file)``; the caller closes ``fd``.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist, or is a directory.
        CorruptCheckpointError: it is a FIFO, a device or a socket.
        CheckpointError: any other OS error, naming the file.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{what} not found: {os.fspath(path)!r}") from None
    except OSError as exc:
        raise os_error(path, what, exc) from exc
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise os_error(path, what, exc) from exc
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointNotFoundError(f"{what} is a directory: {os.fspath(path)!r}")
        raise corrupt(
            path,
            None,
            f"{what} is not a regular file ({_kind(st.st_mode)}); checkpoint files "
            "must be regular files",
        )
    return fd, st


def read_regular(path: str | os.PathLike[str], what: str, max_bytes: int) -> bytes:
    """The whole content of the regular file ``path``, refused unread above ``max_bytes``.

    Reads at most the size ``fstat`` reported when it was opened (a file that grows meanwhile
    is not read past it).

    Raises:
        CheckpointNotFoundError, CorruptCheckpointError, CheckpointError: as
            :func:`open_regular`; ``CorruptCheckpointError`` also for a file over ``max_bytes``.
    """
    fd, st = open_regular(path, what)
    try:
        size = st.st_size
        if size > max_bytes:
            raise corrupt(
                path, None, f"{what} is {size} bytes, over the {max_bytes}-byte limit for it"
            )
        chunks = []
        left = size
        while left:
            chunk = os.read(fd, left)
            if not chunk:
                break  # shrank since fstat: the parser reports what is missing
            chunks.append(chunk)
            left -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError as exc:
        raise os_error(path, what, exc) from exc
    finally:
        os.close(fd)


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
