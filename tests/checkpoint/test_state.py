"""The ``checkpoint`` state file, with ``tf.train.latest_checkpoint``'s rules (§1.1)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import embserve as es
from embserve.checkpoint import (
    BundleReader,
    BundleWriter,
    latest_checkpoint,
    read_checkpoint_state,
    resolve_checkpoint,
    write_checkpoint_state,
)
from embserve.checkpoint.state import CheckpointState
from embserve.errors import CheckpointNotFoundError, CorruptCheckpointError

from ._data import FIXTURES


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_tensorflow_manager_state() -> None:
    state = read_checkpoint_state(FIXTURES / "manager")
    directory = str(FIXTURES / "manager")
    assert state == CheckpointState(
        os.path.join(directory, "ckpt-3"),
        (os.path.join(directory, "ckpt-2"), os.path.join(directory, "ckpt-3")),
        (1800000002.25, 1800000003.5),
        1799999999.0,
    )


def test_missing_or_unparsable_gives_none(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "no-such-dir") is None
    (tmp_path / "checkpoint").write_text("this is { not text format")
    assert read_checkpoint_state(tmp_path) is None
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint").write_bytes(b"\xff\xfe")
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint").write_text('unknown_field: "x"')
    assert latest_checkpoint(tmp_path) is None
    os.unlink(tmp_path / "checkpoint")
    (tmp_path / "checkpoint").mkdir()  # unreadable as a file
    assert latest_checkpoint(tmp_path) is None


def test_empty_path_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").write_text('all_model_checkpoint_paths: "ckpt-1"\n')
    with pytest.raises(CorruptCheckpointError, match="model_checkpoint_path is empty"):
        latest_checkpoint(tmp_path)


def test_requires_the_index(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n')
    assert latest_checkpoint(tmp_path) is None
    _touch(tmp_path / "ckpt-2.index")
    assert latest_checkpoint(tmp_path) == os.path.join(tmp_path, "ckpt-2")
    # An ancient V1 checkpoint is a single file named by the prefix.
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "v1-ckpt"\n')
    _touch(tmp_path / "v1-ckpt")
    assert latest_checkpoint(tmp_path) == os.path.join(tmp_path, "v1-ckpt")


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "model.ckpt-7"
    _touch(Path(str(other) + ".index"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "checkpoint").write_text(f'model_checkpoint_path: "{other}"\n')
    assert latest_checkpoint(tmp_path / "d") == str(other)


def test_repeated_fields_merge_like_tensorflow(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "a"\nmodel_checkpoint_path: "b"\n')
    _touch(tmp_path / "b.index")
    assert latest_checkpoint(tmp_path) == os.path.join(tmp_path, "b")


def test_write_relative_and_atomic(tmp_path: Path) -> None:
    d = tmp_path / "ckpts"
    p1, p2 = d / "ckpt-1", d / "ckpt-2"
    _touch(Path(str(p2) + ".index"))
    path = write_checkpoint_state(d, p2, [p1], [10.0, 11.5], last_preserved_timestamp=9.0)
    text = Path(path).read_text()
    assert text == (
        'model_checkpoint_path: "ckpt-2"\n'
        'all_model_checkpoint_paths: "ckpt-1"\n'
        'all_model_checkpoint_paths: "ckpt-2"\n'
        "all_model_checkpoint_timestamps: 10.0\n"
        "all_model_checkpoint_timestamps: 11.5\n"
        "last_preserved_timestamp: 9.0\n"
    )
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-2.index"]  # no temp file left
    # The directory can move: paths are relative.
    moved = tmp_path / "moved"
    os.rename(d, moved)
    assert latest_checkpoint(moved) == os.path.join(moved, "ckpt-2")
    state = read_checkpoint_state(moved)
    assert state is not None
    assert state.all_model_checkpoint_paths[0] == os.path.join(moved, "ckpt-1")


def test_write_options(tmp_path: Path) -> None:
    write_checkpoint_state(tmp_path, tmp_path / "ckpt-1", relative=False)
    state = read_checkpoint_state(tmp_path)
    assert state is not None
    assert state.model_checkpoint_path == str(tmp_path / "ckpt-1")
    assert state.all_model_checkpoint_paths == (str(tmp_path / "ckpt-1"),)
    # A checkpoint outside the directory cannot be relative: stored absolute.
    write_checkpoint_state(tmp_path / "d", tmp_path / "ckpt-9")
    assert b".." not in (tmp_path / "d" / "checkpoint").read_bytes()
    with pytest.raises(ValueError, match="2 timestamps for 1"):
        write_checkpoint_state(tmp_path, tmp_path / "x", all_model_checkpoint_timestamps=[1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# resolve_checkpoint: the one "prefix or directory" rule


def _bundle(prefix: Path) -> None:
    with BundleWriter(prefix) as w:
        w.add("x", np.float32(1))


def test_resolve_a_prefix_or_a_directory(tmp_path: Path) -> None:
    _bundle(tmp_path / "ckpt-1")
    _bundle(tmp_path / "ckpt-2")
    write_checkpoint_state(tmp_path, tmp_path / "ckpt-2")
    assert resolve_checkpoint(tmp_path) == os.path.join(tmp_path, "ckpt-2")
    assert resolve_checkpoint(tmp_path / "ckpt-1") == str(tmp_path / "ckpt-1")
    with pytest.raises(CheckpointNotFoundError, match=r"ckpt-9\.index' does not exist"):
        resolve_checkpoint(tmp_path / "ckpt-9")


def test_resolve_says_why_a_directory_has_no_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"no 'checkpoint' state file$"):
        resolve_checkpoint(tmp_path)
    # Checkpoint.write / Saver(write_state=False) leave prefixes but no state file: name them.
    for i in range(1, 8):
        _bundle(tmp_path / f"ckpt-{i}")
    with pytest.raises(
        CheckpointNotFoundError,
        match=r"holds 7 checkpoint\(s\): ckpt-1, ckpt-2, ckpt-3, ckpt-4, ckpt-5, \.\.\.; "
        r"pass a prefix, e.g. '.*ckpt-7'",
    ):
        resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    with pytest.raises(CheckpointNotFoundError, match=r"names '.*ckpt-9', whose index .* is gone"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoint").write_text("{ not text format")
    with pytest.raises(CheckpointNotFoundError, match="not a text-format CheckpointState"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoint").write_text('all_model_checkpoint_paths: "ckpt-1"\n')
    with pytest.raises(CorruptCheckpointError, match="model_checkpoint_path is empty"):
        resolve_checkpoint(tmp_path)


def test_every_reader_resolves_the_same_way(tmp_path: Path) -> None:
    """BundleReader, es.train's Checkpoint / load_checkpoint / list_variables agree."""
    _bundle(tmp_path / "ckpt-1")
    for open_ in (
        BundleReader,
        es.train.load_checkpoint,
        es.train.list_variables,
        lambda p: es.train.Checkpoint().read(p),
    ):
        with pytest.raises(CheckpointNotFoundError, match=r"holds 1 checkpoint\(s\): ckpt-1"):
            open_(tmp_path)
    write_checkpoint_state(tmp_path, tmp_path / "ckpt-1")
    assert BundleReader(tmp_path).prefix == os.path.join(tmp_path, "ckpt-1")
    assert es.train.load_checkpoint(tmp_path).prefix == os.path.join(tmp_path, "ckpt-1")
