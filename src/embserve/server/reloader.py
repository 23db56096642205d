"""Hot reload: watch the checkpoint location, restore new versions off the request path, swap.

**Layouts.** The watched path (``[model] checkpoint``) is one of:

* a **CheckpointManager directory**: a ``checkpoint`` state file names the newest prefix (as
  ``tf.train.CheckpointManager`` and ``tf.train.Checkpoint.save`` write it). The version is the
  prefix's trailing number (``ckpt-12`` → 12), or, without one, the next number after the
  highest version seen;
* a **TF Serving base directory**: numbered subdirectories ``<dir>/<N>/``, each holding one
  checkpoint (a ``checkpoint`` state file, a SavedModel's ``variables/variables`` prefix, or a
  single ``*.index`` prefix). The highest ``N`` that holds a complete checkpoint is the
  candidate; its version is ``N``. A subdirectory without an index yet is still being written
  and is skipped;
* a **single prefix** (or a directory holding exactly one ``*.index``): served as is, reloaded
  when its files are replaced.

**Polling.** Every ``poll_interval_s`` a background thread finds the candidate and compares its
*signature* (the prefix and the inode, size and mtime of its ``.index`` and data files) with
the served one's. A new signature is restored into a **new** ``TPUEmbeddingForServing`` by the
loader (see :func:`make_loader`: restore, then a smoke lookup of id 0 through every feature),
and swapped in by one reference assignment of an immutable :class:`LoadedVersion`. Requests
read :attr:`Reloader.current` once when they start, so a request in flight finishes on the
version it started with; the old version's memory maps are released when its last request
drops the reference.

**Refusals.** A checkpoint that fails to restore or validate (damaged files, tables missing
or shaped differently, a failed smoke lookup) is refused: logged, counted
(``embserve_model_reload_failures_total``), reported by ``GET /v1/models/{name}`` with its
error, and the served version stays. Its signature is remembered, so it is not retried until
its files change. Only the newest candidate is ever tried (TF Serving's "latest" policy): a
refused newest checkpoint does not make the server fall back to an older one.
"""

from __future__ import annotations

import collections
import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

import embserve as es
from embserve.checkpoint import BundleReader
from embserve.checkpointing import collapse_huge_pages, find_embedding_tables

if TYPE_CHECKING:
    from embserve.server.config import ServingConfig
    from embserve.server.metrics import ServerMetrics

__all__ = [
    "STATE_FILENAME",
    "Candidate",
    "LoadedVersion",
    "Loader",
    "Reloader",
    "SmokeCheckError",
    "VersionStatus",
    "find_candidate",
    "make_loader",
    "prefix_in_directory",
    "smoke_check",
]

_log = logging.getLogger("embserve.server")

#: The state file of the CheckpointManager layout.
STATE_FILENAME = "checkpoint"

#: Loader: checkpoint prefix → a restored, validated serving object (raises to refuse it).
Loader = Callable[[str], es.TPUEmbeddingForServing]

_TRAILING_NUMBER = re.compile(r"-(\d+)$")

# TF Serving's state names (ModelVersionStatus.State) and error codes (tensorflow.error.Code).
AVAILABLE, LOADING, END = "AVAILABLE", "LOADING", "END"


class SmokeCheckError(es.EmbserveError):
    """A restored model failed its smoke lookup (the tables do not answer as stored)."""


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """One served version; immutable, so a request can hold it safely while a swap happens.

    Attributes:
        version: the version number reported to clients.
        model: the restored serving object (read-only memory-mapped tables).
        prefix: the checkpoint prefix it was restored from.
        loaded_at: wall-clock time of the swap (seconds since the epoch).
        load_seconds: time spent restoring and validating it.
        signature: the files' identity when it was found (see :class:`Candidate`).
    """

    version: int
    model: es.TPUEmbeddingForServing
    prefix: str
    loaded_at: float
    load_seconds: float
    signature: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """A version's state as ``GET /v1/models/{name}`` reports it (TF Serving's fields).

    Attributes:
        version: the version number.
        state: ``"AVAILABLE"`` (served), ``"LOADING"`` or ``"END"`` (replaced, or refused).
        error_code: ``"OK"``, or TF Serving's code for why it was refused (``"DATA_LOSS"`` for
            damaged files, ``"FAILED_PRECONDITION"`` for a checkpoint that does not match the
            config, ``"NOT_FOUND"``, ``"INVALID_ARGUMENT"``, ``"UNKNOWN"``).
        error_message: empty, or the refusal's message.
        prefix: the checkpoint prefix.
        at: when this state was reached (seconds since the epoch).
    """

    version: int
    state: str
    error_code: str
    error_message: str
    prefix: str
    at: float


