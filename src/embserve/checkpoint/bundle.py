"""TensorBundle (TensorFlow checkpoint V2) reading and writing: ``P.index`` + ``P.data-*``.

A checkpoint prefix ``P`` names an index (:mod:`embserve.checkpoint.sstable`) whose first entry
(key ``""``) is a ``BundleHeader`` and whose other entries map tensor names to ``BundleEntry``
records: dtype, shape, data shard, offset, size and a masked CRC-32C of the bytes. Data shards
``P.data-SSSSS-of-NNNNN`` are plain concatenations of encoded tensors (CHECKPOINT_FORMAT.md
§1, §3, §4, §5).

:class:`BundleReader` validates every piece of metadata when it opens a checkpoint, before any
tensor byte is touched: the index table (checksums, bounds, order), the header (shard count,
byte order, version), each entry (a supported dtype, a fully known shape, ``size`` consistent
with dtype and shape, ``offset + size`` inside an existing shard of the recorded size), and the
geometry of sliced tensors. A corrupt size field can therefore never cause a large allocation or
a read past a file. Tensor checksums are verified the first time a tensor is read (or all at once
with :meth:`BundleReader.verify`). Numeric tensors are returned as zero-copy, read-only numpy
views into a memory map of their shard (each shard mapped once, on first use), so several
processes serving one checkpoint share a single copy in the page cache. Files are opened without
blocking and must be regular files (a FIFO or a device is refused, naming the file); an OS error
on any of them is a ``CheckpointError`` naming it. A tensor that cannot be viewed in place (its
offset is not a multiple of its dtype's alignment: TensorFlow does not align data) is copied and
logged once (:attr:`TensorInfo.copy_reason` says which tensors and why).

**Never change a served checkpoint's files in place.** The arrays are views of the mapped data
files: ``cp`` or ``rsync --inplace`` onto a mapped file, or ``truncate``, makes the next read
past the file's new end kill the process with SIGBUS. Publish checkpoints as new files and
rename them into place (as :class:`BundleWriter` and TensorFlow do), or under a new prefix.
``BundleReader(prefix, lease=True)`` protects a long-lived reader on Linux: read leases hold
such writers back, :meth:`BundleReader.broken_leases` reports them, and
:meth:`BundleReader.fence` turns the mappings into zeros before letting them proceed.

:class:`BundleWriter` writes a bundle the way TensorFlow reads it (and, for single-shard
unsliced checkpoints written in the same order, byte for byte as TensorFlow writes it). Every
file goes to a sibling temporary name first and is ``os.replace``-d into place, data shards
before the index, so a process that still memory-maps an older file of the same name keeps a
valid mapping and a reader never sees a half-written bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import mmap
import os
import secrets
import signal
import struct
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, cast

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from embserve.checkpoint import crc32c
from embserve.checkpoint._files import atomic_write, open_regular, os_error
from embserve.checkpoint._mapping import map_shard, mapped_range, overlay_zeros
from embserve.checkpoint._wire import Malformed, corrupt, decode_varint, encode_varint
from embserve.checkpoint.dtypes import (
    SUPPORTED,
    DataType,
    DTypeInfo,
    dtype_info,
    float32_to_bfloat16,
    from_numpy,
    type_name,
)
from embserve.checkpoint.protos import tensor_bundle_pb2 as pb
from embserve.checkpoint.slices import Extent, decode_slice_key, slice_key
from embserve.checkpoint.sstable import Table, build_table, read_table
from embserve.checkpoint.state import resolve_checkpoint
from embserve.errors import (
    CheckpointBusyError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
)

try:
    import fcntl
except ImportError:  # Windows: no leases (readers report themselves unprotected)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "COPY_WARNING_MIN_BYTES",
    "HEADER_KEY",
    "MAX_SHARDS",
    "BundleReader",
    "BundleWriter",
    "ProgressCallback",
    "ProgressCounter",
    "TensorInfo",
    "data_path",
    "index_path",
]

HEADER_KEY = b""
MAX_SHARDS = 99_999  # the file names carry the shard count in 5 digits
#: A tensor that must be copied into private memory (misaligned, or assembled from slices) is
#: logged as a warning from this size up, at INFO level below (counters, small variables).
COPY_WARNING_MIN_BYTES = 64 << 10
_BUNDLE_VERSION = 1  # kTensorBundleVersion: what we produce and the consumer version we are
_MAX_RANK = 254  # TensorFlow's TensorShape limit

#: ``progress(done_bytes, total_bytes)``: how every long job reports (see :class:`ProgressCounter`).
ProgressCallback = Callable[[int, int], None]

_log = logging.getLogger("embserve")


class ProgressCounter:
    """Counts the bytes a long job has done and reports them as ``progress(done, total)``.

    The one progress behaviour of every long job: :meth:`BundleReader.verify`, the restore and
    write of :mod:`embserve.checkpointing`, the server's checksum pass over served tables::

        with ProgressCounter(progress, total) as counter:
            for chunk in work:
                ...
                counter.advance(len(chunk))

    * ``progress(0, total)`` when the block is entered: the total is known before any work,
      and a callback that raises there stops the job before it starts;
    * one report per :meth:`advance` of at least one byte, ``done`` being the sum of the
      advances so far; an advance of no bytes reports nothing. The rate is the work's own
      granularity: callers advance per chunk of at most 4 MiB (:mod:`.crc32c`) or per
      tensor. There is deliberately no time-based throttling: the server's callback is how a
      load is cancelled (``Reloader.stop()`` returns within 0.25 s), and a callback that draws
      limits its own redraws (``embserve.cli.ProgressBar``: at most every 0.1 s);
    * ``progress(total, total)`` when the block exits without an exception, unless that was
      the last report already: the final report is always delivered, exactly once (also for
      ``total == 0``), and not after a failure;
    * an exception raised by ``progress`` propagates unchanged out of :meth:`advance` (or the
      ``with``), ending the job: that is how a caller cancels one.

    Args:
        progress: the callback, or ``None`` (then only :attr:`done` is counted).
        total: the bytes the job will have done when it ends.
    """

    __slots__ = ("_last", "done", "progress", "total")

    def __init__(self, progress: ProgressCallback | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0
        self._last = -1  # `done` of the last report

    def __enter__(self) -> ProgressCounter:
        self._report()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None and not (self._last == self.done == self.total):
            self.done = self.total
            self._report()

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes done and report them (nothing for ``n == 0``)."""
        if n:
            self.done += n
            self._report()

    def _report(self) -> None:
        self._last = self.done
        if self.progress is not None:
            self.progress(self.done, self.total)


def index_path(prefix: str | os.PathLike[str]) -> str:
    """``P.index``."""
    return os.fspath(prefix) + ".index"


def data_path(prefix: str | os.PathLike[str], shard: int, num_shards: int) -> str:
    """``P.data-SSSSS-of-NNNNN`` (both numbers zero-padded to 5 digits)."""
    return f"{os.fspath(prefix)}.data-{shard:05d}-of-{num_shards:05d}"


# Reads for copy=True go straight into the destination array in pieces of this size.
_COPY_CHUNK = 64 << 20


