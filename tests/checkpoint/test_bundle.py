"""BundleWriter -> BundleReader round trips over dtypes, shapes, shards and slices; the writer's
file discipline (temp files, atomic renames, no silent overwrite); reader API details."""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from embserve.checkpoint import (
    BundleReader,
    BundleWriter,
    DataType,
    bfloat16_to_float32,
    float32_to_bfloat16,
)
from embserve.checkpoint.bundle import (
    ProgressCounter,
    _find_overlap,
    data_path,
    decode_strings,
    encode_strings,
)
from embserve.checkpoint.dtypes import SUPPORTED, from_numpy
from embserve.checkpoint.sstable import read_table
from embserve.errors import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)

NUMERIC = [info for info in SUPPORTED.values() if info.dtype != DataType.STRING]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)


def _same(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and a.tolist() == b.tolist()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@st.composite
def tensors(draw: st.DrawFn) -> tuple[DataType, npt.NDArray[Any]]:
    info = draw(st.sampled_from([*NUMERIC, SUPPORTED[DataType.STRING]]))
    shape = draw(SHAPES)
    if info.dtype == DataType.STRING:
        flat = draw(
            st.lists(
                st.binary(max_size=12), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))
            )
        )
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return info.dtype, arr.reshape(shape)
    if info.dtype == DataType.BOOL:
        return info.dtype, draw(hnp.arrays(np.bool_, shape))
    # Any bit pattern is a valid value (NaN payloads included): draw raw bytes.
    raw = draw(
        st.binary(
            min_size=int(np.prod(shape)) * info.itemsize,
            max_size=int(np.prod(shape)) * info.itemsize,
        )
    )
    return info.dtype, np.frombuffer(raw, dtype=info.numpy).reshape(shape).copy()


@settings(
    deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(tensors(), min_size=1, max_size=8),
    st.integers(1, 3),
    st.sampled_from([1, 8, 64]),
    st.randoms(use_true_random=False),
)
def test_round_trip(
    tmp_path: Path,
    items: list[tuple[DataType, npt.NDArray[Any]]],
    num_shards: int,
    alignment: int,
    rnd: Any,
) -> None:
    prefix = Path(tempfile.mkdtemp(dir=tmp_path)) / "ckpt"
    written = {}
    with BundleWriter(prefix, num_shards=num_shards, alignment=alignment) as w:
        for i, (dtype, arr) in enumerate(items):
            key = f"t{i}/.ATTRIBUTES/VARIABLE_VALUE"
            info = w.add(key, arr, dtype=dtype, shard=rnd.randrange(num_shards))
            assert info.dtype == dtype
            assert info.shape == arr.shape
            if alignment > 1:
                assert info.offset % alignment == 0
            written[key] = (dtype, arr)
    with BundleReader(prefix, verify=True) as r:
        assert r.keys() == sorted(written)
        for key, (dtype, arr) in written.items():
            assert r.dtypes[key] == dtype
            assert r.shapes[key] == arr.shape
            assert _same(r.get_tensor(key), arr)
            assert _same(r.get_tensor(key, copy=True), arr)
            if alignment == 64 and dtype != DataType.STRING and arr.size:
                assert not r.get_tensor(key).flags.owndata  # aligned -> zero-copy


@settings(
    deadline=None, max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(1, 7),
    st.integers(1, 5),
    st.lists(st.integers(1, 6), min_size=1, max_size=3),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_sliced_round_trip(
    tmp_path: Path, rows: int, cols: int, cuts: list[int], whole: bool, rnd: Any
) -> None:
    full = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols) * 0.5
    bounds = sorted({0, rows, *(c for c in cuts if c < rows)})
    slices = []
    for lo, hi in itertools.pairwise(bounds):
        second = (0, None) if whole else (0, cols)
        slices.append((((lo, hi - lo), second), full[lo:hi]))
    prefix = Path(tempfile.mkdtemp(dir=tmp_path)) / "ckpt"
    with BundleWriter(prefix, num_shards=2) as w:
        info = w.add_sliced("w", full.shape, slices, shard=[rnd.randrange(2) for _ in slices])
        w.add("z", np.int64(3))
    with BundleReader(prefix, verify=True) as r:
        assert r.keys() == ["w", "z"]
        assert r.info("w").is_sliced == (len(slices) > 1) == info.is_sliced
        np.testing.assert_array_equal(r.get_tensor("w"), full)


