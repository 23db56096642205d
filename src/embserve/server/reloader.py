"""Hot reload: watch the checkpoint location, restore new versions off the request path, swap.

**Layouts.** The watched path (``[model] checkpoint``) is one of:

* a **CheckpointManager directory**: a ``checkpoint`` state file names the newest prefix (as
  ``tf.train.CheckpointManager`` and ``tf.train.Checkpoint.save`` write it; followed by
  :func:`embserve.checkpoint.resolve_checkpoint`, so a state file naming a checkpoint not
  there yet means "nothing yet", and one that is a FIFO, a device or oversized is refused,
  naming it, never read). The version is the prefix's trailing number (``ckpt-12`` → 12),
  or, without one, the next number after the highest version served;
* a **TF Serving base directory**: numbered subdirectories ``<dir>/<N>/``, each holding one
  checkpoint (a ``checkpoint`` state file, a SavedModel's ``variables/variables`` prefix, or a
  single ``*.index`` prefix). The highest ``N`` that holds a complete checkpoint is the
  candidate; its version is ``N``. A subdirectory without an index yet is still being written
  and is skipped;
* a **single prefix** (or a directory holding exactly one ``*.index``): served as is, reloaded
  when its files are replaced.

**Polling.** Every ``poll_interval_s`` a background thread finds the candidate and compares its
*signature* with the served one's: the prefix and the inode, size, mtime and ctime of its
``.index`` and of exactly the data shards the index names (``P.data-00000-of-0000N``, the count
read from the index header, cached while the index is unchanged, in one cache per process that
every reloader's thread may use at once: each access holds its lock). Files beside them under
other names (the ``*.tempstate*`` files a writer streams into before renaming them over the
prefix, leftovers of a crashed writer, shards of another layout) never count, so a writer at
work never triggers a reload. A new signature is restored into a **new**
``TPUEmbeddingForServing`` by the loader (:class:`CheckpointLoader`: restore, then a smoke
lookup of id 0 through every feature), verified (below), and swapped in by one reference
assignment of an immutable :class:`LoadedVersion`.

**Verification** (``[server] verify_tables``, default on). Restoring checks the checksums of
tables up to 64 MiB only (larger ones are mapped unread); the server checks every served table's
CRC-32C over the exact bytes it will serve (the mapped file, or the private copy with
``copy_tables``) **before** the version serves: a flipped byte in a 70 MB table is a refusal,
never a wrong row. It costs about 0.5 s per 4 GB. With ``verify_tables = false`` the version is
swapped in at once and verified right after, in the background: the previous version is kept
until that check passes, and on a mismatch the server swaps back to it (or to nothing: 503),
remembers the files as corrupt, and says so in the log, the status route (``END``,
``DATA_LOSS``) and the metrics (``embserve_model_verifications_total{result="mismatch"}``,
``embserve_model_revocations_total{reason="corrupt"}``, ``embserve_model_verified``).

**Storage types.** A quantized checkpoint's tables are served from their mapped stored rows
and verified over those bytes like float32 tables. A table the config asks to quantize at load
(``storage`` under ``[[tables]]``) is read block by block from its float32 mapping into private
memory holding the quantized bytes only; its checksum is computed over the same blocks during
that pass, so the verification owed afterwards skips it.

**Requests** read the served version through :meth:`Reloader.use`, which counts them in flight
on that version until they finish, so a request in flight finishes on the version it started
with, and a version taken out of service is released only after its requests are done.

**Files changed in place.** Tables are memory maps of the data files. Replacing a checkpoint
by writing new files and renaming them (embserve's and TensorFlow's writers, ``mv``) is safe;
writing *into* a served file (``cp`` or ``rsync --inplace`` onto it, ``truncate``, ``>``)
would make the next read past its new end kill the process with SIGBUS. So the loader opens
every data shard with a Linux read lease (``BundleReader(prefix, lease=True)``), which makes
the kernel hold such a writer back (or refuse it, for non-blocking opens such as coreutils
``truncate``) and mark the lease as breaking. A watcher thread checks the leases of every
version alive every ``lease_check_interval_s`` (50 ms; ~1 us per shard) and revokes a version
whose lease breaks (:meth:`Reloader.check_files`): swapped out (requests get the version kept
during a background check, or 503), its requests in flight waited for (``revoke_wait_s``, 5 s
at most), its mappings overlaid with zeros and its leases released, so the writer proceeds and
nothing can SIGBUS (a request still in its lookup after that wait answers 503, never the
zeros: :attr:`LoadedVersion.fenced`); logged, shown by the status route (``END``,
``UNAVAILABLE``, naming the file) and counted
(``embserve_model_revocations_total{reason="file_changed"}``). The normal polling then
loads whatever the files become once they are complete and valid (a half-written file fails
its checksum, a file still open for writing is retried). Replaced versions still
alive are watched too (released without fuss); ``copy_tables = true`` keeps no file at all.
Where leases are unavailable (not Linux, some network filesystems, files owned by another user
without ``CAP_LEASE``) the server serves anyway, says so once in the log, and reports
``embserve_model_files_protected 0``.

**Refusals.** A checkpoint that fails to restore or validate is refused: logged, counted
(``embserve_model_reload_failures_total{reason}``), reported by ``GET /v1/models/{name}`` with
its error, and the served version stays. Only a checkpoint that is **damaged** (``corrupt``,
``DATA_LOSS``) or **does not match the config** (``mismatch``, ``FAILED_PRECONDITION``) is
remembered and not retried until its files change. Everything else may be transient (too many
open files, out of memory, a shard still open for writing, a missing file, a bug) and is retried
with exponential backoff: after ``retry_initial_s`` (1 s), doubling up to ``retry_max_s``
(60 s), and at once when the files change. A refused version never uses up a version number.
Only the newest candidate is ever tried (TF Serving's "latest" policy): a refused newest
checkpoint does not make the server fall back to an older one.

**Stopping.** :meth:`Reloader.stop` returns within a fraction of a second even during a long
load: a load in progress gives up at its next progress report (:data:`Progress`: as it starts,
after each table restored and every 4 MiB verified; :class:`LoadCancelled`), and a load that
does not report progress finishes in its daemon thread and is thrown away. Either way nothing is
installed after ``stop()`` returns.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from google.protobuf.message import DecodeError

import embserve as es
from embserve.checkpoint import BundleReader, DataType, crc32c, resolve_checkpoint
from embserve.checkpoint.bundle import (
    HEADER_KEY,
    MAX_SHARDS,
    ProgressCallback,
    ProgressCounter,
    data_path,
)
from embserve.checkpoint.protos import tensor_bundle_pb2
from embserve.checkpoint.sstable import read_table
from embserve.checkpoint.state import STATE_FILENAME as _STATE_FILENAME
from embserve.checkpointing import (
    VERIFY_ON_RESTORE_MAX_BYTES,
    collapse_huge_pages,
    find_embedding_tables,
    restore_embedding,
    restore_keys,
)
from embserve.lookup import FeatureSpec
from embserve.server.config import object_value
from embserve.storage import QuantizedTable
from embserve.tables import StackedTable

if TYPE_CHECKING:
    from embserve.server.config import ServingConfig
    from embserve.server.metrics import ServerMetrics

__all__ = [
    "STATE_FILENAME",
    "Candidate",
    "CheckpointLoader",
    "LoadCancelled",
    "LoadResult",
    "LoadedVersion",
    "Loader",
    "Progress",
    "ProgressLoader",
    "Reloader",
    "SmokeCheckError",
    "VersionStatus",
    "find_candidate",
    "make_loader",
    "prefix_in_directory",
    "smoke_check",
    "verify_served_tables",
]

_log = logging.getLogger("embserve.server")

#: The state file of the CheckpointManager layout.
STATE_FILENAME = _STATE_FILENAME

#: ``progress(done_bytes, total_bytes)``, called while a load copies or verifies tables, as
#: :class:`~embserve.checkpoint.bundle.ProgressCounter` reports: ``(0, total)`` first, then per
#: table or per 4 MiB checked, ``(total, total)`` last. The reloader's raises
#: :class:`LoadCancelled` once :meth:`Reloader.stop` is called.
Progress = ProgressCallback

_TRAILING_NUMBER = re.compile(r"-(\d+)$")

# TF Serving's state names (ModelVersionStatus.State) and error codes (tensorflow.error.Code).
AVAILABLE, LOADING, END = "AVAILABLE", "LOADING", "END"

#: Refusal reasons that are facts about the files: remembered until the files change. Every
#: other reason may pass by itself and is retried with backoff.
_REMEMBERED = frozenset({"corrupt", "mismatch"})
#: How many remembered refusals are kept (one signature each).
_MAX_REMEMBERED = 64
#: Backoff doublings are capped here (2**30 s is decades; beyond it float math would overflow).
_MAX_DOUBLINGS = 30


class SmokeCheckError(es.EmbserveError):
    """A restored model failed its smoke lookup (the tables do not answer as stored)."""


class LoadCancelled(Exception):  # noqa: N818 - it is what it says, not an error
    """The reloader is stopping: raised from a load's progress callback so the load gives up.

    Not a refusal: nothing is logged as a failure, counted or remembered, and nothing is
    installed.
    """


class _VersionState:
    """The mutable part of a served version: requests in flight, revoked, verified, fenced.

    ``in_flight`` is a deque used as a counter: ``append`` / ``pop`` / ``len`` are atomic (the
    GIL, or the deque's own lock on free-threaded builds), so counting a request costs no lock.
    ``fencing`` is set just before the revoker starts overlaying the mappings with zeros (and
    never cleared), ``fenced`` once that is done. ``reader`` and the identity fields are set
    when the version is installed, for the lease watcher (which holds states weakly: a version
    nobody references is not watched).
    """

    __slots__ = (
        "__weakref__",
        "fenced",
        "fencing",
        "in_flight",
        "prefix",
        "reader",
        "revoked",
        "signature",
        "verified",
        "version",
    )

    def __init__(self, *, verified: bool = True) -> None:
        self.in_flight: collections.deque[None] = collections.deque()
        self.revoked: str | None = None
        self.verified = verified
        self.fencing = False
        self.fenced = False
        self.reader: BundleReader | None = None
        self.version = 0
        self.prefix = ""
        self.signature: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """One served version; immutable, so a request can hold it safely while a swap happens.

    Attributes:
        version: the version number reported to clients.
        model: the restored serving object (read-only memory-mapped tables).
        prefix: the checkpoint prefix it was restored from.
        loaded_at: wall-clock time of the swap (seconds since the epoch).
        load_seconds: time spent restoring and validating it.
        signature: the files' identity when it was found (see :class:`Candidate`).
        reader: the open checkpoint its tables are mapped from, kept open (with its read
            leases) while the version lives; ``None`` for copied tables and for models built by
            other loaders.
        copied: the tables are private copies (``copy_tables``): files changing in place cannot
            affect them.
    """

    version: int
    model: es.TPUEmbeddingForServing
    prefix: str
    loaded_at: float
    load_seconds: float
    signature: tuple[Any, ...] = ()
    reader: BundleReader | None = None
    copied: bool = False
    _state: _VersionState = field(default_factory=_VersionState, repr=False, compare=False)

    @property
    def protected(self) -> bool:
        """Whether its tables are safe from their files being changed in place: private copies,
        or mappings of files this process holds read leases on."""
        return self.copied or (self.reader is not None and self.reader.protected)

    @property
    def verified(self) -> bool:
        """Whether every served table's checksum has been checked (a version swapped in
        unverified with ``verify_tables = false`` becomes verified when its background check
        passes)."""
        return self._state.verified

    @property
    def revoked(self) -> str | None:
        """Why this version was taken out of service, or ``None`` while it may serve."""
        return self._state.revoked

    @property
    def in_flight(self) -> int:
        """Requests currently using this version through :meth:`Reloader.use`."""
        return len(self._state.in_flight)

    @property
    def fenced(self) -> bool:
        """Whether its tables may read zeros: set just *before* a revocation starts overlaying
        its mappings with zero pages (:meth:`BundleReader.fence
        <embserve.checkpoint.BundleReader.fence>`), never cleared. A request that waited
        longer than ``revoke_wait_s`` checks it after its lookup: ``False`` then means every
        read of that lookup saw the real tables (the fence had not begun when the check ran,
        and the reads came before the check); ``True`` means the answer may hold zeros and
        must not be sent."""
        return self._state.fencing


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """A version's state as ``GET /v1/models/{name}`` reports it (TF Serving's fields).

    Attributes:
        version: the version number.
        state: ``"AVAILABLE"`` (served), ``"LOADING"`` or ``"END"`` (replaced, refused or
            revoked).
        error_code: ``"OK"``, or TF Serving's code for why it was refused (``"DATA_LOSS"`` for
            damaged files, ``"FAILED_PRECONDITION"`` for a checkpoint that does not match the
            config, ``"NOT_FOUND"``, ``"UNAVAILABLE"`` and ``"RESOURCE_EXHAUSTED"`` for
            failures retried with backoff, ``"INVALID_ARGUMENT"``, ``"UNKNOWN"``).
        error_message: empty, or the refusal's message.
        prefix: the checkpoint prefix.
        at: when this state was reached (seconds since the epoch).
    """

    version: int
    state: str
    error_code: str
    error_message: str
    prefix: str
    at: float


class Candidate(NamedTuple):
    """The checkpoint the watched location currently offers.

    Attributes:
        prefix: its prefix.
        version: the version the layout gives it (``N`` of ``<dir>/<N>/``, the trailing number
            of ``ckpt-N``), or ``None`` to number it after the highest version served.
        signature: changes whenever the checkpoint's files are replaced or modified.
    """

    prefix: str
    version: int | None
    signature: tuple[Any, ...]


# ---------------------------------------------------------------------------------------------
# Finding the newest checkpoint

# (index path, inode, size, mtime, ctime) → the shard count its header gives (None: unreadable).
# Polls re-read an index only when it changed; 64 entries cover every prefix a server watches.
# One cache per process, used by every reloader's poll thread and by direct callers of
# find_candidate: every access holds _shard_counts_lock (a lookup and an eviction by another
# thread in between made `in` then `[]` raise KeyError). Indexes are read outside the lock.
_shard_counts: collections.OrderedDict[tuple[Any, ...], int | None] = collections.OrderedDict()
_shard_counts_lock = threading.Lock()
_SHARD_COUNT_CACHE = 64
_NOT_CACHED = -1  # never a shard count (those are 1..MAX_SHARDS) nor None


def _identity(path: str) -> tuple[Any, ...]:
    """``(path, inode, size, mtime, ctime)``, or ``(path, None)`` when it cannot be stat'ed.

    ctime is there because nobody can set it: a file rewritten in place with its size and mtime
    restored (``rsync --inplace -t``) still changes it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _num_shards(index: str, identity: tuple[Any, ...]) -> int | None:
    """The shard count in the header of the index file ``index`` (``None``: unreadable)."""
    with _shard_counts_lock:
        cached = _shard_counts.get(identity, _NOT_CACHED)
    if cached != _NOT_CACHED:
        return cached
    count: int | None = None
    try:
        # read_table opens without blocking, accepts a regular file only and caps its size.
        table = read_table(index)
        if table.entries and table.entries[0][0] == HEADER_KEY:
            header = tensor_bundle_pb2.BundleHeader.FromString(table.entries[0][1])
            if 1 <= header.num_shards <= MAX_SHARDS:
                count = int(header.num_shards)
    except (es.CheckpointError, OSError, DecodeError):
        count = None  # the load will say what is wrong with it
    with _shard_counts_lock:
        _shard_counts[identity] = count
        while len(_shard_counts) > _SHARD_COUNT_CACHE:
            _shard_counts.popitem(last=False)
    return count


