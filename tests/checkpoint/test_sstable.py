"""The ``.index`` table: TensorFlow's exact layout (CHECKPOINT_FORMAT.md §2, §8), round trips,
and rejection of every kind of malformed block with the file and offset named."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embserve.checkpoint import crc32c
from embserve.checkpoint._wire import Malformed, encode_varint
from embserve.checkpoint.protos import tensor_bundle_pb2 as pb
from embserve.checkpoint.sstable import (
    MAGIC,
    BlockHandle,
    build_table,
    decode_block,
    parse_table,
    read_table,
    short_successor,
    shortest_separator,
)
from embserve.errors import CheckpointNotFoundError, CorruptCheckpointError

# The complete 324-byte index of §8 (TPUEmbeddingForServing, two tables, no optimizer), as the
# hex dump printed there.
_DUMP = """
0000 0608 011a 0208 0100 1c0f 5f43 4845  434b 504f 494e 5441 424c 455f 4f42 4a45
4354 5f47 5241 5048 0807 1200 20c4 0128  de03 35f5 d1d1 d700 2c16 656d 6265 6464
696e 672f 7461 626c 655f 612f 2e41 5454  5249 4255 5445 532f 5641 5249 4142 4c45
5f56 414c 5545 0801 1208 1202 0808 1202  0804 2008 2880 0135 6fa0 1d21 101c 1662
2f2e 4154 5452 4942 5554 4553 2f56 4152  4941 424c 455f 5641 4c55 4508 0112 0812
0208 0512 0208 0320 8801 283c 3542 d1a6  5a00 270b 7361 7665 5f63 6f75 6e74 6572
2f2e 4154 5452 4942 5554 4553 2f56 4152  4941 424c 455f 5641 4c55 4508 0912 0028
0835 0175 de41 0000 0000 0100 0000 00ce  e11e 0200 0000 0001 0000 0000 c0f2 a1b0
0001 0374 00ee 0100 0000 0001 0000 0000  9a27 85be f301 0880 020f 0000 0000 0000
0000 0000 0000 0000 0000 0000 0000 0000  0000 0000 0000 0000 0000 0000 57fb 808b
2475 47db
"""
WORKED_EXAMPLE = bytes.fromhex("".join(_DUMP.split()))


def test_worked_example_decodes() -> None:
    assert len(WORKED_EXAMPLE) == 324
    table = parse_table(WORKED_EXAMPLE, "example.index")
    assert [k for k, _ in table.entries] == [
        b"",
        b"_CHECKPOINTABLE_OBJECT_GRAPH",
        b"embedding/table_a/.ATTRIBUTES/VARIABLE_VALUE",
        b"embedding/table_b/.ATTRIBUTES/VARIABLE_VALUE",
        b"save_counter/.ATTRIBUTES/VARIABLE_VALUE",
    ]
    assert table.data_blocks == [BlockHandle(0, 238)]
    assert table.metaindex == BlockHandle(243, 8)
    assert table.index == BlockHandle(256, 15)
    assert table.value_offsets[0] == 3
    header = pb.BundleHeader.FromString(table.entries[0][1])
    assert header.num_shards == 1
    assert header.version.producer == 1
    graph = pb.BundleEntry.FromString(table.entries[1][1])
    assert (graph.dtype, graph.offset, graph.size, graph.crc32c) == (7, 196, 478, 0xD7D1D1F5)
    assert graph.HasField("shape")
    assert not graph.shape.dim
    a = pb.BundleEntry.FromString(table.entries[2][1])
    assert [d.size for d in a.shape.dim] == [8, 4]
    assert (a.offset, a.size, a.crc32c, a.shard_id) == (8, 128, 0x211DA06F, 0)
    b = pb.BundleEntry.FromString(table.entries[3][1])
    assert [d.size for d in b.shape.dim] == [5, 3]
    assert (b.offset, b.size, b.crc32c) == (136, 60, 0x5AA6D142)
    counter = pb.BundleEntry.FromString(table.entries[4][1])
    assert (counter.dtype, counter.offset, counter.size, counter.crc32c) == (9, 0, 8, 0x41DE7501)


def test_worked_example_reencodes_byte_for_byte() -> None:
    assert build_table(parse_table(WORKED_EXAMPLE).entries) == WORKED_EXAMPLE


def test_separators() -> None:
    assert short_successor(b"save_counter/.ATTRIBUTES/VARIABLE_VALUE") == b"t"
    assert short_successor(b"\xff\xff") == b"\xff\xff"
    assert short_successor(b"\xff\x01z") == b"\xff\x02"
    assert shortest_separator(b"the quick brown fox", b"the who") == b"the r"
    assert shortest_separator(b"abc", b"abcd") == b"abc"  # prefix: unchanged
    assert shortest_separator(b"abc", b"abd") == b"abc"  # next byte only one up
    assert shortest_separator(b"a\xff", b"b") == b"a\xff"


@settings(deadline=None)
@given(st.binary(max_size=8), st.binary(max_size=8))
def test_separator_property(a: bytes, b: bytes) -> None:
    lo, hi = sorted((a, b))
    if lo == hi:
        return
    sep = shortest_separator(lo, hi)
    assert lo <= sep < hi
    assert short_successor(lo) >= lo


@settings(deadline=None, max_examples=60)
@given(
    st.dictionaries(st.binary(max_size=24), st.binary(max_size=90), max_size=120),
    st.sampled_from([64, 256, 4096, 262_144]),
    st.sampled_from([1, 2, 16]),
)
def test_round_trip(items: dict[bytes, bytes], block_size: int, restart: int) -> None:
    entries = sorted(items.items())
    data = build_table(entries, block_size=block_size, restart_interval=restart)
    table = parse_table(data)
    assert table.entries == entries
    for (_, value), at in zip(table.entries, table.value_offsets, strict=True):
        assert data[at : at + len(value)] == value
    assert table.file_size == len(data)
    if block_size == 64 and sum(len(k) + len(v) for k, v in entries) > 2000:
        assert len(table.data_blocks) > 1


def test_huge_value_gets_its_own_block() -> None:
    entries = [(b"a", b"x"), (b"b", b"y" * 600), (b"c", b"z")]
    table = parse_table(build_table(entries, block_size=256))
    assert table.entries == entries
    assert len(table.data_blocks) == 3


def test_writer_rejects_unsorted_keys() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        build_table([(b"b", b""), (b"a", b"")])
    with pytest.raises(ValueError, match="strictly increasing"):
        build_table([(b"a", b""), (b"a", b"")])


def test_empty_table() -> None:
    assert parse_table(build_table([])).entries == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"nope\.index"):
        read_table(tmp_path / "nope.index")
    with pytest.raises(CheckpointNotFoundError):
        read_table(tmp_path)


# ---------------------------------------------------------------------------------------------
# Malformed blocks, with valid checksums (what a buggy or hostile writer could produce)


def _block(entries: list[tuple[int, int, bytes, bytes]], restarts: list[int]) -> bytes:
    out = bytearray()
    for shared, non_shared, key, value in entries:
        out += encode_varint(shared) + encode_varint(non_shared) + encode_varint(len(value))
        out += key + value
    out += struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def _table_with_data_block(block: bytes, index_key: bytes = b"\xff") -> bytes:
    """A table whose single data block is ``block`` (checksums made valid)."""
    out = bytearray()

    def put(contents: bytes) -> BlockHandle:
        handle = BlockHandle(len(out), len(contents))
        out.extend(contents)
        out.extend(
            b"\x00" + struct.pack("<I", crc32c.mask(crc32c.extend(crc32c.value(contents), b"\x00")))
        )
        return handle

    data = put(block)
    meta = put(_block([], [0]))
    index = put(_block([(0, len(index_key), index_key, data.encode())], [0]))
    handles = meta.encode() + index.encode()
    out += handles + bytes(40 - len(handles)) + struct.pack("<Q", MAGIC)
    return bytes(out)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x00\x00", "no restart count"),
        (struct.pack("<I", 0), "restart count 0"),
        (struct.pack("<I", 1000), "restart count 1000"),
        (_block([(0, 1, b"a", b"")], [1]), "first restart point"),
        (_block([(0, 1, b"a", b""), (0, 1, b"b", b"")], [0, 0]), "not strictly increasing"),
        (_block([(0, 1, b"a", b"")], [0, 40]), "outside the entries"),
        (_block([(0, 1, b"a", b""), (0, 1, b"b", b"")], [0, 2]), "does not point at an entry"),
        (_block([(2, 1, b"a", b"")], [0]), "at a restart point shares"),
        (_block([(0, 1, b"a", b""), (5, 1, b"b", b"")], [0]), "previous key has 1"),
        (_block([(0, 1, b"b", b""), (0, 1, b"a", b"")], [0]), "strictly increasing"),
        (_block([(0, 1, b"a", b"")], [0])[:2] + b"\x50" + _block([], [0]), "run past"),
        (b"\x80\x80\x80\x80\x80\x80" + _block([], [0]), "varint"),
    ],
)
def test_malformed_block(block: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        decode_block(block)
    with pytest.raises(CorruptCheckpointError, match=r"'t\.index' at offset \d+: data block 0"):
        parse_table(_table_with_data_block(block), "t.index")


def test_index_key_must_bound_its_block() -> None:
    block = _block([(0, 1, b"m", b"")], [0])
    assert parse_table(_table_with_data_block(block, b"m")).entries == [(b"m", b"")]
    with pytest.raises(CorruptCheckpointError, match="above its index key"):
        parse_table(_table_with_data_block(block, b"a"))


def test_compression_and_checksum_are_checked() -> None:
    good = build_table([(b"k", b"v")])
    snappy = bytearray(good)
    # Data block: 3 + 1 + 1 entry bytes, 8 restart bytes -> trailer at 13.
    snappy[13] = 1
    crc = crc32c.mask(crc32c.extend(crc32c.value(bytes(snappy[:13])), b"\x01"))
    snappy[14:18] = struct.pack("<I", crc)
    with pytest.raises(CorruptCheckpointError, match="Snappy"):
        parse_table(bytes(snappy))
    snappy[13] = 7
    crc = crc32c.mask(crc32c.extend(crc32c.value(bytes(snappy[:13])), b"\x07"))
    snappy[14:18] = struct.pack("<I", crc)
    with pytest.raises(CorruptCheckpointError, match="compression type 7"):
        parse_table(bytes(snappy))
    bad = bytearray(good)
    bad[14] ^= 1
    with pytest.raises(CorruptCheckpointError, match="offset 14: data block 0: block checksum"):
        parse_table(bytes(bad))


def test_footer_checks() -> None:
    good = build_table([(b"k", b"v")])
    with pytest.raises(CorruptCheckpointError, match="shorter than the 48-byte footer"):
        parse_table(good[-47:])
    with pytest.raises(CorruptCheckpointError, match="bad magic"):
        parse_table(good[:-1] + b"\x00")
    padded = bytearray(good)
    padded[-10] = 1
    with pytest.raises(CorruptCheckpointError, match="non-zero padding"):
        parse_table(bytes(padded))
    handles = (
        BlockHandle(2**40, 8).encode() + parse_table(good).index.encode()
    )  # metaindex far away
    huge = good[:-48] + handles + bytes(40 - len(handles)) + good[-8:]
    with pytest.raises(CorruptCheckpointError, match="runs past"):
        parse_table(huge)
