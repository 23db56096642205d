"""Shard maps at 2 MiB boundaries, and moving restored tables onto huge pages."""

from __future__ import annotations

import gc
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import embserve as es
from embserve.checkpoint import BundleReader, BundleWriter
from embserve.checkpoint._mapping import HUGE_PAGE, collapse_huge_pages, huge_page_bytes, map_shard
from embserve.checkpointing import collapse_huge_pages as collapse_tables

LINUX = sys.platform.startswith("linux")


def test_map_shard_reads_the_file_from_an_aligned_address(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 3 * HUGE_PAGE + 123, dtype=np.uint8)
    path = tmp_path / "shard"
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f:
        buf = map_shard(f.fileno(), data.size)
    view = np.frombuffer(buf, np.uint8)
    np.testing.assert_array_equal(view, data)
    if LINUX:
        assert isinstance(buf, memoryview)
        assert view.ctypes.data % HUGE_PAGE == 0
    with open(path, "rb") as f:  # below one huge page: a plain map
        small = map_shard(f.fileno(), 1000)
    assert bytes(small[:1000]) == data[:1000].tobytes()


def _platform_collapses() -> bool:
    """Whether MADV_COLLAPSE is expected to work: Linux >= 6.1 on the architectures whose flag
    values _mapping knows, without the plain-mmap escape hatch. (Files must be on tmpfs: this
    machine's ext4 answers EINVAL for file pages.)"""
    if not LINUX or platform.machine() not in ("x86_64", "aarch64"):
        return False
    if os.environ.get("EMBSERVE_PLAIN_MMAP", "") not in ("", "0"):
        return False
    version = re.match(r"(\d+)\.(\d+)", platform.release())
    return version is not None and (int(version[1]), int(version[2])) >= (6, 1)


def _whole_huge_pages(array: np.ndarray) -> int:
    """Bytes of the 2 MiB pages lying entirely inside ``array``."""
    first = array.ctypes.data
    start = -(-first // HUGE_PAGE) * HUGE_PAGE
    end = (first + array.nbytes) // HUGE_PAGE * HUGE_PAGE
    return max(0, end - start)


def _mapped(path: str) -> bool:
    """Whether this process maps ``path`` (per /proc/self/maps)."""
    target = os.path.realpath(path)
    with open("/proc/self/maps", encoding="utf-8") as f:
        return any(line.rstrip("\n").endswith(" " + target) for line in f)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A tmpfs directory: file pages there can be collapsed onto huge pages."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    d = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.mark.skipif(not LINUX, reason="/proc/self/maps and the aligned map are Linux-only")
def test_restored_tables_stay_valid_after_close_and_can_be_collapsed(shm_dir: Path) -> None:
    rng = np.random.default_rng(1)
    big = rng.standard_normal((20_000, 64)).astype(np.float32)  # 4.9 MiB: one whole huge page
    small = rng.standard_normal((10, 4)).astype(np.float32)
    prefix = shm_dir / "ckpt"
    with BundleWriter(prefix) as w:
        w.add("a/.ATTRIBUTES/VARIABLE_VALUE", small)
        w.add("b/.ATTRIBUTES/VARIABLE_VALUE", big)
    shard = f"{prefix}.data-00000-of-00001"
    reader = BundleReader(prefix)
    table = reader.get_tensor("b/.ATTRIBUTES/VARIABLE_VALUE")
    info = reader.info("b/.ATTRIBUTES/VARIABLE_VALUE")
    # File offset and address agree modulo 2 MiB: huge pages can map it.
    assert (table.ctypes.data - info.offset) % HUGE_PAGE == 0
    whole = _whole_huge_pages(table)
    assert whole == HUGE_PAGE
    tiny = reader.get_tensor("a/.ATTRIBUTES/VARIABLE_VALUE")
    reader.close()  # the arrays keep the map alive
    assert _mapped(shard)
    np.testing.assert_array_equal(table, big)
    before = huge_page_bytes()
    moved = collapse_huge_pages(table)
    if _platform_collapses():
        assert moved == whole
        assert huge_page_bytes() - before >= moved  # now mapped by 2 MiB entries
    else:
        assert moved == 0
    np.testing.assert_array_equal(table, big)
    assert collapse_huge_pages(tiny) == 0  # smaller than a huge page
    assert _mapped(shard)
    del table, tiny
    gc.collect()
    # The last view went: the map (reservation and file) is unmapped, although the (closed)
    # reader is still alive.
    assert not _mapped(shard)
    del reader


def test_collapse_tables_of_a_restored_serving_object(shm_dir: Path) -> None:
    table = es.TableConfig(20_000, 64, name="t")
    writer = es.TPUEmbeddingForServing({"f": es.FeatureConfig(table)}, None)
    writer.build()
    es.train.Checkpoint(embedding=writer).write(str(shm_dir / "ckpt"))
    expected = writer.embedding_tables[table].copy()
    table2 = es.TableConfig(20_000, 64, name="t")
    reader = es.TPUEmbeddingForServing({"f": es.FeatureConfig(table2)}, None)
    es.train.Checkpoint(embedding=reader).restore(str(shm_dir / "ckpt"))
    ids = np.arange(0, 20_000, 7)
    before = reader({"f": ids})["f"].copy()
    unrestored = es.TPUEmbeddingForServing({"f": es.FeatureConfig(es.TableConfig(9, 4))}, None)
    assert collapse_tables(unrestored) == 0
    assert not unrestored._built  # nothing to collapse, and no tables initialised for it
    whole = _whole_huge_pages(reader.embedding_tables[table2])
    assert whole >= HUGE_PAGE
    moved = collapse_tables(reader)
    assert moved == (whole if _platform_collapses() else 0)
    np.testing.assert_array_equal(reader({"f": ids})["f"], before)
    np.testing.assert_array_equal(before, expected[ids])


@pytest.mark.skipif(not LINUX, reason="the aligned map is Linux-only")
def test_plain_mmap_escape_hatch(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    path.write_bytes(b"x" * (3 * HUGE_PAGE))
    code = (
        "from embserve.checkpoint._mapping import map_shard; "
        f"f = open({str(path)!r}, 'rb'); "
        f"print(type(map_shard(f.fileno(), {3 * HUGE_PAGE})).__name__)"
    )
    env = {**os.environ, "EMBSERVE_PLAIN_MMAP": "1"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "mmap", got.stderr


def test_checksums_and_copies_read_through_the_aligned_map(tmp_path: Path) -> None:
    """Verification, copy=True reads and corruption errors on a shard large enough to take the
    aligned-map path."""
    big = np.random.default_rng(2).standard_normal((20_000, 64)).astype(np.float32)  # 5 MiB
    prefix = tmp_path / "ckpt"
    with BundleWriter(prefix) as w:
        info = w.add("t/.ATTRIBUTES/VARIABLE_VALUE", big)
    with BundleReader(prefix, verify=True) as r:
        np.testing.assert_array_equal(r.get_tensor("t/.ATTRIBUTES/VARIABLE_VALUE"), big)
        np.testing.assert_array_equal(r.get_tensor("t/.ATTRIBUTES/VARIABLE_VALUE", copy=True), big)
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[info.offset + 3_000_000] ^= 0xFF
    data.write_bytes(bytes(raw))
    with BundleReader(prefix) as r, pytest.raises(es.CorruptCheckpointError, match="checksum"):
        r.get_tensor("t/.ATTRIBUTES/VARIABLE_VALUE", verify=True)