def _signature(prefix: str) -> tuple[Any, ...]:
    """The prefix and the identity of its index and of exactly the data shards it names."""
    index = _identity(prefix + ".index")
    parts: list[Any] = [os.path.abspath(prefix), index]
    if index[1] is not None:
        count = _num_shards(prefix + ".index", index)
        if count is not None:
            parts.extend(_identity(data_path(prefix, i, count)) for i in range(count))
    return tuple(parts)


def _trailing_number(prefix: str) -> int | None:
    match = _TRAILING_NUMBER.search(os.path.basename(prefix))
    return int(match.group(1)) if match else None


def _has_state_file(directory: str) -> bool:
    """Whether ``directory`` has a ``checkpoint`` entry to follow: anything but a directory, so
    that a FIFO or a device there is refused (naming it), not passed over for another layout."""
    path = os.path.join(directory, STATE_FILENAME)
    return os.path.lexists(path) and not os.path.isdir(path)


def _state_prefix(directory: str) -> str | None:
    """The prefix ``directory``'s state file names (``resolve_checkpoint``), or ``None`` where
    ``tf.train.latest_checkpoint`` answers ``None``: a missing, unreadable or unparsable state
    file, or one naming a checkpoint whose index is gone (not written yet, or deleted).

    Raises:
        CorruptCheckpointError: the state file is a FIFO, a device or oversized, or names no
            checkpoint.
    """
    try:
        return resolve_checkpoint(directory, filename=STATE_FILENAME)
    except es.CheckpointNotFoundError:
        return None


