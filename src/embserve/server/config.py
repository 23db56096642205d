"""The serving config: which model to serve, from where, with which tables and features.

A TOML file, read with the standard library's :mod:`tomllib`::

    [model]
    name = "recommender"          # the model's name in URLs: /v1/models/recommender:predict
    checkpoint = "ckpts"          # a directory to watch, or one checkpoint prefix; relative
                                  # paths are relative to this file's directory
    object = "embedding"          # tf.train.Checkpoint(embedding=...) → "embedding" (default);
                                  # nested: "model/embedding", or ["model", "a/b"] (see below)
    poll_interval_s = 1.0         # how often the directory is checked for a new checkpoint

    [[tables]]
    name = "users"                # the TableConfig's name, as stored in the checkpoint
    vocabulary_size = 1000
    dim = 16
    combiner = "mean"             # sum | mean | sqrtn (default mean)
    # storage = "int8"            # optional: float32 | float16 | bfloat16 | int8 | int4 (below)

    [[features]]
    path = "user"                 # the feature's name in requests and responses
    table = "users"
    max_sequence_length = 0       # > 0: a sequence feature, [max_sequence_length, dim] per example
    # output_shape = [4]          # optional, as FeatureConfig(output_shape=...)
    # validate_weights_and_indices = true

    [limits]                      # all optional
    max_body_bytes = 8388608      # larger request bodies get 413
    max_batch = 4096              # more examples in one request get 400
    max_ids_per_request = 1000000 # more ids in one request (all features) get 400
    max_output_floats = 8388608   # more output floats in one request get 400 (default: one per
                                  # byte of max_body_bytes)
    max_output_floats_in_flight = 16777216  # output floats of all the requests a worker is
                                  # answering; more get 503 (default: 2 x max_output_floats)

    [server]                      # optional
    inline_max_body_bytes = 262144  # predict bodies up to this size are decoded on the event
                                    # loop, larger ones in a codec thread (0: never inline)
    inline_max_output_floats = 32768  # requests whose output floats (and ids x the largest
                                    # dim) stay within this are looked up on the event loop,
                                    # larger ones in a lookup thread (0: never on the loop)
    max_concurrent_lookups = 0    # lookup threads; 0: CPU cores / numba kernel threads
    header_timeout_s = 10.0       # a connection must send a request's headers within this
    body_timeout_s = 20.0         # ... and its whole body within this after the headers (408)
    max_connections = 1000        # open connections per worker process; more are refused (503)
    drain_timeout_s = 25.0        # at shutdown, requests in flight get this long to finish
                                  # (default: body_timeout_s + 5)
    huge_pages = false            # true: move each loaded version's tables onto 2 MiB pages
                                  # before serving it (faster lookups; seconds per GiB to load)
    verify_tables = true          # verify every table's checksum before a version serves
                                  # (false: serve at once, verify in the background afterwards)
    copy_tables = false           # true: restore tables into private memory instead of mapping
                                  # the files (immune to files changed in place; each worker
                                  # then holds its own copy)

**The Python form.** When the model's features are already written as a ``feature_config``
structure in Python, name it instead of listing tables and features, either in the file::

    [model]
    name = "recommender"
    checkpoint = "ckpts"
    feature_config = "my_project.features:FEATURE_CONFIG"

or directly on the command line, with the checkpoint (and optionally the name) as flags::

    embserve serve my_project.features:FEATURE_CONFIG --checkpoint ckpts --model-name rec

``module:attr`` names any nested structure (dicts, lists, tuples, namedtuples) of
``FeatureConfig`` objects, or a function returning one (called once per server process). The
served feature names are the structure's ``tf.nest`` paths joined with ``/``
(``{"user": {"id": ...}}`` serves feature ``user/id``). A table that carries its own optimizer
makes the restore require that optimizer's slots, as ``TPUEmbeddingForServing`` does.

**Where the embedding sits** (``[model] object``): the edge names from the checkpoint's root
to the TPUEmbedding object. ``tf.train.Checkpoint(embedding=emb)`` stores it at ``embedding``
(the default); ``tf.train.Checkpoint(model=keras_model)``, with the layer inside the model, at
``model/layer_with_weights-0`` (or the attribute the model keeps it under). Write the path as
one string with ``/`` between edge names, or as an array of edge names when a name holds a
``/`` itself (``object = ["model", "dense/emb"]``). ``embserve inspect CHECKPOINT`` lists the
embedding objects a checkpoint holds. :attr:`ServingConfig.object_path` holds the path as a
tuple.

**Storage types** (``storage``, embserve's own key; TensorFlow's TableConfig has none). Left out,
a table is served as the checkpoint stores it: float32, or the type of a quantized checkpoint
written by ``embserve quantize`` (:mod:`embserve.quantizing`), served zero-copy from its mapped
rows. ``storage = "int8"`` (or float16, bfloat16, int4) on a float32 checkpoint quantizes the
table when each version loads, block by block into private memory holding the quantized bytes
only (each worker its own copy; the float32 file is read once, its checksum checked over the same
blocks); on a quantized checkpoint it must name the type stored, else the version is refused as
not matching the config. ``storage = "float32"`` insists on a float32 checkpoint. The Python form
sets it in ``[model]``: ``storage = "int8"`` for every table, or ``storage = { users = "int8" }``
per table name.

**Writing configs.** One schema declares every key, in order, with its default and a one-line
comment: ``_MODEL_KEYS``, ``_TABLE_KEYS``, ``_FEATURE_KEYS`` here, and the fields of
:class:`Limits` and :class:`ServerOptions` for their sections. The parser takes the known keys
and the defaults from it, and :func:`to_toml` writes a :class:`ServingConfig` back from it, so
``parse_config(to_toml(config))`` is the same config (as Keras' ``get_config`` /
``from_config``): keys left at a default the parser would give are left out (``defaults=True``
lists them commented out). :func:`serving_config_toml` builds the skeleton ``embserve inspect
--config`` prints as data, validates it with the parser, and renders it with the same writer.

**Errors.** A config that cannot be served fails at start with a
:class:`ServingConfigError` naming the file, the line and the key (``tables[1] ('items').dim``)
and what is wrong; TOML syntax errors carry :mod:`tomllib`'s line and column.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import embserve as es
from embserve.lookup import PARALLEL_MIN_FLOATS, flatten_feature_config
from embserve.storage import STORAGE_TYPES

if TYPE_CHECKING:
    from embserve.checkpointing import FoundTable

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Limits",
    "ServerOptions",
    "ServingConfig",
    "ServingConfigError",
    "flatten_features",
    "load_config",
    "object_value",
    "parse_config",
    "serving_config_toml",
    "to_toml",
]

#: The model name when the Python form is given on the command line without ``--model-name``.
DEFAULT_MODEL_NAME = "default"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_.\-]+")
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_COMBINERS = ("sum", "mean", "sqrtn")
#: drain_timeout_s, when not given, is body_timeout_s plus this (see ServerOptions).
DRAIN_MARGIN_S = 5.0


# ---------------------------------------------------------------------------------------------
# The schema: every key once, read by the parser (known keys, defaults, checks) and the writer
# (order, defaults, the comment beside each key)

#: A key without a default.
_REQUIRED: Any = object()


@dataclass(frozen=True)
class _Key:
    """One key of a config section, as the parser checks it and the writer writes it.

    Attributes:
        name: the TOML key.
        doc: what it means, in one line: the comment the writer puts beside it.
        default: its value when absent (``_REQUIRED``: it must be given; ``None``: optional,
            no value).
        kind: for the generic sections ([limits], [server]): ``"int"``, ``"seconds"`` (a
            number > 0) or ``"bool"``.
        minimum: the least value of an ``"int"`` key.
        always: written even at its default, because the reader should see the choice.
        example: how a commented-out key without a default value is shown.
    """

    name: str
    doc: str
    default: Any = _REQUIRED
    kind: str = ""
    minimum: int = 0
    always: bool = False
    example: str = ""


def _option(default: Any, doc: str, *, minimum: int = 0) -> Any:
    """A field of :class:`Limits` / :class:`ServerOptions`: its default and its key's comment
    (the dataclass is the declaration of its TOML section, see :func:`_keys_of`)."""
    return field(default=default, metadata={"doc": doc, "minimum": minimum})


_MODEL_KEYS = (
    _Key("name", "the model's name in URLs: /v1/models/<name>:predict"),
    _Key("checkpoint", "a directory to watch, or a checkpoint prefix; relative to this file"),
    _Key(
        "object",
        '"embedding" for Checkpoint(embedding=...); nested: "model/embedding"',
        default=("embedding",),
        always=True,
    ),
    _Key("poll_interval_s", "seconds between checks for a new checkpoint", default=1.0),
    _Key(
        "feature_config",
        "instead of [[tables]] and [[features]]: a Python feature_config",
        default=None,
        example='"my_project.features:FEATURE_CONFIG"',
    ),
    _Key(
        "storage",
        "with feature_config: a storage type for every table, or { table = type }",
        default=None,
        example='"int8"',
    ),
)
_TABLE_KEYS = (
    _Key("name", "the TableConfig's name, as stored in the checkpoint"),
    _Key("vocabulary_size", "its rows"),
    _Key("dim", "the width of a row"),
    _Key("combiner", "sum | mean | sqrtn", default="mean", always=True),
    _Key(
        "storage",
        "float32 | float16 | bfloat16 | int8 | int4 (default: as stored)",
        default=None,
        example='"int8"',
    ),
)
_FEATURE_KEYS = (
    _Key("path", "the feature's name in requests and responses"),
    _Key("table", "the [[tables]] name it looks up"),
    _Key(
        "max_sequence_length",
        "0: one vector per example; > 0: a sequence of that many rows",
        default=0,
        always=True,
    ),
    _Key(
        "output_shape",
        "the output's shape without dim (FeatureConfig.output_shape)",
        default=None,
        example="[4]",
    ),
    _Key(
        "validate_weights_and_indices",
        "false: TensorFlow's unchecked sparse path",
        default=True,
    ),
)
_MODEL = {k.name: k for k in _MODEL_KEYS}
_TABLE = {k.name: k for k in _TABLE_KEYS}
_FEATURE = {k.name: k for k in _FEATURE_KEYS}
_SECTION_DOCS = {
    "model": "What to serve, and from where.",
    "tables": "A table (TableConfig): its name in the checkpoint, its rows and its width.",
    "features": "A feature (FeatureConfig) looked up in a table; one per input feature.",
    "limits": "Optional: per-request limits, checked before any work.",
    "server": "Optional: how requests run and versions load.",
}
_SECTIONS = tuple(_SECTION_DOCS)


class ServingConfigError(es.ConfigError):
    """A serving config that cannot be served: names the file, line and key.

    Attributes:
        source: the config file (or ``module:attr`` reference), when known.
        key: the offending key, e.g. ``"tables[1] ('items').dim"``.
        line: its 1-based line in the file, when it could be found.
        problem: what is wrong, without the location.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.source = source
        self.key = key
        self.line = line
        self.problem = problem
        where = "serving config"
        if source:
            where += f" {source}"
        if line is not None:
            where += f", line {line}"
        super().__init__(f"{where}: {key + ': ' if key else ''}{problem}")