class Candidate(NamedTuple):
    """The checkpoint the watched location currently offers.

    Attributes:
        prefix: its prefix.
        version: the version the layout gives it (``N`` of ``<dir>/<N>/``, the trailing number
            of ``ckpt-N``), or ``None`` to number it after the highest version seen.
        signature: changes whenever the checkpoint's files are replaced.
    """

    prefix: str
    version: int | None
    signature: tuple[Any, ...]


# ---------------------------------------------------------------------------------------------
# Finding the newest checkpoint


def _signature(prefix: str) -> tuple[Any, ...]:
    """The prefix and the (inode, size, mtime) of its index and data files."""
    files = [prefix + ".index", *sorted(glob.glob(glob.escape(prefix) + ".data-*"))]
    parts: list[Any] = [os.path.abspath(prefix)]
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            parts.append((path, None))
        else:
            parts.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(parts)


def _trailing_number(prefix: str) -> int | None:
    match = _TRAILING_NUMBER.search(os.path.basename(prefix))
    return int(match.group(1)) if match else None


def prefix_in_directory(directory: str) -> str | None:
    """The checkpoint a directory holds: its state file's newest prefix, a SavedModel's
    ``variables/variables``, or its only ``*.index`` prefix; ``None`` when there is none (yet).
    """
    if os.path.isfile(os.path.join(directory, STATE_FILENAME)):
        return es.train.latest_checkpoint(directory)
    saved_model = os.path.join(directory, "variables", "variables")
    if os.path.isfile(saved_model + ".index"):
        return saved_model
    indexes = glob.glob(os.path.join(glob.escape(directory), "*.index"))
    if len(indexes) == 1:
        return indexes[0][: -len(".index")]
    return None


def find_candidate(source: str) -> Candidate | None:
    """The newest complete checkpoint at ``source`` (any layout above), or ``None``."""
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, STATE_FILENAME)):
            prefix = es.train.latest_checkpoint(source)
            if prefix is None:
                return None
            return Candidate(prefix, _trailing_number(prefix), _signature(prefix))
        numbered = sorted(
            (
                (int(entry), entry)
                for entry in os.listdir(source)
                if entry.isdigit() and os.path.isdir(os.path.join(source, entry))
            ),
            reverse=True,
        )
        for number, entry in numbered:
            prefix = prefix_in_directory(os.path.join(source, entry))
            if prefix is not None:
                return Candidate(prefix, number, _signature(prefix))
        if numbered:
            return None
        prefix = prefix_in_directory(source)
        if prefix is None:
            return None
        return Candidate(prefix, _trailing_number(prefix), _signature(prefix))
    if os.path.isfile(source + ".index"):
        return Candidate(source, _trailing_number(source), _signature(source))
    return None


# ---------------------------------------------------------------------------------------------
# Loading and validating one version


def smoke_check(model: es.TPUEmbeddingForServing, features: Mapping[str, es.FeatureConfig]) -> None:
    """Look id 0 up through every feature and compare with row 0 of its table.

    Catches what a metadata check cannot (an unreadable mapping, a table the kernels reject)
    and compiles every kernel the features use before the first request does. Features with an
    ``output_shape`` are skipped (their batch is fixed by the shape).

    Raises:
        SmokeCheckError: a lookup answered something other than the stored row.
    """
    tables = model.embedding_tables
    for path, cfg in features.items():
        if cfg.output_shape is not None:
            continue
        row0 = np.asarray(tables[cfg.table][0])
        one = np.zeros(1, dtype=np.int64)
        bag = es.RaggedTensor.from_row_splits(one, np.array([0, 1]), validate=False)
        checks: list[tuple[str, Any, np.ndarray]] = []
        if cfg.max_sequence_length > 0:
            got = model({path: bag})[path]
            expected = np.zeros((1, cfg.max_sequence_length, row0.shape[0]), dtype=row0.dtype)
            expected[0, 0] = row0
            checks.append(("sequence", got, expected))
        else:
            checks.append(("dense", model({path: one})[path], row0[None]))
            checks.append(("bag", model({path: bag})[path], row0[None]))
            weights = es.RaggedTensor.from_row_splits(
                np.ones(1, dtype=np.float32), np.array([0, 1]), validate=False
            )
            got = model({path: bag}, weights={path: weights})[path]
            checks.append(("weighted bag", got, row0[None]))
        for kind, got, expected in checks:
            if got.shape != expected.shape or not np.allclose(got, expected, equal_nan=True):
                raise SmokeCheckError(
                    f"smoke lookup of id 0 through feature {path!r} ({kind}) returned "
                    f"{np.asarray(got).ravel()[:4].tolist()}..., but row 0 of table "
                    f"{cfg.table.name!r} holds {row0.ravel()[:4].tolist()}..."
                )


