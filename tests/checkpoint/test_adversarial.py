"""An adversarial corpus: damaged checkpoints always fail with a named CheckpointError.

Starting from real TensorFlow checkpoints (``tpu_adagrad``: one shard; ``sharded``: three shards
with slices), every file is truncated at every block boundary and at a spread of other offsets,
and bytes are flipped in every region (index data block, header entry, tensor entries, metaindex
block, index block, footer, data shards). Each case must raise :class:`CorruptCheckpointError`
(or :class:`CheckpointNotFoundError` for a missing file) whose message names the damaged file;
never another exception, a hang, a huge allocation or a silently different value. Data-byte
damage is caught by the tensor checksum on first use and by ``verify()``.

A second group hand-crafts indexes whose checksums are valid but whose *contents* lie (sizes,
offsets, shapes, dtypes, shard counts, slices), as a buggy or hostile writer could.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from embserve.checkpoint import BundleReader, BundleWriter, crc32c
from embserve.checkpoint.protos import tensor_bundle_pb2 as pb
from embserve.checkpoint.slices import slice_key
from embserve.checkpoint.sstable import BLOCK_TRAILER_SIZE, FOOTER_SIZE, build_table, read_table
from embserve.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError

from ._data import FIXTURES


def _open_and_read_all(prefix: Path) -> None:
    """Everything a consumer does: open, verify every checksum, read every tensor."""
    with BundleReader(prefix) as reader:
        reader.verify()
        for key in reader:
            reader.get_tensor(key)


def _expect_failure(prefix: Path, damaged: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        _open_and_read_all(prefix)
    err = info.value
    assert isinstance(err, CorruptCheckpointError | CheckpointNotFoundError), repr(err)
    assert damaged.name in str(err), f"{damaged.name} not named in: {err}"
    return err


@pytest.fixture(params=["tpu_adagrad", "sharded"])
def pristine(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    """(prefix of an untouched copy, scratch prefix to damage) for one fixture."""
    name = request.param
    src = next((FIXTURES / name).glob("*.index"))
    prefix = str(src)[: -len(".index")]
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    for f in (FIXTURES / name).iterdir():
        if f.name.startswith(Path(prefix).name + "."):
            shutil.copy(f, good / f.name)
    return good / Path(prefix).name, bad / Path(prefix).name


def _files(prefix: Path) -> list[Path]:
    return sorted(p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name + "."))


def _reset(good: Path, bad: Path) -> None:
    for f in _files(bad):
        os.unlink(f)
    for f in _files(good):
        shutil.copy(f, bad.parent / f.name)


def _index_regions(index: Path) -> dict[str, list[int]]:
    """Byte offsets worth damaging in each region of an index file."""
    table = read_table(index)
    size = table.file_size
    regions: dict[str, list[int]] = {"header entry": [], "tensor entries": []}
    regions["data blocks"] = [
        o
        for h in table.data_blocks
        for o in range(h.offset, h.offset + h.size + BLOCK_TRAILER_SIZE)
    ]
    for i, ((_, value), at) in enumerate(zip(table.entries, table.value_offsets, strict=True)):
        regions["header entry" if i == 0 else "tensor entries"] += range(at, at + len(value))
    m, x = table.metaindex, table.index
    regions["metaindex block"] = list(range(m.offset, m.offset + m.size + BLOCK_TRAILER_SIZE))
    regions["index block"] = list(range(x.offset, x.offset + x.size + BLOCK_TRAILER_SIZE))
    regions["footer"] = list(range(size - FOOTER_SIZE, size))
    return regions


def _boundaries(index: Path) -> list[int]:
    table = read_table(index)
    cuts = {0, table.file_size - FOOTER_SIZE, table.file_size - 8, table.file_size - 1}
    for h in [*table.data_blocks, table.metaindex, table.index]:
        cuts |= {
            h.offset,
            h.offset + h.size,
            h.offset + h.size + 1,
            h.offset + h.size + BLOCK_TRAILER_SIZE,
        }
    return sorted(c for c in cuts if c < table.file_size)


def _flip(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def test_pristine_copies_are_valid(pristine: tuple[Path, Path]) -> None:
    _open_and_read_all(pristine[0])


def test_truncated_index(pristine: tuple[Path, Path]) -> None:
    good, bad = pristine
    index_name = good.name + ".index"
    size = (good.parent / index_name).stat().st_size
    cuts = set(_boundaries(good.parent / index_name)) | set(range(0, size, 13))
    for cut in sorted(cuts):
        _reset(good, bad)
        target = bad.parent / index_name
        target.write_bytes(target.read_bytes()[:cut])
        _expect_failure(bad, target)


def test_truncated_and_missing_data(pristine: tuple[Path, Path]) -> None:
    good, bad = pristine
    for data in [p for p in _files(good) if ".data-" in p.name]:
        size = data.stat().st_size
        for cut in sorted({0, 1, size // 2, size - 1} | set(range(0, size, 37))):
            _reset(good, bad)
            target = bad.parent / data.name
            target.write_bytes(target.read_bytes()[:cut])
            _expect_failure(bad, target)
        _reset(good, bad)
        os.unlink(bad.parent / data.name)
        assert isinstance(_expect_failure(bad, bad.parent / data.name), CheckpointNotFoundError)
    _reset(good, bad)
    os.unlink(bad.parent / (good.name + ".index"))
    err = _expect_failure(bad, bad.parent / (good.name + ".index"))
    assert isinstance(err, CheckpointNotFoundError)


def test_flipped_index_bytes_in_every_region(pristine: tuple[Path, Path]) -> None:
    good, bad = pristine
    index = good.parent / (good.name + ".index")
    regions = _index_regions(index)
    assert all(regions.values()), regions
    for region, offsets in regions.items():
        for offset in offsets:
            for mask in (0x01, 0x80):
                _reset(good, bad)
                target = bad.parent / index.name
                _flip(target, offset, mask)
                err = _expect_failure(bad, target)
                assert isinstance(err, CorruptCheckpointError), (region, offset, err)


def test_flipped_data_bytes(pristine: tuple[Path, Path]) -> None:
    good, bad = pristine
    for data in [p for p in _files(good) if ".data-" in p.name]:
        for offset in range(data.stat().st_size):
            _reset(good, bad)
            target = bad.parent / data.name
            _flip(target, offset, 0x10)
            err = _expect_failure(bad, target)
            assert isinstance(err, CorruptCheckpointError)
            assert "checksum" in str(err) or "string" in str(err), err


def test_flipped_data_caught_on_first_use(pristine: tuple[Path, Path]) -> None:
    """Without verify(), the tensor whose bytes changed fails when read; the others still read."""
    good, bad = pristine
    _reset(good, bad)
    with BundleReader(good) as reader:
        numeric = [
            reader.info(k)
            for k in reader
            if not reader.info(k).is_sliced and reader.info(k).dtype_name == "float32"
        ]
    victim = numeric[0]
    target = bad.parent / f"{bad.name}.data-{victim.shard_id:05d}-of-{reader.num_shards:05d}"
    _flip(target, victim.offset + victim.size - 1, 0x04)
    with BundleReader(bad) as reader:
        with pytest.raises(CorruptCheckpointError, match=f"{target.name}.*{victim.key}.*checksum"):
            reader.get_tensor(victim.key)
        # Opting out of verification returns the damaged bytes (for forensics), as asked.
        assert reader.get_tensor(victim.key, verify=False).shape == victim.shape
        for other in numeric[1:]:
            reader.get_tensor(other.key)


# ---------------------------------------------------------------------------------------------
# Valid checksums, lying contents


def _bundle(
    tmp_path: Path,
    entries: dict[bytes, pb.BundleEntry | bytes],
    header: pb.BundleHeader | None = None,
    data: bytes = b"\x00" * 64,
    num_files: int = 1,
) -> Path:
    """Write an index with exactly these entries (and ``num_files`` data shards of ``data``)."""
    if header is None:
        header = pb.BundleHeader(num_shards=num_files)
        header.version.producer = 1
    prefix = tmp_path / "lie"
    for f in tmp_path.glob("lie.*"):
        os.unlink(f)
    items: list[tuple[bytes, bytes]] = [(b"", header.SerializeToString())]
    items += [
        (k, v if isinstance(v, bytes) else v.SerializeToString())
        for k, v in sorted(entries.items())
    ]
    Path(str(prefix) + ".index").write_bytes(build_table(items))
    for i in range(num_files):
        Path(f"{prefix}.data-{i:05d}-of-{num_files:05d}").write_bytes(data)
    return prefix


def _entry(dtype: int = 1, shape: tuple[int, ...] = (4,), **fields: int) -> pb.BundleEntry:
    e = pb.BundleEntry(dtype=dtype, **fields)  # type: ignore[arg-type]
    e.shape.SetInParent()
    for d in shape:
        e.shape.dim.add(size=d)
    return e


LIES: dict[str, tuple[Callable[[], dict[bytes, pb.BundleEntry | bytes]], str]] = {
    "huge size": (
        lambda: {b"x": _entry(size=2**62)},
        "size 4611686018427387904 bytes, expected 4 x 4",
    ),
    "huge shape": (lambda: {b"x": _entry(shape=(2**31, 2**31), size=2**64 - 1 >> 2)}, "size"),
    "huge shape, consistent size": (
        lambda: {b"x": _entry(shape=(2**20, 2**20), size=2**42)},
        "past the end",
    ),
    "past the end": (lambda: {b"x": _entry(offset=60, size=16)}, r"\[60, 76\) lie past the end"),
    "negative offset": (lambda: {b"x": _entry(offset=-8, size=16)}, "negative offset"),
    "negative dim": (lambda: {b"x": _entry(shape=(-1,), size=4)}, "invalid shape"),
    "bad shard": (lambda: {b"x": _entry(shard_id=3, size=16)}, "shard_id 3 outside 0..0"),
    "unknown dtype": (lambda: {b"x": _entry(dtype=77, size=16)}, "unsupported dtype DataType 77"),
    "variant": (lambda: {b"x": _entry(dtype=21, size=16)}, "DT_VARIANT"),
    "resource": (lambda: {b"x": _entry(dtype=20, size=16)}, "DT_RESOURCE"),
    "quantized": (lambda: {b"x": _entry(dtype=11, size=4)}, "DT_QINT8"),
    "billion strings": (lambda: {b"x": _entry(dtype=7, shape=(10**9,), size=8)}, "too small for"),
    "unknown rank": (
        lambda: {b"x": _unknown_rank()},
        "unknown rank",
    ),
    "garbage entry": (lambda: {b"x": b"\xff\xff\xff\xff"}, "not a BundleEntryProto"),
    "non-utf8 name": (lambda: {b"\xffx": _entry(size=16)}, "not UTF-8"),
    "slice overlap": (
        lambda: _sliced([((0, 3),), ((2, 2),)], 4),
        "slices overlap",
    ),
    "slice gap": (lambda: _sliced([((0, 2),)], 4), "cover 2 of 4"),
    "slice outside": (lambda: _sliced([((0, 2),), ((2, 3),)], 4), "outside dimension 4"),
    "slice missing": (lambda: _sliced([((0, 2),), ((2, 2),)], 4, drop=1), "has no entry"),
    "slice wrong shape": (lambda: _sliced([((0, 2),), ((2, 2),)], 4, wrong_shape=True), "expected"),
    "slice rank": (lambda: _sliced([((0, 2), (0, 1))], 4), "slice rank 2 != rank 1"),
    "bad slice key": (lambda: {b"\x00zz": _entry(size=16)}, "bad slice key"),
    "nested slices": (lambda: _nested_slices(), "lists slices itself"),
}


def _unknown_rank() -> pb.BundleEntry:
    e = _entry(size=16)
    e.shape.unknown_rank = True
    return e


def _sliced(
    extents: list[tuple[tuple[int, int], ...]], rows: int, drop: int = -1, wrong_shape: bool = False
) -> dict[bytes, pb.BundleEntry | bytes]:
    full = _entry(shape=(rows,))
    out: dict[bytes, pb.BundleEntry | bytes] = {}
    for i, ext in enumerate(extents):
        s = full.slices.add()
        for start, length in ext:
            s.extent.add(start=start, length=length)
        if i != drop:
            shape = tuple(n for _, n in ext)
            if wrong_shape:
                shape = (shape[0] + 1,)
            out[slice_key("x", ext)] = _entry(shape=shape, size=4 * int(np.prod(shape)))
    out[b"x"] = full
    return out


def _nested_slices() -> dict[bytes, pb.BundleEntry | bytes]:
    inner = _entry(shape=(4,))
    inner.slices.add().extent.add(start=0, length=4)
    return {slice_key("x", [(0, 4)]): inner}


@pytest.mark.parametrize("case", sorted(LIES))
def test_lying_entries(tmp_path: Path, case: str) -> None:
    make, message = LIES[case]
    prefix = _bundle(tmp_path, make())
    with pytest.raises(CorruptCheckpointError, match=message) as info:
        BundleReader(prefix)
    assert "lie.index" in str(info.value)


def _header(**fields: int) -> pb.BundleHeader:
    h = pb.BundleHeader(
        num_shards=fields.pop("num_shards", 1), endianness=fields.pop("endianness", 0)
    )  # type: ignore[arg-type]
    h.version.producer = fields.pop("producer", 1)
    h.version.min_consumer = fields.pop("min_consumer", 0)
    h.version.bad_consumers.extend([fields.pop("bad", 0)] if "bad" in fields else [])
    return h


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (_header(num_shards=0), "num_shards is 0"),
        (_header(num_shards=2**31 - 1), "num_shards is 2147483647"),
        (_header(num_shards=-3), "num_shards is -3"),
        (_header(endianness=1), "big-endian"),
        (_header(min_consumer=2), "consumer version 2"),
        (_header(producer=-1), "producer version -1"),
        (_header(bad=1), "disallows consumer version 1"),
    ],
)
def test_lying_headers(tmp_path: Path, header: pb.BundleHeader, message: str) -> None:
    prefix = _bundle(tmp_path, {b"x": _entry(size=16)}, header)
    with pytest.raises(CorruptCheckpointError, match=message):
        BundleReader(prefix)


def test_accepted_versions(tmp_path: Path) -> None:
    crc = crc32c.masked_value(bytes(16))
    prefix = _bundle(tmp_path, {b"x": _entry(size=16, crc32c=crc)}, _header(min_consumer=1))
    with BundleReader(prefix) as reader:
        assert reader.get_tensor("x").tolist() == [0.0] * 4


def test_missing_header(tmp_path: Path) -> None:
    prefix = tmp_path / "nohead"
    Path(str(prefix) + ".index").write_bytes(
        build_table([(b"x", _entry(size=16).SerializeToString())])
    )
    with pytest.raises(CorruptCheckpointError, match="not the header"):
        BundleReader(prefix)
    Path(str(prefix) + ".index").write_bytes(build_table([(b"", b"\xff\xff")]))
    with pytest.raises(CorruptCheckpointError, match="not a BundleHeaderProto"):
        BundleReader(prefix)


def test_lying_string_tensor(tmp_path: Path) -> None:
    """String lengths that do not add up never drive an allocation."""
    data = b"\xff\xff\xff\xff\x0f" + b"\x00" * 11  # first length 2**32 - 1
    prefix = _bundle(tmp_path, {b"s": _entry(dtype=7, shape=(2,), size=16)}, data=data)
    with BundleReader(prefix) as reader, pytest.raises(CorruptCheckpointError, match=r"lie\.data"):
        reader.get_tensor("s")


def test_shard_replaced_after_open(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "c") as w:
        w.add("x", np.zeros(4, np.float32))
    reader = BundleReader(tmp_path / "c")
    Path(str(tmp_path / "c") + ".data-00000-of-00001").write_bytes(b"\x00" * 8)
    with pytest.raises(CorruptCheckpointError, match="changed since the index was read"):
        reader.get_tensor("x")
