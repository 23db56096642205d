"""How checkpoint files are opened: regular files only, sizes checked before reading, OS errors
named (issue 10, items 5 and 10).

An index or state file that is a FIFO used to block ``restore`` forever, one linked to
``/dev/zero`` was read until memory ran out, a data file that is a symlink loop raised a bare
``OSError`` and an unreadable file a bare ``PermissionError``. Every case here must raise a
:class:`CheckpointError` naming the file, at once.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embserve.checkpoint import BundleReader, BundleWriter, latest_checkpoint, read_checkpoint_state
from embserve.checkpoint.bundle import data_path, index_path
from embserve.checkpoint.sstable import MAX_INDEX_BYTES, read_table
from embserve.checkpoint.state import MAX_STATE_BYTES
from embserve.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError

from ._data import public_dir, unprivileged

__all__ = ["public_dir"]  # a fixture

KEY = "t/.ATTRIBUTES/VARIABLE_VALUE"


def _write(prefix: Path, value: np.ndarray | None = None) -> np.ndarray:
    value = np.arange(12, dtype=np.float32).reshape(3, 4) if value is None else value
    with BundleWriter(prefix) as w:
        w.add(KEY, value)
    return value


@contextlib.contextmanager
def _fails_if_blocked_on(fifo: Path, seconds: float = 5.0) -> Iterator[None]:
    """Run the block; if it is still running after ``seconds`` (blocked opening or reading the
    FIFO, as the code did before), open and close the FIFO's write end so it returns, and fail.
    """
    done = threading.Event()
    fired = threading.Event()

    def watchdog() -> None:
        if done.wait(seconds):
            return
        fired.set()
        with contextlib.suppress(OSError):  # a reader blocked in open() lets this open succeed
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        assert not fired.is_set(), f"blocked on the FIFO {fifo} for {seconds} s"


# ---------------------------------------------------------------------------------------------
# The index


def test_an_index_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "c.index")
    with (
        _fails_if_blocked_on(tmp_path / "c.index"),
        pytest.raises(CorruptCheckpointError, match=r"c\.index.*not a regular file \(a FIFO\)"),
    ):
        BundleReader(tmp_path / "c")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_index_linked_to_a_device_is_refused(tmp_path: Path, device: str) -> None:
    os.symlink(device, tmp_path / "c.index")
    with pytest.raises(CorruptCheckpointError, match=r"c\.index.*not a regular file"):
        BundleReader(tmp_path / "c")


def test_an_index_over_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.index"
    with open(path, "wb") as f:
        f.truncate(MAX_INDEX_BYTES + 1)  # sparse: costs no disk
    tracemalloc.start()
    try:
        with pytest.raises(CorruptCheckpointError, match=r"c\.index.* limit"):
            read_table(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing of the file was read
    with open(path, "r+b") as f:  # at the cap it is read (and is not a table)
        f.truncate(MAX_INDEX_BYTES)
    with pytest.raises(CorruptCheckpointError, match="bad magic"):
        read_table(path)


def test_an_index_symlink_loop_names_the_file(tmp_path: Path) -> None:
    os.symlink("c.index", tmp_path / "c.index")
    with pytest.raises(CheckpointError, match=r"c\.index") as info:
        read_table(tmp_path / "c.index")
    assert not isinstance(info.value, OSError)


# ---------------------------------------------------------------------------------------------
# Data shards


def test_a_data_shard_symlink_loop_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "c")
    shard = Path(data_path(tmp_path / "c", 0, 1))
    shard.unlink()
    os.symlink(shard.name, shard)
    with pytest.raises(CheckpointError, match=r"c\.data-00000-of-00001") as info:
        BundleReader(tmp_path / "c")
    assert not isinstance(info.value, OSError)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_data_shard_that_is_a_special_file_is_refused(tmp_path: Path, kind: str) -> None:
    _write(tmp_path / "c")
    shard = Path(data_path(tmp_path / "c", 0, 1))
    shard.unlink()
    if kind == "fifo":
        os.mkfifo(shard)
    else:
        os.symlink(kind, shard)
    with (
        _fails_if_blocked_on(shard),
        pytest.raises(CorruptCheckpointError, match=r"c\.data-00000-of-00001.*not a regular"),
    ):
        BundleReader(tmp_path / "c")


@pytest.mark.parametrize("copy", [False, True])
def test_a_fifo_swapped_in_after_open_does_not_block_the_first_read(
    tmp_path: Path, copy: bool
) -> None:
    """Shards are mapped (or read, with copy=True) on first use, after the reader checked them:
    what is at the path then is checked again, on the opened file."""
    _write(tmp_path / "c")
    shard = Path(data_path(tmp_path / "c", 0, 1))
    reader = BundleReader(tmp_path / "c")
    shard.unlink()
    os.mkfifo(shard)
    with (
        _fails_if_blocked_on(shard),
        pytest.raises(CorruptCheckpointError, match=r"c\.data-00000-of-00001.*not a regular"),
    ):
        reader.get_tensor(KEY, copy=copy)


@pytest.mark.parametrize("copy", [False, True])
def test_a_shard_replaced_after_open_is_not_read(tmp_path: Path, copy: bool) -> None:
    """A same-sized file renamed over the shard between open and first use is another file:
    reading it would serve another checkpoint's bytes under this index."""
    _write(tmp_path / "c")
    _write(tmp_path / "d", np.full((3, 4), 7, dtype=np.float32))
    reader = BundleReader(tmp_path / "c")
    os.replace(data_path(tmp_path / "d", 0, 1), data_path(tmp_path / "c", 0, 1))
    with pytest.raises(CorruptCheckpointError, match="replaced since the index was read"):
        reader.get_tensor(KEY, copy=copy, verify=False)


