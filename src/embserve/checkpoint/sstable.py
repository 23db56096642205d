"""The ``.index`` file: an immutable sorted key/value table in LevelDB's table layout.

TensorFlow stores a checkpoint's table of contents with its own copy of LevelDB's table code
(CHECKPOINT_FORMAT.md §2)::

    [data block][trailer] ... [metaindex block][trailer] [index block][trailer] [footer, 48 bytes]

A block is a run of prefix-compressed entries followed by a restart array; a trailer is one
compression-type byte and the masked CRC-32C of block + type byte; the index block maps a
separator key to each data block's (offset, size) handle; the footer holds the metaindex and
index handles and the magic number.

Reading (:func:`read_table`, :func:`parse_table`) trusts nothing: every handle is checked against
the file size before it is followed, every varint and length against its block, every restart
offset against the entries, every block checksum is verified, keys must be strictly increasing
across the whole table and each index separator must lie between its block's last key and the
next block's first key. Any violation raises :class:`~embserve.errors.CorruptCheckpointError`
naming the file and the byte offset. A checkpoint index is small (tens of bytes per tensor), so
the reader loads it whole, after checking that it is a regular file of at most
:data:`MAX_INDEX_BYTES` (a FIFO or a link to ``/dev/zero`` is refused without being read).

Writing (:func:`build_table`) cuts blocks exactly like TensorFlow's ``TableBuilder`` (256 KiB
blocks, restart interval 16 for data and 1 for the index block, the same shortened separators),
so a bundle we write is byte-identical to TensorFlow's for the same entries (§2.5).
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from embserve.checkpoint import crc32c
from embserve.checkpoint._files import read_regular
from embserve.checkpoint._wire import Malformed, corrupt, decode_varint, encode_varint, u32_at

__all__ = [
    "BLOCK_SIZE",
    "BLOCK_TRAILER_SIZE",
    "FOOTER_SIZE",
    "MAGIC",
    "MAX_INDEX_BYTES",
    "BlockHandle",
    "Table",
    "build_table",
    "parse_table",
    "read_table",
    "short_successor",
    "shortest_separator",
]

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
BLOCK_SIZE = 262_144  # TensorFlow's table option for checkpoint indexes
DATA_RESTART_INTERVAL = 16
INDEX_RESTART_INTERVAL = 1

#: The largest index :func:`read_table` reads. An index holds tens of bytes per tensor (47-64
#: bytes per entry in TensorFlow's own checkpoints under tests/data/checkpoints: a key of 30-60
#: bytes, a BundleEntry of ~15), so 64 MiB is about a million tensors or slices, far beyond real
#: models. The cap bounds what a hostile or mistaken file costs before any byte is read (parsed,
#: each entry costs ~10x its size in Python objects), as safetensors caps its header at 100 MB.
MAX_INDEX_BYTES = 64 << 20

_HANDLES_SIZE = 40  # two varint64 pairs at most, zero padded
_NO_COMPRESSION = 0
_SNAPPY = 1


@dataclass(frozen=True)
class BlockHandle:
    """Where a block lives in the file: ``size`` excludes the 5-byte trailer."""

    offset: int
    size: int

    def encode(self) -> bytes:
        """Two varint64s, offset then size."""
        return encode_varint(self.offset) + encode_varint(self.size)

    @property
    def end(self) -> int:
        """One past the block's trailer."""
        return self.offset + self.size + BLOCK_TRAILER_SIZE


@dataclass(frozen=True)
class Table:
    """A parsed table: its entries in key order and where its blocks are.

    Attributes:
        entries: ``(key, value)`` pairs, keys strictly increasing bytewise.
        value_offsets: the file offset of each entry's value (parallel to ``entries``), so
            errors about a value can name where it is.
        data_blocks: handles of the data blocks, in file order.
        metaindex: handle of the metaindex block (empty in checkpoints).
        index: handle of the index block.
        file_size: total size of the table in bytes (the footer is the last 48).
    """

    entries: list[tuple[bytes, bytes]]
    value_offsets: list[int]
    data_blocks: list[BlockHandle]
    metaindex: BlockHandle
    index: BlockHandle
    file_size: int