def prefix_in_directory(directory: str) -> str | None:
    """The checkpoint a directory holds: its state file's newest prefix, a SavedModel's
    ``variables/variables``, or its only ``*.index`` prefix; ``None`` when there is none (yet).

    Raises:
        CorruptCheckpointError: a state file that cannot be read (a FIFO, a device, oversized).
    """
    if _has_state_file(directory):
        return _state_prefix(directory)
    saved_model = os.path.join(directory, "variables", "variables")
    if os.path.isfile(saved_model + ".index"):
        return saved_model
    indexes = glob.glob(os.path.join(glob.escape(directory), "*.index"))
    if len(indexes) == 1:
        return indexes[0][: -len(".index")]
    return None


def find_candidate(source: str) -> Candidate | None:
    """The newest complete checkpoint at ``source`` (any layout above), or ``None``.

    Raises:
        OSError: the location cannot be listed.
        CheckpointError: a state file that cannot be read (a FIFO, a device, oversized).
    """
    if os.path.isdir(source):
        if _has_state_file(source):
            prefix = _state_prefix(source)
            if prefix is None:
                return None
            return Candidate(prefix, _trailing_number(prefix), _signature(prefix))
        numbered = sorted(
            (
                (int(entry), entry)
                for entry in os.listdir(source)
                if entry.isascii()
                and entry.isdigit()
                and os.path.isdir(os.path.join(source, entry))
            ),
            reverse=True,
        )
        for number, entry in numbered:
            prefix = prefix_in_directory(os.path.join(source, entry))
            if prefix is not None:
                return Candidate(prefix, number, _signature(prefix))
        if numbered:
            return None
        prefix = prefix_in_directory(source)
        if prefix is None:
            return None
        return Candidate(prefix, _trailing_number(prefix), _signature(prefix))
    if os.path.isfile(source + ".index"):
        return Candidate(source, _trailing_number(source), _signature(source))
    return None


# ---------------------------------------------------------------------------------------------
# Loading and validating one version


def smoke_check(model: es.TPUEmbeddingForServing, features: Mapping[str, es.FeatureConfig]) -> None:
    """Look id 0 up through every feature and compare with row 0 of its table.

    Catches what a metadata check cannot (an unreadable mapping, a table the kernels reject)
    and compiles every kernel the features use before the first request does. Each feature is
    sent the inputs its :class:`~embserve.lookup.FeatureSpec` accepts (dense ids, a bag, a
    weighted bag; a sequence feature only a bag) and its answer compared in the shape the spec
    gives. Features with an ``output_shape`` are skipped (their batch is fixed by the shape).

    Raises:
        SmokeCheckError: a lookup answered something other than the stored row.
    """
    tables = model.embedding_tables
    one = np.zeros(1, dtype=np.int64)
    bag = es.RaggedTensor.from_row_splits(one, np.array([0, 1]), validate=False)
    weights = es.RaggedTensor.from_row_splits(
        np.ones(1, dtype=np.float32), np.array([0, 1]), validate=False
    )
    for path, cfg in features.items():
        spec = FeatureSpec.of(path, cfg)
        if spec.output_shape is not None:
            continue
        row0 = np.asarray(tables[cfg.table][0])
        expected = np.zeros(spec.ragged_output_shape(1), dtype=row0.dtype)
        expected.reshape(-1, row0.shape[0])[0] = row0  # the first row: the bag, or step 0
        kind = "sequence" if spec.sequence else "bag"
        checks: list[tuple[str, Any, np.ndarray]] = [(kind, model({path: bag})[path], expected)]
        if spec.accepts_dense:
            dense = np.broadcast_to(row0, spec.dense_output_shape((1,)))
            checks.append(("dense", model({path: one})[path], dense))
        if spec.accepts_weights:
            got = model({path: bag}, weights={path: weights})[path]
            checks.append(("weighted bag", got, expected))
        for kind, got, want in checks:
            if got.shape != want.shape or not np.allclose(got, want, equal_nan=True):
                raise SmokeCheckError(
                    f"smoke lookup of id 0 through feature {path!r} ({kind}) returned "
                    f"{np.asarray(got).ravel()[:4].tolist()}..., but row 0 of table "
                    f"{cfg.table.name!r} holds {row0.ravel()[:4].tolist()}..."
                )


