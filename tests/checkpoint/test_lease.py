"""Served files changed in place: read leases, broken_leases() and fence() (issue 10, item 11).

``truncate -s 1000 ckpt.data-00000-of-00001`` (or ``cp`` / ``rsync --inplace`` onto it) under a
process that maps the file killed that process with SIGBUS on its next read. With
``BundleReader(prefix, lease=True)`` the writer is refused or held back, the reader sees the
break, and after ``fence()`` the arrays read zeros whatever the file becomes.

These tests run real writers (coreutils ``truncate`` and ``cp``) in subprocesses against real
leases. The read of fenced arrays after truncation runs in a child process, so a regression
shows as a SIGBUS exit code instead of a dead test runner.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embserve.checkpoint import BundleReader, BundleWriter
from embserve.checkpoint.bundle import data_path
from embserve.errors import CheckpointBusyError, CheckpointError

from ._data import public_dir, unprivileged

__all__ = ["public_dir"]  # a fixture

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(
    not LINUX or shutil.which("truncate") is None or shutil.which("cp") is None,
    reason="file leases are Linux-only; the writers are coreutils",
)

BIG = "big/.ATTRIBUTES/VARIABLE_VALUE"  # > 2 MiB: mapped at a 2 MiB boundary (reservation)
SMALL = "small/.ATTRIBUTES/VARIABLE_VALUE"  # < 2 MiB: a plain mmap


def _write(prefix: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    big = rng.standard_normal((12_000, 64)).astype(np.float32) + 10.0  # 2.9 MiB, no zeros
    small = rng.standard_normal((100, 8)).astype(np.float32) + 10.0
    with BundleWriter(prefix, num_shards=2) as w:
        w.add(BIG, big, shard=0)
        w.add(SMALL, small, shard=1)
    return big, small


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait_for(condition: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_truncate_is_refused_reported_and_let_through_by_fence(tmp_path: Path) -> None:
    big, _ = _write(tmp_path / "c")
    shard = data_path(tmp_path / "c", 0, 2)
    reader = BundleReader(tmp_path / "c", lease=True)
    assert reader.protected
    assert reader.unprotected_reason == ""
    np.testing.assert_array_equal(reader.get_tensor(BIG), big)
    assert reader.broken_leases() == []

    cut = subprocess.run(["truncate", "-s", "1000", shard], capture_output=True, text=True)
    assert cut.returncode != 0, "truncate went through a leased shard"
    assert "temporarily unavailable" in cut.stderr
    assert os.path.getsize(shard) == big.nbytes
    assert reader.broken_leases() == [shard]

    reader.fence()
    assert not reader.protected
    assert "fenced" in reader.unprotected_reason
    assert reader.broken_leases() == []
    cut = subprocess.run(["truncate", "-s", "1000", shard], capture_output=True, text=True)
    assert cut.returncode == 0, cut.stderr
    with pytest.raises(CheckpointError, match="fenced"):
        reader.get_tensor(SMALL)
    with pytest.raises(CheckpointError, match="fenced"):
        reader.get_tensor(BIG, copy=True)


def test_cp_onto_a_leased_shard_waits_for_fence(tmp_path: Path) -> None:
    _write(tmp_path / "c")
    shard = data_path(tmp_path / "c", 1, 2)
    (tmp_path / "other").write_bytes(b"x" * 100)
    reader = BundleReader(tmp_path / "c", lease=True)
    reader.get_tensor(SMALL)
    writer = subprocess.Popen(["cp", str(tmp_path / "other"), shard])
    try:
        assert _wait_for(lambda: reader.broken_leases() == [shard]), "no lease break reported"
        time.sleep(0.2)
        assert writer.poll() is None, "cp did not wait for the lease holder"
        assert os.path.getsize(shard) > 100
        reader.fence()
        assert writer.wait(timeout=10) == 0
    finally:
        writer.kill()
        writer.wait()
    assert os.path.getsize(shard) == 100


_CHILD = f"""
import json, signal, subprocess, sys, time
import numpy as np
from embserve.checkpoint import BundleReader
# A lease break must not be signalled: SIGIO (the default) would kill the process, and the
# signal used while the lease is being set up is SIGURG. Count both.
signals = []
for sig in (signal.SIGIO, signal.SIGURG):
    signal.signal(sig, lambda number, frame: signals.append(number))
prefix, shard0, shard1, fence = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
reader = BundleReader(prefix, lease=True)
big = reader.get_tensor({BIG!r})
small = reader.get_tensor({SMALL!r})
before = [float(big.min()), float(small.min())]
writers = [subprocess.Popen(["cp", "/dev/null", s]) for s in (shard0, shard1)]
deadline = time.monotonic() + 20
while len(reader.broken_leases()) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
broken = reader.broken_leases()
if fence:
    reader.fence()