@dataclass(frozen=True)
class TensorInfo:
    """What the index says about one tensor (or one stored slice of one).

    Attributes:
        key: the tensor's name in the checkpoint.
        dtype: its element type.
        shape: its full shape.
        shard_id: data shard holding the bytes (for a sliced tensor: meaningful only when
            ``contiguous``).
        offset: byte offset in that shard (likewise).
        size: byte length of the encoded tensor (likewise).
        crc32c: the stored *masked* CRC-32C of those bytes (meaningless for a sliced tensor:
            each slice has its own).
        slices: for a tensor stored in pieces, the extents of each piece, one ``(start,
            length)`` pair per dimension with ``length`` ``None`` for "the whole dimension";
            empty for an ordinary tensor.
        contiguous: a sliced numeric tensor whose slices are full-width row ranges stored back
            to back, in row order, in one data shard (what a one-host TPU job or a
            partitioned variable writes): its bytes are one row-major run, located by
            ``shard_id`` / ``offset`` / ``size``, and :meth:`BundleReader.get_tensor` returns
            a view of it like an ordinary tensor's. Set by :class:`BundleReader`.
    """

    key: str
    dtype: DataType
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    slices: tuple[tuple[Extent, ...], ...] = ()
    contiguous: bool = False

    @property
    def dtype_name(self) -> str:
        """TensorFlow's name for the dtype (``tf.DType.name``): ``"float32"``, ``"string"``..."""
        return SUPPORTED[self.dtype].name

    @property
    def numpy_dtype(self) -> np.dtype[np.generic]:
        """The numpy dtype :meth:`BundleReader.get_tensor` returns (``uint16`` for bfloat16)."""
        return SUPPORTED[self.dtype].numpy

    @property
    def num_elements(self) -> int:
        """Number of elements of the full tensor."""
        return math.prod(self.shape)

    @property
    def is_sliced(self) -> bool:
        """Whether the tensor is stored as several slices."""
        return bool(self.slices)

    @property
    def copy_reason(self) -> str | None:
        """Why :meth:`BundleReader.get_tensor` cannot return a zero-copy view of this tensor
        (each process reading it then holds a private copy), or ``None`` when it can.

        Reasons: an offset that is not a multiple of the dtype's alignment (TensorFlow does not
        align data: a float32 table stored after a bool or a string is copied), storage as
        slices that are not one contiguous run (:attr:`contiguous`; assembled into a new
        array), or a string tensor (decoded into ``bytes``).
        """
        if self.slices and not self.contiguous:
            return f"stored as {len(self.slices)} slices, assembled into one new array"
        if self.dtype == DataType.STRING:
            return "a string tensor, decoded into Python bytes objects"
        info = SUPPORTED[self.dtype]
        align = info.numpy.alignment
        if self.num_elements and self.offset % align:
            return f"offset {self.offset} is not a multiple of {info.name}'s {align}-byte alignment"
        return None

    @property
    def zero_copy(self) -> bool:
        """Whether the tensor is served as a view into the data file (``copy_reason is None``)."""
        return self.copy_reason is None


@dataclass(frozen=True)
class _Piece:
    """One stored slice of a sliced tensor: where it goes and where its bytes are."""

    region: tuple[slice, ...]
    entry: TensorInfo


# ---------------------------------------------------------------------------------------------
# Reading