def _where_embeddings_are(reader: BundleReader) -> str:
    """A hint naming the embedding objects a checkpoint does hold (for mismatch messages)."""
    try:
        found = find_embedding_tables(reader)
    except (es.CheckpointError, OSError):
        return ""
    if not found:
        return "; the checkpoint holds no TPU embedding tables"
    objects: dict[str, list[str]] = {}
    for t in found:
        shown = repr(object_value(t.object_path))
        objects.setdefault(shown, []).append(f"{t.table} {list(t.shape)}")
    listed = "; ".join(f"{obj}: {', '.join(tables)}" for obj, tables in objects.items())
    return f"; embedding tables found in the checkpoint: {listed}"


class _TableCheck(NamedTuple):
    """One served table to checksum: the array served and what the index says it holds."""

    name: str
    key: str
    path: str
    offset: int
    size: int
    crc: int
    value: np.ndarray


def _table_checks(
    model: es.TPUEmbeddingForServing, reader: BundleReader, object_path: tuple[str, ...]
) -> tuple[list[_TableCheck], list[str]]:
    """What :func:`verify_served_tables` checks: tables over
    :data:`~embserve.checkpointing.VERIFY_ON_RESTORE_MAX_BYTES` (smaller ones were checked by
    the restore), as array checks, plus the keys of tables stored in slices (checked slice by
    slice through ``reader``). A SparseCore table is served from its stack, which is checked
    once, as its stored slices, whatever the number of tables in it (never unstacked)."""
    keys = restore_keys(reader, object_path, model)
    checks: list[_TableCheck] = []
    sliced: list[str] = []
    for table, served in model.embedding_tables.items():
        key = keys.get(table.name, {}).get("parameters")
        if key is None:
            raise es.CheckpointMismatchError(
                f"checkpoint {reader.prefix!r}: no value for table {table.name!r} under "
                f"object {object_value(object_path)!r} to verify against"
            )
        info = reader.info(key)
        array = served
        if isinstance(served, QuantizedTable):
            if info.dtype == DataType.FLOAT:
                continue  # quantized at load: its source was checked block by block then
            array = served.data  # the stored rows, as mapped (or copied)
        if info.num_elements * info.numpy_dtype.itemsize <= VERIFY_ON_RESTORE_MAX_BYTES:
            continue  # checked by the restore
        if info.slices or isinstance(array, StackedTable):
            # A stack is stored in slices (one per chip); copy_tables unstacked it, and the
            # copies are checked through their source, once per stack.
            if key not in sliced:
                sliced.append(key)
            continue
        value = np.asarray(array)
        path = reader.data_paths[info.shard_id]
        if not value.flags.c_contiguous or value.nbytes != info.size:
            raise es.CorruptCheckpointError(
                f"corrupt checkpoint file {path!r}: tensor {key!r} (table {table.name!r}) holds "
                f"{info.size} bytes but the restored table has {value.nbytes}"
            )
        checks.append(
            _TableCheck(str(table.name), key, path, info.offset, info.size, info.crc32c, value)
        )
    return checks, sliced


def _run_checks(
    checks: list[_TableCheck],
    sliced: list[str],
    reader: BundleReader | None,
    progress: Progress | None,
) -> None:
    total = sum(c.size for c in checks) + (
        sum(reader.info(key).size for key in sliced) if reader is not None else 0
    )
    with ProgressCounter(progress, total) as counter:
        if reader is not None:
            for key in sliced:
                reader.get_tensor(key, verify=True)
                counter.advance(reader.info(key).size)
        for c in checks:
            data = c.value.reshape(-1).view(np.uint8).data
            crc = crc32c.value_of_buffer(data, progress=counter.advance)
            if crc32c.mask(crc) != c.crc:
                raise es.CorruptCheckpointError(
                    f"corrupt checkpoint file {c.path!r} at offset {c.offset}: tensor {c.key!r} "
                    f"(table {c.name!r}): checksum mismatch over bytes [{c.offset}, "
                    f"{c.offset + c.size}) (stored {c.crc:#010x}, computed "
                    f"{crc32c.mask(crc):#010x})"
                )


