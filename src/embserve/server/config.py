"""The serving config: which model to serve, from where, with which tables and features.

A TOML file, read with the standard library's :mod:`tomllib`::

    [model]
    name = "recommender"          # the model's name in URLs: /v1/models/recommender:predict
    checkpoint = "ckpts"          # a directory to watch, or one checkpoint prefix; relative
                                  # paths are relative to this file's directory
    object = "embedding"          # tf.train.Checkpoint(embedding=...) → "embedding" (default)
    poll_interval_s = 1.0         # how often the directory is checked for a new checkpoint

    [[tables]]
    name = "users"                # the TableConfig's name, as stored in the checkpoint
    vocabulary_size = 1000
    dim = 16
    combiner = "mean"             # sum | mean | sqrtn (default mean)

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

    [server]                      # optional
    inline_max_body_bytes = 262144  # predict bodies up to this size are decoded on the event
                                    # loop, larger ones in a lookup thread (0: never inline)
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

**Errors.** A config that cannot be served fails at start with a
:class:`ServingConfigError` naming the file, the line and the key (``tables[1] ('items').dim``)
and what is wrong; TOML syntax errors carry :mod:`tomllib`'s line and column.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import embserve as es
from embserve.lookup import PARALLEL_MIN_FLOATS

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Limits",
    "ServerOptions",
    "ServingConfig",
    "ServingConfigError",
    "flatten_features",
    "load_config",
    "parse_config",
]

#: The model name when the Python form is given on the command line without ``--model-name``.
DEFAULT_MODEL_NAME = "default"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_COMBINERS = ("sum", "mean", "sqrtn")

_SECTIONS = ("model", "tables", "features", "limits", "server")
_MODEL_KEYS = ("name", "checkpoint", "object", "poll_interval_s", "feature_config")
_TABLE_KEYS = ("name", "vocabulary_size", "dim", "combiner")
_FEATURE_KEYS = (
    "path",
    "table",
    "max_sequence_length",
    "output_shape",
    "validate_weights_and_indices",
)
_LIMIT_KEYS = ("max_body_bytes", "max_batch", "max_ids_per_request", "max_output_floats")
_SERVER_INTS = (  # key, minimum
    ("inline_max_body_bytes", 0),
    ("inline_max_output_floats", 0),
    ("max_concurrent_lookups", 0),
    ("max_connections", 1),
)
_SERVER_SECONDS = ("header_timeout_s", "body_timeout_s", "drain_timeout_s")
_SERVER_BOOLS = ("huge_pages", "verify_tables", "copy_tables")
_SERVER_KEYS = tuple(k for k, _ in _SERVER_INTS) + _SERVER_SECONDS + _SERVER_BOOLS
#: drain_timeout_s, when not given, is body_timeout_s plus this (see ServerOptions).
DRAIN_MARGIN_S = 5.0


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
    """

    max_body_bytes: int = 8 << 20
    max_batch: int = 4096
    max_ids_per_request: int = 1_000_000
    max_output_floats: int = 0

    def __post_init__(self) -> None:
        if self.max_output_floats == 0:
            object.__setattr__(self, "max_output_floats", self.max_body_bytes)


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs requests and connections, and loads versions.

    Attributes:
        inline_max_body_bytes: predict bodies up to this size are decoded on the event loop;
            larger ones are decoded (and looked up, and encoded) in a lookup thread, where
            parsing megabytes of JSON hands the GIL back to the loop every few milliseconds
            instead of stalling every other connection (0: never on the loop).
        inline_max_output_floats: a decoded request whose output floats, and its ids times
            the largest table dim, both stay within this is looked up on the event loop; a
            larger one in a lookup thread, whose kernels release the GIL and run beside the
            loop (0: never on the loop). Its answer is encoded on the loop either way (orjson
            holds the GIL wherever it runs). Small lookups stay on the loop because a thread
            hop costs more than they do. The default, 32,768, is the size from which lookups
            run numba's parallel kernels (``embserve.lookup.PARALLEL_MIN_FLOATS``), so the
            event loop only ever runs serial kernels.
        max_concurrent_lookups: how many lookup threads run at once (the rest queue). ``0``:
            the usable CPU cores divided by numba's kernel threads (at least 1), because every
            calling thread starts its own OpenMP team: with anyio's 40 pool threads, 8
            concurrent callers on 2 cores kept 20 OS threads.
        header_timeout_s: a connection that has not sent a complete request head this long
            after it opened (or after the first byte of its next request) is closed; an
            idle keep-alive connection is closed by uvicorn after 5 s.
        body_timeout_s: a request whose body has not fully arrived this long after its head
            gets 408 and its connection is closed. The default, 20 s, lets the largest body
            (8 MiB) arrive at 3.4 Mbit/s.
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

    inline_max_body_bytes: int = 256 << 10
    inline_max_output_floats: int = PARALLEL_MIN_FLOATS
    max_concurrent_lookups: int = 0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 20.0
    drain_timeout_s: float = 0.0
    max_connections: int = 1000
    huge_pages: bool = False
    verify_tables: bool = True
    copy_tables: bool = False

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
        object_name: the edge name of the embedding object in the checkpoint.
        poll_interval_s: seconds between checks of the checkpoint directory.
        limits: request limits.
        server: how requests are run.
        source: the config file or ``module:attr`` reference this came from.
    """

    name: str
    checkpoint: str
    feature_config: Any
    features: Mapping[str, es.FeatureConfig]
    object_name: str = "embedding"
    poll_interval_s: float = 1.0
    limits: Limits = field(default_factory=Limits)
    server: ServerOptions = field(default_factory=ServerOptions)
    source: str | None = None

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

    Paths join dict keys (visited in sorted order), namedtuple field names and list / tuple
    indices with ``/``, as embserve and TensorFlow match inputs to features; a request
    addresses a feature by this path.

    Raises:
        ServingConfigError: a leaf is not a ``FeatureConfig``, or the structure is a bare
            ``FeatureConfig`` (its path would be empty: wrap it in a dict to name it).
    """
    if isinstance(structure, es.FeatureConfig):
        raise ServingConfigError(
            "the feature_config is a single FeatureConfig, whose path is empty; wrap it in a "
            "dict to give the feature a name, e.g. {'user': feature_config}",
            key="feature_config",
        )
    out: dict[str, es.FeatureConfig] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            try:
                keys = sorted(node)
            except TypeError as exc:
                raise ServingConfigError(
                    f"dict keys at {path or 'the top'!r} cannot be sorted: {exc}",
                    key="feature_config",
                ) from None
            items: list[tuple[Any, Any]] = [(k, node[k]) for k in keys]
        elif isinstance(node, tuple) and hasattr(type(node), "_fields"):
            fields: tuple[str, ...] = getattr(type(node), "_fields")  # noqa: B009
            items = list(zip(fields, node, strict=True))
        elif isinstance(node, (list, tuple)):
            items = list(enumerate(node))
        elif isinstance(node, es.FeatureConfig):
            out[path] = node
            return
        else:
            raise ServingConfigError(
                f"the leaf at path {path!r} is a {type(node).__name__}, not a FeatureConfig",
                key="feature_config",
            )
        for key, child in items:
            walk(child, str(key) if path == "" else f"{path}/{key}")

    walk(structure, "")
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
    c.unknown_keys(model, _MODEL_KEYS, "model")
    return dict(model)


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
        c.unknown_keys(t, _TABLE_KEYS, "tables", i, label)
        for key in ("name", "vocabulary_size", "dim"):
            if key not in t:
                raise c.fail(f"missing required key {key!r}", "tables", None, i, label)
        tname = c.string(t["name"], *where)
        if tname in tables:
            raise c.fail(f"duplicate table name {tname!r}", *where)
        vocab = c.integer(t["vocabulary_size"], 1, "tables", "vocabulary_size", i, label)
        dim = c.integer(t["dim"], 1, "tables", "dim", i, label)
        combiner = t.get("combiner", "mean")
        if combiner not in _COMBINERS:
            raise c.fail(
                f"must be one of {list(_COMBINERS)}, got {combiner!r}",
                "tables",
                "combiner",
                i,
                label,
            )
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
        c.unknown_keys(f, _FEATURE_KEYS, "features", i, label)
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
            f.get("max_sequence_length", 0), 0, "features", "max_sequence_length", i, label
        )
        shape = f.get("output_shape")
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
        validate = f.get("validate_weights_and_indices", True)
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


