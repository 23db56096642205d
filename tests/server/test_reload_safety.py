"""The reloader under hostile conditions (issue 10): stopping during a long load, damaged large
tables, transient failures, temporary files beside a checkpoint, served files changed in place."""

from __future__ import annotations

import collections
import errno
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embserve as es
from embserve.checkpoint import BundleReader, BundleWriter, write_checkpoint_state
from embserve.checkpointing import VERIFY_ON_RESTORE_MAX_BYTES, find_embedding_tables
from embserve.server.config import ServingConfig, load_config
from embserve.server.metrics import ServerMetrics
from embserve.server.reloader import LoadCancelled, Reloader, find_candidate, make_loader
from tests.server._support import (
    ManualClock,
    data_file,
    random_tables,
    save_damaged_version,
    save_version,
    wait_for,
    write_config,
    write_prefix,
)


def _config(tmp_path: Path, checkpoint: Path | str, server: str = "") -> ServingConfig:
    return load_config(write_config(tmp_path / "serving.toml", checkpoint, server=server))


def _counter(metric: Any, **labels: str) -> float:
    child = metric.labels(**labels) if labels else metric
    return float(child._value.get())


# ---------------------------------------------------------------------------------------------
# Item 20: exact shard names; temporary files never look like a new checkpoint


def test_temporary_files_do_not_change_the_signature(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    prefix = save_version(directory, 1, random_tables(1))
    before = find_candidate(str(directory))
    assert before is not None
    # What embserve's and TensorFlow's writers leave beside a prefix while (or after failing)
    # writing it in place: data and index files under temporary names.
    Path(data_file(prefix) + ".tempstate8812345").write_bytes(b"x" * 100)
    Path(prefix + ".index.tempstate8812345").write_bytes(b"y" * 10)
    Path(prefix + ".data-00000-of-00001.tmp").write_bytes(b"z")
    Path(prefix + ".data-00000-of-00002").write_bytes(b"stale shard of another layout")
    after = find_candidate(str(directory))
    assert after is not None
    assert after.signature == before.signature
    # The real shard is part of it: replacing it changes the signature.
    os.utime(data_file(prefix), ns=(1, 1))
    changed = find_candidate(str(directory))
    assert changed is not None
    assert changed.signature != before.signature


def test_a_shard_rewritten_in_place_with_its_size_and_mtime_kept_changes_the_signature(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "ckpts"
    prefix = save_version(directory, 1, random_tables(1))
    before = find_candidate(str(directory))
    assert before is not None
    shard = data_file(prefix)
    st = os.stat(shard)
    time.sleep(0.01)  # a later ctime
    with open(shard, "r+b") as f:  # what rsync --inplace -t does: same size, mtime restored
        f.write(b"\xff")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = find_candidate(str(directory))
    assert after is not None
    assert after.signature != before.signature


def test_the_signature_follows_the_shard_count_of_the_current_index(tmp_path: Path) -> None:
    prefix = str(tmp_path / "weights")
    with BundleWriter(prefix) as w:
        w.add("a", np.zeros(3, dtype=np.float32))
    one = find_candidate(prefix)
    assert one is not None
    assert [part[0] for part in one.signature[2:]] == [data_file(prefix)]
    with BundleWriter(prefix, num_shards=2, overwrite=True) as w:  # rewritten with two shards
        w.add("a", np.zeros(3, dtype=np.float32))
        w.add("b", np.ones(3, dtype=np.float32), shard=1)
    two = find_candidate(prefix)
    assert two is not None
    assert [part[0] for part in two.signature[2:]] == [
        f"{prefix}.data-00000-of-00002",
        f"{prefix}.data-00001-of-00002",
    ]
    os.utime(f"{prefix}.data-00001-of-00002", ns=(1, 1))
    touched = find_candidate(prefix)
    assert touched is not None
    assert touched.signature != two.signature


def test_a_writer_leaving_temporary_files_causes_no_reload(tmp_path: Path) -> None:
    prefix = tmp_path / "weights"
    write_prefix(prefix, random_tables(1))
    calls: list[str] = []
    real = make_loader(_config(tmp_path, prefix))

    def loader(p: str) -> Any:
        calls.append(p)
        return real(p)

    reloader = Reloader(str(prefix), loader)
    first = reloader.poll()
    assert first is not None
    assert first.version == 1
    # A writer overwriting the prefix in place streams into temporary siblings...
    temp = Path(data_file(str(prefix)) + ".tempstate77")
    with open(temp, "wb") as f:
        for _ in range(3):
            f.write(b"\0" * 4096)
            f.flush()
            assert reloader.poll() is None
    # ... and one that crashed leaves them behind for good.
    assert reloader.poll() is None
    assert calls == [str(prefix)]
    loaded = reloader.current
    assert loaded is not None
    assert loaded.version == 1
    assert [s.version for s in reloader.statuses()] == [1]


class _Interleaving(collections.OrderedDict[Any, Any]):
    """The shard-count cache, with another thread's whole ``find_candidate`` run right after
    each operation the test thread makes on it: the worst interleaving two reloaders of one
    process (or a reloader and a direct caller) can meet. The other thread's runs are joined
    for at most 50 ms, so one blocked on a lock the test thread holds does not deadlock it."""

    def __init__(self, others: list[str]) -> None:
        super().__init__()
        self.others = others
        self.owner = threading.get_ident()
        self.armed = False
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def _other_thread_runs(self) -> None:
        if not self.armed or threading.get_ident() != self.owner:
            return
        other = self.others[len(self.threads) % len(self.others)]

        def run() -> None:
            try:
                find_candidate(other)
            except BaseException as exc:  # reported by the test thread
                self.errors.append(exc)

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()
        thread.join(0.05)

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        self._other_thread_runs()
        return found

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self._other_thread_runs()
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        value = super().get(key, default)
        self._other_thread_runs()
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._other_thread_runs()

    def __len__(self) -> int:
        size = super().__len__()
        self._other_thread_runs()
        return size

    def popitem(self, last: bool = True) -> tuple[Any, Any]:
        item = super().popitem(last=last)
        self._other_thread_runs()
        return item


def test_the_shard_count_cache_survives_another_thread_evicting_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shard-count cache is one per process, so two reloaders (or a reloader and a direct
    caller of find_candidate) use it from their own threads. Another thread evicting the entry
    this one has just found must not make this one's poll raise KeyError."""
    from embserve.server import reloader as module

    mine = write_prefix(tmp_path / "mine" / "weights", random_tables(1))
    others = [write_prefix(tmp_path / f"other{i}" / "weights", random_tables(i)) for i in (2, 3)]
    cache = _Interleaving(others)
    monkeypatch.setattr(module, "_shard_counts", cache)
    monkeypatch.setattr(module, "_SHARD_COUNT_CACHE", 1)  # any insertion evicts the rest
    first = find_candidate(mine)  # cached while the other thread stays away
    assert first is not None
    cache.armed = True
    try:
        again = find_candidate(mine)
    finally:
        cache.armed = False
        for thread in cache.threads:
            thread.join()
    assert cache.threads  # the other thread did run in between
    assert cache.errors == []
    assert again == first
    assert [part[0] for part in again.signature[2:]] == [data_file(mine)]


# ---------------------------------------------------------------------------------------------
# Item 19: only corrupt or mismatched checkpoints are remembered; the rest is retried


class _FailingFirst:
    """The real loader, after raising each of ``errors`` once, in order."""

    def __init__(self, config: ServingConfig, errors: list[BaseException]) -> None:
        self.real = make_loader(config)
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, prefix: str) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.real(prefix)


def _transient_errors() -> list[BaseException]:
    errors: list[BaseException] = [
        OSError(errno.EMFILE, "Too many open files"),
        MemoryError(),
    ]
    busy = getattr(es.errors, "CheckpointBusyError", None)
    if busy is not None:
        errors.append(busy("shard is open for writing by another process"))
    return errors


def test_transient_failures_are_retried_with_backoff(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    tables = random_tables(1)
    save_version(directory, 1, tables)
    errors = _transient_errors()
    loader = _FailingFirst(_config(tmp_path, directory), errors)
    metrics = ServerMetrics()
    clock = ManualClock()
    reloader = Reloader(
        str(directory),
        loader,
        metrics=metrics,
        clock=clock,
        retry_initial_s=1.0,
        retry_max_s=60.0,
    )
    delay = 1.0
    for attempt in range(1, len(errors) + 1):
        assert reloader.poll() is None
        assert loader.calls == attempt
        status = reloader.statuses()[0]
        assert (status.version, status.state) == (1, "END")
        assert status.error_code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
        assert f"retrying in {delay:g} s" in status.error_message
        # Not before the backoff has passed...
        clock.now += delay * 0.9
        assert reloader.poll() is None
        assert loader.calls == attempt
        # ... and right after it.
        clock.now += delay * 0.1
        delay *= 2
    loaded = reloader.poll()
    assert loaded is not None
    assert loaded.version == 1
    assert loader.calls == len(errors) + 1
    assert _counter(metrics.reload_failures, reason="io") == 1
    assert _counter(metrics.reload_failures, reason="memory") == 1
    assert reloader.statuses()[0].state == "AVAILABLE"


def test_backoff_doubles_up_to_its_cap_and_resets_when_the_files_change(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    attempts: list[float] = []
    clock = ManualClock()

    def loader(prefix: str) -> Any:
        attempts.append(clock.now)
        raise OSError(errno.EIO, "Input/output error")

    reloader = Reloader(str(directory), loader, clock=clock, retry_initial_s=1.0, retry_max_s=8.0)
    start = clock.now
    for _ in range(400):  # 40 s of polls, every 0.1 s
        reloader.poll()
        clock.now += 0.1
    gaps = np.diff([round(t - start, 1) for t in attempts]).tolist()
    assert gaps[:5] == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0])
    # New files are tried at once, with a fresh backoff.
    save_version(directory, 2, random_tables(2))
    before = len(attempts)
    reloader.poll()
    assert len(attempts) == before + 1


def test_a_loader_bug_is_retried_too(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    clock = ManualClock()
    calls: list[str] = []

    def loader(prefix: str) -> Any:
        calls.append(prefix)
        raise RuntimeError("bug in a loader")

    reloader = Reloader(str(directory), loader, clock=clock, retry_initial_s=1.0)
    assert reloader.poll() is None
    clock.now += 1.0
    assert reloader.poll() is None
    assert len(calls) == 2
    assert reloader.statuses()[0].error_code == "UNKNOWN"


@pytest.mark.parametrize("kind", ["corrupt", "mismatch"])
def test_corrupt_and_mismatched_checkpoints_are_remembered(tmp_path: Path, kind: str) -> None:
    directory = tmp_path / "ckpts"
    if kind == "corrupt":
        save_damaged_version(directory, 1, random_tables(1))
    else:
        wrong = random_tables(1)
        wrong["users"] = np.zeros((7, 4), dtype=np.float32)
        save_version(directory, 1, wrong)
    clock = ManualClock()
    calls: list[str] = []
    real = make_loader(_config(tmp_path, directory))

    def loader(prefix: str) -> Any:
        calls.append(prefix)
        return real(prefix)

    reloader = Reloader(str(directory), loader, clock=clock, retry_initial_s=1.0)
    for _ in range(5):
        assert reloader.poll() is None
        clock.now += 100.0
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# Item 4: stop() returns promptly during a long load, and nothing is half installed

# stop() waits 0.25 s for its threads; a loaded 2-core machine can add a second of scheduling.
# Either way far below the 20 s (or 5 s) load it must not wait for.
STOP_S = 2.0


def test_stop_returns_promptly_while_a_loader_blocks(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    directory.mkdir()
    real = make_loader(_config(tmp_path, directory))
    entered, release = threading.Event(), threading.Event()

    def loader(prefix: str) -> Any:  # a load that ignores the reloader (no progress hook)
        model = real(prefix)
        entered.set()
        release.wait(20)
        return model

    reloader = Reloader(str(directory), loader, poll_interval_s=0.01)
    reloader.start()
    thread = reloader._thread
    assert thread is not None
    save_version(directory, 1, random_tables(1))
    assert entered.wait(30)
    started = time.monotonic()
    reloader.stop()
    assert time.monotonic() - started < STOP_S
    release.set()  # the load finishes after stop(): it must not be installed
    thread.join(30)
    assert not thread.is_alive()
    assert reloader.current is None
    assert all(s.state != "AVAILABLE" for s in reloader.statuses())


def test_stop_cancels_a_load_that_reports_progress(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    directory.mkdir()
    steps: list[int] = []
    cancelled: list[BaseException] = []

    class SlowLoader:
        """Verifies 100 chunks of 50 ms each, reporting progress after every one."""

        def load(self, prefix: str, *, progress: Any = None) -> Any:
            try:
                for i in range(100):
                    time.sleep(0.05)
                    steps.append(i)
                    progress(i + 1, 100)
            except LoadCancelled as exc:
                cancelled.append(exc)
                raise
            raise AssertionError("the load was not cancelled")

        def __call__(self, prefix: str) -> Any:
            raise AssertionError("the reloader must call load() with a progress callback")

    metrics = ServerMetrics()
    reloader = Reloader(str(directory), SlowLoader(), poll_interval_s=0.01, metrics=metrics)
    reloader.start()
    thread = reloader._thread
    assert thread is not None
    save_version(directory, 1, random_tables(1))
    wait_for("two progress reports", lambda: len(steps) >= 2)
    started = time.monotonic()
    before = len(steps)
    reloader.stop()
    assert time.monotonic() - started < STOP_S
    thread.join(30)
    assert not thread.is_alive()  # the load gave up at its next progress report
    assert len(cancelled) == 1
    # The step running when stop() was called (and one that ended just before), no more.
    assert len(steps) <= before + 2
    assert reloader.current is None
    assert all(s.state != "AVAILABLE" for s in reloader.statuses())
    # Cancelling is not a refusal.
    assert _counter(metrics.reload_failures, reason="error") == 0


# ---------------------------------------------------------------------------------------------
# Item 12: tables over 64 MiB are verified before they are served (or right after, reverting)

BIG_ROWS, BIG_DIM = 1_100_000, 16  # 70.4 MB of float32: over the 64 MiB restore-time check


def _big_config(tmp_path: Path, checkpoint: Path, server: str = "") -> ServingConfig:
    text = f"""
[model]
name = "big"
checkpoint = "{checkpoint}"
poll_interval_s = 3600

[[tables]]
name = "big"
vocabulary_size = {BIG_ROWS}
dim = {BIG_DIM}
combiner = "sum"

[[features]]
path = "big"
table = "big"
"""
    if server:
        text += "\n[server]\n" + server
    path = tmp_path / "big.toml"
    path.write_text(text)
    return load_config(path)


@pytest.fixture(scope="module")
def big_table() -> np.ndarray:
    table = np.empty((BIG_ROWS, BIG_DIM), dtype=np.float32)
    table[:] = (np.arange(BIG_ROWS, dtype=np.float32) % 1000)[:, None]
    table[:, 0] += 0.5
    assert table.nbytes > VERIFY_ON_RESTORE_MAX_BYTES
    return table


@pytest.fixture(scope="module")
def big_prefix(tmp_path_factory: pytest.TempPathFactory, big_table: np.ndarray) -> str:
    """One good checkpoint of the big table, written once and hard-linked into each test."""
    directory = tmp_path_factory.mktemp("big")
    cfg = es.TableConfig(BIG_ROWS, BIG_DIM, combiner="sum", name="big")
    cfg.initializer = lambda shape, dtype: big_table
    model = es.TPUEmbeddingForServing({"big": es.FeatureConfig(cfg)}, optimizer=None)
    model.build()
    return es.train.Checkpoint(embedding=model).write(str(directory / "ckpt-0"))


def _publish(directory: Path, version: int, source: str, *, flip: bool) -> str:
    """``<directory>/ckpt-<version>``: a link to ``source``'s files, or a copy with one byte of
    the table's last row flipped; then the state file."""
    directory.mkdir(exist_ok=True)
    prefix = str(directory / f"ckpt-{version}")
    os.link(source + ".index", prefix + ".index")
    if not flip:
        os.link(data_file(source), data_file(prefix))
    else:
        shutil.copyfile(data_file(source), data_file(prefix))
        with BundleReader(source) as reader:
            info = reader.info(find_embedding_tables(reader)[0].key)
        with open(data_file(prefix), "r+b") as f:
            f.seek(info.offset + info.size - 1)  # the high byte of the last float
            byte = f.read(1)[0]
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte ^ 0x40]))
    write_checkpoint_state(directory, prefix)
    return prefix


def _big_row(reloader: Reloader, row: int) -> np.ndarray:
    loaded = reloader.current
    assert loaded is not None
    out: np.ndarray = loaded.model({"big": np.array([row])})["big"][0]
    return out


def test_a_damaged_large_table_is_refused(
    tmp_path: Path, big_prefix: str, big_table: np.ndarray
) -> None:
    directory = tmp_path / "ckpts"
    _publish(directory, 1, big_prefix, flip=False)
    metrics = ServerMetrics()
    reloader = Reloader(
        str(directory), make_loader(_big_config(tmp_path, directory)), metrics=metrics
    )
    first = reloader.poll()
    assert first is not None
    last = BIG_ROWS - 1
    np.testing.assert_array_equal(_big_row(reloader, last), big_table[last])
    _publish(directory, 2, big_prefix, flip=True)
    assert reloader.poll() is None
    loaded = reloader.current
    assert loaded is not None
    assert loaded.version == 1
    np.testing.assert_array_equal(_big_row(reloader, last), big_table[last])
    status = reloader.statuses()[0]
    assert (status.version, status.state, status.error_code) == (2, "END", "DATA_LOSS")
    assert "checksum mismatch" in status.error_message
    assert "ckpt-2.data-00000-of-00001" in status.error_message
    assert _counter(metrics.reload_failures, reason="corrupt") == 1
    assert _counter(metrics.verifications, result="mismatch") == 1
    assert _counter(metrics.verifications, result="ok") == 1
    assert first.verified


def test_the_check_reports_progress_and_can_be_cancelled(tmp_path: Path, big_prefix: str) -> None:
    directory = tmp_path / "ckpts"
    prefix = _publish(directory, 1, big_prefix, flip=False)
    result = make_loader(_big_config(tmp_path, directory)).load(prefix)
    assert result.verify is not None
    assert result.verify_before_serving  # verify_tables defaults to true
    reports: list[tuple[int, int]] = []
    result.verify(lambda done, total: reports.append((done, total)))
    assert len(reports) >= (BIG_ROWS * BIG_DIM * 4) // (4 << 20)  # at least every 4 MiB
    assert reports[-1][0] == reports[-1][1] == BIG_ROWS * BIG_DIM * 4

    def cancel(done: int, total: int) -> None:
        if done > 8 << 20:
            raise LoadCancelled("stopping")

    with pytest.raises(LoadCancelled):
        result.verify(cancel)


def test_background_verification_reverts_a_damaged_version(
    tmp_path: Path,
    big_prefix: str,
    big_table: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = tmp_path / "ckpts"
    _publish(directory, 1, big_prefix, flip=False)
    config = _big_config(tmp_path, directory, server="verify_tables = false\n")
    assert config.server.verify_tables is False
    metrics = ServerMetrics()
    reloader = Reloader(str(directory), make_loader(config), metrics=metrics)
    first = reloader.poll(verify=False)  # swapped in unverified
    assert first is not None
    assert not first.verified
    assert _counter(metrics.verified) == 0
    reloader.verify_pending()
    assert first.verified
    assert _counter(metrics.verified) == 1
    assert _counter(metrics.verifications, result="ok") == 1

    _publish(directory, 2, big_prefix, flip=True)
    second = reloader.poll(verify=False)
    assert second is not None
    assert second.version == 2  # served before its tables are checked...
    last = BIG_ROWS - 1
    assert not np.array_equal(_big_row(reloader, last), big_table[last])
    reloader.verify_pending()  # ... and taken back when the check fails
    loaded = reloader.current
    assert loaded is first
    np.testing.assert_array_equal(_big_row(reloader, last), big_table[last])
    by_version = {s.version: s for s in reloader.statuses()}
    assert (by_version[2].state, by_version[2].error_code) == ("END", "DATA_LOSS")
    assert "checksum mismatch" in by_version[2].error_message
    assert by_version[1].state == "AVAILABLE"
    assert _counter(metrics.verifications, result="mismatch") == 1
    assert _counter(metrics.revocations, reason="corrupt") == 1
    assert _counter(metrics.version) == 1
    assert "checksum mismatch" in caplog.text
    # Remembered: not loaded again while its files are unchanged.
    assert _counter(metrics.loads) == 2
    assert reloader.poll() is None
    assert reloader.current is first
    assert _counter(metrics.loads) == 2


def test_background_verification_of_the_only_version_failing_means_503(
    tmp_path: Path, big_prefix: str
) -> None:
    directory = tmp_path / "ckpts"
    _publish(directory, 1, big_prefix, flip=True)
    config = _big_config(tmp_path, directory, server="verify_tables = false\n")
    metrics = ServerMetrics()
    reloader = Reloader(str(directory), make_loader(config), metrics=metrics)
    reloader.start()  # the first load does not wait for the verification
    try:
        wait_for(
            "the revert",
            lambda: reloader.current is None and reloader.statuses()[0].state == "END",
        )
    finally:
        reloader.stop()
    assert reloader.statuses()[0].error_code == "DATA_LOSS"
    assert reloader.last_error is not None
    assert "checksum mismatch" in reloader.last_error
    assert _counter(metrics.version) == 0