def _where_embeddings_are(prefix: str) -> str:
    """A hint naming the embedding objects a checkpoint does hold (for mismatch messages)."""
    try:
        reader = BundleReader(prefix)
        try:
            found = find_embedding_tables(reader)
        finally:
            reader.close()
    except (es.CheckpointError, OSError):
        return ""
    if not found:
        return "; the checkpoint holds no TPU embedding tables"
    objects: dict[str, list[str]] = {}
    for t in found:
        objects.setdefault("/".join(t.object_path), []).append(f"{t.table} {list(t.shape)}")
    listed = "; ".join(f"{obj!r}: {', '.join(tables)}" for obj, tables in objects.items())
    return f"; embedding tables found in the checkpoint: {listed}"


def make_loader(config: ServingConfig) -> Loader:
    """The default loader: a new serving object from ``config``, restored from the prefix with
    ``es.train.Checkpoint(<object>=model).restore``, then :func:`smoke_check` ed."""

    def load(prefix: str) -> es.TPUEmbeddingForServing:
        model = config.new_model()
        try:
            es.train.Checkpoint(**{config.object_name: model}).restore(prefix)
        except es.CheckpointMismatchError as exc:
            raise es.CheckpointMismatchError(f"{exc}{_where_embeddings_are(prefix)}") from exc
        if config.server.huge_pages:
            start = time.perf_counter()
            moved = collapse_huge_pages(model)
            _log.info(
                "%s: %.2f GiB of tables moved to 2 MiB pages in %.1f s",
                prefix,
                moved / 2**30,
                time.perf_counter() - start,
            )
        smoke_check(model, config.features)
        return model

    return load


def _classify(exc: BaseException) -> tuple[str, str]:
    """(metrics reason, TF Serving error code) of a refused load."""
    if isinstance(exc, es.CorruptCheckpointError):
        return "corrupt", "DATA_LOSS"
    if isinstance(exc, es.CheckpointMismatchError):
        return "mismatch", "FAILED_PRECONDITION"
    if isinstance(exc, (es.CheckpointNotFoundError, FileNotFoundError)):
        return "not_found", "NOT_FOUND"
    if isinstance(exc, (es.EmbserveError, ValueError)):
        return "invalid", "INVALID_ARGUMENT"
    return "error", "UNKNOWN"


# ---------------------------------------------------------------------------------------------
# The reloader