codes = [w.wait(timeout=60) for w in writers]
sizes = [__import__("os").path.getsize(s) for s in (shard0, shard1)]
# The files are now empty: every page of both arrays lies past their end.
after = [float(np.abs(big).sum()), float(np.abs(small).sum())]
report = dict(before=before, broken=broken, codes=codes, sizes=sizes, after=after, signals=signals)
print(json.dumps(report))
"""


def test_fenced_arrays_read_zeros_after_the_files_are_truncated(tmp_path: Path) -> None:
    big, small = _write(tmp_path / "c")
    shards = [data_path(tmp_path / "c", i, 2) for i in range(2)]
    got = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "c"), *shards, "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 0, f"child died (exit {got.returncode}): {got.stderr[-2000:]}"
    result = json.loads(got.stdout)
    assert result["before"] == [float(big.min()), float(small.min())]
    assert result["broken"] == shards
    assert result["codes"] == [0, 0]
    assert result["sizes"] == [0, 0]
    assert result["after"] == [0.0, 0.0]  # zeros, not a SIGBUS
    assert result["signals"] == []  # no SIGIO / SIGURG for the lease breaks


def test_a_shard_open_for_writing_is_busy(tmp_path: Path) -> None:
    _write(tmp_path / "c")
    shard = data_path(tmp_path / "c", 1, 2)
    before = _open_fds()
    with open(shard, "r+b"), pytest.raises(CheckpointBusyError, match=r"c\.data-00001-of-00002"):
        BundleReader(tmp_path / "c", lease=True)
    assert _open_fds() == before  # the descriptors opened so far were closed
    assert issubclass(CheckpointBusyError, CheckpointError)
    reader = BundleReader(tmp_path / "c", lease=True)  # once the writer is gone
    assert reader.protected


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a file owned by another user")
def test_without_lease_permission_the_reader_works_unprotected(public_dir: Path) -> None:
    """Leasing needs the file's owner or CAP_LEASE: here root's files, read as uid 65534."""
    big, _ = _write(public_dir / "c")
    with unprivileged():
        reader = BundleReader(public_dir / "c", lease=True)
        assert not reader.protected
        assert "CAP_LEASE" in reader.unprotected_reason
        assert "c.data-0000" in reader.unprotected_reason
        np.testing.assert_array_equal(reader.get_tensor(BIG), big)
        assert reader.broken_leases() == []
        reader.fence()  # still makes the maps safe
    with pytest.raises(CheckpointError, match="fenced"):
        reader.get_tensor(BIG)


def test_a_reader_without_lease_is_unprotected_and_leaves_writers_alone(tmp_path: Path) -> None:
    _write(tmp_path / "c")
    reader = BundleReader(tmp_path / "c")
    assert not reader.protected
    assert "lease=True" in reader.unprotected_reason
    assert reader.broken_leases() == []
    shard = data_path(tmp_path / "c", 1, 2)
    assert subprocess.run(["truncate", "-s", "8", shard]).returncode == 0


def test_fence_is_idempotent_thread_safe_and_closes_the_descriptors(tmp_path: Path) -> None:
    big, small = _write(tmp_path / "c")
    before = _open_fds()
    reader = BundleReader(tmp_path / "c", lease=True)
    assert _open_fds() == before + 2  # one kept descriptor per shard
    arrays = [reader.get_tensor(BIG), reader.get_tensor(SMALL)]
    np.testing.assert_array_equal(arrays[1], small)
    threads = [threading.Thread(target=reader.fence) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader.fence()
    assert all(not a.any() for a in arrays)  # fenced: zeros, file untouched
    del arrays  # a plain mmap holds a duplicate descriptor of its own while it lives
    assert _open_fds() == before  # the reader (still alive) closed its descriptors
    np.testing.assert_array_equal(BundleReader(tmp_path / "c").get_tensor(BIG), big)


def test_a_dropped_reader_releases_its_leases(tmp_path: Path) -> None:
    _write(tmp_path / "c")
    before = _open_fds()
    reader = BundleReader(tmp_path / "c", lease=True)
    reader.close()  # keeps the leases: arrays handed out may outlive close()
    assert _open_fds() == before + 2
    del reader
    assert _open_fds() == before
    shard = data_path(tmp_path / "c", 1, 2)
    assert subprocess.run(["truncate", "-s", "8", shard]).returncode == 0


def test_fence_skips_mappings_already_released(tmp_path: Path) -> None:
    """A mapping whose arrays are all gone was unmapped; its addresses may be reused by now and
    must not be overwritten."""
    _write(tmp_path / "c")
    reader = BundleReader(tmp_path / "c", lease=True)
    first = reader.get_tensor(BIG)
    old = (first.ctypes.data, first.nbytes)
    del first
    reader.get_tensor(SMALL)
    reader.close()  # the last references: both shards are unmapped
    reused = mmap.mmap(-1, 4 << 20)  # the kernel hands out the hole just left
    reused.write(b"\x01" * len(reused))
    start = np.frombuffer(reused, np.uint8).ctypes.data
    if not (start < old[0] + old[1] and old[0] < start + len(reused)):
        pytest.skip("the kernel did not reuse the unmapped range: nothing to check")
    reader.fence()
    assert np.frombuffer(reused, np.uint8).all()