def test_sliced_validation(tmp_path: Path) -> None:
    a = np.zeros((2, 2), np.float32)
    with BundleWriter(tmp_path / "c") as w:
        with pytest.raises(ValueError, match="overlap"):
            w.add_sliced("x", (3, 2), [(((0, 2), (0, 2)), a), (((1, 2), (0, 2)), a)])
        with pytest.raises(ValueError, match="cover 4 of 6"):
            w.add_sliced("x", (3, 2), [(((0, 2), (0, 2)), a)])
        with pytest.raises(ValueError, match="outside shape"):
            w.add_sliced("x", (3, 2), [(((2, 2), (0, 2)), a)])
        with pytest.raises(ValueError, match="expected"):
            w.add_sliced("x", (4, 2), [(((0, 2), (0, 2)), a), (((2, 2), (0, 2)), a[:1])])
        with pytest.raises(ValueError, match="at least one slice"):
            w.add_sliced("x", (0,), [])
        w.add("ok", a)


def test_bfloat16(tmp_path: Path) -> None:
    values = np.array([1e30, 3.3, -0.1, np.nan, 0.0, -np.inf, 1.0 + 2**-8], np.float32)
    bits = float32_to_bfloat16(values)
    # What TensorFlow stored for these values (tests/data/checkpoints/dtypes, key bf16).
    assert bits[:5].tolist() == [0x714A, 0x4053, 0xBDCD, 0x7FC0, 0x0000]
    assert bits[6] == 0x3F80  # a tie rounds to even
    with BundleWriter(tmp_path / "b") as w:
        w.add("from_float", values, dtype=DataType.BFLOAT16)
        w.add("from_bits", bits, dtype=DataType.BFLOAT16)
    with BundleReader(tmp_path / "b") as r:
        for key in ("from_float", "from_bits"):
            got = r.get_tensor(key)
            assert got.dtype == np.uint16
            assert r.info(key).dtype_name == "bfloat16"
            np.testing.assert_array_equal(got, bits)
        widened = bfloat16_to_float32(r.get_tensor("from_bits"))
        assert widened.dtype == np.float32
        np.testing.assert_array_equal(widened.view(np.uint32), bits.astype(np.uint32) << 16)
        assert widened[1] == 3.296875
        assert widened[5] == -np.inf


def test_strings_encoding_matches_spec() -> None:
    data, masked = encode_strings([b"scalar-string"])
    assert data == bytes.fromhex("0d611b5709") + b"scalar-string"
    assert masked == 0xBCF97BD0
    assert decode_strings(data, 1, masked) == [b"scalar-string"]
    assert encode_strings([])[0] == (0xA282EAD8).to_bytes(4, "little")


def test_writer_conversions(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "c") as w:
        assert w.add("a", [1, 2, 3]).dtype == DataType.INT64
        assert w.add("b", 1.5).dtype == DataType.DOUBLE
        assert w.add("c", [1.0, 2.0], dtype=DataType.FLOAT).dtype == DataType.FLOAT
        assert w.add("d", "héllo").dtype == DataType.STRING
        assert w.add("e", np.array(["x", "yz"])).dtype == DataType.STRING
        assert w.add("f", np.array([1, 2], ">i4")).dtype == DataType.INT32  # byte-swapped input
        with pytest.raises(TypeError, match="different kind"):
            w.add("g", [1.5], dtype=DataType.INT32)
        with pytest.raises(TypeError, match="cannot write DT_VARIANT"):
            w.add("g", [1], dtype=DataType.VARIANT)
        with pytest.raises(TypeError, match="no TensorFlow checkpoint equivalent"):
            w.add("g", np.array(["2020-01-01"], dtype="datetime64[D]"))
        with pytest.raises(ValueError, match="already added"):
            w.add("a", [1])
        with pytest.raises(ValueError, match="NUL"):
            w.add("\x00x", [1])
        with pytest.raises(ValueError, match="shard 1 outside"):
            w.add("h", [1], shard=1)
    with BundleReader(tmp_path / "c") as r:
        assert r.get_tensor("d")[()] == "héllo".encode()
        assert r.get_tensor("e").tolist() == [b"x", b"yz"]
        np.testing.assert_array_equal(r.get_tensor("f"), [1, 2])
        assert r.get_tensor("f").dtype == np.dtype("<i4")