@dataclass(frozen=True)
class Limits:
    """Per-request limits; a request beyond one is refused before any lookup.

    Attributes:
        max_body_bytes: larger bodies get 413 (the body is read with this cap, never whole).
        max_batch: more examples (instances, or rows of a column) get 400.
        max_ids_per_request: more ids, summed over the request's features, get 400.
        max_output_floats: more output floats, summed over the request's features, get 400,
            counted from the request's shape before anything is allocated (a feature gives
            ``n × dim`` for ``n`` ids, ``batch × dim`` for one bag per example, ``batch ×
            bags × dim`` for several, ``batch × max_sequence_length × dim`` for a sequence,
            ``prod(output_shape) × dim`` with an output_shape). The other limits do not bound
            it: empty bags cost no ids, so 256 examples, one of them with 20,000 empty bags
            (a 61 KB body), asked for 256 × 20,000 × 64 floats (1.25 GiB) and 1.27 GB of JSON.
            ``0`` (the default) means one float per byte of ``max_body_bytes``: 8 Mi floats
            for the default 8 MiB, i.e. 32 MiB of float32 and about 100 MB of JSON (~12 bytes
            per float) at most per request, which still fits the largest ordinary request, a
            full batch of 4,096 examples × 26 features × 64 dims (6.8 M floats).
        max_output_floats_in_flight: output floats of all the predict requests one worker
            process is answering at once, from the moment a request is decoded until its
            answer has been sent (its output arrays, then its JSON, live that long). A request
            that would take the total beyond it gets 503 with ``Retry-After: 1`` at once,
            before its lookup allocates anything (counted in
            ``embserve_requests_shed_total{reason="output_budget"}``); one request is always
            admitted when none is in flight, so any request within ``max_output_floats``
            can be served. Without it, each of many concurrent requests within the
            per-request limit multiplied it: 1,000 connections × 8 Mi floats. ``0`` (the
            default) means twice ``max_output_floats``: 16 Mi floats, i.e. 64 MiB of float32
            and about 200 MB of JSON per worker.
    """

    max_body_bytes: int = _option(8 << 20, "larger request bodies get 413", minimum=1)
    max_batch: int = _option(4096, "more examples in one request get 400", minimum=1)
    max_ids_per_request: int = _option(
        1_000_000, "more ids in one request (all features) get 400", minimum=1
    )
    max_output_floats: int = _option(
        0,
        "more output floats per request get 400 (default: max_body_bytes)",
        minimum=1,
    )

    max_output_floats_in_flight: int = _option(
        0,
        "output floats of the requests a worker is answering; more get 503 "
        "(default: 2 x max_output_floats)",
        minimum=1,
    )

    def __post_init__(self) -> None:
        if self.max_output_floats == 0:
            object.__setattr__(self, "max_output_floats", self.max_body_bytes)
        if self.max_output_floats_in_flight == 0:
            object.__setattr__(self, "max_output_floats_in_flight", 2 * self.max_output_floats)


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs requests and connections, and loads versions.

    Attributes:
        inline_max_body_bytes: predict bodies up to this size are decoded on the event loop;
            larger ones in one of two codec threads, where parsing megabytes of JSON hands the
            GIL back to the loop every few milliseconds instead of stalling every other
            connection, and takes no lookup thread (0: never on the loop). Where the lookup
            runs is decided by ``inline_max_output_floats``.
        inline_max_output_floats: a decoded request whose output floats, and its ids times
            the largest table dim, both stay within this is looked up on the event loop; a
            larger one in a lookup thread, whose kernels release the GIL and run beside the
            loop (0: never on the loop). Its answer is encoded on the loop (orjson holds the
            GIL wherever it runs) unless it holds more than 262,144 floats: then in a codec
            thread, in pieces, so that the loop runs between them. Small lookups stay on the
            loop because a thread hop costs more than they do. The default, 32,768, is the
            size from which lookups run numba's parallel kernels
            (``embserve.lookup.PARALLEL_MIN_FLOATS``), so the event loop only ever runs serial
            kernels.
        max_concurrent_lookups: how many lookup threads run at once (the rest queue). ``0``:
            the usable CPU cores divided by numba's kernel threads (at least 1), because every
            calling thread starts its own OpenMP team: with anyio's 40 pool threads, 8
            concurrent callers on 2 cores kept 20 OS threads.
        header_timeout_s: a connection that has not sent a complete request head this long
            after it opened (or after the first byte of its next request) is closed; an
            idle keep-alive connection is closed by uvicorn after 5 s.
        body_timeout_s: a request whose body has not fully arrived this long after its head
            gets 408 and its connection is closed. The default, 20 s, lets the largest body
            (8 MiB) arrive at 3.4 Mbit/s. A client that takes none of its answer for this long
            while the server waits to write more is disconnected (its answer's memory is
            freed).
        drain_timeout_s: at shutdown (SIGTERM), requests in flight get this long to finish
            before they are cancelled (rounded up to whole seconds, as uvicorn takes them).
            ``0`` (the default) means ``body_timeout_s`` plus 5 s:
            a request still arriving is cut at ``body_timeout_s`` anyway, and the slowest
            lookup and encoding the limits allow take well under a second.
        max_connections: open connections per worker process; a connection beyond it is
            answered 503 and closed at once. 1,000 keeps well within the usual 1,024 open-file
            limit and its per-connection buffers (up to 64 KiB each before uvicorn pauses
            reading) within ~64 MiB.
        huge_pages: after restoring a version, move its tables onto 2 MiB pages before serving
            it (:func:`embserve.checkpointing.collapse_huge_pages`: faster lookups on large
            tables, seconds per GiB at load time).
        verify_tables: verify every table's checksum before a version serves (about 0.5 s per
            4 GB); ``False`` serves at once and verifies in the background after the swap.
        copy_tables: restore tables into private memory instead of memory-mapping the
            checkpoint files: immune to files changed in place, but each worker process then
            holds its own copy.
    """

    inline_max_body_bytes: int = _option(
        256 << 10, "larger predict bodies are decoded in a codec thread"
    )
    inline_max_output_floats: int = _option(
        PARALLEL_MIN_FLOATS, "larger lookups run in a lookup thread, off the event loop"
    )
    max_concurrent_lookups: int = _option(0, "lookup threads; 0: CPU cores / numba threads")
    header_timeout_s: float = _option(10.0, "a request's head must arrive within this")
    body_timeout_s: float = _option(20.0, "... and its body within this after it (else 408)")
    drain_timeout_s: float = _option(
        0.0, "SIGTERM: requests in flight get this long (body_timeout_s + 5)"
    )
    max_connections: int = _option(
        1000, "open connections per worker process; more get 503", minimum=1
    )
    huge_pages: bool = _option(False, "true: tables onto 2 MiB pages before a version serves")
    verify_tables: bool = _option(
        True, "checksum every table before a version serves (false: after)"
    )
    copy_tables: bool = _option(False, "true: private copies of the tables, not file mappings")

    def __post_init__(self) -> None:
        if self.drain_timeout_s == 0:
            object.__setattr__(self, "drain_timeout_s", self.body_timeout_s + DRAIN_MARGIN_S)


@dataclass(frozen=True)
class ServingConfig:
    """A validated serving config, ready to build models from.

    Attributes:
        name: the served model's name (URLs use it).
        checkpoint: absolute path of the directory to watch, or of one checkpoint prefix.
        feature_config: the structure given to ``TPUEmbeddingForServing`` (a flat dict
            ``path → FeatureConfig`` for the TOML form; the user's structure for the Python
            form). Its ``TableConfig`` objects are shared by every model built from it.
        features: served feature name → ``FeatureConfig``, in ``tf.nest`` order.
        object_path: the edge names from the checkpoint's root to the embedding object:
            ``("embedding",)`` for ``tf.train.Checkpoint(embedding=...)``, ``("model",
            "layer_with_weights-0")`` for a Keras model holding it.
        poll_interval_s: seconds between checks of the checkpoint directory.
        limits: request limits.
        server: how requests are run.
        source: the config file or ``module:attr`` reference this came from.
        feature_config_ref: the ``module:attr`` reference of the Python form (``None`` for
            the TOML form); :func:`to_toml` writes it back.
        storage: table name → the storage type to serve it in (tables not named: as the
            checkpoint stores them); see "Storage types" in the module docstring.
    """

    name: str
    checkpoint: str
    feature_config: Any
    features: Mapping[str, es.FeatureConfig]
    object_path: tuple[str, ...] = _MODEL["object"].default
    poll_interval_s: float = _MODEL["poll_interval_s"].default
    limits: Limits = field(default_factory=Limits)
    server: ServerOptions = field(default_factory=ServerOptions)
    source: str | None = None
    feature_config_ref: str | None = None
    storage: Mapping[str, str] = field(default_factory=dict)

    @property
    def tables(self) -> list[es.TableConfig]:
        """The tables, in order of first use by a feature (each object once)."""
        seen: dict[int, es.TableConfig] = {}
        for cfg in self.features.values():
            seen.setdefault(id(cfg.table), cfg.table)
        return list(seen.values())

    def new_model(self) -> es.TPUEmbeddingForServing:
        """A fresh, unrestored serving object over this config's (shared) TableConfigs."""
        return es.TPUEmbeddingForServing(self.feature_config, optimizer=None)