# ---------------------------------------------------------------------------------------------
# Reading


def read_table(path: str | os.PathLike[str], *, max_bytes: int = MAX_INDEX_BYTES) -> Table:
    """Read and fully validate the table stored in ``path``.

    The file is opened without blocking and must be a regular file of at most ``max_bytes``
    (see :data:`MAX_INDEX_BYTES`); both are checked before anything is read.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist (or is a directory).
        CorruptCheckpointError: anything about the file is not a well-formed table, or it is
            not a regular file, or it is over ``max_bytes``.
        CheckpointError: any other OS error while opening or reading it, naming the file.
    """
    data = read_regular(path, "checkpoint index", max_bytes)
    return parse_table(data, path)


def parse_table(data: bytes, path: str | os.PathLike[str] = "<memory>") -> Table:
    """Validate and decode a whole table held in memory; ``path`` only names it in errors."""
    size = len(data)
    if size < FOOTER_SIZE:
        raise corrupt(
            path, size, f"file is {size} bytes, shorter than the {FOOTER_SIZE}-byte footer"
        )
    footer_at = size - FOOTER_SIZE
    magic = u32_at(data, size - 8) | (u32_at(data, size - 4) << 32)
    if magic != MAGIC:
        raise corrupt(
            path, size - 8, f"not a table (bad magic number {magic:#018x}, expected {MAGIC:#018x})"
        )
    try:
        metaindex, pos = _decode_handle(data, footer_at, footer_at + _HANDLES_SIZE)
        index, pos = _decode_handle(data, pos, footer_at + _HANDLES_SIZE)
    except Malformed as exc:
        raise corrupt(path, exc.offset, f"footer: {exc.what}") from None
    if any(data[pos : footer_at + _HANDLES_SIZE]):
        raise corrupt(path, pos, "footer: non-zero padding after the block handles")

    index_entries, _ = _read_block(data, index, footer_at, path, "index block")
    # Checkpoints have no filter / stats blocks; a valid metaindex is checked, then ignored.
    _read_block(data, metaindex, footer_at, path, "metaindex block")
    if _overlap(index, metaindex):
        raise corrupt(path, index.offset, "index block overlaps the metaindex block")

    entries: list[tuple[bytes, bytes]] = []
    value_offsets: list[int] = []
    handles: list[BlockHandle] = []
    prev_end = 0
    for i, (separator, raw_handle) in enumerate(index_entries):
        try:
            handle, used = _decode_handle(raw_handle, 0, len(raw_handle))
        except Malformed as exc:
            raise corrupt(
                path, index.offset, f"index entry {i}: bad block handle ({exc.what})"
            ) from None
        if used != len(raw_handle):
            raise corrupt(path, index.offset, f"index entry {i}: trailing bytes after block handle")
        if handle.offset < prev_end:
            raise corrupt(
                path, handle.offset, f"data block {i} starts before the end of the previous block"
            )
        if _overlap(handle, index) or _overlap(handle, metaindex):
            raise corrupt(path, handle.offset, f"data block {i} overlaps the index or metaindex")
        block_entries, offsets = _read_block(data, handle, footer_at, path, f"data block {i}")
        if entries and block_entries and block_entries[0][0] <= entries[-1][0]:
            raise corrupt(path, handle.offset, f"data block {i}: keys are not in increasing order")
        if i > 0 and block_entries and block_entries[0][0] <= index_entries[i - 1][0]:
            raise corrupt(
                path, handle.offset, f"data block {i}: first key is not above the index separator"
            )
        if block_entries and block_entries[-1][0] > separator:
            raise corrupt(path, handle.offset, f"data block {i}: last key is above its index key")
        entries.extend(block_entries)
        value_offsets.extend(handle.offset + off for off in offsets)
        handles.append(handle)
        prev_end = handle.end
    return Table(entries, value_offsets, handles, metaindex, index, size)