class BundleReader:
    """Validated, read-only access to one checkpoint's tensors.

    Args:
        path: the checkpoint prefix ``P`` (``P.index`` must exist), or a directory, which is
            resolved to its latest checkpoint through its ``checkpoint`` state file like
            ``tf.train.load_checkpoint`` does (:func:`~embserve.checkpoint.resolve_checkpoint`).
        verify: verify every tensor checksum now (same as calling :meth:`verify`).
        lease: protect the data files against being changed in place while their arrays are in
            use (Linux file leases; see "Files changed in place" below).

    Raises:
        CheckpointNotFoundError: no checkpoint at ``path``, or a data shard is missing.
        CorruptCheckpointError: the index, an entry or a shard size is not consistent (the
            message names the file and the byte offset), or a file is not a regular file.
        CheckpointBusyError: with ``lease=True``, a data shard is open for writing elsewhere
            (it is still being written): retry later.
        CheckpointError: an OS error on a file (permissions...), naming it.

    The reader is safe to share between threads. Arrays it returns stay valid after
    :meth:`close` (their memory maps are released when the last array goes away).

    **Files changed in place.** Arrays are views of memory-mapped data files. Replacing a file
    by writing a new one and renaming it over the old name (what :class:`BundleWriter`,
    ``tf.train.Checkpoint`` and ``CheckpointManager`` do) is safe: the mapping keeps the old
    file. Writing *into* a mapped file is not: ``cp`` or ``rsync --inplace`` onto it, or
    ``truncate``, shrinks the file under the mapping, and the next read of a page past the new
    end kills the process with SIGBUS. Publish checkpoints under new names (a new prefix, or a
    temporary name then ``mv``), never by copying over served files.

    With ``lease=True`` (Linux), every data shard is opened once and kept open with a read lease
    (``fcntl(F_SETLEASE, F_RDLCK)``), taken before its size is checked against the index. While
    the lease is held, anyone else opening the file for writing or truncating it is refused
    (``EAGAIN``, for openers using ``O_NONBLOCK`` such as coreutils ``truncate``) or blocked for
    up to ``/proc/sys/fs/lease-break-time`` seconds (45 by default; ``cp``, ``rsync``, shell
    redirection), and the kernel marks the lease as being broken: :meth:`broken_leases` reports
    it. The holder then stops using the arrays and calls :meth:`fence`, which turns every
    mapping into zeros and releases the leases so the writer proceeds (after the break time the
    kernel lets the writer proceed anyway: fence before). Renames and unlinks do not break a
    lease. Where leases are unavailable (not Linux, NFS and other filesystems without them, a
    file owned by another user without ``CAP_LEASE``) the reader works unprotected:
    :attr:`protected` is false and :attr:`unprotected_reason` says why. Lease break
    notifications are not delivered as signals (the owner is cleared, the signal set to one
    ignored by default), so they cannot kill the process. In lease mode :meth:`close` keeps the
    leases (they protect arrays that outlive it): they are released by :meth:`fence` or when
    the reader is garbage-collected.

    Cost, measured on Linux 6.18 / ext4 (2 shared cores; readers of 1-64 shards opened 500
    times, best of 5): leasing adds 6-13 us per data shard to opening a reader (1 shard: 39 ->
    50 us; 64 shards: 0.6-0.9 -> 1.1-1.3 ms, the index dominating). :meth:`broken_leases` costs
    1.1 us for one shard and 0.3-0.45 us per shard (64 shards: 20-24 us): polled 10 times a
    second, under 0.03% of a core. Reads of the arrays cost nothing extra.

    Attributes:
        protected: the data files are leased (``lease=True`` and the platform allowed it, and
            :meth:`fence` has not released them).
        unprotected_reason: why not, when ``protected`` is false (empty when it is true).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, verify: bool = False, lease: bool = False
    ) -> None:
        self.prefix = resolve_checkpoint(path)
        self.index_path = index_path(self.prefix)
        table = read_table(self.index_path)
        if not table.entries or table.entries[0][0] != HEADER_KEY:
            raise corrupt(self.index_path, 0, 'the first index entry is not the header (key "")')
        self.num_shards = self._parse_header(table.entries[0][1], table.value_offsets[0])
        self.data_paths = [
            data_path(self.prefix, i, self.num_shards) for i in range(self.num_shards)
        ]
        self._maps: list[mmap.mmap | memoryview | bytes | None] = [None] * self.num_shards
        self._lock = threading.RLock()
        # (shard, offset, size, stored crc) of byte ranges whose checksum has been verified.
        self._verified: set[tuple[int, int, int, int]] = set()
        self._logged_copies: set[str] = set()  # misaligned tensors already reported
        # Every shard mapping made, for fence(): (weak ref to the mmap owning it, address, length).
        self._targets: list[tuple[weakref.ref[mmap.mmap], int, int]] = []
        self._fenced = False
        self.protected = False
        self.unprotected_reason = "opened without lease=True"
        # Lease mode: one descriptor per shard, kept open (and closed when the reader goes).
        self._fds: list[int] = []
        self._closer = weakref.finalize(self, _close_all, self._fds)
        try:
            # (device, inode, size) of each shard as checked against the index: what is mapped
            # or read later must be that same file (a file renamed over it is another one).
            self._shard_ids = [self._stat_shard(p, lease) for p in self.data_paths]
            if lease:
                self._take_leases()
                # Sizes are checked against the index below with the leases held: a file cut
                # before the lease was taken is seen here, a cut after it waits for fence().
                self._shard_ids = [
                    (dev, ino, os.fstat(fd).st_size)
                    for fd, (dev, ino, _) in zip(self._fds, self._shard_ids, strict=True)
                ]
            self._shard_sizes = [size for _, _, size in self._shard_ids]
            self._parse_entries(table)
            if verify:
                self.verify()
        except BaseException:
            self._closer()
            raise

    def _parse_entries(self, table: Table) -> None:
        entries: dict[str, TensorInfo] = {}
        slice_entries: dict[bytes, TensorInfo] = {}
        for (key, value), at in zip(table.entries[1:], table.value_offsets[1:], strict=True):
            if key[:1] == b"\x00":
                try:
                    name, _ = decode_slice_key(key)
                except Malformed as exc:
                    raise corrupt(
                        self.index_path, at, f"bad slice key {key!r}: {exc.what}"
                    ) from None
                label = f"slice of {name.decode('utf-8', 'backslashreplace')!r}"
                slice_entries[key] = self._parse_entry(label, value, at, sliced_ok=False)
                continue
            try:
                name_str = key.decode("utf-8")
            except UnicodeDecodeError:
                raise corrupt(self.index_path, at, f"tensor name {key!r} is not UTF-8") from None
            entries[name_str] = self._parse_entry(name_str, value, at, sliced_ok=True)
        self._pieces: dict[str, list[_Piece]] = {
            info.key: self._check_slices(info, slice_entries)
            for info in entries.values()
            if info.slices
        }
        for sliced, pieces in self._pieces.items():
            run = _contiguous_run(entries[sliced], pieces)
            if run is not None:
                shard, offset, size = run
                entries[sliced] = dataclasses.replace(
                    entries[sliced], shard_id=shard, offset=offset, size=size, contiguous=True
                )
        self._entries = entries
        self._slice_entries = slice_entries

    # -- leases --------------------------------------------------------------------------------

    def _take_leases(self) -> None:
        """Read-lease every kept shard descriptor; sets ``protected`` / ``unprotected_reason``.

        Raises:
            CheckpointBusyError: a shard is open for writing elsewhere.
        """
        for fd, path in zip(self._fds, self.data_paths, strict=True):
            reason = _take_lease(fd, path)
            if reason is not None:  # unsupported here: no shard protected rather than some
                for other in self._fds:
                    _release_lease(other)
                self.unprotected_reason = reason
                return
        self.protected = True
        self.unprotected_reason = ""

    def broken_leases(self) -> list[str]:
        """The data shard paths whose lease is being broken: someone is waiting to write or
        truncate them (or was refused), and the arrays of this reader must stop being used
        before :meth:`fence` lets them proceed. Empty when the reader is not :attr:`protected`.

        Cheap (one ``fcntl(F_GETLEASE)`` per shard, ~0.3 us each): meant to be polled.
        """
        with self._lock:
            if not self.protected:
                return []
            return [
                path
                for fd, path in zip(self._fds, self.data_paths, strict=True)
                if fcntl.fcntl(fd, _F_GETLEASE) != _F_RDLCK
            ]

    def fence(self) -> None:
        """Make every mapping this reader created read zeros forever, then release the leases.

        After a file is cut under a mapping, reading a page past its new end raises SIGBUS;
        after :meth:`fence` every array this reader returned reads zeros instead (the mapped
        pages are replaced by private anonymous zero pages at the same addresses), whatever
        happens to the files. Then the leases are released and the descriptors closed, so a
        writer waiting on them proceeds. Stop using the arrays first (they no longer hold the
        checkpoint's values); the reader refuses every further read with ``CheckpointError``.

        Idempotent and thread-safe. Works for readers opened without ``lease`` too.

        Raises:
            CheckpointError: a mapping could not be replaced (the leases are then kept; call
                again to retry).
        """
        with self._lock:
            self._fenced = True
            self._maps = [None] * self.num_shards
            while self._targets:
                ref, address, length = self._targets[-1]
                owner = ref()
                if owner is not None:
                    try:
                        overlay_zeros(owner, address, length)
                    except OSError as exc:
                        raise CheckpointError(
                            f"cannot fence checkpoint {self.prefix!r}: replacing a mapping of "
                            f"{length} bytes failed ({exc})"
                        ) from exc
                self._targets.pop()
            if self._fds or self.protected:
                self.protected = False
                self.unprotected_reason = "fenced: the leases were released"
            self._closer()

    def _check_not_fenced(self) -> None:
        if self._fenced:
            raise CheckpointError(
                f"checkpoint {self.prefix!r} was fenced (its files were about to change in "
                "place); its arrays read zeros: open the checkpoint again"
            )

    # -- metadata ------------------------------------------------------------------------------

    def _parse_header(self, value: bytes, at: int) -> int:
        header = pb.BundleHeader()
        try:
            header.ParseFromString(value)
        except DecodeError as exc:
            raise corrupt(
                self.index_path, at, f"header is not a BundleHeaderProto ({exc})"
            ) from None
        if header.endianness != pb.BundleHeader.LITTLE:
            raise corrupt(
                self.index_path, at, "big-endian bundles are not supported (header endianness BIG)"
            )
        version = header.version
        if version.min_consumer > _BUNDLE_VERSION:
            raise corrupt(
                self.index_path,
                at,
                f"bundle needs consumer version {version.min_consumer}, this reader is "
                f"version {_BUNDLE_VERSION}",
            )
        if version.producer < 0:
            raise corrupt(self.index_path, at, f"bad producer version {version.producer}")
        if _BUNDLE_VERSION in version.bad_consumers:
            raise corrupt(
                self.index_path, at, f"bundle disallows consumer version {_BUNDLE_VERSION}"
            )
        if not 1 <= header.num_shards <= MAX_SHARDS:
            raise corrupt(
                self.index_path,
                at,
                f"header num_shards is {header.num_shards}, expected 1..{MAX_SHARDS}",
            )
        return int(header.num_shards)

    def _stat_shard(self, path: str, keep: bool) -> tuple[int, int, int]:
        """``(device, inode, size)`` of a data shard, checked to be a regular file; with
        ``keep`` its descriptor stays open (in ``self._fds``)."""
        try:
            fd, st = open_regular(path, "checkpoint data shard")
        except CheckpointNotFoundError:
            raise CheckpointNotFoundError(
                f"checkpoint data shard missing: {path!r} (the index {self.index_path!r} "
                f"lists {self.num_shards} shard(s))"
            ) from None
        if keep:
            self._fds.append(fd)
        else:
            os.close(fd)
        return st.st_dev, st.st_ino, st.st_size

    def _parse_entry(self, name: str, value: bytes, at: int, *, sliced_ok: bool) -> TensorInfo:
        where = self.index_path
        entry = pb.BundleEntry()
        try:
            entry.ParseFromString(value)
        except DecodeError as exc:
            raise corrupt(where, at, f"entry {name!r} is not a BundleEntryProto ({exc})") from None
        info = dtype_info(entry.dtype)
        if info is None:
            raise corrupt(where, at, f"entry {name!r}: unsupported dtype {type_name(entry.dtype)}")
        if entry.shape.unknown_rank:
            raise corrupt(where, at, f"entry {name!r}: shape has unknown rank")
        shape = tuple(int(d.size) for d in entry.shape.dim)
        if len(shape) > _MAX_RANK or any(d < 0 for d in shape):
            raise corrupt(where, at, f"entry {name!r}: invalid shape {list(shape)}")
        slices = tuple(
            tuple((int(e.start), int(e.length) if e.HasField("length") else None) for e in s.extent)
            for s in entry.slices
        )
        result = TensorInfo(
            name,
            info.dtype,
            shape,
            int(entry.shard_id),
            int(entry.offset),
            int(entry.size),
            int(entry.crc32c),
            slices,
        )
        if slices:
            if not sliced_ok:
                raise corrupt(where, at, f"entry {name!r}: a slice entry lists slices itself")
            return result  # location fields of a full entry are meaningless (§5.1)
        self._check_location(result, info, at)
        return result

    def _check_location(self, t: TensorInfo, info: DTypeInfo, at: int) -> None:
        where = self.index_path
        if not 0 <= t.shard_id < self.num_shards:
            raise corrupt(
                where,
                at,
                f"entry {t.key!r}: shard_id {t.shard_id} outside 0..{self.num_shards - 1}",
            )
        if t.offset < 0 or t.size < 0:
            raise corrupt(
                where, at, f"entry {t.key!r}: negative offset {t.offset} or size {t.size}"
            )
        n = t.num_elements
        if info.itemsize:
            if t.size != n * info.itemsize:
                raise corrupt(
                    where,
                    at,
                    f"entry {t.key!r}: size {t.size} bytes, expected {n} x {info.itemsize} = "
                    f"{n * info.itemsize} for {info.name} {list(t.shape)}",
                )
        elif t.size < (n + 4 if n else 0):
            # Each string needs a varint length (>= 1 byte) plus the 4-byte length checksum.
            raise corrupt(
                where, at, f"entry {t.key!r}: size {t.size} too small for {n} string element(s)"
            )
        shard_size = self._shard_sizes[t.shard_id]
        if t.offset + t.size > shard_size:
            raise corrupt(
                where,
                at,
                f"entry {t.key!r}: bytes [{t.offset}, {t.offset + t.size}) lie past the end of "
                f"{self.data_paths[t.shard_id]!r} ({shard_size} bytes)",
            )

    def _check_slices(
        self, full: TensorInfo, slice_entries: Mapping[bytes, TensorInfo]
    ) -> list[_Piece]:
        where = self.index_path
        pieces: list[_Piece] = []
        boxes: list[tuple[tuple[int, int], ...]] = []
        for extents in full.slices:
            if len(extents) != len(full.shape):
                raise corrupt(
                    where,
                    None,
                    f"tensor {full.key!r}: slice rank {len(extents)} != rank {len(full.shape)}",
                )
            box = []
            for (start, length), dim in zip(extents, full.shape, strict=True):
                if length is None:
                    if start != 0:
                        raise corrupt(
                            where,
                            None,
                            f"tensor {full.key!r}: whole-dimension extent starts at {start}",
                        )
                    length = dim
                if start < 0 or length < 0 or start + length > dim:
                    raise corrupt(
                        where,
                        None,
                        f"tensor {full.key!r}: slice extent ({start}, {length}) outside dimension "
                        f"{dim}",
                    )
                box.append((start, start + length))
            key = slice_key(full.key, extents)
            entry = slice_entries.get(key)
            if entry is None:
                raise corrupt(
                    where, None, f"tensor {full.key!r}: slice {list(extents)} has no entry"
                )
            lengths = tuple(b - a for a, b in box)
            if entry.dtype != full.dtype or entry.shape != lengths:
                raise corrupt(
                    where,
                    None,
                    f"tensor {full.key!r}: slice {list(extents)} is {type_name(entry.dtype)} "
                    f"{list(entry.shape)}, expected {type_name(full.dtype)} {list(lengths)}",
                )
            boxes.append(tuple(box))
            pieces.append(_Piece(tuple(slice(a, b) for a, b in box), entry))
        if boxes and _find_overlap(boxes) is not None:
            raise corrupt(where, None, f"tensor {full.key!r}: slices overlap")
        covered = sum(math.prod(hi - lo for lo, hi in box) for box in boxes)
        if covered != full.num_elements:
            raise corrupt(
                where,
                None,
                f"tensor {full.key!r}: slices cover {covered} of {full.num_elements} elements",
            )
        return pieces

    # -- mapping -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _shard_fd(self, shard: int) -> Iterator[int]:
        """An open descriptor of the very shard file checked when the reader was opened.

        In lease mode, a duplicate of the kept descriptor (so :meth:`fence` closing the original
        cannot pull it away mid-read). Otherwise the path is opened again without blocking and
        must still be that regular file (same device and inode): a FIFO or another file
        swapped in meanwhile is refused. Either way its size must still be the one checked.
        """
        path = self.data_paths[shard]
        dev, ino, size = self._shard_ids[shard]
        with self._lock:
            self._check_not_fenced()
            if self._fds:
                try:
                    fd = os.dup(self._fds[shard])
                except OSError as exc:
                    raise os_error(path, "checkpoint data shard", exc) from exc
                try:
                    st = os.fstat(fd)
                except OSError as exc:
                    os.close(fd)
                    raise os_error(path, "checkpoint data shard", exc) from exc
            else:
                try:
                    fd, st = open_regular(path, "checkpoint data shard")
                except CheckpointNotFoundError:
                    raise CheckpointNotFoundError(
                        f"checkpoint data shard missing: {path!r}"
                    ) from None
        try:
            if (st.st_dev, st.st_ino) != (dev, ino):
                raise corrupt(
                    path, None, "shard replaced since the index was read (another file is there)"
                )
            if st.st_size != size:
                raise corrupt(
                    path,
                    None,
                    f"shard changed since the index was read: {st.st_size} bytes, expected {size}",
                )
            yield fd
        finally:
            os.close(fd)

    def _buffer(self, shard: int) -> mmap.mmap | memoryview | bytes:
        """The shard's bytes, memory-mapped once (an empty shard cannot be mapped), at a 2 MiB
        boundary where the platform allows (see :mod:`embserve.checkpoint._mapping`)."""
        buf = self._maps[shard]
        if buf is not None:
            return buf
        with self._lock:
            self._check_not_fenced()
            buf = self._maps[shard]
            if buf is None:
                size = self._shard_sizes[shard]
                with self._shard_fd(shard) as fd:
                    try:
                        buf = map_shard(fd, size) if size else b""
                    except OSError as exc:
                        raise os_error(
                            self.data_paths[shard], "checkpoint data shard", exc
                        ) from exc
                if not isinstance(buf, bytes):
                    owner, address, length = mapped_range(buf)
                    self._targets.append((weakref.ref(owner), address, length))
                self._maps[shard] = buf
        return buf

    def close(self) -> None:
        """Drop the memory maps; arrays already returned stay valid until they are released.

        With ``lease=True`` the leases (and their descriptors) are kept: they protect those
        arrays. :meth:`fence` releases them, and so does garbage collection of the reader.
        """
        with self._lock:
            for i, buf in enumerate(self._maps):
                if isinstance(buf, mmap.mmap | memoryview):
                    # While numpy views still use an mmap, close() raises BufferError; a
                    # memoryview's release() succeeds (numpy holds its own view of the
                    # reservation). Either way the mapping lives until the last array goes.
                    with contextlib.suppress(BufferError):
                        if isinstance(buf, mmap.mmap):
                            buf.close()
                        else:
                            buf.release()
                self._maps[i] = None

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- name-based view (tf.train.load_checkpoint) ----------------------------------------

    def keys(self) -> list[str]:
        """Tensor names in key order (slice entries and the header excluded), like
        ``tf.train.list_variables``; includes ``_CHECKPOINTABLE_OBJECT_GRAPH`` when present."""
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def has_tensor(self, key: str) -> bool:
        """Whether ``key`` names a tensor (``CheckpointReader.has_tensor``)."""
        return key in self._entries

    def info(self, key: str) -> TensorInfo:
        """The index record of ``key``.

        Raises:
            CheckpointMismatchError: no such tensor.
        """
        try:
            return self._entries[key]
        except KeyError:
            raise CheckpointMismatchError(
                f"key {key!r} not found in checkpoint {self.prefix!r}"
            ) from None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> full shape (``get_variable_to_shape_map``)."""
        return {k: v.shape for k, v in self._entries.items()}

    @property
    def dtypes(self) -> dict[str, DataType]:
        """Name -> element type (``get_variable_to_dtype_map``)."""
        return {k: v.dtype for k, v in self._entries.items()}

    # -- tensors -------------------------------------------------------------------------------

    def get_tensor(self, key: str, *, copy: bool = False, verify: bool = True) -> npt.NDArray[Any]:
        """The value of tensor ``key``.

        Numeric tensors come back as read-only, zero-copy views into the shard's memory map,
        unless ``copy`` is true (a private, writable array) or the tensor's offset is not a
        multiple of its element alignment (TensorFlow does not align data; such a tensor is
        copied once to an aligned, read-only array). bfloat16 tensors are ``uint16`` bit
        patterns (see :mod:`embserve.checkpoint.dtypes`), strings are ``object`` arrays of
        ``bytes``. A sliced tensor whose slices are one contiguous run of rows in one data shard
        (:attr:`TensorInfo.contiguous`: what a one-host TPU job writes, and partitioned
        variables saved by one host) is a view like an ordinary tensor, its checksum verified
        slice by slice; other sliced tensors are assembled into one new array.

        Args:
            key: the tensor name.
            copy: return a private writable copy instead of a view.
            verify: check the tensor's CRC-32C the first time it is read (strings are always
                checked, since decoding them reads every byte anyway).

        Raises:
            CheckpointMismatchError: no tensor named ``key``.
            CorruptCheckpointError: a checksum does not match (naming shard file and offset).
        """
        self._check_not_fenced()
        info = self.info(key)
        if info.contiguous:
            return self._read_run(info, copy=copy, verify=verify)
        if info.slices:
            return self._assemble(info, verify)
        return self._read(info, copy=copy, verify=verify)

    def _read_run(self, info: TensorInfo, *, copy: bool, verify: bool) -> npt.NDArray[Any]:
        """A contiguous sliced tensor: its run of bytes read as one tensor, checked per slice
        (the stored checksums are the slices')."""
        parts = [p.entry for p in self._pieces[info.key]]
        if copy and info.num_elements:
            return self._read_copy(info, verify=verify, parts=parts)
        if verify:
            for part in parts:
                self._verify_numeric(part)
        return self._read(info, copy=copy, verify=False)

    def _assemble(self, info: TensorInfo, verify: bool) -> npt.NDArray[Any]:
        dtype = SUPPORTED[info.dtype].numpy
        out: npt.NDArray[Any] = np.empty(info.shape, dtype=dtype)
        for piece in self._pieces[info.key]:
            out[piece.region] = self._read(piece.entry, copy=False, verify=verify, unaligned=True)
        return out

    def _read(
        self, t: TensorInfo, *, copy: bool, verify: bool, unaligned: bool = False
    ) -> npt.NDArray[Any]:
        """One stored tensor or slice; ``unaligned``: the caller copies it anyway (a slice
        assembled into its tensor), so a misaligned view is returned as is."""
        info = SUPPORTED[t.dtype]
        if t.dtype == DataType.STRING:
            return self._read_strings(t)
        n = t.num_elements
        if copy and n:
            return self._read_copy(t, verify=verify)
        if verify:
            self._verify_numeric(t)
        if n == 0:
            arr: npt.NDArray[Any] = np.zeros(t.shape, dtype=info.numpy)
        else:
            buf = self._buffer(t.shard_id)
            arr = np.frombuffer(buf, dtype=info.numpy, count=n, offset=t.offset).reshape(t.shape)
            if t.offset % info.numpy.alignment and not unaligned:
                self._log_copy(t)
                arr = arr.copy()
        if not copy:
            arr.flags.writeable = False
        return arr

    def _log_copy(self, t: TensorInfo) -> None:
        """Say once per tensor (and reader) that it is copied rather than shared: a warning
        from :data:`COPY_WARNING_MIN_BYTES` up, else at INFO level (TensorFlow's writer leaves
        the 8-byte ``save_counter`` of nearly every checkpoint misaligned; a warning for it on
        every restore would teach people to ignore the ones that matter)."""
        with self._lock:
            if t.key in self._logged_copies:
                return
            self._logged_copies.add(t.key)
        _log.log(
            logging.WARNING if t.size >= COPY_WARNING_MIN_BYTES else logging.INFO,
            "checkpoint %r: tensor %r (%d bytes) is copied into this process's private memory, "
            "not shared through the page cache: %s. Rewriting the checkpoint with "
            "BundleWriter(alignment=64) lets every tensor be served zero-copy.",
            self.prefix,
            t.key,
            t.size,
            t.copy_reason,
        )

    def _read_copy(
        self, t: TensorInfo, *, verify: bool, parts: Sequence[TensorInfo] | None = None
    ) -> npt.NDArray[Any]:
        """A private copy read straight from the file into its array.

        Copying out of the memory map would hold both the mapped pages and the copy (a 4 GB
        table peaked at 7.8 GB of RSS that way); reading into the destination peaks at one
        copy. The checksum, when asked for, is computed over the bytes actually kept: those of
        ``t``, or of each of ``parts`` (the slices a contiguous run is made of).
        """
        info = SUPPORTED[t.dtype]
        arr: npt.NDArray[Any] = np.empty(t.shape, dtype=info.numpy)
        view = arr.reshape(-1).view(np.uint8).data
        path = self.data_paths[t.shard_id]
        with self._shard_fd(t.shard_id) as fd:
            done = 0
            while done < t.size:
                try:
                    got = _pread_into(fd, view[done : done + _COPY_CHUNK], t.offset + done)
                except OSError as exc:
                    raise os_error(path, "checkpoint data shard", exc) from exc
                if not got:
                    raise corrupt(path, t.offset + done, f"tensor {t.key!r}: file ends early")
                done += got
        if verify:
            for part in parts if parts is not None else [t]:
                start = part.offset - t.offset
                kept = view[start : start + part.size]
                crc = crc32c.value_of_buffer(kept)
                if crc32c.mask(crc) != part.crc32c:
                    raise corrupt(
                        path,
                        part.offset,
                        f"tensor {part.key!r}: checksum mismatch over bytes [{part.offset}, "
                        f"{part.offset + part.size}) (stored {part.crc32c:#010x}, computed "
                        f"{crc32c.mask(crc):#010x})",
                    )
            if t.dtype == DataType.BOOL and t.size and int(arr.view(np.uint8).max()) > 1:
                raise corrupt(path, t.offset, f"tensor {t.key!r}: bool byte above 1")
        return arr

    def _verify_numeric(self, t: TensorInfo, progress: Callable[[int], None] | None = None) -> None:
        token = (t.shard_id, t.offset, t.size, t.crc32c)
        if token in self._verified:
            if progress is not None:
                progress(t.size)
            return
        buf = self._buffer(t.shard_id)
        crc = crc32c.value_of_buffer(buf, t.offset, t.offset + t.size, progress=progress)
        if crc32c.mask(crc) != t.crc32c:
            raise corrupt(
                self.data_paths[t.shard_id],
                t.offset,
                f"tensor {t.key!r}: checksum mismatch over bytes [{t.offset}, {t.offset + t.size}) "
                f"(stored {t.crc32c:#010x}, computed {crc32c.mask(crc):#010x})",
            )
        if t.dtype == DataType.BOOL and t.size:
            raw = np.frombuffer(buf, dtype=np.uint8, count=t.size, offset=t.offset)
            if int(raw.max()) > 1:
                raise corrupt(
                    self.data_paths[t.shard_id], t.offset, f"tensor {t.key!r}: bool byte above 1"
                )
        self._verified.add(token)

    def _read_strings(self, t: TensorInfo) -> npt.NDArray[Any]:
        path = self.data_paths[t.shard_id]
        raw = bytes(self._buffer(t.shard_id)[t.offset : t.offset + t.size]) if t.size else b""
        try:
            values = decode_strings(raw, t.num_elements, t.crc32c)
        except Malformed as exc:
            raise corrupt(path, t.offset + exc.offset, f"tensor {t.key!r}: {exc.what}") from None
        out: npt.NDArray[Any] = np.empty(len(values), dtype=object)
        out[:] = values
        self._verified.add((t.shard_id, t.offset, t.size, t.crc32c))
        return out.reshape(t.shape)

    def verify(self, progress: ProgressCallback | None = None) -> None:
        """Verify the checksum of every stored tensor and slice now.

        Args:
            progress: called as ``progress(bytes_done, bytes_total)`` first with 0, then after
                every chunk of at most 4 MiB, last with ``bytes_total``
                (:class:`ProgressCounter`), so a caller can show a progress bar over a large
                checkpoint.

        Raises:
            CorruptCheckpointError: the first mismatch, naming the shard file and offset.
        """
        stored = [t for t in self._entries.values() if not t.slices]
        stored += list(self._slice_entries.values())
        stored.sort(key=lambda t: (t.shard_id, t.offset))
        with ProgressCounter(progress, sum(t.size for t in stored)) as counter:
            for t in stored:
                if t.dtype == DataType.STRING:
                    self._read_strings(t)
                    counter.advance(t.size)
                else:
                    self._verify_numeric(t, counter.advance)


def _contiguous_run(full: TensorInfo, pieces: Sequence[_Piece]) -> tuple[int, int, int] | None:
    """``(shard, offset, size)`` of a sliced tensor's bytes when they form one row-major run.

    That is when every slice spans whole rows (all of every dimension but the first), and the
    slices, in row order, lie back to back in one data shard with no gap: then the
    concatenation of their bytes *is* the tensor. Slices without elements hold no bytes and
    are passed over. ``None`` otherwise (or for strings and tensors without elements).
    """
    if not full.shape or not SUPPORTED[full.dtype].itemsize or not full.num_elements:
        return None
    whole = tuple(slice(0, d) for d in full.shape[1:])
    filled = [p for p in pieces if p.entry.num_elements]
    if any(p.region[1:] != whole for p in filled):
        return None
    filled.sort(key=lambda p: p.region[0].start)
    first = filled[0].entry
    row = 0
    end = first.offset
    for p in filled:
        if p.region[0].start != row or p.entry.shard_id != first.shard_id or p.entry.offset != end:
            return None
        row = p.region[0].stop
        end += p.entry.size
    if row != full.shape[0]:
        return None
    return first.shard_id, first.offset, end - first.offset


def _find_overlap(boxes: Sequence[Sequence[tuple[int, int]]]) -> tuple[int, int] | None:
    """Indices of two half-open boxes that share an element, or ``None``.

    Empty boxes overlap nothing. Boxes are swept in order of their first-axis start and compared
    only while first-axis ranges can still intersect, so the usual partition layouts (disjoint
    row ranges) cost ``O(k log k)`` rather than ``O(k^2)`` for ``k`` slices.
    """
    order = sorted(
        (i for i, box in enumerate(boxes) if all(lo < hi for lo, hi in box)),
        key=lambda i: boxes[i][0] if boxes[i] else (0, 0),
    )
    for pos, i in enumerate(order):
        a = boxes[i]
        for j in order[pos + 1 :]:
            b = boxes[j]
            if a and b[0][0] >= a[0][1]:
                break  # every later box starts at or after a's first-axis end
            if all(lo1 < hi2 and lo2 < hi1 for (lo1, hi1), (lo2, hi2) in zip(a, b, strict=True)):
                return (min(i, j), max(i, j))
    return None


def decode_strings(raw: bytes, n: int, stored_crc: int) -> list[bytes]:
    """Decode and check a DT_STRING tensor's bytes (CHECKPOINT_FORMAT.md §4.3).

    Raises:
        Malformed: the lengths, their checksum, the total size or the final checksum are wrong
            (offsets relative to ``raw``).
    """
    if n == 0 and not raw:
        if stored_crc != crc32c.mask(0):
            raise Malformed(
                0, f"checksum mismatch (stored {stored_crc:#010x}, expected {crc32c.mask(0):#010x})"
            )
        return []
    end = len(raw)
    pos = 0
    lengths = []
    for _ in range(n):
        length, pos = decode_varint(raw, pos, end)
        lengths.append(length)
    if pos + 4 > end:
        raise Malformed(pos, "string tensor ends inside its length checksum")
    length_crc = crc32c.value(_lengths_for_crc(lengths))
    stored_lcrc = struct.unpack_from("<I", raw, pos)[0]
    if crc32c.mask(length_crc) != stored_lcrc:
        raise Malformed(
            pos,
            f"string lengths checksum mismatch (stored {stored_lcrc:#010x}, computed "
            f"{crc32c.mask(length_crc):#010x})",
        )
    pos += 4
    if sum(lengths) != end - pos:
        raise Malformed(pos, f"string lengths add up to {sum(lengths)} bytes, {end - pos} stored")
    crc = crc32c.extend(length_crc, raw[pos - 4 : pos])
    values = []
    for length in lengths:
        values.append(raw[pos : pos + length])
        pos += length
    crc = crc32c.extend(crc, raw[end - sum(lengths) : end])
    if crc32c.mask(crc) != stored_crc:
        raise Malformed(
            0, f"checksum mismatch (stored {stored_crc:#010x}, computed {crc32c.mask(crc):#010x})"
        )
    return values


def _lengths_for_crc(lengths: Sequence[int]) -> bytes:
    """The byte string TensorFlow's string-length checksum covers: u32 LE, or u64 LE if larger."""
    if all(length <= 0xFFFFFFFF for length in lengths):
        return struct.pack(f"<{len(lengths)}I", *lengths)
    return b"".join(
        struct.pack("<I", length) if length <= 0xFFFFFFFF else struct.pack("<Q", length)
        for length in lengths
    )


def encode_strings(values: Sequence[bytes]) -> tuple[bytes, int]:
    """Encode a DT_STRING tensor's elements; returns ``(bytes, masked crc32c)``."""
    lengths = [len(v) for v in values]
    length_crc = crc32c.value(_lengths_for_crc(lengths))
    stored = struct.pack("<I", crc32c.mask(length_crc))
    body = b"".join(values)
    crc = crc32c.extend(crc32c.extend(length_crc, stored), body)
    return b"".join(encode_varint(x) for x in lengths) + stored + body, crc32c.mask(crc)


# fcntl's lease constants (Linux): F_RDLCK is 0, F_UNLCK 2; F_GETLEASE answers F_UNLCK while a
# lease is being broken.
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", None)
_F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)
_F_RDLCK = 0
_F_UNLCK = 2
# Lease breaks are signalled to the descriptor's owner, SIGIO by default, whose default action
# kills the process. The owner is cleared right after the lease is taken (F_SETOWN 0); for the
# microseconds between, the signal is SIGURG, which is ignored by default.
_LEASE_SIGNAL = int(getattr(signal, "SIGURG", 0))