def _keys_of(cls: type) -> tuple[_Key, ...]:
    """The keys of the TOML section a dataclass declares (its fields, in order, with their
    defaults and comments); the kind follows the default's type."""
    keys = []
    for f in fields(cls):
        kind = {bool: "bool", int: "int", float: "seconds"}[type(f.default)]
        keys.append(_Key(f.name, f.metadata["doc"], f.default, kind, f.metadata["minimum"]))
    return tuple(keys)


_LIMIT_KEYS = _keys_of(Limits)
_SERVER_KEYS = _keys_of(ServerOptions)


# ---------------------------------------------------------------------------------------------
# Locating keys in the TOML text, for messages


class _Lines:
    """Finds the line of a section or key in TOML text (best effort: for messages only)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def _headers(self, section: str, array: bool) -> list[int]:
        name = re.escape(section)
        pattern = (
            re.compile(rf"^\s*\[\[\s*{name}\s*\]\]")
            if array
            else re.compile(rf"^\s*\[\s*{name}\s*\]")
        )
        return [i for i, line in enumerate(self.lines) if pattern.match(line)]

    def find(self, section: str | None, key: str | None, index: int | None = None) -> int | None:
        """1-based line of ``key`` in ``[section]`` (or its ``index``-th ``[[section]]``)."""
        start, stop = 0, len(self.lines)
        if section is not None:
            headers = self._headers(section, index is not None)
            pos = index if index is not None else 0
            if pos >= len(headers):
                return None
            start = headers[pos]
            nxt = next(
                (i for i in range(start + 1, len(self.lines)) if self.lines[i].lstrip()[:1] == "["),
                len(self.lines),
            )
            stop = nxt
            if key is None:
                return start + 1
        if key is None:
            return None
        pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
        for i in range(start, stop):
            if pattern.match(self.lines[i]):
                return i + 1
        if section is not None:
            return start + 1
        headers = self._headers(key, True) or self._headers(key, False)
        return headers[0] + 1 if headers else None


class _Checker:
    """Type and range checks that raise :class:`ServingConfigError` with key and line."""

    def __init__(self, source: str | None, lines: _Lines) -> None:
        self.source = source
        self.lines = lines

    def fail(
        self,
        problem: str,
        section: str | None,
        key: str | None,
        index: int | None = None,
        label: str | None = None,
    ) -> ServingConfigError:
        where = label if label is not None else section
        full_key = f"{where}.{key}" if where and key else (where or key)
        return ServingConfigError(
            problem,
            source=self.source,
            key=full_key,
            line=self.lines.find(section, key, index),
        )

    def unknown_keys(
        self,
        table: Mapping[str, Any],
        known: tuple[str, ...],
        section: str | None,
        index: int | None = None,
        label: str | None = None,
    ) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {list(known)}"
                raise self.fail(f"unknown key{hint}", section, key, index, label)

    def integer(self, value: Any, minimum: int, *where: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(f"must be an integer >= {minimum}, got {value!r}", *where)
        return value

    def seconds(self, value: Any, *where: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value > 0)
        ):
            raise self.fail(f"must be a number > 0 (seconds), got {value!r}", *where)
        return float(value)

    def boolean(self, value: Any, *where: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(f"must be true or false, got {value!r}", *where)
        return value

    def string(self, value: Any, *where: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(f"must be a non-empty string, got {value!r}", *where)
        return value

    def value(self, key: _Key, value: Any, section: str) -> Any:
        """``value`` of a [limits] / [server] key, checked as its kind says."""
        if key.kind == "int":
            return self.integer(value, key.minimum, section, key.name)
        if key.kind == "seconds":
            return self.seconds(value, section, key.name)
        return self.boolean(value, section, key.name)


# ---------------------------------------------------------------------------------------------
# Python form


def _import_ref(ref: str, source: str | None, checker: _Checker | None) -> Any:
    """The object ``module:attr`` names (a function is called once to get the structure)."""

    def fail(problem: str) -> ServingConfigError:
        if checker is not None:
            return checker.fail(problem, "model", "feature_config")
        return ServingConfigError(problem, source=source, key="feature_config")

    if not _REF.match(ref):
        raise fail(f"{ref!r} is not a 'package.module:attribute' reference")
    module_name, _, attr_path = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise fail(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise fail(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if callable(obj) and not isinstance(obj, (es.FeatureConfig, Mapping, list, tuple)):
        try:
            obj = obj()
        except Exception as exc:
            raise fail(f"calling {ref} failed: {type(exc).__name__}: {exc}") from exc
    return obj


def flatten_features(structure: Any) -> dict[str, es.FeatureConfig]:
    """``tf.nest`` path → ``FeatureConfig`` for a nested feature_config structure.

    The serving side of :func:`embserve.lookup.flatten_feature_config` (the one flattening, so
    requests address features exactly as lookups match them): paths join dict keys (visited
    in sorted order), namedtuple field names and list / tuple indices with ``/``. Two leaves
    with one path are refused (a request could reach only one of them).

    Raises:
        ServingConfigError: a leaf is not a ``FeatureConfig``, dict keys cannot be sorted, two
            leaves share a path, the structure holds no feature, or it is a bare
            ``FeatureConfig`` (its path would be empty: wrap it in a dict to name it).
    """
    if isinstance(structure, es.FeatureConfig):
        raise ServingConfigError(
            "the feature_config is a single FeatureConfig, whose path is empty; wrap it in a "
            "dict to give the feature a name, e.g. {'user': feature_config}",
            key="feature_config",
        )
    try:
        out = flatten_feature_config(structure, unique_paths=True)
    except (es.ConfigError, TypeError) as exc:
        raise ServingConfigError(str(exc), key="feature_config") from None
    if not out:
        raise ServingConfigError("the feature_config holds no FeatureConfig", key="feature_config")
    return out


# ---------------------------------------------------------------------------------------------
# Parsing


def _model_section(
    data: Mapping[str, Any], c: _Checker, name: str | None, checkpoint: str | None
) -> dict[str, Any]:
    model = data.get("model")
    if model is None:
        model = {}
        if name is None or checkpoint is None:
            raise c.fail("missing section [model] (with name and checkpoint)", None, "model")
    if not isinstance(model, Mapping):
        raise c.fail("must be a table ([model])", None, "model")
    c.unknown_keys(model, tuple(_MODEL), "model")
    return dict(model)


def _object_path(value: Any, c: _Checker) -> tuple[str, ...]:
    """``[model] object``: one edge name, edge names joined by ``/``, or an array of them."""
    if isinstance(value, str):
        parts = value.split("/")
    elif isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        parts = value
    else:
        raise c.fail(
            'must be an edge name, edge names joined by "/", or an array of edge names (for '
            f"names holding a '/'), got {value!r}",
            "model",
            "object",
        )
    if "" in parts:
        raise c.fail(f"an empty edge name in {value!r}", "model", "object")
    return tuple(parts)


def _build_toml_features(data: Mapping[str, Any], c: _Checker) -> dict[str, es.FeatureConfig]:
    tables_raw = data.get("tables", [])
    features_raw = data.get("features", [])
    if not isinstance(tables_raw, list) or not tables_raw:
        raise c.fail("at least one [[tables]] entry is required", None, "tables")

    tables: dict[str, es.TableConfig] = {}
    for i, t in enumerate(tables_raw):
        label = f"tables[{i}]"
        if not isinstance(t, Mapping):
            raise c.fail("must be a table ([[tables]])", "tables", None, i, label)
        if isinstance(t.get("name"), str):
            label = f"tables[{i}] ({t['name']!r})"
        where: tuple[Any, ...] = ("tables", "name", i, label)
        c.unknown_keys(t, tuple(_TABLE), "tables", i, label)
        for key in ("name", "vocabulary_size", "dim"):
            if key not in t:
                raise c.fail(f"missing required key {key!r}", "tables", None, i, label)
        tname = c.string(t["name"], *where)
        if tname in tables:
            raise c.fail(f"duplicate table name {tname!r}", *where)
        vocab = c.integer(t["vocabulary_size"], 1, "tables", "vocabulary_size", i, label)
        dim = c.integer(t["dim"], 1, "tables", "dim", i, label)
        combiner = t.get("combiner", _TABLE["combiner"].default)
        if combiner not in _COMBINERS:
            raise c.fail(
                f"must be one of {list(_COMBINERS)}, got {combiner!r}",
                "tables",
                "combiner",
                i,
                label,
            )
        if "storage" in t:
            _storage_type(t["storage"], c, "tables", "storage", i, label)
        try:
            tables[tname] = es.TableConfig(vocab, dim, combiner=combiner, name=tname)
        except es.ConfigError as exc:
            raise c.fail(str(exc), "tables", None, i, label) from None

    if not isinstance(features_raw, list) or not features_raw:
        raise c.fail("at least one [[features]] entry is required", None, "features")
    features: dict[str, es.FeatureConfig] = {}
    used: set[str] = set()
    for i, f in enumerate(features_raw):
        label = f"features[{i}]"
        if not isinstance(f, Mapping):
            raise c.fail("must be a table ([[features]])", "features", None, i, label)
        if isinstance(f.get("path"), str):
            label = f"features[{i}] ({f['path']!r})"
        c.unknown_keys(f, tuple(_FEATURE), "features", i, label)
        for key in ("path", "table"):
            if key not in f:
                raise c.fail(f"missing required key {key!r}", "features", None, i, label)
        path = c.string(f["path"], "features", "path", i, label)
        if path in features:
            raise c.fail(f"duplicate feature path {path!r}", "features", "path", i, label)
        tref = c.string(f["table"], "features", "table", i, label)
        if tref not in tables:
            close = difflib.get_close_matches(tref, list(tables), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; tables: {list(tables)}"
            raise c.fail(f"no table named {tref!r}{hint}", "features", "table", i, label)
        seq = c.integer(
            f.get("max_sequence_length", _FEATURE["max_sequence_length"].default),
            0,
            "features",
            "max_sequence_length",
            i,
            label,
        )
        shape = f.get("output_shape", _FEATURE["output_shape"].default)
        if shape is not None and (
            not isinstance(shape, list)
            or not shape
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)
        ):
            raise c.fail(
                f"must be a non-empty list of integers >= 1, got {shape!r}",
                "features",
                "output_shape",
                i,
                label,
            )
        validate = f.get(
            "validate_weights_and_indices", _FEATURE["validate_weights_and_indices"].default
        )
        if not isinstance(validate, bool):
            raise c.fail(
                f"must be true or false, got {validate!r}",
                "features",
                "validate_weights_and_indices",
                i,
                label,
            )
        try:
            features[path] = es.FeatureConfig(
                tables[tref],
                max_sequence_length=seq,
                validate_weights_and_indices=validate,
                output_shape=shape,
                name=path,
            )
        except es.ConfigError as exc:
            raise c.fail(str(exc), "features", None, i, label) from None
        used.add(tref)
    for i, tname in enumerate(tables):
        if tname not in used:
            raise c.fail(
                f"table {tname!r} is used by no feature (a typo in a feature's table?)",
                "tables",
                "name",
                i,
                f"tables[{i}] ({tname!r})",
            )
    return features


def _storage_type(value: Any, c: _Checker, *where: Any) -> str:
    if value not in STORAGE_TYPES:
        raise c.fail(f"must be one of {' | '.join(STORAGE_TYPES)}, got {value!r}", *where)
    return str(value)


def _storage(
    data: Mapping[str, Any], model: Mapping[str, Any], c: _Checker, names: Sequence[str]
) -> dict[str, str]:
    """Table name → storage type: ``[[tables]] storage``, or ``[model] storage`` (the Python
    form: one type for every table, or an inline table naming tables)."""
    out: dict[str, str] = {}
    if "feature_config" not in model:
        if "storage" in model:
            raise c.fail(
                'set storage per table in [[tables]] (storage = "int8"); [model] storage is '
                "for the Python form (feature_config)",
                "model",
                "storage",
            )
        for t in data.get("tables", []):
            if "storage" in t:
                out[str(t["name"])] = str(t["storage"])
        return out
    raw = model.get("storage")
    if raw is None:
        return out
    if isinstance(raw, str):
        return dict.fromkeys(names, _storage_type(raw, c, "model", "storage"))
    if not isinstance(raw, Mapping):
        raise c.fail(
            f"must be a storage type or a table of table name = type, got {raw!r}",
            "model",
            "storage",
        )
    for name, kind in raw.items():
        if name not in names:
            close = difflib.get_close_matches(name, list(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; tables: {list(names)}"
            raise c.fail(f"no table named {name!r}{hint}", "model", "storage")
        out[name] = _storage_type(kind, c, "model", "storage")
    return out


def _options(data: Mapping[str, Any], c: _Checker, section: str, cls: type) -> Any:
    """``[limits]`` / ``[server]``: the keys given, checked as their schema says; absent keys
    take the dataclass defaults (derived ones then follow the keys they derive from)."""
    raw = data.get(section, {})
    if not isinstance(raw, Mapping):
        raise c.fail(f"must be a table ([{section}])", None, section)
    keys = _LIMIT_KEYS if cls is Limits else _SERVER_KEYS
    c.unknown_keys(raw, tuple(k.name for k in keys), section)
    return cls(**{k.name: c.value(k, raw[k.name], section) for k in keys if k.name in raw})


def parse_config(
    text: str,
    *,
    source: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> ServingConfig:
    """Parse and validate a serving config given as TOML text.

    Args:
        text: the TOML.
        source: where it came from, for messages.
        base_dir: relative ``checkpoint`` paths in the file resolve against it (default: the
            current directory).
        checkpoint: overrides ``[model] checkpoint`` (resolved against the current directory).
        name: overrides ``[model] name``.

    Raises:
        ServingConfigError: invalid TOML, or a key missing, unknown, of the wrong type or out
            of range; the message names the key and its line.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ServingConfigError(f"invalid TOML: {exc}", source=source) from None
    return _from_data(
        data,
        _Checker(source, _Lines(text)),
        base_dir=base_dir,
        checkpoint=checkpoint,
        name=name,
    )