def _overlap(a: BlockHandle, b: BlockHandle) -> bool:
    return a.offset < b.end and b.offset < a.end


def _decode_handle(buf: bytes, pos: int, limit: int) -> tuple[BlockHandle, int]:
    offset, pos = decode_varint(buf, pos, limit)
    size, pos = decode_varint(buf, pos, limit)
    return BlockHandle(offset, size), pos


def _read_block(
    data: bytes, handle: BlockHandle, limit: int, path: str | os.PathLike[str], what: str
) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """Check ``handle`` against the file, verify the trailer, decode the entries."""
    if handle.end > limit:
        raise corrupt(
            path,
            handle.offset,
            f"{what}: handle (offset {handle.offset}, size {handle.size}) runs past the "
            f"blocks region that ends at {limit}",
        )
    start, stop = handle.offset, handle.offset + handle.size
    kind = data[stop]
    stored = u32_at(data, stop + 1)
    actual = crc32c.mask(crc32c.extend(crc32c.value(data[start:stop]), bytes((kind,))))
    if stored != actual:
        raise corrupt(
            path,
            stop + 1,
            f"{what}: block checksum mismatch (stored {stored:#010x}, computed {actual:#010x})",
        )
    if kind == _SNAPPY:
        raise corrupt(path, stop, f"{what}: Snappy-compressed index blocks are not supported")
    if kind != _NO_COMPRESSION:
        raise corrupt(path, stop, f"{what}: unknown block compression type {kind}")
    try:
        return decode_block(data[start:stop])
    except Malformed as exc:
        raise corrupt(path, start + exc.offset, f"{what}: {exc.what}") from None


