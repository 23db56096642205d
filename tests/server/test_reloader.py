"""The reloader: layouts, new versions, refused versions, the background thread."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

import embserve as es
from embserve.server.config import ServingConfig, load_config
from embserve.server.metrics import ServerMetrics
from embserve.server.reloader import (
    Reloader,
    SmokeCheckError,
    find_candidate,
    make_loader,
    prefix_in_directory,
    smoke_check,
)
from tests.server._support import (
    TABLES,
    data_file,
    random_tables,
    save_damaged_version,
    save_version,
    write_config,
    write_prefix,
)


def _config(tmp_path: Path, checkpoint: Path | str) -> ServingConfig:
    return load_config(write_config(tmp_path / "serving.toml", checkpoint))


def _users_row(reloader: Reloader, row: int) -> np.ndarray:
    loaded = reloader.current
    assert loaded is not None
    out: np.ndarray = loaded.model({"user": np.array([row])})["user"][0]
    return out


class _CountingLoader:
    """The real loader, counting its calls."""

    def __init__(self, config: ServingConfig) -> None:
        self.real = make_loader(config)
        self.calls: list[str] = []

    def __call__(self, prefix: str) -> Any:
        self.calls.append(prefix)
        return self.real(prefix)


# ---------------------------------------------------------------------------------------------
# Layouts


def test_find_candidate_checkpoint_manager_layout(tmp_path: Path) -> None:
    assert find_candidate(str(tmp_path)) is None
    assert find_candidate(str(tmp_path / "missing")) is None
    save_version(tmp_path, 3, random_tables(1))
    found = find_candidate(str(tmp_path))
    assert found is not None
    assert found.prefix == str(tmp_path / "ckpt-3")
    assert found.version == 3
    assert found == find_candidate(str(tmp_path))  # stable while nothing changes
    save_version(tmp_path, 4, random_tables(2))
    newer = find_candidate(str(tmp_path))
    assert newer is not None
    assert (newer.version, newer.signature != found.signature) == (4, True)


def test_find_candidate_tf_serving_layout(tmp_path: Path) -> None:
    write_prefix(tmp_path / "1" / "ckpt", random_tables(1))  # a single prefix
    save_version(tmp_path / "2", 7, random_tables(2))  # a state file inside
    (tmp_path / "notes").mkdir()  # not a version
    (tmp_path / "10").mkdir()  # being written: no index yet
    found = find_candidate(str(tmp_path))
    assert found is not None
    assert (found.version, found.prefix) == (2, str(tmp_path / "2" / "ckpt-7"))
    write_prefix(tmp_path / "10" / "variables" / "variables", random_tables(3))  # SavedModel
    found = find_candidate(str(tmp_path))
    assert found is not None
    assert (found.version, found.prefix) == (10, str(tmp_path / "10" / "variables" / "variables"))


def test_find_candidate_single_prefix(tmp_path: Path) -> None:
    prefix = write_prefix(tmp_path / "model-12", random_tables(1))
    by_prefix = find_candidate(prefix)
    by_dir = find_candidate(str(tmp_path))
    assert by_prefix is not None
    assert by_dir is not None
    assert by_prefix.prefix == by_dir.prefix == prefix
    assert by_prefix.version == 12
    plain = write_prefix(tmp_path / "other" / "weights", random_tables(1))
    found = find_candidate(plain)
    assert found is not None
    assert found.version is None
    assert prefix_in_directory(str(tmp_path / "other")) == plain
    write_prefix(tmp_path / "other" / "weights2", random_tables(1))
    assert prefix_in_directory(str(tmp_path / "other")) is None  # ambiguous


@pytest.mark.parametrize("kind", ["fifo", "device", "oversized"])
@pytest.mark.parametrize("layout", ["manager", "numbered"])
def test_a_state_file_that_cannot_be_read_is_reported_not_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, layout: str
) -> None:
    """A `checkpoint` state file that is a FIFO, a device or over its cap is refused naming
    the file (CorruptCheckpointError), in the watched directory and in a numbered version
    directory, rather than passed over for another prefix there (or blocking the poll)."""
    from embserve.checkpoint.state import MAX_STATE_BYTES

    directory = tmp_path / "ckpts"
    where = directory if layout == "manager" else directory / "3"
    write_prefix(where / "ckpt-7", random_tables(1))  # a prefix the directory does hold
    state = where / "checkpoint"
    if kind == "fifo":
        os.mkfifo(state)
    elif kind == "device":
        os.symlink("/dev/zero", state)
    else:
        with open(state, "wb") as f:
            f.truncate(MAX_STATE_BYTES + 1)
    with pytest.raises(es.CorruptCheckpointError, match="checkpoint"):
        find_candidate(str(directory))
    if layout == "numbered":
        with pytest.raises(es.CorruptCheckpointError):
            prefix_in_directory(str(where))
    reloader = Reloader(str(directory), make_loader(_config(tmp_path, directory)))
    assert reloader.poll() is None
    assert reloader.current is None
    assert any("CorruptCheckpointError" in r.getMessage() for r in caplog.records)


def test_a_state_file_naming_no_checkpoint_means_none_yet(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_version(directory, 2, random_tables(1))
    for name in ("ckpt-2.index", "ckpt-2.data-00000-of-00001"):
        os.unlink(directory / name)  # the state file names a checkpoint that is gone
    assert find_candidate(str(directory)) is None
    (directory / "checkpoint").write_text("not a checkpoint state")
    assert find_candidate(str(directory)) is None
    (directory / "checkpoint").unlink()
    assert find_candidate(str(directory)) is None


# ---------------------------------------------------------------------------------------------
# Versions


def test_new_state_file_means_a_new_version(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    v1, v2 = random_tables(1), random_tables(2)
    save_version(directory, 1, v1)
    metrics = ServerMetrics()
    loader = _CountingLoader(_config(tmp_path, directory))
    reloader = Reloader(str(directory), loader, metrics=metrics)
    first = reloader.poll()
    assert first is not None
    assert first.version == 1
    assert first.prefix == str(directory / "ckpt-1")
    np.testing.assert_array_equal(_users_row(reloader, 5), v1["users"][5])
    assert reloader.poll() is None  # nothing new
    assert len(loader.calls) == 1
    save_version(directory, 2, v2)
    second = reloader.poll()
    assert second is not None
    assert second.version == 2
    np.testing.assert_array_equal(_users_row(reloader, 5), v2["users"][5])
    # The old version stays usable by whoever still holds it, even with its files gone.
    os.unlink(data_file(first.prefix))
    old = first.model({"user": np.array([5])})["user"][0]
    np.testing.assert_array_equal(old, v1["users"][5])
    assert [(s.version, s.state) for s in reloader.statuses()] == [(2, "AVAILABLE"), (1, "END")]
    assert metrics.version._value.get() == 2


def test_damaged_checkpoint_is_refused_and_not_retried(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    v1 = random_tables(1)
    save_version(directory, 1, v1)
    metrics = ServerMetrics()
    loader = _CountingLoader(_config(tmp_path, directory))
    reloader = Reloader(str(directory), loader, metrics=metrics)
    assert reloader.poll() is not None
    prefix = save_damaged_version(directory, 2, random_tables(2))
    assert reloader.poll() is None
    loaded = reloader.current
    assert loaded is not None
    assert loaded.version == 1
    np.testing.assert_array_equal(_users_row(reloader, 9), v1["users"][9])
    status = reloader.statuses()[0]
    assert (status.version, status.state, status.error_code) == (2, "END", "DATA_LOSS")
    assert "CorruptCheckpointError" in status.error_message
    assert reloader.last_error is not None
    assert "version 2" in reloader.last_error
    assert metrics.reload_failures.labels("corrupt")._value.get() == 1
    calls = len(loader.calls)
    for _ in range(3):
        assert reloader.poll() is None
    assert len(loader.calls) == calls  # not retried while its files are unchanged
    # Fixed in place (files replaced): tried again, and served.
    v2 = random_tables(2)
    write_prefix(prefix, v2)
    fixed = reloader.poll()
    assert fixed is not None
    assert fixed.version == 2
    np.testing.assert_array_equal(_users_row(reloader, 9), v2["users"][9])
    assert reloader.statuses()[0].state == "AVAILABLE"


def test_mismatched_checkpoint_is_refused_with_a_hint(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    metrics = ServerMetrics()
    reloader = Reloader(str(directory), make_loader(_config(tmp_path, directory)), metrics=metrics)
    assert reloader.poll() is not None
    wrong = random_tables(2)
    wrong["users"] = np.zeros((101, 4), dtype=np.float32)  # one row too many
    save_version(directory, 2, wrong)
    assert reloader.poll() is None
    status = reloader.statuses()[0]
    assert (status.version, status.error_code) == (2, "FAILED_PRECONDITION")
    assert "users" in status.error_message
    assert "[101, 4]" in status.error_message
    assert metrics.reload_failures.labels("mismatch")._value.get() == 1


def test_wrong_object_name_lists_what_the_checkpoint_holds(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    config_path = write_config(tmp_path / "serving.toml", directory)
    config_path.write_text(
        config_path.read_text().replace("[model]\n", '[model]\nobject = "emb"\n')
    )
    reloader = Reloader(str(directory), make_loader(load_config(config_path)))
    assert reloader.poll() is None
    message = reloader.statuses()[0].error_message
    assert "'emb'" in message
    assert "embedding tables found in the checkpoint: 'embedding'" in message


def test_tf_serving_numbered_directories(tmp_path: Path) -> None:
    base = tmp_path / "model"
    v1, v2 = random_tables(1), random_tables(2)
    write_prefix(base / "1" / "ckpt", v1)
    reloader = Reloader(str(base), make_loader(_config(tmp_path, base)))
    first = reloader.poll()
    assert first is not None
    assert first.version == 1
    (base / "2").mkdir()  # being written
    assert reloader.poll() is None
    write_prefix(base / "2" / "ckpt", v2)
    second = reloader.poll()
    assert second is not None
    assert second.version == 2
    np.testing.assert_array_equal(_users_row(reloader, 3), v2["users"][3])
    # A broken newest version is refused; the server does not fall back to older ones.
    write_prefix(base / "3" / "ckpt", random_tables(3))
    os.unlink(data_file(str(base / "3" / "ckpt")))
    assert reloader.poll() is None
    assert reloader.statuses()[0].error_code in ("NOT_FOUND", "DATA_LOSS")
    loaded = reloader.current
    assert loaded is not None
    assert loaded.version == 2


def test_refused_loads_do_not_use_up_version_numbers(tmp_path: Path) -> None:
    """An unnumbered prefix replaced in place gets counted versions: the next number after the
    last one *served*, however many rewrites in between were refused (issue 10, item 20)."""
    prefix = tmp_path / "weights"
    write_prefix(prefix, random_tables(1))
    reloader = Reloader(str(prefix), make_loader(_config(tmp_path, prefix)))
    first = reloader.poll()
    assert first is not None
    assert first.version == 1
    for seed in (2, 3):  # two damaged rewrites in a row
        write_prefix(prefix, random_tables(seed))
        with open(data_file(str(prefix)), "r+b") as f:
            f.truncate(64)
        assert reloader.poll() is None
        assert reloader.statuses()[0].version == 2
        assert reloader.statuses()[0].error_code == "DATA_LOSS"
    v4 = random_tables(4)
    write_prefix(prefix, v4)  # replaced in place (temporary files renamed over the old ones)
    fixed = reloader.poll()
    assert fixed is not None
    assert fixed.version == 2
    np.testing.assert_array_equal(_users_row(reloader, 1), v4["users"][1])


def test_background_thread_picks_up_new_versions_and_stops(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    reloader = Reloader(
        str(directory), make_loader(_config(tmp_path, directory)), poll_interval_s=0.02
    )
    reloader.start()
    try:
        loaded = reloader.current
        assert loaded is not None  # start() loads synchronously
        assert loaded.version == 1
        thread = reloader._thread
        assert thread is not None
        assert thread.is_alive()
        save_version(directory, 2, random_tables(2))
        deadline = time.monotonic() + 30
        while (current := reloader.current) is not None and current.version != 2:
            assert time.monotonic() < deadline, "the new version was not picked up"
            time.sleep(0.01)
    finally:
        reloader.stop()
    assert not thread.is_alive()


def test_a_failing_loader_never_kills_the_thread(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    attempts: list[str] = []

    def loader(prefix: str) -> Any:
        attempts.append(prefix)
        raise RuntimeError("bug in a loader")

    metrics = ServerMetrics()
    # No retry of the same files within the test (transient failures are retried with backoff:
    # tests/server/test_reload_safety.py).
    reloader = Reloader(
        str(directory), loader, poll_interval_s=0.02, metrics=metrics, retry_initial_s=3600
    )
    reloader.start()
    try:
        assert reloader.current is None
        assert reloader.statuses()[0].error_code == "UNKNOWN"
        save_version(directory, 2, random_tables(2))
        deadline = time.monotonic() + 30
        while len(attempts) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        thread = reloader._thread
        assert thread is not None
        assert thread.is_alive()
    finally:
        reloader.stop()
    assert metrics.reload_failures.labels("error")._value.get() == 2


# ---------------------------------------------------------------------------------------------
# Smoke check


class _WrongModel:
    """Answers zeros whatever the table holds."""

    def __init__(self, model: es.TPUEmbeddingForServing) -> None:
        self.embedding_tables = model.embedding_tables

    def __call__(self, features: Any, weights: Any = None) -> Any:
        (path, value), *_ = features.items()
        dim = TABLES["users"][1] if path == "user" else 3
        n = len(value) if isinstance(value, np.ndarray) else value.nrows()
        return {path: np.zeros((n, dim), dtype=np.float32)}


def test_smoke_check(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    config = _config(tmp_path, directory)
    model = make_loader(config)(str(directory / "ckpt-1"))
    smoke_check(model, config.features)
    with pytest.raises(SmokeCheckError, match="feature 'user'"):
        smoke_check(cast(Any, _WrongModel(model)), config.features)


class _Recording:
    """The real model, recording what each lookup was sent."""

    def __init__(self, model: es.TPUEmbeddingForServing) -> None:
        self.model = model
        self.embedding_tables = model.embedding_tables
        self.sent: list[tuple[str, str, bool]] = []

    def __call__(self, features: Any, weights: Any = None) -> Any:
        (path, value), *_ = features.items()
        kind = "dense" if isinstance(value, np.ndarray) else type(value).__name__
        self.sent.append((path, kind, weights is not None))
        return self.model(features, weights)


def test_smoke_check_sends_each_feature_what_its_spec_accepts(tmp_path: Path) -> None:
    """Pooled features: dense ids, a bag, a weighted bag; a sequence feature only a bag (it
    takes neither dense ids nor weights); a feature with an output_shape nothing."""
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    shaped = '[[features]]\npath = "shaped"\ntable = "tags"\noutput_shape = [2]\n'
    config = load_config(write_config(tmp_path / "s.toml", directory, extra_features=shaped))
    model = _Recording(make_loader(config)(str(directory / "ckpt-1")))
    smoke_check(cast(Any, model), config.features)
    assert model.sent == [
        ("user", "RaggedTensor", False),
        ("user", "dense", False),
        ("user", "RaggedTensor", True),
        ("hist", "RaggedTensor", False),
        ("hist", "dense", False),
        ("hist", "RaggedTensor", True),
        ("recent", "RaggedTensor", False),
        ("tag", "RaggedTensor", False),
        ("tag", "dense", False),
        ("tag", "RaggedTensor", True),
    ]


def test_huge_pages_option_loads_and_serves_the_same_rows(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    tables = random_tables(1)
    save_version(directory, 1, tables)
    config = load_config(
        write_config(tmp_path / "serving.toml", directory, server="huge_pages = true\n")
    )
    assert config.server.huge_pages
    reloader = Reloader(str(directory), make_loader(config), metrics=ServerMetrics())
    assert reloader.poll() is not None
    np.testing.assert_array_equal(_users_row(reloader, 9), tables["users"][9])


def test_a_nested_object_is_restored_and_every_table_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[model] object names a path below the root (a Keras model holding the embedding): the
    loader restores from it, and the served-table checksums find each table under it."""
    import embserve.server.reloader as reloader_module
    from tests.nested_checkpoints import nest_embedding

    flat = write_prefix(tmp_path / "flat" / "ckpt", random_tables(1))
    prefix = nest_embedding(flat, tmp_path / "nested", ("model", "dense/emb"))
    config_path = write_config(tmp_path / "serving.toml", prefix)
    text = config_path.read_text().replace(
        "[model]\n", '[model]\nobject = ["model", "dense/emb"]\n'
    )
    config_path.write_text(text)
    config = load_config(config_path)
    assert config.object_path == ("model", "dense/emb")
    # Every table goes through the served-table check, as tables over 64 MiB do.
    monkeypatch.setattr(reloader_module, "VERIFY_ON_RESTORE_MAX_BYTES", 0)
    result = make_loader(config).load(prefix)
    assert result.verify is not None
    result.verify(None)
    np.testing.assert_array_equal(
        result.model({"user": np.array([5])})["user"][0], random_tables(1)["users"][5]
    )
    # The same files under the root's "embedding" are not this config's object.
    wrong = load_config(write_config(tmp_path / "flat.toml", prefix))
    with pytest.raises(es.CheckpointMismatchError, match=r"\['model', 'dense/emb'\]"):
        make_loader(wrong).load(prefix)