def test_from_numpy() -> None:
    assert from_numpy(np.float32) == DataType.FLOAT
    assert from_numpy(">f8") == DataType.DOUBLE
    assert from_numpy(np.uint16) == DataType.UINT16
    assert from_numpy(object) == DataType.STRING


def test_no_silent_overwrite_and_live_maps_survive(tmp_path: Path) -> None:
    prefix = tmp_path / "ckpt-1"
    with BundleWriter(prefix) as w:
        w.add("t", np.arange(1000, dtype=np.float32))
    with pytest.raises(FileExistsError):
        BundleWriter(prefix)
    reader = BundleReader(prefix)
    view = reader.get_tensor("t")
    reader.close()  # the view keeps its mapping alive
    with BundleWriter(prefix, overwrite=True) as w:
        w.add("t", np.full(1000, 7.0, dtype=np.float32))
    # The old mapping still shows the old file (it was replaced by rename, not truncated).
    np.testing.assert_array_equal(view, np.arange(1000, dtype=np.float32))
    with BundleReader(prefix) as r:
        np.testing.assert_array_equal(r.get_tensor("t"), 7.0)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-1.data-00000-of-00001", "ckpt-1.index"]


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    def fail_midway() -> None:
        with BundleWriter(tmp_path / "x" / "ckpt") as w:
            w.add("t", np.zeros(10))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    assert os.listdir(tmp_path / "x") == []
    w2 = BundleWriter(tmp_path / "y", num_shards=2)
    w2.add("t", np.zeros(3), shard=1)
    w2.abort()
    assert os.listdir(tmp_path) == ["x"]
    with pytest.raises(ValueError, match="finished or aborted"):
        w2.add("u", np.zeros(3))


def test_empty_shards_exist(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "c", num_shards=3) as w:
        w.add("t", np.zeros(2), shard=1)
    for shard in range(3):
        assert os.path.exists(data_path(tmp_path / "c", shard, 3))
    with BundleReader(tmp_path / "c") as r:
        assert r.num_shards == 3
        assert r.info("t").shard_id == 1


def test_reader_api(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "c") as w:
        w.add("b", np.zeros((2, 3), np.float32))
        w.add("a", np.int64(1))
    calls: list[tuple[int, int]] = []
    with BundleReader(tmp_path / "c") as r:
        assert list(r) == r.keys() == ["a", "b"]
        assert len(r) == 2
        assert "a" in r
        assert r.has_tensor("b")
        assert not r.has_tensor("c")
        assert r.shapes == {"a": (), "b": (2, 3)}
        assert r.dtypes == {"a": DataType.INT64, "b": DataType.FLOAT}
        assert r.info("b").num_elements == 6
        assert r.info("b").numpy_dtype == np.float32
        with pytest.raises(CheckpointMismatchError, match="'c' not found"):
            r.get_tensor("c")
        r.verify(progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 32)
    assert calls[-1] == (32, 32)


# ---------------------------------------------------------------------------------------------
# ProgressCounter: the one progress behaviour of every long job


class _StopError(Exception):
    """What a test's progress callback raises to cancel the job."""


def _job(
    progress: Any, total: int, steps: list[int], *, fail: bool = False, ran: list[int] | None = None
) -> None:
    """A job advancing by ``steps`` (appended to ``ran`` as they start), raising ValueError at
    its end with ``fail``."""
    with ProgressCounter(progress, total) as counter:
        for n in steps:
            if ran is not None:
                ran.append(n)
            counter.advance(n)
        if fail:
            raise ValueError("damaged")


def _counted(total: int, steps: list[int]) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    _job(lambda done, total: calls.append((done, total)), total, steps)
    return calls


def test_progress_starts_at_zero_and_reports_each_chunk_once() -> None:
    assert _counted(10, [3, 3, 4]) == [(0, 10), (3, 10), (6, 10), (10, 10)]
    # No report for a chunk of no bytes: at most one per chunk that did work, plus the two ends.
    assert _counted(10, [0, 5, 0, 0, 5]) == [(0, 10), (5, 10), (10, 10)]
    steps = [1] * 100
    assert len(_counted(100, steps)) == len(steps) + 1  # the last chunk's report is the final