def _take_lease(fd: int, path: str) -> str | None:
    """Read-lease ``fd``; ``None`` when held, else why leases are unavailable here.

    Raises:
        CheckpointBusyError: the file is open for writing elsewhere (EAGAIN).
    """
    if fcntl is None or _F_SETLEASE is None:
        return "file leases are Linux-only"
    try:
        if _LEASE_SIGNAL:
            fcntl.fcntl(fd, fcntl.F_SETSIG, _LEASE_SIGNAL)
        fcntl.fcntl(fd, _F_SETLEASE, _F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise CheckpointBusyError(
                f"checkpoint data shard {path!r} is open for writing by another process (is it "
                "still being written?): retry later"
            ) from exc
        why = {
            errno.EACCES: "this process neither owns the file nor has CAP_LEASE",
            errno.EINVAL: "the filesystem does not support leases, or they are disabled "
            "(/proc/sys/fs/leases-enable)",
            errno.ENOLCK: "no locks available",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        return f"no file lease on {path!r}: {why}"
    try:
        fcntl.fcntl(fd, fcntl.F_SETOWN, 0)
    except OSError as exc:  # not seen in practice; without it a break could be signalled
        _release_lease(fd)
        return f"no file lease on {path!r}: clearing the lease's signal owner failed ({exc})"
    return None


def _release_lease(fd: int) -> None:
    if fcntl is not None and _F_SETLEASE is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETLEASE, _F_UNLCK)


def _close_all(fds: list[int]) -> None:
    """Release the leases and close the descriptors (emptying the list); idempotent."""
    while fds:
        fd = fds.pop()
        _release_lease(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` without moving ``fd``'s position (descriptors are
    shared between threads); returns the bytes read, 0 at the end of the file."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


# ---------------------------------------------------------------------------------------------
# Writing


class BundleWriter:
    """Write a checkpoint bundle: ``P.index`` and ``P.data-0000K-of-0000N``.

    Use as a context manager (the bundle is finished when the block exits normally and every
    temporary file is removed when it raises), or call :meth:`finish` / :meth:`abort`::

        with BundleWriter("/ckpts/ckpt-1") as w:
            w.add("embedding/table_a/.ATTRIBUTES/VARIABLE_VALUE", table_a)
            w.add("save_counter/.ATTRIBUTES/VARIABLE_VALUE", np.int64(1))

    Tensor bytes are streamed to the data file as they are added, in that order (TensorFlow
    writes in object-graph order with the object graph last; readers rely on offsets only).

    Args:
        prefix: the checkpoint prefix ``P``; missing parent directories are created.
        num_shards: number of data files; tensors pick one with ``add(..., shard=k)``.
        overwrite: replace an existing checkpoint with this prefix. Never done silently: without
            it an existing ``P.index`` raises ``FileExistsError``. Replacing goes through
            rename, so readers that have the old files memory-mapped keep valid mappings.
        alignment: start every tensor at a multiple of this many bytes (padding with zeros).
            1 (the default) is what TensorFlow does and gives byte-identical files; a larger
            value (e.g. 64) makes every numeric tensor eligible for zero-copy views.
    """

    def __init__(
        self,
        prefix: str | os.PathLike[str],
        *,
        num_shards: int = 1,
        overwrite: bool = False,
        alignment: int = 1,
    ) -> None:
        if not 1 <= num_shards <= MAX_SHARDS:
            raise ValueError(f"num_shards must be in 1..{MAX_SHARDS}, got {num_shards}")
        if alignment < 1:
            raise ValueError(f"alignment must be >= 1, got {alignment}")
        self.prefix = os.fspath(prefix)
        self.num_shards = num_shards
        self.alignment = alignment
        if os.path.exists(index_path(self.prefix)) and not overwrite:
            raise FileExistsError(
                f"a checkpoint already exists at {self.prefix!r} "
                "(pass overwrite=True to replace it)"
            )
        parent = os.path.dirname(self.prefix)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._tag = f".tempstate{secrets.randbits(64)}"
        self._files: list[IO[bytes] | None] = [None] * num_shards
        self._sizes = [0] * num_shards
        self._entries: dict[bytes, pb.BundleEntry] = {}
        self._closed = False

    def _file(self, shard: int) -> IO[bytes]:
        f = self._files[shard]
        if f is None:
            f = open(data_path(self.prefix, shard, self.num_shards) + self._tag, "wb")  # noqa: SIM115
            self._files[shard] = f
        return f

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this BundleWriter is finished or aborted")

    def _check_key(self, key: str) -> bytes:
        if not isinstance(key, str) or not key:
            raise ValueError(f"tensor names must be non-empty strings, got {key!r}")
        raw = key.encode("utf-8")
        if raw[:1] == b"\x00":
            raise ValueError(f"tensor names may not start with NUL (reserved for slices): {key!r}")
        if raw in self._entries:
            raise ValueError(f"tensor {key!r} was already added")
        return raw

    def add(
        self,
        key: str,
        value: npt.ArrayLike,
        *,
        dtype: DataType | None = None,
        shard: int = 0,
    ) -> TensorInfo:
        """Append one tensor.

        Args:
            key: its checkpoint name.
            value: a numpy array or anything ``np.asarray`` accepts; ``bytes`` / ``str`` (and
                arrays of them) are string tensors, ``str`` encoded as UTF-8.
            dtype: the stored type; default from the array's dtype. ``DataType.BFLOAT16``
                takes either ``uint16`` bit patterns or float values (rounded like TF's cast).
                Other explicit types accept values of the same kind (a float64 array is cast
                to float32 for ``DataType.FLOAT``); a cross-kind cast raises ``TypeError``.
            shard: the data file (``0 <= shard < num_shards``).

        Returns:
            The :class:`TensorInfo` recorded for it.
        """
        self._check_open()
        raw_key = self._check_key(key)
        entry = self._write(key, value, dtype, shard)
        self._entries[raw_key] = entry
        return _info_of(key, entry)

    def add_streamed(
        self,
        key: str,
        shape: Sequence[int],
        dtype: DataType,
        chunks: Iterable[npt.ArrayLike],
        *,
        shard: int = 0,
    ) -> TensorInfo:
        """Append one numeric tensor written piece by piece: memory bounded by a piece.

        ``chunks`` yields consecutive blocks of the tensor's elements in C order (typically
        row blocks ``[n, ...]`` of a large table); each is converted as :meth:`add` converts a
        value of ``dtype``, written and checksummed at once (the CRC-32C is extended over the
        pieces), and may be dropped by the producer as soon as the next one is asked for. The
        entry is recorded only when every element has arrived: a tensor that receives more or
        fewer elements than ``shape`` holds raises and leaves no entry (abort the writer to
        remove its bytes, as the context manager does on any exception).

        Args:
            key: its checkpoint name.
            shape: the full shape.
            dtype: the stored type (not ``STRING``).
            chunks: the pieces, in order.
            shard: the data file.

        Raises:
            ValueError: the pieces hold more or fewer elements than ``shape``, or ``dtype`` is
                a string type.
            TypeError: a piece cannot be stored as ``dtype`` (as in :meth:`add`).
        """
        self._check_open()
        raw_key = self._check_key(key)
        full_shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in full_shape):
            raise ValueError(f"invalid shape {list(full_shape)}")
        dt = DataType(dtype)
        if dt == DataType.STRING:
            raise ValueError(f"tensor {key!r}: string tensors cannot be streamed; use add()")
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} outside 0..{self.num_shards - 1}")
        f = self._file(shard)
        pad = -self._sizes[shard] % self.alignment
        if pad:
            f.write(bytes(pad))
            self._sizes[shard] += pad
        offset = self._sizes[shard]
        want = math.prod(full_shape)
        got = 0
        crc = 0
        for chunk in chunks:
            arr, _ = _as_stored(chunk, dt)
            got += arr.size
            if got > want:
                raise ValueError(
                    f"tensor {key!r}: the pieces hold more than the {want} elements of shape "
                    f"{list(full_shape)}"
                )
            view = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data
            crc = crc32c.value_of_buffer(view, crc=crc)
            f.write(view)
            self._sizes[shard] += view.nbytes
        if got != want:
            raise ValueError(
                f"tensor {key!r}: the pieces hold {got} of the {want} elements of shape "
                f"{list(full_shape)}"
            )
        entry = pb.BundleEntry(
            dtype=cast("pb.DataType", int(dt)),
            shard_id=shard,
            offset=offset,
            size=self._sizes[shard] - offset,
            crc32c=crc32c.mask(crc),
        )
        entry.shape.SetInParent()
        for d in full_shape:
            entry.shape.dim.add(size=d)
        self._entries[raw_key] = entry
        return _info_of(key, entry)

    def add_sliced(
        self,
        key: str,
        shape: Sequence[int],
        slices: Iterable[tuple[Sequence[Extent], npt.ArrayLike]],
        *,
        dtype: DataType | None = None,
        shard: int | Sequence[int] = 0,
    ) -> TensorInfo:
        """Store one tensor of full ``shape`` as several slices (CHECKPOINT_FORMAT.md §5.4).

        TensorFlow restores such a tensor into one ordinary variable; this exists to mirror a
        partitioned layout. A single slice covering the whole tensor is stored as an ordinary
        entry, as TensorFlow does.

        Args:
            key: the tensor name.
            shape: the full shape.
            slices: ``(extents, value)`` pairs; ``extents`` has one ``(start, length)`` per
                dimension, ``length`` ``None`` meaning the whole dimension; ``value`` has the
                extents' lengths as its shape.
            dtype: as in :meth:`add` (default: from the first slice).
            shard: one shard for all slices, or one per slice.

        Raises:
            ValueError: slices outside the shape, overlapping, or not covering every element.
        """
        self._check_open()
        raw_key = self._check_key(key)
        full_shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in full_shape):
            raise ValueError(f"invalid shape {list(full_shape)}")
        items = [
            (tuple((int(s), None if n is None else int(n)) for s, n in ext), v) for ext, v in slices
        ]
        if not items:
            raise ValueError(f"tensor {key!r}: add_sliced needs at least one slice")
        shards = [shard] * len(items) if isinstance(shard, int) else list(shard)
        if len(shards) != len(items):
            raise ValueError("give one shard per slice")
        boxes = []
        for extents, _ in items:
            if len(extents) != len(full_shape):
                raise ValueError(f"slice {extents} does not have rank {len(full_shape)}")
            box = []
            for (start, length), dim in zip(extents, full_shape, strict=True):
                stop = dim if length is None else start + length
                if length is None and start != 0:
                    raise ValueError(f"a whole-dimension extent must start at 0: {extents}")
                if start < 0 or stop < start or stop > dim:
                    raise ValueError(f"slice {extents} lies outside shape {list(full_shape)}")
                box.append((start, stop))
            boxes.append(box)
        volumes = [math.prod(b - a for a, b in box) for box in boxes]
        clash = _find_overlap(boxes)
        if clash is not None:
            i, j = clash
            raise ValueError(f"slices {items[i][0]} and {items[j][0]} overlap")
        if sum(volumes) != math.prod(full_shape):
            raise ValueError(f"slices cover {sum(volumes)} of {math.prod(full_shape)} elements")
        if len(items) == 1 and [tuple(b) for b in boxes[0]] == [(0, d) for d in full_shape]:
            return self.add(key, items[0][1], dtype=dtype, shard=shards[0])

        written: list[tuple[bytes, pb.BundleEntry]] = []
        for (extents, value), box, k in zip(items, boxes, shards, strict=True):
            lengths = tuple(b - a for a, b in box)
            entry = self._write(key, value, dtype, k, expect_shape=lengths)
            if dtype is None:
                dtype = DataType(entry.dtype)
            elif entry.dtype != dtype:
                raise ValueError("all slices must have one dtype")
            written.append((slice_key(key, extents), entry))
        assert dtype is not None
        full = pb.BundleEntry(dtype=cast("pb.DataType", int(dtype)))
        full.shape.SetInParent()
        for d in full_shape:
            full.shape.dim.add(size=d)
        for extents, _ in items:
            proto = full.slices.add()
            for start, length in extents:
                ext = proto.extent.add()
                if length is not None:
                    ext.start = start
                    ext.length = length
        for skey, entry in written:
            self._entries[skey] = entry
        self._entries[raw_key] = full
        return _info_of(key, full)

    def _write(
        self,
        key: str,
        value: npt.ArrayLike,
        dtype: DataType | None,
        shard: int,
        expect_shape: tuple[int, ...] | None = None,
    ) -> pb.BundleEntry:
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} outside 0..{self.num_shards - 1}")
        arr, dt = _as_stored(value, dtype)
        if expect_shape is not None and arr.shape != expect_shape:
            raise ValueError(f"slice of {key!r} has shape {arr.shape}, expected {expect_shape}")
        f = self._file(shard)
        pad = -self._sizes[shard] % self.alignment
        if pad:
            f.write(bytes(pad))
            self._sizes[shard] += pad
        offset = self._sizes[shard]
        if dt == DataType.STRING:
            data, masked = encode_strings(list(arr.reshape(-1)))
            f.write(data)
            size = len(data)
        else:
            contiguous = np.ascontiguousarray(arr)
            view = contiguous.reshape(-1).view(np.uint8).data
            masked = crc32c.mask(crc32c.value_of_buffer(view))
            f.write(view)
            size = view.nbytes
        self._sizes[shard] += size
        entry = pb.BundleEntry(
            dtype=cast("pb.DataType", int(dt)),
            shard_id=shard,
            offset=offset,
            size=size,
            crc32c=masked,
        )
        entry.shape.SetInParent()
        for d in arr.shape:
            entry.shape.dim.add(size=int(d))
        return entry

    def finish(self) -> None:
        """Write the index; rename data files, then the index, into place."""
        self._check_open()
        try:
            for shard in range(self.num_shards):
                f = self._file(shard)  # shards without tensors still exist, empty
                f.flush()
                os.fsync(f.fileno())
                f.close()
            for shard in range(self.num_shards):
                final = data_path(self.prefix, shard, self.num_shards)
                os.replace(final + self._tag, final)
            header = pb.BundleHeader(num_shards=self.num_shards)
            header.version.producer = _BUNDLE_VERSION
            items = [(HEADER_KEY, header.SerializeToString())]
            items += [(k, self._entries[k].SerializeToString()) for k in sorted(self._entries)]
            atomic_write(index_path(self.prefix), build_table(items), self._tag)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Remove every temporary file; nothing of this bundle is left behind."""
        for shard, f in enumerate(self._files):
            if f is not None and not f.closed:
                f.close()
            tmp = data_path(self.prefix, shard, self.num_shards) + self._tag
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._closed = True

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def _info_of(key: str, entry: pb.BundleEntry) -> TensorInfo:
    return TensorInfo(
        key,
        DataType(entry.dtype),
        tuple(int(d.size) for d in entry.shape.dim),
        int(entry.shard_id),
        int(entry.offset),
        int(entry.size),
        int(entry.crc32c),
        tuple(
            tuple((int(e.start), int(e.length) if e.HasField("length") else None) for e in s.extent)
            for s in entry.slices
        ),
    )


def _as_stored(value: npt.ArrayLike, dtype: DataType | None) -> tuple[npt.NDArray[Any], DataType]:
    """Convert ``value`` to the little-endian array the data file stores, and its type."""
    if dtype is not None and DataType(dtype) not in SUPPORTED:
        raise TypeError(f"cannot write {type_name(dtype)} tensors")
    if isinstance(value, (bytes, str)):
        value = np.array(value, dtype=object)
    arr = np.asarray(value)
    dt = DataType(dtype) if dtype is not None else from_numpy(arr.dtype)
    if dt == DataType.STRING:
        if arr.dtype.kind not in "OSU":
            raise TypeError(f"string tensors need bytes or str elements, got {arr.dtype}")
        out = np.empty(arr.shape, dtype=object)
        flat = out.reshape(-1)
        for i, item in enumerate(arr.reshape(-1)):
            if isinstance(item, str):
                flat[i] = item.encode("utf-8")
            elif isinstance(item, (bytes, bytearray, np.bytes_)):
                flat[i] = bytes(item)
            else:
                raise TypeError(f"string tensor element {item!r} is neither bytes nor str")
        return out, dt
    if dt == DataType.BFLOAT16:
        if arr.dtype == np.uint16:
            return arr.astype("<u2", copy=False), dt
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"cannot store {arr.dtype} as bfloat16")
        return float32_to_bfloat16(arr.astype(np.float32)).reshape(arr.shape), dt
    target = SUPPORTED[dt].numpy
    if arr.dtype.kind in "OSU":
        raise TypeError(f"cannot store {arr.dtype} values as {SUPPORTED[dt].name}")
    if arr.dtype != target and not np.can_cast(arr.dtype, target, casting="same_kind"):
        raise TypeError(f"cannot store {arr.dtype} values as {SUPPORTED[dt].name} (different kind)")
    return arr.astype(target, copy=False), dt