def _from_data(
    data: Mapping[str, Any],
    c: _Checker,
    *,
    base_dir: str | os.PathLike[str] | None,
    checkpoint: str | os.PathLike[str] | None,
    name: str | None,
) -> ServingConfig:
    """Validate parsed TOML (or the equivalent dict) into a :class:`ServingConfig`."""
    source = c.source
    for key in data:
        if key not in _SECTIONS:
            c.unknown_keys({key: None}, _SECTIONS, None)
    model = _model_section(data, c, name, os.fspath(checkpoint) if checkpoint else None)

    model_name = name if name is not None else model.get("name")
    if model_name is None:
        raise c.fail("missing required key 'name'", "model", None, None, "model")
    if not isinstance(model_name, str) or not _MODEL_NAME.match(model_name):
        raise c.fail(
            "must be a non-empty string of letters, digits, '_', '.' and '-' (it appears in "
            f"URLs), got {model_name!r}",
            "model",
            "name",
        )
    if checkpoint is not None:
        ckpt_path = os.path.abspath(os.fspath(checkpoint))
    else:
        if "checkpoint" not in model:
            raise c.fail("missing required key 'checkpoint'", "model", None, None, "model")
        raw_ckpt = c.string(model["checkpoint"], "model", "checkpoint")
        base = os.fspath(base_dir) if base_dir is not None else os.getcwd()
        ckpt_path = os.path.abspath(os.path.join(base, os.path.expanduser(raw_ckpt)))
    object_path = (
        _object_path(model["object"], c) if "object" in model else _MODEL["object"].default
    )
    poll = model.get("poll_interval_s", _MODEL["poll_interval_s"].default)
    if (
        isinstance(poll, bool)
        or not isinstance(poll, (int, float))
        or not (math.isfinite(poll) and poll > 0)
    ):
        raise c.fail(f"must be a number > 0, got {poll!r}", "model", "poll_interval_s")

    ref = model.get("feature_config")
    if ref is not None:
        ref = c.string(ref, "model", "feature_config")
        for key in ("tables", "features"):
            if key in data:
                raise c.fail(
                    "give either [model] feature_config or [[tables]] / [[features]], not both",
                    None,
                    key,
                )
        structure = _import_ref(ref, source, c)
        try:
            features = flatten_features(structure)
        except ServingConfigError as exc:
            raise c.fail(exc.problem, "model", "feature_config") from None
        feature_config = structure
    else:
        features = _build_toml_features(data, c)
        feature_config = features

    config = ServingConfig(
        name=model_name,
        checkpoint=ckpt_path,
        feature_config=feature_config,
        features=features,
        object_path=object_path,
        poll_interval_s=float(poll),
        limits=_options(data, c, "limits", Limits),
        server=_options(data, c, "server", ServerOptions),
        source=source,
        feature_config_ref=ref,
    )
    try:
        # Validates the whole structure (duplicate table names, foreign optimizers) and, as
        # TensorFlow does, names unnamed tables table_0, table_1, ... on the shared configs.
        config.new_model()
    except es.ConfigError as exc:
        raise c.fail(
            str(exc), "model" if ref else None, "feature_config" if ref else None
        ) from None
    storage = _storage(data, model, c, [str(t.name) for t in config.tables])
    if storage:
        config = dataclasses.replace(config, storage=storage)
    return config


