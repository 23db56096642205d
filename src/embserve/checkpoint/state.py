"""The ``checkpoint`` state file: which checkpoint in a directory is the latest.

``tf.train.Checkpoint.save``, ``CheckpointManager`` and ``Saver.save`` keep a text-format
``CheckpointState`` named ``checkpoint`` beside the checkpoints (CHECKPOINT_FORMAT.md §1.1)::

    model_checkpoint_path: "ckpt-3"
    all_model_checkpoint_paths: "ckpt-2"
    all_model_checkpoint_paths: "ckpt-3"
    all_model_checkpoint_timestamps: 1795615272.0
    all_model_checkpoint_timestamps: 1795615273.1
    last_preserved_timestamp: 1795615271.9

:func:`latest_checkpoint` follows ``tf.train.latest_checkpoint`` exactly: a missing, unreadable or
unparsable state file gives ``None`` (never an exception), a relative path is joined to the
directory, and the answer is ``None`` unless ``<path>.index`` (or, for ancient V1 checkpoints,
``<path>`` itself) exists. A state file whose ``model_checkpoint_path`` is empty is an error, as
in TensorFlow.

:func:`write_checkpoint_state` stores paths relative to the directory (so the directory can be
moved) and replaces the file atomically, so a reader sees either the old or the new state. Write
it only after the bundle it names is complete: the state file is the commit point.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import text_format

from embserve.checkpoint._files import atomic_write
from embserve.checkpoint._wire import corrupt
from embserve.checkpoint.protos import checkpoint_state_pb2 as pb

__all__ = [
    "STATE_FILENAME",
    "CheckpointState",
    "latest_checkpoint",
    "read_checkpoint_state",
    "write_checkpoint_state",
]

STATE_FILENAME = "checkpoint"


@dataclass(frozen=True)
class CheckpointState:
    """The parsed state file, with relative paths already joined to the directory.

    Attributes:
        model_checkpoint_path: prefix of the newest checkpoint.
        all_model_checkpoint_paths: prefixes of the kept checkpoints, oldest first.
        all_model_checkpoint_timestamps: their save times (seconds since the epoch), parallel
            to ``all_model_checkpoint_paths`` (empty when the writer recorded none).
        last_preserved_timestamp: ``CheckpointManager``'s ``keep_checkpoint_every_n_hours``
            bookkeeping (0.0 when absent).
    """

    model_checkpoint_path: str
    all_model_checkpoint_paths: tuple[str, ...] = ()
    all_model_checkpoint_timestamps: tuple[float, ...] = ()
    last_preserved_timestamp: float = 0.0


def read_checkpoint_state(
    directory: str | os.PathLike[str], filename: str = STATE_FILENAME
) -> CheckpointState | None:
    """Parse ``directory/filename`` like ``tf.train.get_checkpoint_state``.

    Returns:
        The state, or ``None`` when the file is missing, unreadable or not valid text format.

    Raises:
        CorruptCheckpointError: the file parses but names no checkpoint (TensorFlow raises
            ``ValueError`` here too).
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, filename)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        proto = pb.CheckpointState()
        text_format.Merge(text, proto)
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        return None
    if not proto.model_checkpoint_path:
        raise corrupt(path, None, "model_checkpoint_path is empty")

    def resolve(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(directory, p)

    return CheckpointState(
        resolve(proto.model_checkpoint_path),
        tuple(resolve(p) for p in proto.all_model_checkpoint_paths),
        tuple(proto.all_model_checkpoint_timestamps),
        proto.last_preserved_timestamp,
    )


def latest_checkpoint(
    directory: str | os.PathLike[str], filename: str = STATE_FILENAME
) -> str | None:
    """The prefix of the newest checkpoint in ``directory``, or ``None``.

    Same answer as ``tf.train.latest_checkpoint(directory)``.
    """
    state = read_checkpoint_state(directory, filename)
    if state is None:
        return None
    prefix = state.model_checkpoint_path
    if os.path.exists(prefix + ".index") or os.path.isfile(prefix):
        return prefix
    return None


def write_checkpoint_state(
    directory: str | os.PathLike[str],
    model_checkpoint_path: str | os.PathLike[str],
    all_model_checkpoint_paths: Sequence[str | os.PathLike[str]] | None = None,
    all_model_checkpoint_timestamps: Sequence[float] | None = None,
    last_preserved_timestamp: float | None = None,
    *,
    filename: str = STATE_FILENAME,
    relative: bool = True,
) -> str:
    """Atomically write the state file ``directory/filename``.

    Args:
        directory: the checkpoint directory.
        model_checkpoint_path: the newest checkpoint's prefix, absolute or relative to the
            current directory (as one passes it to the bundle writer).
        all_model_checkpoint_paths: kept prefixes, oldest first; the newest is appended when it
            is not already last (as TensorFlow does). Default: just the newest.
        all_model_checkpoint_timestamps: one save time per kept path, or none at all.
        last_preserved_timestamp: recorded when given.
        filename: the state file's name.
        relative: store paths relative to ``directory`` (TF2's behaviour); ``False`` stores
            absolute paths (what ``tf.compat.v1.train.Saver`` does).

    Returns:
        The state file's path.

    Raises:
        ValueError: timestamps given but not one per path.
    """
    directory = os.fspath(directory)
    newest = os.fspath(model_checkpoint_path)
    paths = [os.fspath(p) for p in (all_model_checkpoint_paths or [])]
    if not paths or paths[-1] != newest:
        paths.append(newest)
    stamps = list(all_model_checkpoint_timestamps or [])
    if stamps and len(stamps) != len(paths):
        raise ValueError(f"{len(stamps)} timestamps for {len(paths)} checkpoint paths")

    base = os.path.abspath(directory)

    def store(p: str) -> str:
        full = os.path.abspath(p)
        if not relative:
            return full
        rel = os.path.relpath(full, base)
        outside = rel == os.pardir or rel.startswith(os.pardir + os.sep)
        return full if outside else rel

    proto = pb.CheckpointState(
        model_checkpoint_path=store(newest),
        all_model_checkpoint_paths=[store(p) for p in paths],
        all_model_checkpoint_timestamps=stamps,
    )
    if last_preserved_timestamp is not None:
        proto.last_preserved_timestamp = last_preserved_timestamp
    text = text_format.MessageToString(proto)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, filename)
    atomic_write(path, text.encode("utf-8"), f".tmp{uuid.uuid4().hex}")
    return path