@pytest.mark.parametrize("copy", [False, True])
def test_a_shard_cut_after_open_is_not_mapped_or_read(tmp_path: Path, copy: bool) -> None:
    """Mapping a shard shorter than the index says would fault on the first read past its end."""
    _write(tmp_path / "c")
    reader = BundleReader(tmp_path / "c")
    os.truncate(data_path(tmp_path / "c", 0, 1), 8)
    with pytest.raises(CorruptCheckpointError, match="8 bytes, expected 48"):
        reader.get_tensor(KEY, copy=copy, verify=False)


def test_mapping_failures_name_the_file(tmp_path: Path) -> None:
    """mmap refused (here: address space exhausted by RLIMIT_AS) is a CheckpointError naming the
    shard, not a bare OSError. Run in a child so the limit cannot hurt this process."""
    value = np.zeros((64 << 20) // 4, dtype=np.float32)  # 64 MiB shard
    _write(tmp_path / "c", value)
    code = f"""
import resource, sys
from embserve.checkpoint import BundleReader
from embserve.errors import CheckpointError
reader = BundleReader({str(tmp_path / "c")!r})
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (16 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    reader.get_tensor({KEY!r}, verify=False)
except CheckpointError as exc:
    print(type(exc).__name__, exc)
except BaseException as exc:
    print("UNEXPECTED", type(exc).__name__, exc)
"""
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("CheckpointError "), got.stdout + got.stderr
    assert "c.data-00000-of-00001" in got.stdout


# ---------------------------------------------------------------------------------------------
# Permissions (as root, the checks run as uid 65534)


@pytest.mark.parametrize("unreadable", ["index", "shard"])
def test_permission_errors_name_the_file(public_dir: Path, unreadable: str) -> None:
    _write(public_dir / "c")
    files = {
        "index": Path(index_path(public_dir / "c")),
        "shard": Path(data_path(public_dir / "c", 0, 1)),
    }
    for name, path in files.items():
        path.chmod(0o000 if name == unreadable else 0o644)
    with unprivileged(), pytest.raises(CheckpointError) as info:
        BundleReader(public_dir / "c")
    assert files[unreadable].name in str(info.value)
    assert "ermission denied" in str(info.value)
    assert not isinstance(info.value, OSError)


# ---------------------------------------------------------------------------------------------
# The state file: TensorFlow's None where TensorFlow answers, an error where it would hang


def test_state_file_that_is_a_fifo_raises_instead_of_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "checkpoint")
    with (
        _fails_if_blocked_on(tmp_path / "checkpoint"),
        pytest.raises(CorruptCheckpointError, match=r"checkpoint'.*not a regular file \(a FIFO\)"),
    ):
        latest_checkpoint(tmp_path)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_state_file_linked_to_a_device_raises(tmp_path: Path, device: str) -> None:
    os.symlink(device, tmp_path / "checkpoint")
    with pytest.raises(CorruptCheckpointError, match="not a regular file"):
        read_checkpoint_state(tmp_path)


def test_state_file_over_the_cap_raises_before_it_is_read(tmp_path: Path) -> None:
    with open(tmp_path / "checkpoint", "wb") as f:
        f.truncate(MAX_STATE_BYTES + 1)
    with pytest.raises(CorruptCheckpointError, match="limit"):
        latest_checkpoint(tmp_path)


def test_unreadable_state_file_is_none_as_in_tensorflow(public_dir: Path) -> None:
    (public_dir / "checkpoint").write_text('model_checkpoint_path: "c"\n')
    _write(public_dir / "c")
    assert latest_checkpoint(public_dir) == str(public_dir / "c")
    (public_dir / "checkpoint").chmod(0o000)
    with unprivileged():
        assert latest_checkpoint(public_dir) is None
    assert stat.S_IMODE((public_dir / "checkpoint").stat().st_mode) == 0


def test_missing_state_file_and_missing_index_are_still_not_found(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointNotFoundError):
        read_table(tmp_path / "nope.index")