def load_config(
    spec: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> ServingConfig:
    """Load a serving config from a TOML file, or build one from a ``module:attr`` reference.

    Args:
        spec: a TOML file, or ``package.module:attr`` naming a feature_config structure (then
            ``checkpoint`` is required).
        checkpoint: overrides the file's ``[model] checkpoint``.
        name: overrides the file's ``[model] name`` (default for the Python form:
            :data:`DEFAULT_MODEL_NAME`).

    Raises:
        ServingConfigError: the file is missing or invalid (the message names key and line).
    """
    path = os.fspath(spec)
    if os.path.isfile(path):
        try:
            with open(path, "rb") as f:
                raw = f.read()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ServingConfigError(f"cannot read the file: {exc}", source=path) from None
        return parse_config(
            text,
            source=path,
            base_dir=os.path.dirname(os.path.abspath(path)),
            checkpoint=checkpoint,
            name=name,
        )
    if _REF.match(path) and not os.path.exists(path):
        if checkpoint is None:
            raise ServingConfigError(
                "a Python feature_config reference needs the checkpoint to serve "
                "(--checkpoint PATH)",
                source=path,
            )
        model_name = name if name is not None else DEFAULT_MODEL_NAME
        data = {"model": {"name": model_name, "feature_config": path}}
        return _from_data(
            data, _Checker(path, _Lines("")), base_dir=None, checkpoint=checkpoint, name=None
        )
    raise ServingConfigError(
        "no such file (expected a TOML serving config, or a 'package.module:attr' reference to "
        "a feature_config structure)",
        source=path,
    )


# ---------------------------------------------------------------------------------------------
# Writing: the same schema, the other way


def _toml_string(s: str) -> str:
    """``s`` as a TOML basic string (quotes, backslashes and control characters escaped).

    Raises:
        ServingConfigError: ``s`` holds a lone surrogate (a file name that is not UTF-8, as
            Python decodes it), which no TOML file can hold.
    """
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ServingConfigError(
                f"{s!r} is not valid Unicode (a file name that is not UTF-8?), which a TOML "
                "file cannot hold"
            )
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _model_storage(config: ServingConfig) -> str | dict[str, str] | None:
    """``[model] storage`` of the Python form: one type when every table has it, else the
    mapping (``None`` when no table has one)."""
    if not config.storage:
        return None
    kinds = set(config.storage.values())
    names = [str(t.name) for t in config.tables]
    if len(kinds) == 1 and set(config.storage) == set(names):
        return next(iter(kinds))
    return dict(config.storage)


def _toml_value(value: Any) -> str:
    """A value of the schema (string, integer, float, boolean, a list of them, or a table of
    strings, written inline) in TOML."""
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form; "1e+16" and "5e-324" are TOML floats
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for a {type(value).__name__}")


def object_value(path: Sequence[str]) -> str | list[str]:
    """The ``[model] object`` value of an object path: its edge names joined by ``/``
    (``"model/embedding"``), or their list when an edge name holds a ``/`` (or is empty), which
    joining would change."""
    return "/".join(path) if all(p and "/" not in p for p in path) else list(path)


def _model_name(object_path: tuple[str, ...]) -> str:
    """A model name fit for URLs from an object path: its last edge name with every run of
    other characters made one ``_`` (leading and trailing ``_ . -`` dropped), else ``model``."""
    name = _NOT_IN_NAMES.sub("_", object_path[-1]).strip("_.-")
    return name if _MODEL_NAME.match(name) else "model"


_SAME: Any = object()
#: Comments are aligned after the longest ``key = value`` up to this width, on lines up to
#: ``_LINE_MAX`` characters; a longer line gets its comment on the line above.
_ALIGN_MAX = 36
_LINE_MAX = 99


@dataclass(frozen=True)
class _Notes:
    """What a skeleton adds to the plain rendering of a config.

    Attributes:
        header: comment lines at the top.
        model: comment lines after [model]'s keys.
        tables: table name → comment lines after its [[tables]] entry.
        guessed: ``"section.key"`` whose values are guesses, marked "set it".
        defaults: also write keys at their defaults, commented out, and the optional sections.
    """

    header: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    tables: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    guessed: frozenset[str] = frozenset()
    defaults: bool = False


def _doc(section: str, key: _Key, notes: _Notes) -> str:
    if f"{section}.{key.name}" in notes.guessed:
        return f"{key.doc} (set it)"
    return key.doc


def _key_row(
    section: str, key: _Key, value: Any, notes: _Notes, written: Any = _SAME
) -> tuple[str, str] | None:
    """``(key = value, comment)``: written when required, ``always`` or not at its default;
    commented out at its default when ``notes.defaults``; else ``None``."""
    shown = value if written is _SAME else written
    doc = _doc(section, key, notes)
    if key.default is _REQUIRED or key.always or value != key.default:
        return f"{key.name} = {_toml_value(shown)}", doc
    if not notes.defaults:
        return None
    return f"# {key.name} = {key.example if value is None else _toml_value(shown)}", doc


def _option_rows(section: str, options: Any, notes: _Notes) -> list[tuple[str, str]]:
    """[limits] / [server]: the keys whose values differ from what the parser would derive
    without them (so ``max_output_floats`` equal to ``max_body_bytes`` is left out, as is
    ``drain_timeout_s`` equal to ``body_timeout_s + 5``)."""
    keys = _LIMIT_KEYS if section == "limits" else _SERVER_KEYS
    given: dict[str, Any] = {}
    rows: list[tuple[str, str]] = []
    for key in keys:
        value = getattr(options, key.name)
        if value != getattr(type(options)(**given), key.name):
            given[key.name] = value
            rows.append((f"{key.name} = {_toml_value(value)}", _doc(section, key, notes)))
        elif notes.defaults:
            rows.append((f"# {key.name} = {_toml_value(value)}", _doc(section, key, notes)))
    return rows


def _aligned(rows: Sequence[tuple[str, str] | None]) -> list[str]:
    """``key = value  # comment`` lines, comments aligned within :data:`_ALIGN_MAX` (above
    the key when the line would be longer than :data:`_LINE_MAX`)."""
    kept = [r for r in rows if r is not None]
    fits = [c for c, d in kept if len(c) <= _ALIGN_MAX and len(c) + 4 + len(d) <= _LINE_MAX]
    width = max(map(len, fits), default=0)
    lines: list[str] = []
    for code, doc in kept:
        line = f"{code.ljust(width)}  # {doc}"
        name = code.removeprefix("# ").partition(" =")[0]
        lines += [line] if len(line) <= _LINE_MAX else [f"# {name}: {doc}", code]
    return lines


def _check_writable(config: ServingConfig) -> None:
    """Raise unless [[tables]] and [[features]] can express ``config``'s features."""
    fc = config.feature_config
    if not (isinstance(fc, Mapping) and dict(fc) == dict(config.features)):
        raise ServingConfigError(
            "the feature_config is a Python structure without its 'module:attr' reference "
            "(feature_config_ref), so it cannot be written as TOML",
            source=config.source,
        )
    for path, cfg in config.features.items():
        if cfg.output_shape is not None and None in cfg.output_shape:
            raise ServingConfigError(
                f"feature {path!r} has an output_shape with unknown dimensions "
                f"{cfg.output_shape}, which [[features]] cannot express",
                source=config.source,
            )
    for table in config.tables:
        if not isinstance(table.name, str) or not table.name:
            raise ServingConfigError(
                "a table without a name cannot be written as TOML", source=config.source
            )
        if table.optimizer is not None:
            raise ServingConfigError(
                f"table {table.name!r} has an optimizer, which [[tables]] cannot express (use "
                "the Python form)",
                source=config.source,
            )


def _render(
    config: ServingConfig, *, base_dir: str | os.PathLike[str] | None, notes: _Notes
) -> str:
    python_form = config.feature_config_ref is not None
    if not python_form:
        _check_writable(config)
    checkpoint = config.checkpoint
    if base_dir is not None:
        checkpoint = os.path.relpath(checkpoint, os.path.abspath(base_dir))
        if checkpoint.startswith("~"):  # not the home directory when read back
            checkpoint = os.path.join(".", checkpoint)
    lines = [*notes.header, ""] if notes.header else []
    values: dict[str, Any] = {
        "name": config.name,
        "checkpoint": checkpoint,
        "object": config.object_path,
        "poll_interval_s": config.poll_interval_s,
        "feature_config": config.feature_config_ref,
        "storage": _model_storage(config) if python_form else None,
    }
    rows = [
        _key_row(
            "model",
            key,
            values[key.name],
            notes,
            object_value(config.object_path) if key.name == "object" else _SAME,
        )
        for key in _MODEL_KEYS
    ]
    lines += [f"# {_SECTION_DOCS['model']}", "[model]", *_aligned(rows), *notes.model]
    if not python_form:
        for table in config.tables:
            values = {
                "name": str(table.name),
                "vocabulary_size": int(table.vocabulary_size),
                "dim": int(table.dim),
                "combiner": str(table.combiner),
                "storage": config.storage.get(str(table.name)),
            }
            rows = [_key_row("tables", key, values[key.name], notes) for key in _TABLE_KEYS]
            lines += ["", f"# {_SECTION_DOCS['tables']}", "[[tables]]", *_aligned(rows)]
            lines += notes.tables.get(str(table.name), ())
        for path, cfg in config.features.items():
            shape = cfg.output_shape
            values = {
                "path": path,
                "table": str(cfg.table.name),
                "max_sequence_length": int(cfg.max_sequence_length),
                "output_shape": None if shape is None else list(shape),
                "validate_weights_and_indices": bool(cfg.validate_weights_and_indices),
            }
            rows = [_key_row("features", key, values[key.name], notes) for key in _FEATURE_KEYS]
            lines += ["", f"# {_SECTION_DOCS['features']}", "[[features]]", *_aligned(rows)]
    for section, options in (("limits", config.limits), ("server", config.server)):
        option_rows = _option_rows(section, options, notes)
        if option_rows:
            lines += ["", f"# {_SECTION_DOCS[section]}", f"[{section}]", *_aligned(option_rows)]
    return "\n".join(lines) + "\n"


def to_toml(
    config: ServingConfig,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    defaults: bool = False,
) -> str:
    """``config`` as a TOML serving config: ``parse_config(to_toml(c))`` gives a config equal
    to ``c`` (same name, checkpoint, object path, features, tables, limits and options).

    The writer reads the schema the parser checks against: the same keys in the same order,
    each with its comment, and a key is left out when the parser would give it that value
    anyway (``max_output_floats`` equal to ``max_body_bytes``, say). A config of the Python
    form is written as its ``feature_config`` reference.

    Args:
        config: the config to write.
        base_dir: write ``checkpoint`` relative to this directory (where the file will live,
            since the parser resolves relative paths against the file's directory); default:
            the absolute path.
        defaults: also list the keys at their defaults, commented out, with the optional
            sections, so the file shows every key there is.

    Raises:
        ServingConfigError: the features are a Python structure without a reference, a table
            has an optimizer or no name, or a string is not valid Unicode.
    """
    return _render(config, base_dir=base_dir, notes=_Notes(defaults=defaults))


#: Why a table found in a checkpoint is left out of a skeleton, or ``None``.
def _unservable(table: FoundTable) -> str | None:
    shape = table.shape
    if len(shape) != 2:
        return "not a 2-D table"
    if min(shape) < 1:
        return "an empty table"
    if table.storage is None:
        return f"stored as {table.dtype}, which is no table storage type"
    if table.storage == "float32" and table.dtype != "float32":
        return f"stored as {table.dtype} (served tables are float32)"
    return None


def serving_config_toml(found: Sequence[FoundTable], checkpoint: str) -> str:
    """A skeleton serving config for the tables of the first TPUEmbedding object in ``found``
    (what ``embserve inspect --config`` prints).

    Built as data and validated by the parser (so the server accepts it): the object's path
    (``[model] object``, e.g. ``"model/layer_with_weights-0"`` for a Keras model holding the
    embedding), a model name made from its last edge, one ``[[tables]]`` per table with the
    sizes the checkpoint fixes, and one ``[[features]]`` per table. It is rendered by
    :func:`to_toml`'s writer with every key commented, marking what checkpoints do not store
    (combiners, feature paths, sequence lengths: "set it"); keys at their defaults are shown
    commented out. Other embedding objects, tables that cannot be served (not 2-D, empty, of a
    dtype no storage type uses) and optimizer slots are listed in comments. A quantized
    checkpoint's tables get their ``storage`` key (the type stored).

    Args:
        found: the tables found in the checkpoint (:func:`~embserve.checkpointing.
            find_embedding_tables`), non-empty.
        checkpoint: the path the server should load (prefix, or directory = its latest).

    Raises:
        ServingConfigError: no table of the object can be served, or a name cannot be written.
    """
    objects = list(dict.fromkeys(t.object_path for t in found))
    if not objects:
        raise ServingConfigError("no TPU embedding tables to make a serving config from")
    chosen = tuple(objects[0])
    served = [t for t in found if t.object_path == chosen and _unservable(t) is None]
    skipped = [(t, _unservable(t)) for t in found if t.object_path == chosen and t not in served]
    if not served:
        listed = "; ".join(f"{t.table!r} {list(t.shape)}: {why}" for t, why in skipped)
        raise ServingConfigError(
            f"no table of embedding object {'/'.join(chosen)!r} can be served ({listed})"
        )
    data = {
        "model": {
            "name": _model_name(chosen),
            "checkpoint": checkpoint,
            "object": object_value(chosen),
        },
        "tables": [
            {
                "name": t.table,
                "vocabulary_size": int(t.shape[0]),
                "dim": int(t.shape[1]),
                "combiner": _TABLE["combiner"].default,
                **({} if t.storage in (None, "float32") else {"storage": t.storage}),
            }
            for t in served
        ],
        "features": [
            {
                "path": t.table,
                "table": t.table,
                "max_sequence_length": _FEATURE["max_sequence_length"].default,
            }
            for t in served
        ],
    }
    config = _from_data(
        data,
        _Checker("(embserve inspect --config)", _Lines("")),
        base_dir=None,
        checkpoint=None,
        name=None,
    )
    header = [
        "# embserve serving config, a skeleton made by `embserve inspect --config`.",
        "# vocabulary_size and dim come from the checkpoint; every value marked 'set it' is not",
        "# stored in checkpoints and must come from the model's TableConfig / FeatureConfig.",
        "# Keys commented out show their defaults; embserve/server/config.py explains them all.",
    ]
    if len(objects) > 1:
        others = ", ".join(_toml_value(object_value(tuple(o))) for o in objects[1:])
        header.append(
            f"# The checkpoint holds other embedding objects too, not configured: {others}"
        )
    notes = _Notes(
        header=tuple(header),
        model=tuple(
            f"# Not configured, {why}: {_toml_string(t.table)} {list(t.shape)}"
            for t, why in skipped
        ),
        tables={
            t.table: (
                f"# The checkpoint also holds its optimizer slots ({', '.join(t.slots)}); "
                "not served.",
            )
            for t in served
            if t.slots
        },
        guessed=frozenset({"tables.combiner", "features.path", "features.max_sequence_length"}),
        defaults=True,
    )
    return _render(config, base_dir=None, notes=notes)