def _limits(data: Mapping[str, Any], c: _Checker) -> Limits:
    raw = data.get("limits", {})
    if not isinstance(raw, Mapping):
        raise c.fail("must be a table ([limits])", None, "limits")
    c.unknown_keys(raw, _LIMIT_KEYS, "limits")
    # Absent keys take the dataclass defaults (max_output_floats then follows max_body_bytes).
    return Limits(**{key: c.integer(raw[key], 1, "limits", key) for key in raw})


def _server(data: Mapping[str, Any], c: _Checker) -> ServerOptions:
    raw = data.get("server", {})
    if not isinstance(raw, Mapping):
        raise c.fail("must be a table ([server])", None, "server")
    c.unknown_keys(raw, _SERVER_KEYS, "server")
    values: dict[str, Any] = {}
    for key, minimum in _SERVER_INTS:
        if key in raw:
            values[key] = c.integer(raw[key], minimum, "server", key)
    for key in _SERVER_SECONDS:
        if key in raw:
            values[key] = c.seconds(raw[key], "server", key)
    for key in _SERVER_BOOLS:
        if key in raw:
            values[key] = c.boolean(raw[key], "server", key)
    # Absent keys take the dataclass defaults (drain_timeout_s then follows body_timeout_s).
    return ServerOptions(**values)


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
    object_name = c.string(model.get("object", "embedding"), "model", "object")
    if "/" in object_name:
        raise c.fail(
            f"must be one edge name (the keyword of tf.train.Checkpoint), got {object_name!r}",
            "model",
            "object",
        )
    poll = model.get("poll_interval_s", 1.0)
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
        object_name=object_name,
        poll_interval_s=float(poll),
        limits=_limits(data, c),
        server=_server(data, c),
        source=source,
    )
    try:
        # Validates the whole structure (duplicate table names, foreign optimizers) and, as
        # TensorFlow does, names unnamed tables table_0, table_1, ... on the shared configs.
        config.new_model()
    except es.ConfigError as exc:
        raise c.fail(
            str(exc), "model" if ref else None, "feature_config" if ref else None
        ) from None
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