def verify_served_tables(
    model: es.TPUEmbeddingForServing,
    reader: BundleReader,
    object_path: str | Sequence[str],
    progress: Progress | None = None,
) -> None:
    """Check the CRC-32C of every table ``model`` serves against ``reader``'s index.

    The checksum runs over the served array itself: the mapped file bytes, or the private copy
    of ``copy_tables``, so what is checked is exactly what lookups read. Tables up to
    :data:`~embserve.checkpointing.VERIFY_ON_RESTORE_MAX_BYTES` were already checked by the
    restore and are skipped; tables assembled from slices are checked slice by slice.

    Args:
        model: a serving object restored from ``reader``.
        reader: the open checkpoint.
        object_path: the edge names from the checkpoint's root to the embedding object
            (``("model", "embedding")``), or one edge name (``"embedding"``).
        progress: called as ``progress(done_bytes, total_bytes)``: ``(0, total)`` first, then
            after every 4 MiB, ``(total, total)`` last (:data:`Progress`); it may raise, e.g.
            :class:`LoadCancelled`, to stop the check.

    Raises:
        CorruptCheckpointError: a checksum does not match; names the data file, the tensor
            and the byte range.
    """
    path = (object_path,) if isinstance(object_path, str) else tuple(object_path)
    checks, sliced = _table_checks(model, reader, path)
    _run_checks(checks, sliced, reader, progress)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a loader hands the reloader.

    Attributes:
        model: the restored, smoke-tested serving object.
        reader: the open checkpoint its tables are mapped from; the version keeps it open as
            long as it lives (``None`` when the loader keeps nothing open).
        verify: the checksum pass still owed over the served tables (called with a progress
            callback; raises ``CorruptCheckpointError``), or ``None`` when nothing is owed.
        verify_before_serving: run ``verify`` before the swap (``verify_tables = true``), or
            swap at once and run it in the background, reverting on a mismatch.
        copied: the tables are private copies, immune to their files changing.
    """

    model: es.TPUEmbeddingForServing
    reader: BundleReader | None = None
    verify: Callable[[Progress | None], None] | None = None
    verify_before_serving: bool = True
    copied: bool = False


@runtime_checkable
class ProgressLoader(Protocol):
    """A loader the reloader can cancel and verify: :class:`CheckpointLoader` is one."""

    def load(self, prefix: str, *, progress: Progress | None = None) -> LoadResult:
        """Restore ``prefix``; ``progress`` may raise :class:`LoadCancelled` to give up."""
        ...


#: A loader: ``prefix → model`` (or a :class:`LoadResult`), raising to refuse the checkpoint.
#: Objects with a ``load(prefix, *, progress)`` method (:class:`ProgressLoader`) are called
#: through it, so they can be cancelled and verified by the reloader.
Loader = Callable[[str], "es.TPUEmbeddingForServing | LoadResult"]


class CheckpointLoader:
    """The default loader: a new serving object from ``config``, restored and smoke-checked.

    :meth:`load` opens the checkpoint with read leases on its data files
    (``BundleReader(prefix, lease=True)``: while the version serves, no other process can
    change them in place without the reloader noticing first), restores
    the tables of the object at ``config.object_path``
    (:func:`~embserve.checkpointing.restore_embedding`, all or nothing; mapped,
    or copied with ``[server] copy_tables``), moves them onto huge pages with ``huge_pages``,
    runs :func:`smoke_check`, and returns the model with its open reader and the checksum pass
    still owed (:func:`verify_served_tables`), which the reloader runs before serving
    (``verify_tables = true``) or in the background. With ``copy_tables`` the reader is
    released once the tables are copied (they no longer depend on the files). Calling the
    loader as ``loader(prefix)`` runs the checksum pass at once and returns the bare model.

    Args:
        config: the serving config.
    """

    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        self.verify_tables = bool(config.server.verify_tables)
        self.copy_tables = bool(config.server.copy_tables)

    def load(self, prefix: str, *, progress: Progress | None = None) -> LoadResult:
        """Restore ``prefix`` into a new model; see the class docstring.

        Args:
            prefix: the checkpoint prefix.
            progress: ``progress(done_bytes, total_bytes)`` while tables are copied; it may
                raise (:class:`LoadCancelled`) to abandon the load.

        Raises:
            CheckpointError: the checkpoint is missing, damaged or does not match the config
                (``CheckpointBusyError``: a data file is still open for writing elsewhere).
            SmokeCheckError: the restored tables do not answer as stored.
        """
        config = self.config
        model = config.new_model()
        reader = BundleReader(prefix, lease=True)
        try:
            try:
                restore_embedding(
                    reader,
                    config.object_path,
                    model,
                    copy=self.copy_tables,
                    progress=progress,
                    storage=dict(config.storage) or None,
                )
            except es.CheckpointMismatchError as exc:
                asked = (
                    f"; the serving config's storage keys ask for {dict(config.storage)}"
                    if config.storage
                    else ""
                )
                raise es.CheckpointMismatchError(
                    f"{exc}{asked}{_where_embeddings_are(reader)}"
                ) from exc
            if config.server.huge_pages:
                start = time.perf_counter()
                moved = collapse_huge_pages(model)
                _log.info(
                    "%s: %.2f GiB of tables moved to 2 MiB pages in %.1f s",
                    prefix,
                    moved / 2**30,
                    time.perf_counter() - start,
                )
            smoke_check(model, config.features)
            checks, sliced = _table_checks(model, reader, config.object_path)
            if self.copy_tables and sliced:
                # Assembled copies are checked slice by slice through the reader, which a
                # copying version does not keep: check them now.
                _run_checks([], sliced, reader, progress)
                sliced = []
        except BaseException:
            _release(reader)
            raise
        kept: BundleReader | None = reader
        if self.copy_tables:
            _release(reader)
            kept = None

        def verify(progress: Progress | None) -> None:
            _run_checks(checks, sliced, kept, progress)

        return LoadResult(
            model,
            kept,
            verify,
            verify_before_serving=self.verify_tables,
            copied=self.copy_tables,
        )

    def __call__(self, prefix: str) -> es.TPUEmbeddingForServing:
        """Restore and fully verify ``prefix``; the bare model (the reader is not kept, so its
        leases go when it is garbage-collected)."""
        result = self.load(prefix)
        if result.verify is not None:
            result.verify(None)
        return result.model


def make_loader(config: ServingConfig) -> CheckpointLoader:
    """The default loader for ``config`` (a :class:`CheckpointLoader`)."""
    return CheckpointLoader(config)


def _classify(exc: BaseException) -> tuple[str, str]:
    """(metrics reason, TF Serving error code) of a refused load."""
    if isinstance(exc, es.CorruptCheckpointError):
        return "corrupt", "DATA_LOSS"
    if isinstance(exc, es.CheckpointMismatchError):
        return "mismatch", "FAILED_PRECONDITION"
    if isinstance(exc, es.CheckpointBusyError):
        return "busy", "UNAVAILABLE"
    if isinstance(exc, (es.CheckpointNotFoundError, FileNotFoundError)):
        return "not_found", "NOT_FOUND"
    if isinstance(exc, MemoryError):
        return "memory", "RESOURCE_EXHAUSTED"
    if isinstance(exc, OSError) or (
        isinstance(exc, es.CheckpointError) and isinstance(exc.__cause__, OSError)
    ):
        return "io", "UNAVAILABLE"
    if isinstance(exc, (es.EmbserveError, ValueError)):
        return "invalid", "INVALID_ARGUMENT"
    return "error", "UNKNOWN"


# ---------------------------------------------------------------------------------------------
# The reloader


class _Retry(NamedTuple):
    """Backoff of the candidate whose last load failed transiently."""

    signature: tuple[Any, ...]
    attempts: int
    not_before: float


class _InUse:
    """The context manager :meth:`Reloader.use` returns (a class: cheaper than a generator)."""

    __slots__ = ("_reloader", "_state")

    def __init__(self, reloader: Reloader) -> None:
        self._reloader = reloader
        self._state: _VersionState | None = None

    def __enter__(self) -> LoadedVersion | None:
        # Count first, then check `revoked`; the revoker swaps `current` away first, then sets
        # `revoked`, then waits for the count to drop to zero. So either this request sees the
        # flag and leaves (and re-reads `current`, already swapped), or the revoker sees it.
        for _ in range(4):  # a request meets at most one revocation in a row in practice
            loaded = self._reloader._current
            if loaded is None:
                return None
            state = loaded._state
            state.in_flight.append(None)
            if state.revoked is None:
                self._state = state
                return loaded
            state.in_flight.pop()
        return None

    def __exit__(self, *exc_info: object) -> None:
        state = self._state
        if state is not None:
            self._state = None
            state.in_flight.pop()


class Reloader:
    """Serves the newest good checkpoint at ``source``; see the module docstring.

    Args:
        source: the watched directory or prefix.
        loader: prefix → restored and validated model (or a :class:`LoadResult`); an exception
            refuses the checkpoint. A :class:`ProgressLoader` is called through its ``load``
            method with a progress callback, so :meth:`stop` can cancel it.
        poll_interval_s: seconds between checks.
        metrics: where loads and refusals are counted (optional).
        keep: how many versions' statuses ``GET /v1/models/{name}`` reports.
        name: the model's name, for log lines.
        retry_initial_s: first backoff after a transient failure; it doubles per failure.
        retry_max_s: the longest backoff.
        clock: the monotonic clock of the backoff (tests move it by hand).
        lease_check_interval_s: how often the watcher thread checks the leases of the versions
            alive (a broken lease holds a writer back until the version is released).
        revoke_wait_s: how long a revoked version waits for its requests in flight before it
            is released anyway (those requests then read zeros, never a SIGBUS, and a server
            answers them 503 by checking :attr:`LoadedVersion.fenced`); capped at half
            of ``/proc/sys/fs/lease-break-time``, after which the kernel lets the writer through.
    """

    def __init__(
        self,
        source: str,
        loader: Loader | ProgressLoader,
        *,
        poll_interval_s: float = 1.0,
        metrics: ServerMetrics | None = None,
        keep: int = 8,
        name: str = "",
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        lease_check_interval_s: float = 0.05,
        revoke_wait_s: float = 5.0,
    ) -> None:
        self.source = source
        self.poll_interval_s = poll_interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.lease_check_interval_s = lease_check_interval_s
        self.revoke_wait_s = min(revoke_wait_s, 0.5 * _lease_break_seconds())
        self._loader = loader
        self._metrics = metrics
        self._keep = keep
        self._name = name
        self._clock = clock
        self._current: LoadedVersion | None = None
        # The last verified version, kept while the served one awaits its background check.
        self._fallback: LoadedVersion | None = None
        # The served version's background check: (version, check), or None.
        self._pending: tuple[LoadedVersion, Callable[[Progress | None], None]] | None = None
        self._loading: VersionStatus | None = None
        self._history: collections.OrderedDict[int, VersionStatus] = collections.OrderedDict()
        self._failed: collections.OrderedDict[tuple[Any, ...], None] = collections.OrderedDict()
        self._retry: _Retry | None = None
        self._last_error: str | None = None
        self._last_watch_error: str | None = None
        self._highest = 0
        self._lock = threading.Lock()  # guards the status bookkeeping
        self._swap_lock = threading.Lock()  # guards _current / _fallback / _pending / _session
        self._poll_lock = threading.Lock()  # one load or verification at a time
        self._stop = threading.Event()
        self._session = 0  # bumped by stop(): loads begun before it are never installed
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._nothing_logged = False
        # Versions alive whose files are leased: checked by the watcher, held weakly.
        self._live: weakref.WeakSet[_VersionState] = weakref.WeakSet()
        self._live_lock = threading.Lock()
        self._revoke_lock = threading.Lock()  # one revocation at a time
        # Files of a revoked version are not loaded again before this (signature, time): the
        # writer the revocation let through must get its turn first.
        self._cooldown: tuple[tuple[Any, ...], float] | None = None
        self._unprotected_logged = False

    # -- what requests read ---------------------------------------------------------------------

    @property
    def current(self) -> LoadedVersion | None:
        """The served version (``None`` before the first successful load). Requests should
        use :meth:`use` instead, which also counts them in flight."""
        return self._current

    def use(self) -> contextlib.AbstractContextManager[LoadedVersion | None]:
        """``with reloader.use() as loaded:``: the served version (or ``None``), counted as in
        flight on it until the block exits.

        A version taken out of service (its files changed in place, or its background check
        failed) is released only after the requests counted on it have finished, so a request
        never reads tables that are being released. Costs a deque append and pop (no lock).
        """
        return _InUse(self)

    @property
    def last_error(self) -> str | None:
        """The message of the latest refused load, or ``None``."""
        return self._last_error

    def statuses(self) -> list[VersionStatus]:
        """The last few versions, newest first (a version being loaded comes first)."""
        with self._lock:
            out = list(reversed(self._history.values()))
            if self._loading is not None:
                out = [s for s in out if s.version != self._loading.version]
                out.insert(0, self._loading)
        return out

    # -- polling --------------------------------------------------------------------------------

    def poll(self, *, verify: bool = True) -> LoadedVersion | None:
        """Check ``source`` once; restore and swap in a new checkpoint if there is one.

        Args:
            verify: also run a pending background verification now (a version swapped in
                unverified with ``verify_tables = false``); ``False`` leaves it to the thread
                or to :meth:`verify_pending`.

        Returns:
            The newly served version, or ``None`` (nothing new, not ready, refused, or
            reverted by its verification).
        """
        with self._poll_lock:
            loaded = self._poll_locked(self._session)
            if verify:
                self._verify_pending_locked(self._session)
        return loaded if loaded is not None and self._current is loaded else None

    def verify_pending(self) -> None:
        """Run the served version's background verification now, if one is owed."""
        with self._poll_lock:
            self._verify_pending_locked(self._session)

    def _poll_locked(self, session: int) -> LoadedVersion | None:
        try:
            candidate = find_candidate(self.source)
        except (OSError, es.CheckpointError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_watch_error:  # once per distinct problem, not per poll
                _log.warning("model %r: cannot read %r: %s", self._name, self.source, message)
                self._last_watch_error = message
            return None
        self._last_watch_error = None
        if candidate is None:
            if not self._nothing_logged and self._current is None:
                _log.info("model %r: no checkpoint at %r yet", self._name, self.source)
                self._nothing_logged = True
            return None
        current = self._current
        if current is not None and current.signature == candidate.signature:
            return None
        if candidate.signature in self._failed:
            return None
        retry = self._retry
        if (
            retry is not None
            and retry.signature == candidate.signature
            and self._clock() < retry.not_before
        ):
            return None
        cooldown = self._cooldown
        if (
            cooldown is not None
            and cooldown[0] == candidate.signature
            and self._clock() < cooldown[1]
        ):
            return None
        return self._load(candidate, session)

    def _progress(self, session: int) -> Progress:
        """A progress callback that cancels the load once :meth:`stop` has been called."""

        def progress(done: int, total: int) -> None:
            if self._stop.is_set() or self._session != session:
                raise LoadCancelled(f"model {self._name!r}: the reloader is stopping")

        return progress

    def _call_loader(self, prefix: str, session: int) -> LoadResult:
        loader = self._loader
        if isinstance(loader, ProgressLoader):
            result: Any = loader.load(prefix, progress=self._progress(session))
        else:
            result = loader(prefix)
        return result if isinstance(result, LoadResult) else LoadResult(result)

    def _verify(
        self,
        version: int,
        check: Callable[[Progress | None], None],
        session: int,
        state: _VersionState | None = None,
    ) -> None:
        """Run one checksum pass, timing and counting it; raises what the check raises.

        A pass over a version revoked meanwhile (``state.revoked``: its files were changing,
        its tables now read zeros) says nothing about the files and is not counted.
        """
        started = time.perf_counter()
        result = "error"
        try:
            check(self._progress(session))
            result = "ok"
        except LoadCancelled:
            result = ""
            raise
        except es.CorruptCheckpointError:
            result = "mismatch"
            raise
        finally:
            seconds = time.perf_counter() - started
            if state is not None and state.revoked is not None:
                result = ""
            if result and self._metrics is not None:
                self._metrics.verification_done(result, seconds)
            if result == "ok":
                _log.info("model %r: version %d verified in %.3f s", self._name, version, seconds)

    def _load(self, candidate: Candidate, session: int) -> LoadedVersion | None:
        version = candidate.version if candidate.version is not None else self._highest + 1
        with self._lock:
            self._loading = VersionStatus(version, LOADING, "OK", "", candidate.prefix, time.time())
        _log.info("model %r: loading version %d from %s", self._name, version, candidate.prefix)
        started = time.perf_counter()
        try:
            result = self._call_loader(candidate.prefix, session)
            if result.verify is not None and result.verify_before_serving:
                try:
                    self._verify(version, result.verify, session)
                except BaseException:
                    _release(result.reader)
                    raise
        except LoadCancelled:
            _log.info(
                "model %r: loading version %d cancelled: the reloader is stopping",
                self._name,
                version,
            )
            return None
        except Exception as exc:
            self._refuse(candidate, version, exc)
            return None
        finally:
            with self._lock:
                self._loading = None
        seconds = time.perf_counter() - started
        pending = result.verify if not result.verify_before_serving else None
        state = _VersionState(verified=pending is None)
        state.reader = result.reader
        state.version = version
        state.prefix = candidate.prefix
        state.signature = candidate.signature
        loaded = LoadedVersion(
            version,
            result.model,
            candidate.prefix,
            time.time(),
            seconds,
            candidate.signature,
            result.reader,
            result.copied,
            state,
        )
        if result.reader is not None and result.reader.protected:
            with self._live_lock:
                self._live.add(state)
        with self._swap_lock:
            if self._stop.is_set() or self._session != session:
                # Stopped while loading: never install (the load is thrown away whole).
                _release(result.reader)
                _log.info(
                    "model %r: version %d loaded after stop(); not installed", self._name, version
                )
                return None
            previous = self._current
            self._current = loaded  # the swap: requests that already hold `previous` keep it
            if pending is None:
                self._fallback = None
                self._pending = None
            else:
                # Keep the last verified version to fall back on until this one is checked.
                if previous is not None and previous.verified and previous.revoked is None:
                    self._fallback = previous
                self._pending = (loaded, pending)
        self._highest = max(self._highest, version)
        now = time.time()
        if previous is not None and previous.version != version:
            self._record(VersionStatus(previous.version, END, "OK", "", previous.prefix, now))
        self._record(VersionStatus(version, AVAILABLE, "OK", "", candidate.prefix, now))
        if self._metrics is not None:
            self._metrics.version_loaded(version, seconds)
        self._report_serving()
        if not loaded.protected and not self._unprotected_logged:
            self._unprotected_logged = True
            why = (
                result.reader.unprotected_reason
                if result.reader is not None
                else "the loader keeps no checkpoint reader"
            )
            _log.warning(
                "model %r: version %d is served from files that are NOT protected against being "
                "changed in place (%s): truncating or copying over a served data file "
                "(cp, rsync --inplace) can kill this process with SIGBUS; publish new "
                "checkpoints under new names, or set [server] copy_tables = true",
                self._name,
                version,
                why,
            )
        _log.info(
            "model %r: serving version %d (%s), loaded in %.3f s%s",
            self._name,
            version,
            candidate.prefix,
            seconds,
            "" if pending is None else "; verifying its tables in the background",
        )
        return loaded

    def _refuse(self, candidate: Candidate, version: int, exc: Exception) -> None:
        """Record a refused load; remember it, or schedule its retry."""
        reason, code = _classify(exc)
        message = f"{type(exc).__name__}: {exc}"
        if reason in _REMEMBERED:
            self._failed[candidate.signature] = None
            while len(self._failed) > _MAX_REMEMBERED:
                self._failed.popitem(last=False)
        else:
            retry = self._retry
            attempts = 1
            if retry is not None and retry.signature == candidate.signature:
                attempts = retry.attempts + 1
            delay = min(
                self.retry_max_s,
                self.retry_initial_s * 2.0 ** min(attempts - 1, _MAX_DOUBLINGS),
            )
            self._retry = _Retry(candidate.signature, attempts, self._clock() + delay)
            message = f"{message} (retrying in {delay:g} s)"
        serving = "nothing" if self._current is None else f"version {self._current.version}"
        if reason == "error":
            _log.error(
                "model %r: version %d (%s) refused, still serving %s",
                self._name,
                version,
                candidate.prefix,
                serving,
                exc_info=exc,
            )
        else:
            _log.warning(
                "model %r: version %d (%s) refused, still serving %s: %s",
                self._name,
                version,
                candidate.prefix,
                serving,
                message,
            )
        self._last_error = f"version {version}: {message}"
        self._record(VersionStatus(version, END, code, message, candidate.prefix, time.time()))
        if self._metrics is not None:
            self._metrics.reload_failed(reason)

    def _verify_pending_locked(self, session: int) -> None:
        pending = self._pending
        if pending is None:
            return
        loaded, check = pending
        try:
            self._verify(loaded.version, check, session, loaded._state)
        except LoadCancelled:
            return  # stopping; the check is still owed
        except Exception as exc:
            if loaded.revoked is not None:  # revoked meanwhile: the verdict is moot
                with self._swap_lock:
                    if self._pending is pending:
                        self._pending = None
                return
            if isinstance(exc, es.CorruptCheckpointError):
                self._revert(pending, exc)
                return
            # Not a verdict on the files (e.g. EMFILE): the check stays owed, tried again at
            # the next poll.
            _log.warning(
                "model %r: could not verify version %d yet, will retry: %s: %s",
                self._name,
                loaded.version,
                type(exc).__name__,
                exc,
            )
            return
        with self._swap_lock:
            if self._pending is not pending:
                return
            self._pending = None
            if loaded.revoked is not None:
                return
            loaded._state.verified = True
            if self._current is loaded:
                self._fallback = None
        self._report_serving()

    def _revert(
        self, pending: tuple[LoadedVersion, Callable[[Progress | None], None]], exc: Exception
    ) -> None:
        """The background check of the served version failed: swap back, remember, report."""
        loaded = pending[0]
        message = f"{type(exc).__name__}: {exc}"
        with self._swap_lock:
            if self._pending is not pending:
                return
            self._pending = None
            fallback = self._fallback
            self._fallback = None
            if fallback is not None and fallback.revoked is not None:
                fallback = None
            if self._current is loaded:
                self._current = fallback
            loaded._state.revoked = f"its tables failed verification: {message}"
        self._failed[loaded.signature] = None
        while len(self._failed) > _MAX_REMEMBERED:
            self._failed.popitem(last=False)
        self._last_error = f"version {loaded.version}: {message}"
        now = time.time()
        self._record(VersionStatus(loaded.version, END, "DATA_LOSS", message, loaded.prefix, now))
        if fallback is not None:
            note = "" if fallback.version != loaded.version else f"newer files refused: {message}"
            self._record(
                VersionStatus(fallback.version, AVAILABLE, "OK", note, fallback.prefix, now)
            )
        if self._metrics is not None:
            self._metrics.version_revoked("corrupt")
        self._report_serving()
        _log.error(
            "model %r: version %d (%s) failed verification after it was swapped in; now "
            "serving %s: %s",
            self._name,
            loaded.version,
            loaded.prefix,
            "nothing" if fallback is None else f"version {fallback.version} again",
            message,
        )

    def _report_serving(self) -> None:
        if self._metrics is None:
            return
        current = self._current
        if current is None:
            self._metrics.serving(0, verified=False, protected=False)
        else:
            self._metrics.serving(
                current.version, verified=current.verified, protected=current.protected
            )

    def _record(self, status: VersionStatus) -> None:
        with self._lock:
            self._history.pop(status.version, None)
            self._history[status.version] = status
            while len(self._history) > self._keep:
                self._history.popitem(last=False)

    # -- files changed in place -----------------------------------------------------------------

    def check_files(self) -> int:
        """Check the read leases of every version alive once; revoke those being broken.

        The watcher thread calls this every ``lease_check_interval_s``; tests call it directly.
        A lease breaks when another process opens a served data file for writing or truncates
        it (``cp``, ``rsync --inplace``, ``truncate``, shell redirection): the kernel holds that
        writer back (or refuses it) until the lease is released. The version is then revoked:
        swapped out if it is served (requests get the last verified version kept during a
        background check, or 503), its requests in flight are waited for (up to
        ``revoke_wait_s``), its mappings are overlaid with zeros and its leases released
        (``BundleReader.fence``: the writer proceeds, and nothing can SIGBUS), and the
        revocation is logged, shown by the status route (``END``, ``UNAVAILABLE``, with the
        file) and counted (``embserve_model_revocations_total{reason="file_changed"}``). The
        same files are not loaded again for ``retry_initial_s``; new files are, as usual.

        Returns:
            How many versions were revoked.
        """
        with self._live_lock:
            states = list(self._live)
        revoked = 0
        for state in states:
            reader = state.reader
            if reader is None or state.fenced:
                continue
            try:
                broken = reader.broken_leases()
            except (OSError, es.CheckpointError) as exc:  # a closed descriptor: nothing to do
                _log.debug("model %r: lease check of %s failed: %s", self._name, state.prefix, exc)
                continue
            if broken:
                self._revoke(state, broken)
                revoked += 1
        return revoked

    def _revoke(self, state: _VersionState, broken: list[str]) -> None:
        """Take a version whose files are about to change out of service, then release it."""
        with self._revoke_lock:
            if state.fenced:
                return
            why = (
                f"data file(s) {', '.join(repr(p) for p in broken)} opened for writing or "
                "truncated by another process while served: version released (publish "
                "checkpoints under new names, then rename)"
            )
            with self._swap_lock:
                current = self._current
                served = current is not None and current._state is state
                fallback: LoadedVersion | None = None
                if served:
                    fallback = self._fallback
                    if fallback is not None and (
                        fallback.revoked is not None or fallback._state is state
                    ):
                        fallback = None
                    # Swap first, then flag: a request that counted itself in before the flag
                    # is waited for below; one that sees the flag re-reads `current`.
                    self._current = fallback
                    self._fallback = None
                    if self._pending is not None and self._pending[0]._state is state:
                        self._pending = None
                elif self._fallback is not None and self._fallback._state is state:
                    self._fallback = None
                if state.revoked is None:
                    state.revoked = why
            # Not loaded again at once: the writer we are about to let through goes first.
            self._cooldown = (state.signature, self._clock() + self.retry_initial_s)
            deadline = time.monotonic() + self.revoke_wait_s
            while state.in_flight and time.monotonic() < deadline:
                time.sleep(0.001)
            late = len(state.in_flight)
            if late:
                _log.warning(
                    "model %r: %d request(s) still in flight on version %d after %.1f s; "
                    "releasing it anyway (they answer 503, never the zeros they may read)",
                    self._name,
                    late,
                    state.version,
                    self.revoke_wait_s,
                )
            reader = state.reader
            assert reader is not None
            # Flag first, then fence: a request that finishes its lookup after this point sees
            # the flag and answers 503 instead of the zeros it may have read (LoadedVersion.fenced).
            state.fencing = True
            try:
                reader.fence()
            except es.CheckpointError as exc:  # try again at the next check
                _log.error(
                    "model %r: releasing version %d failed: %s", self._name, state.version, exc
                )
                return
            state.fenced = True
        if not served:
            _log.info("model %r: released replaced version %d: %s", self._name, state.version, why)
            return
        self._last_error = f"version {state.version}: {why}"
        now = time.time()
        self._record(VersionStatus(state.version, END, "UNAVAILABLE", why, state.prefix, now))
        if fallback is not None:
            self._record(VersionStatus(fallback.version, AVAILABLE, "OK", "", fallback.prefix, now))
        if self._metrics is not None:
            self._metrics.version_revoked("file_changed")
        self._report_serving()
        _log.error(
            "model %r: version %d (%s) revoked, now serving %s: %s",
            self._name,
            state.version,
            state.prefix,
            "nothing" if fallback is None else f"version {fallback.version}",
            why,
        )

    def _watch(self, session: int) -> None:
        while not self._stop.wait(self.lease_check_interval_s):
            if self._session != session:
                return
            try:
                self.check_files()
            except Exception:  # never let the watcher die
                _log.exception("model %r: checking the served files failed", self._name)

    # -- the background thread ------------------------------------------------------------------

    def start(self) -> None:
        """Load what is there now (synchronously, verified first unless ``verify_tables`` is
        off), then poll, and run any background verification, in a daemon thread; and watch
        the served files' leases in another (a long load must not delay a revocation)."""
        with self._swap_lock:
            self._stop.clear()
            session = self._session
        with self._poll_lock:
            self._poll_locked(session)
        if self._thread is None and (self.poll_interval_s > 0 or self._pending is not None):
            self._thread = threading.Thread(
                target=self._run, args=(session,), name="embserve-reloader", daemon=True
            )
            self._thread.start()
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, args=(session,), name="embserve-lease-watch", daemon=True
            )
            self._watcher.start()

    def _run(self, session: int) -> None:
        while True:
            try:
                with self._poll_lock:
                    self._verify_pending_locked(session)
            except Exception:  # never let the watcher die; the next round tries again
                _log.exception("model %r: background verification failed", self._name)
            if self.poll_interval_s <= 0 or self._stop.wait(self.poll_interval_s):
                return
            if self._session != session:
                return
            try:
                with self._poll_lock:
                    self._poll_locked(session)
            except Exception:  # never let the watcher die; the next poll tries again
                _log.exception("model %r: reloader poll failed", self._name)

    def stop(self, timeout: float = 0.25) -> None:
        """Stop polling and watching; return within about ``timeout`` seconds even during a
        long load.

        A load or verification in progress is cancelled at its next progress report; one that
        does not report progress runs on in its daemon thread and is discarded when it ends.
        Nothing is installed after this returns (until :meth:`start`). The served version
        stays (requests still draining use it).
        """
        with self._swap_lock:
            self._stop.set()
            self._session += 1
        deadline = time.monotonic() + timeout
        for attr in ("_thread", "_watcher"):
            thread = getattr(self, attr)
            setattr(self, attr, None)
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive() and attr == "_thread":
                    _log.info(
                        "model %r: a load is still running; it will be discarded when it ends",
                        self._name,
                    )


def _release(reader: BundleReader | None) -> None:
    """Release a reader whose arrays nobody uses any more (its leases go at once)."""
    if reader is not None:
        try:
            reader.fence()
        except es.CheckpointError as exc:  # the leases then go when the reader is collected
            _log.warning("could not release checkpoint %r: %s", reader.prefix, exc)


def _lease_break_seconds() -> float:
    """``/proc/sys/fs/lease-break-time``: how long the kernel holds a writer back (45 s by
    default) before it lets it through whether or not the lease holder let go."""
    try:
        with open("/proc/sys/fs/lease-break-time") as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return 45.0