def test_progress_final_report_is_always_delivered_exactly_once() -> None:
    assert _counted(0, []) == [(0, 0)]
    assert _counted(10, []) == [(0, 10), (10, 10)]  # nothing was left to do
    assert _counted(10, [4]) == [(0, 10), (4, 10), (10, 10)]
    assert _counted(10, [10]) == [(0, 10), (10, 10)]


def test_progress_callback_exceptions_propagate_and_end_the_job() -> None:
    calls: list[tuple[int, int]] = []

    def stop_after_4(done: int, total: int) -> None:
        calls.append((done, total))
        if done >= 4:
            raise _StopError

    ran: list[int] = []
    with pytest.raises(_StopError):
        _job(stop_after_4, 10, [2, 2, 2, 2, 2], ran=ran)
    assert ran == [2, 2]  # the job ended at the report that raised...
    assert calls == [(0, 10), (2, 10), (4, 10)]  # ... and no final report followed

    def stop_at_once(done: int, total: int) -> None:
        raise _StopError

    ran.clear()
    with pytest.raises(_StopError):
        _job(stop_at_once, 10, [2], ran=ran)
    assert ran == []  # the job never started


def test_progress_of_a_failed_job_has_no_final_report() -> None:
    calls: list[tuple[int, int]] = []
    with pytest.raises(ValueError, match="damaged"):
        _job(lambda *a: calls.append(a), 10, [4], fail=True)
    assert calls == [(0, 10), (4, 10)]


def test_progress_without_a_callback_still_counts() -> None:
    with ProgressCounter(None, 10) as counter:
        counter.advance(3)
        counter.advance(7)
    assert counter.done == 10


def test_not_found(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at prefix"):
        BundleReader(tmp_path / "missing")
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint found in directory"):
        BundleReader(tmp_path)
    with BundleWriter(tmp_path / "c", num_shards=2) as w:
        w.add("t", np.zeros(2))
    os.unlink(data_path(tmp_path / "c", 1, 2))
    with pytest.raises(CheckpointNotFoundError, match=r"c\.data-00001-of-00002"):
        BundleReader(tmp_path / "c")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


def test_header_bytes_match_tensorflow(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "c") as w:
        w.add("x", np.float32(1))
    table = read_table(str(tmp_path / "c") + ".index")
    assert table.entries[0] == (b"", bytes.fromhex("08011a020801"))


def test_many_slices_are_fast(tmp_path: Path) -> None:
    full = np.arange(6000, dtype=np.int32).reshape(3000, 2)
    slices = [(((r, 1), (0, None)), full[r : r + 1]) for r in range(3000)]
    with BundleWriter(tmp_path / "c") as w:
        w.add_sliced("many", full.shape, slices)
    with BundleReader(tmp_path / "c") as r:
        assert len(r.info("many").slices) == 3000
        np.testing.assert_array_equal(r.get_tensor("many"), full)


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=2, max_size=2),
        max_size=8,
    )
)
def test_overlap_sweep_matches_brute_force(raw: list[list[tuple[int, int]]]) -> None:
    boxes = [[(min(a, b), max(a, b)) for a, b in box] for box in raw]

    def overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> bool:
        return all(
            lo1 < hi2 and lo2 < hi1 and lo1 < hi1 and lo2 < hi2
            for (lo1, hi1), (lo2, hi2) in zip(a, b, strict=True)
        )

    brute = any(overlap(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i))
    found = _find_overlap(boxes)
    assert (found is not None) == brute
    if found is not None:
        assert overlap(boxes[found[0]], boxes[found[1]])