def decode_block(block: bytes) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """Decode one block (without its trailer).

    Returns:
        The ``(key, value)`` entries and the block-relative offset of each value.

    Raises:
        Malformed: with a block-relative offset.
    """
    n = len(block)
    if n < 4:
        raise Malformed(0, f"block of {n} bytes has no restart count")
    num_restarts = u32_at(block, n - 4)
    if num_restarts == 0 or num_restarts > (n - 4) // 4:
        raise Malformed(n - 4, f"restart count {num_restarts} does not fit a {n}-byte block")
    limit = n - 4 - 4 * num_restarts
    restarts = struct.unpack_from(f"<{num_restarts}I", block, limit)
    if restarts[0] != 0:
        raise Malformed(limit, f"first restart point is {restarts[0]}, expected 0")
    for a, b in itertools.pairwise(restarts):
        if b <= a:
            raise Malformed(limit, "restart points are not strictly increasing")
    if restarts[-1] > limit or (restarts[-1] == limit and limit > 0):
        raise Malformed(limit, f"restart point {restarts[-1]} lies outside the entries")

    entries: list[tuple[bytes, bytes]] = []
    value_offsets: list[int] = []
    restart_set = set(restarts)
    starts: set[int] = set()
    prev = b""
    pos = 0
    while pos < limit:
        entry_at = pos
        starts.add(entry_at)
        shared, pos = decode_varint(block, pos, limit, 5)
        non_shared, pos = decode_varint(block, pos, limit, 5)
        value_len, pos = decode_varint(block, pos, limit, 5)
        if entry_at in restart_set and shared:
            raise Malformed(entry_at, f"entry at a restart point shares {shared} key bytes")
        if shared > len(prev):
            raise Malformed(
                entry_at, f"entry shares {shared} key bytes but the previous key has {len(prev)}"
            )
        if non_shared + value_len > limit - pos:
            raise Malformed(entry_at, "entry key/value run past the end of the entries")
        key = prev[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        value = block[pos : pos + value_len]
        pos += value_len
        if entries and key <= prev:
            raise Malformed(entry_at, "keys are not in strictly increasing order")
        entries.append((key, value))
        value_offsets.append(pos - value_len)
        prev = key
    if not restart_set <= starts and limit > 0:
        raise Malformed(limit, "a restart point does not point at an entry")
    return entries, value_offsets


# ---------------------------------------------------------------------------------------------
# Writing


def shortest_separator(last: bytes, nxt: bytes) -> bytes:
    """A short key ``k`` with ``last <= k < nxt`` (TensorFlow's ``FindShortestSeparator``)."""
    n = min(len(last), len(nxt))
    i = 0
    while i < n and last[i] == nxt[i]:
        i += 1
    if i >= n:  # one is a prefix of the other: do not shorten
        return last
    byte = last[i]
    if byte < 0xFF and byte + 1 < nxt[i]:
        return last[:i] + bytes((byte + 1,))
    return last


def short_successor(key: bytes) -> bytes:
    """A short key ``>= key`` (TensorFlow's ``FindShortSuccessor``): bump the first non-FF byte."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes((byte + 1,))
    return key


class _BlockBuilder:
    """Accumulates prefix-compressed entries with a restart point every ``interval`` entries."""

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last = b""
        self.empty = True

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            n = min(len(self.last), len(key))
            while shared < n and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += encode_varint(shared)
        self.buf += encode_varint(len(key) - shared)
        self.buf += encode_varint(len(value))
        self.buf += key[shared:]
        self.buf += value
        self.last = key
        self.counter += 1
        self.empty = False

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        tail = struct.pack(f"<{len(self.restarts)}I", *self.restarts)
        return bytes(self.buf) + tail + struct.pack("<I", len(self.restarts))


def _with_trailer(out: bytearray, contents: bytes) -> BlockHandle:
    handle = BlockHandle(len(out), len(contents))
    crc = crc32c.mask(crc32c.extend(crc32c.value(contents), b"\x00"))
    out += contents
    out += b"\x00" + struct.pack("<I", crc)
    return handle


def build_table(
    items: Iterable[tuple[bytes, bytes]],
    *,
    block_size: int = BLOCK_SIZE,
    restart_interval: int = DATA_RESTART_INTERVAL,
) -> bytes:
    """Encode ``(key, value)`` pairs (keys strictly increasing) as a table, TensorFlow's way.

    The block cutting follows TensorFlow's ``TableBuilder`` step by step (CHECKPOINT_FORMAT.md
    §2.5), so equal input gives byte-identical output; ``block_size`` and ``restart_interval``
    exist for tests that want many small blocks.

    Raises:
        ValueError: keys are not strictly increasing.
    """
    out = bytearray()
    data = _BlockBuilder(restart_interval)
    index = _BlockBuilder(INDEX_RESTART_INTERVAL)
    pending: BlockHandle | None = None
    last_key: bytes | None = None

    def flush() -> None:
        nonlocal data, pending
        if data.empty:
            return
        pending = _with_trailer(out, data.finish())
        data = _BlockBuilder(restart_interval)

    for key, value in items:
        key, value = bytes(key), bytes(value)
        if last_key is not None:
            if key <= last_key:
                raise ValueError(
                    f"table keys must be strictly increasing: {key!r} after {last_key!r}"
                )
            # A value of two blocks or more gets a block of its own.
            if len(key) + len(value) >= 2 * block_size:
                flush()
        if pending is not None:
            assert last_key is not None
            index.add(shortest_separator(last_key, key), pending.encode())
            pending = None
        last_key = key
        data.add(key, value)
        if data.size_estimate() >= block_size:
            flush()
    flush()
    metaindex = _with_trailer(out, _BlockBuilder(restart_interval).finish())
    if pending is not None:
        assert last_key is not None
        index.add(short_successor(last_key), pending.encode())
    index_handle = _with_trailer(out, index.finish())
    handles = metaindex.encode() + index_handle.encode()
    out += handles + bytes(_HANDLES_SIZE - len(handles))
    out += struct.pack("<II", MAGIC & 0xFFFFFFFF, MAGIC >> 32)
    return bytes(out)