class Reloader:
    """Serves the newest good checkpoint at ``source``; see the module docstring.

    Args:
        source: the watched directory or prefix.
        loader: prefix → restored and validated model; an exception refuses the checkpoint.
        poll_interval_s: seconds between checks.
        metrics: where loads and refusals are counted (optional).
        keep: how many versions' statuses ``GET /v1/models/{name}`` reports.
        name: the model's name, for log lines.
    """

    def __init__(
        self,
        source: str,
        loader: Loader,
        *,
        poll_interval_s: float = 1.0,
        metrics: ServerMetrics | None = None,
        keep: int = 8,
        name: str = "",
    ) -> None:
        self.source = source
        self.poll_interval_s = poll_interval_s
        self._loader = loader
        self._metrics = metrics
        self._keep = keep
        self._name = name
        self._current: LoadedVersion | None = None
        self._loading: VersionStatus | None = None
        self._history: collections.OrderedDict[int, VersionStatus] = collections.OrderedDict()
        self._failed: collections.OrderedDict[tuple[Any, ...], None] = collections.OrderedDict()
        self._last_error: str | None = None
        self._highest = 0
        self._lock = threading.Lock()  # guards the status bookkeeping, not the swap
        self._poll_lock = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nothing_logged = False

    # -- what requests read ---------------------------------------------------------------------

    @property
    def current(self) -> LoadedVersion | None:
        """The served version (``None`` before the first successful load). Read it once per
        request: a reload replaces the reference, never the object."""
        return self._current

    @property
    def last_error(self) -> str | None:
        """The message of the latest refused load, or ``None``."""
        return self._last_error

    def statuses(self) -> list[VersionStatus]:
        """The last few versions, newest first (a version being loaded comes first)."""
        with self._lock:
            out = list(reversed(self._history.values()))
            if self._loading is not None:
                out = [s for s in out if s.version != self._loading.version]
                out.insert(0, self._loading)
        return out

    # -- polling --------------------------------------------------------------------------------

    def poll(self) -> LoadedVersion | None:
        """Check ``source`` once; restore and swap in a new checkpoint if there is one.

        Returns:
            The newly served version, or ``None`` (nothing new, not ready, or refused).
        """
        with self._poll_lock:
            try:
                candidate = find_candidate(self.source)
            except OSError as exc:
                _log.warning("model %r: cannot read %r: %s", self._name, self.source, exc)
                return None
            if candidate is None:
                if not self._nothing_logged and self._current is None:
                    _log.info("model %r: no checkpoint at %r yet", self._name, self.source)
                    self._nothing_logged = True
                return None
            current = self._current
            if current is not None and current.signature == candidate.signature:
                return None
            if candidate.signature in self._failed:
                return None
            return self._load(candidate)

    def _load(self, candidate: Candidate) -> LoadedVersion | None:
        version = candidate.version if candidate.version is not None else self._highest + 1
        self._highest = max(self._highest, version)
        with self._lock:
            self._loading = VersionStatus(version, LOADING, "OK", "", candidate.prefix, time.time())
        _log.info("model %r: loading version %d from %s", self._name, version, candidate.prefix)
        started = time.perf_counter()
        try:
            model = self._loader(candidate.prefix)
        except Exception as exc:
            reason, code = _classify(exc)
            message = f"{type(exc).__name__}: {exc}"
            if reason == "error":
                _log.exception(
                    "model %r: version %d (%s) refused", self._name, version, candidate.prefix
                )
            else:
                _log.warning(
                    "model %r: version %d (%s) refused, still serving %s: %s",
                    self._name,
                    version,
                    candidate.prefix,
                    "nothing" if self._current is None else f"version {self._current.version}",
                    message,
                )
            self._failed[candidate.signature] = None
            while len(self._failed) > 64:
                self._failed.popitem(last=False)
            self._last_error = f"version {version}: {message}"
            self._record(VersionStatus(version, END, code, message, candidate.prefix, time.time()))
            if self._metrics is not None:
                self._metrics.reload_failed(reason)
            return None
        finally:
            with self._lock:
                self._loading = None
        seconds = time.perf_counter() - started
        loaded = LoadedVersion(
            version, model, candidate.prefix, time.time(), seconds, candidate.signature
        )
        previous = self._current
        self._current = loaded  # the swap: requests that already hold `previous` keep it
        now = time.time()
        if previous is not None and previous.version != version:
            self._record(VersionStatus(previous.version, END, "OK", "", previous.prefix, now))
        self._record(VersionStatus(version, AVAILABLE, "OK", "", candidate.prefix, now))
        if self._metrics is not None:
            self._metrics.version_loaded(version, seconds)
        _log.info(
            "model %r: serving version %d (%s), loaded in %.3f s",
            self._name,
            version,
            candidate.prefix,
            seconds,
        )
        return loaded

    def _record(self, status: VersionStatus) -> None:
        with self._lock:
            self._history.pop(status.version, None)
            self._history[status.version] = status
            while len(self._history) > self._keep:
                self._history.popitem(last=False)

    # -- the background thread ------------------------------------------------------------------

    def start(self) -> None:
        """Load what is there now (synchronously), then poll in a background thread."""
        self._stop.clear()
        self.poll()
        if self.poll_interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="embserve-reloader", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll()
            except Exception:  # never let the watcher die; the next poll tries again
                _log.exception("model %r: reloader poll failed", self._name)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling and wait (up to ``timeout`` s) for a load in progress to finish."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