def test_misaligned_tensors_are_logged_once_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TensorFlow does not align tensors: a float32 table after a 1-byte value cannot be viewed
    in place and is copied, privately in every process (issue 10, item 18). Say so once, and
    let tools count it."""
    table = np.arange(16384, dtype=np.float32).reshape(4096, 4)  # 64 KiB: a warning
    with BundleWriter(tmp_path / "c") as w:
        w.add("flag", np.bool_(True))
        w.add("emb/t/.ATTRIBUTES/VARIABLE_VALUE", table)
        w.add("aligned", np.zeros(3, np.uint8))
        w.add("names", np.array([b"a", b"bc"], dtype=object))
        # Stored last row range first: not one run in row order, so it is assembled.
        w.add_sliced(
            "sliced", (4,), [(((2, 2),), np.zeros(2, np.int8)), (((0, 2),), np.ones(2, np.int8))]
        )
    reader = BundleReader(tmp_path / "c")
    info = reader.info("emb/t/.ATTRIBUTES/VARIABLE_VALUE")
    assert info.offset % 4 == 1
    assert not info.zero_copy
    assert info.copy_reason == "offset 1 is not a multiple of float32's 4-byte alignment"
    assert reader.info("aligned").zero_copy
    assert reader.info("aligned").copy_reason is None
    assert reader.info("flag").zero_copy
    assert "string" in str(reader.info("names").copy_reason)
    assert "2 slices" in str(reader.info("sliced").copy_reason)
    with caplog.at_level(logging.DEBUG, logger="embserve"):
        first = reader.get_tensor("emb/t/.ATTRIBUTES/VARIABLE_VALUE")
        again = reader.get_tensor("emb/t/.ATTRIBUTES/VARIABLE_VALUE")
        reader.get_tensor("emb/t/.ATTRIBUTES/VARIABLE_VALUE", copy=True)  # asked for: no word
        reader.get_tensor("aligned")
    np.testing.assert_array_equal(first, table)
    np.testing.assert_array_equal(again, table)
    copies = [r for r in caplog.records if r.name == "embserve"]
    assert len(copies) == 1, [r.getMessage() for r in caplog.records]
    (record,) = copies
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "emb/t/.ATTRIBUTES/VARIABLE_VALUE" in message
    assert "65536 bytes" in message
    assert "offset 1" in message
    assert str(tmp_path / "c") in message


# ---------------------------------------------------------------------------------------------
# Sliced tensors stored as one run: served as views


def _row_slices(full: npt.NDArray[Any], cuts: list[int], whole: bool) -> list[Any]:
    """Full-width row slices of ``full`` at ``cuts``, in row order."""
    bounds = [0, *cuts, full.shape[0]]
    rest = [(0, None) if whole else (0, d) for d in full.shape[1:]]
    return [
        (((lo, hi - lo), *rest), full[lo:hi]) for lo, hi in itertools.pairwise(bounds) if hi > lo
    ]


@pytest.mark.parametrize("whole", [True, False], ids=["whole-extents", "explicit-extents"])
@pytest.mark.parametrize("shape", [(12,), (12, 5), (12, 3, 2)])
def test_row_slices_stored_back_to_back_are_a_view(
    tmp_path: Path, shape: tuple[int, ...], whole: bool
) -> None:
    """A TPU chip's row slices (or a partitioned variable's), stored in row order one after the
    other in one data file, are the tensor's bytes: get_tensor maps them instead of assembling
    a new array (a multi-GB stacked SparseCore table restores without a copy)."""
    full = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 8
    with BundleWriter(tmp_path / "c") as w:
        w.add("before", np.int32(7))
        w.add_sliced("t", shape, _row_slices(full, [3, 4, 9], whole))
    reader = BundleReader(tmp_path / "c")
    info = reader.info("t")
    assert info.is_sliced
    assert info.contiguous
    assert info.zero_copy
    assert info.copy_reason is None
    assert (info.shard_id, info.offset, info.size) == (0, 4, full.nbytes)
    first, second = reader.get_tensor("t"), reader.get_tensor("t")
    assert np.shares_memory(first, second), "each call should view the same mapped bytes"
    assert not first.flags.writeable
    assert _same(first, full)
    private = reader.get_tensor("t", copy=True)
    assert private.flags.writeable
    assert not np.shares_memory(private, first)
    assert _same(private, full)


def _write_sliced(prefix: Path, how: str, full: npt.NDArray[Any]) -> None:
    slices = _row_slices(full, [2, 5], whole=True)
    if how == "two shards":
        with BundleWriter(prefix, num_shards=2) as w:
            w.add_sliced("t", full.shape, slices, shard=[0, 1, 0])
    elif how == "rows out of order":
        with BundleWriter(prefix) as w:
            w.add_sliced("t", full.shape, [slices[1], slices[0], slices[2]])
    elif how == "column slices":
        cols = [(((0, full.shape[0]), (0, 1)), full[:, :1]), (((0, 8), (1, 3)), full[:, 1:])]
        with BundleWriter(prefix) as w:
            w.add_sliced("t", full.shape, cols)
    elif how == "gap between slices":
        with BundleWriter(prefix, alignment=64) as w:  # 2 rows x 16 bytes, then padding
            w.add_sliced("t", full.shape, slices)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["two shards", "rows out of order", "column slices", "gap between slices"]
)
def test_other_sliced_layouts_are_assembled(tmp_path: Path, how: str) -> None:
    """Anything but one back-to-back run of whole rows in one file is still assembled (and
    reported as a copy), with the right values."""
    full = np.arange(32, dtype=np.float32).reshape(8, 4)
    _write_sliced(tmp_path / "c", how, full)
    reader = BundleReader(tmp_path / "c")
    info = reader.info("t")
    assert info.is_sliced
    assert not info.contiguous
    assert "slices, assembled" in str(info.copy_reason)
    first, second = reader.get_tensor("t"), reader.get_tensor("t")
    assert not np.shares_memory(first, second)
    assert _same(first, full)


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("copy", [False, True], ids=["view", "copy"])
@pytest.mark.parametrize("victim", [0, 1, 2])
def test_a_view_of_slices_still_checks_every_slice(tmp_path: Path, victim: int, copy: bool) -> None:
    """The stored checksums are the slices' own: a damaged byte in any one of them is caught
    by get_tensor (as a view or as a copy) and by verify(), naming the file and offset."""
    full = np.arange(48, dtype=np.float32).reshape(12, 4)
    with BundleWriter(tmp_path / "c") as w:
        w.add_sliced("t", full.shape, _row_slices(full, [4, 8], whole=True))
    with BundleReader(tmp_path / "c") as reader:
        assert reader.info("t").contiguous
        at = reader.info("t").offset + victim * 64 + 5  # a byte inside slice `victim`
        shard = reader.data_paths[0]
    _flip_byte(shard, at)
    reader = BundleReader(tmp_path / "c")
    with pytest.raises(CorruptCheckpointError, match=rf"{shard}.*checksum mismatch"):
        reader.get_tensor("t", copy=copy)
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
        BundleReader(tmp_path / "c").verify()
    damaged = reader.get_tensor("t", copy=copy, verify=False)  # asked not to check: served
    assert damaged.shape == full.shape
    assert not _same(damaged, full)


def test_misaligned_run_of_slices_is_copied_aligned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run that starts at an offset the dtype cannot be viewed at is copied, like an
    unsliced tensor there, and says why."""
    full = np.arange(24, dtype=np.float32).reshape(6, 4)
    with BundleWriter(tmp_path / "c") as w:
        w.add("flag", np.bool_(True))
        w.add_sliced("t", full.shape, _row_slices(full, [3], whole=True))
    reader = BundleReader(tmp_path / "c")
    info = reader.info("t")
    assert info.contiguous
    assert info.offset == 1
    assert info.copy_reason == "offset 1 is not a multiple of float32's 4-byte alignment"
    with caplog.at_level(logging.INFO, logger="embserve"):
        value = reader.get_tensor("t")
    assert value.flags.aligned
    assert _same(value, full)
    assert "copied into this process's private memory" in caplog.text
    # 96 bytes: said at INFO level, not as a warning.
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_copies_of_large_tensors_are_warnings_and_of_small_ones_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TensorFlow's writer leaves the 8-byte save_counter misaligned in nearly every
    checkpoint: copying it is not worth a warning on every restore; copying a table is."""
    from embserve.checkpoint.bundle import COPY_WARNING_MIN_BYTES

    big = np.arange(COPY_WARNING_MIN_BYTES // 4, dtype=np.float32)
    with BundleWriter(tmp_path / "c") as w:
        w.add("flag", np.bool_(True))
        w.add("counter", np.int64(3))
        w.add("table", big)
    reader = BundleReader(tmp_path / "c")
    assert reader.info("counter").copy_reason is not None
    assert reader.info("table").copy_reason is not None
    with caplog.at_level(logging.INFO, logger="embserve"):
        reader.get_tensor("counter")
        reader.get_tensor("table")
    levels = {r.getMessage().split("tensor ")[1].split(" ")[0]: r.levelno for r in caplog.records}
    assert levels == {"'counter'": logging.INFO, "'table'": logging.WARNING}
