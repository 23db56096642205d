"""The ``checkpoint`` state file: which checkpoint in a directory is the latest.

``tf.train.Checkpoint.save``, ``CheckpointManager`` and ``Saver.save`` keep a text-format
``CheckpointState`` named ``checkpoint`` beside the checkpoints (CHECKPOINT_FORMAT.md §1.1)::

    model_checkpoint_path: "ckpt-3"
    all_model_checkpoint_paths: "ckpt-2"
    all_model_checkpoint_paths: "ckpt-3"
    all_model_checkpoint_timestamps: 1795615272.0
    all_model_checkpoint_timestamps: 1795615273.1
    last_preserved_timestamp: 1795615271.9

:func:`latest_checkpoint` follows ``tf.train.latest_checkpoint``: a missing, unreadable
(permissions, a directory) or unparsable state file gives ``None``, a relative path is joined to
the directory, and the answer is ``None`` unless ``<path>.index`` (or, for ancient V1
checkpoints, ``<path>`` itself) exists. A state file whose ``model_checkpoint_path`` is empty is
an error, as in TensorFlow. Where TensorFlow has no answer, embserve raises
``CorruptCheckpointError`` naming the file rather than returning ``None``: a state file that is a
FIFO (TensorFlow blocks forever), a device such as ``/dev/zero`` (it reads until memory runs out)
or a socket, or one larger than :data:`MAX_STATE_BYTES`. The file is opened without blocking
and checked on the opened descriptor, so none of these can block or allocate.

:func:`resolve_checkpoint` is embserve's one rule for "a prefix, or a directory meaning its
latest checkpoint": it returns the prefix or raises ``CheckpointNotFoundError`` saying why (and
which ``*.index`` prefixes the directory holds when its state file names none of them).

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

from embserve.checkpoint._files import atomic_write, read_regular
from embserve.checkpoint._wire import corrupt
from embserve.checkpoint.protos import checkpoint_state_pb2 as pb
from embserve.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError

__all__ = [
    "MAX_STATE_BYTES",
    "STATE_FILENAME",
    "CheckpointState",
    "latest_checkpoint",
    "read_checkpoint_state",
    "resolve_checkpoint",
    "write_checkpoint_state",
]

STATE_FILENAME = "checkpoint"

#: The largest state file read. Each kept checkpoint costs a path line and a timestamp line,
#: ~70 bytes, so 4 MiB is ~60,000 kept checkpoints (a year of saves every 10 minutes with
#: ``max_to_keep=None``); anything bigger is refused unread rather than parsed for seconds.
MAX_STATE_BYTES = 4 << 20


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


def _load_state(directory: str, filename: str) -> tuple[CheckpointState | None, str]:
    """``(state, "")``, or ``(None, why there is none)`` where TensorFlow answers ``None``."""
    path = os.path.join(directory, filename)
    try:
        raw = read_regular(path, "checkpoint state file", MAX_STATE_BYTES)
    except CheckpointNotFoundError:  # missing, or a directory: TensorFlow's None
        if os.path.isdir(path):
            return None, f"its state file {path!r} is a directory"
        return None, f"it has no {filename!r} state file"
    except CorruptCheckpointError:  # a FIFO, a device, oversized: TF would hang or run out
        raise
    except CheckpointError as exc:  # an OS error (permissions...): TensorFlow's None
        return None, f"its state file cannot be read ({exc})"
    try:
        proto = pb.CheckpointState()
        text_format.Merge(raw.decode("utf-8"), proto)
    except (UnicodeDecodeError, text_format.ParseError) as exc:
        return None, f"its state file {path!r} is not a text-format CheckpointState ({exc})"
    if not proto.model_checkpoint_path:
        raise corrupt(path, None, "model_checkpoint_path is empty")

    def resolve(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(directory, p)

    state = CheckpointState(
        resolve(proto.model_checkpoint_path),
        tuple(resolve(p) for p in proto.all_model_checkpoint_paths),
        tuple(proto.all_model_checkpoint_timestamps),
        proto.last_preserved_timestamp,
    )
    return state, ""


def read_checkpoint_state(
    directory: str | os.PathLike[str], filename: str = STATE_FILENAME
) -> CheckpointState | None:
    """Parse ``directory/filename`` like ``tf.train.get_checkpoint_state``.

    Returns:
        The state, or ``None`` when the file is missing, unreadable (permissions, a directory)
        or not valid text format, as in TensorFlow.

    Raises:
        CorruptCheckpointError: the file parses but names no checkpoint (TensorFlow raises
            ``ValueError`` here too); or it is a FIFO, a device or a socket, or larger than
            :data:`MAX_STATE_BYTES` (where TensorFlow would block or read until memory runs
            out, embserve refuses, naming the file, instead of answering "no checkpoint").
    """
    return _load_state(os.fspath(directory), filename)[0]


def _exists(prefix: str) -> bool:
    return os.path.exists(prefix + ".index") or os.path.isfile(prefix)


def latest_checkpoint(
    directory: str | os.PathLike[str], filename: str = STATE_FILENAME
) -> str | None:
    """The prefix of the newest checkpoint in ``directory``, or ``None``.

    Same answer as ``tf.train.latest_checkpoint(directory)``; raises where
    :func:`read_checkpoint_state` does.
    """
    state = read_checkpoint_state(directory, filename)
    if state is None:
        return None
    prefix = state.model_checkpoint_path
    return prefix if _exists(prefix) else None


def resolve_checkpoint(path: str | os.PathLike[str], *, filename: str = STATE_FILENAME) -> str:
    """The checkpoint prefix ``path`` names: a directory means its latest checkpoint.

    The one rule for "a prefix or a directory" in embserve (``BundleReader``,
    ``es.train.Checkpoint.restore`` / ``load_checkpoint``, ``embserve inspect``, the server):

    * a directory resolves through its state file exactly as ``tf.train.latest_checkpoint``
      does (:func:`latest_checkpoint`);
    * anything else is a prefix ``P``, and ``P.index`` must exist.

    Returns:
        The prefix (a path without ``.index``).

    Raises:
        CheckpointNotFoundError: no checkpoint there. For a directory the message says why (no
            state file, an unreadable or unparsable one, or one naming a checkpoint whose index
            is gone) and, when the directory holds ``*.index`` files all the same (what
            ``tf.train.Checkpoint.write`` and ``Saver(write_state=False)`` leave), it lists
            them and suggests passing one of them as a prefix.
        CorruptCheckpointError: the state file names no checkpoint, or is a FIFO, a device, a
            socket or over :data:`MAX_STATE_BYTES`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        state, why = _load_state(path, filename)
        if state is not None:
            prefix = state.model_checkpoint_path
            if _exists(prefix):
                return prefix
            why = f"its state file names {prefix!r}, whose index {prefix + '.index'!r} is gone"
        raise CheckpointNotFoundError(
            f"no checkpoint found in directory {path!r}: {why}{_hint(path)}"
        )
    if not os.path.exists(path + ".index"):
        raise CheckpointNotFoundError(
            f"no checkpoint at prefix {path!r}: {path + '.index'!r} does not exist"
        )
    return path


def _hint(directory: str) -> str:
    """``"; it holds N checkpoint(s): ...; pass a prefix, e.g. ..."`` or ``""``."""
    try:
        names = os.listdir(directory)
    except OSError:
        return ""
    prefixes = sorted(n[: -len(".index")] for n in names if n.endswith(".index") and n != ".index")
    if not prefixes:
        return ""
    shown = ", ".join(prefixes[:5]) + (", ..." if len(prefixes) > 5 else "")
    return (
        f", but it holds {len(prefixes)} checkpoint(s): {shown}; pass a prefix, e.g. "
        f"{os.path.join(directory, prefixes[-1])!r}"
    )


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
