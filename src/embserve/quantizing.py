"""Quantized checkpoints: write a float32 serving checkpoint's tables in fewer bytes.

:func:`quantize_checkpoint` (behind ``embserve quantize``) reads a float32 checkpoint and writes
a **quantized checkpoint**: a TensorFlow-format bundle in which each chosen table is stored in a
storage type of :mod:`embserve.storage` (float16, bfloat16, int8 or int4 row-wise) instead of
float32. It is served zero-copy: ``es.train.Checkpoint(embedding=emb).restore(dir)`` and
``embserve serve`` map the stored rows and serve them as
:class:`~embserve.storage.QuantizedTable` s, dequantized inside the lookup kernels.

**Keys.** The bundle has the same object graph as its source, so each table keeps its key
(``embedding/<table>/.ATTRIBUTES/VARIABLE_VALUE``); only what the key holds changes:

==========  =====================  ================================================
storage     dtype                  shape
==========  =====================  ================================================
float32     ``DT_FLOAT``           ``[rows, dim]`` (a table left as it was)
float16     ``DT_HALF``            ``[rows, dim]``
bfloat16    ``DT_BFLOAT16``        ``[rows, dim]``
int8        ``DT_UINT8``           ``[rows, dim + 8]`` (FBGEMM's fused rows)
int4        ``DT_UINT8``           ``[rows, ceil(dim / 2) + 4]`` (FBGEMM's fused rows)
==========  =====================  ================================================

The dtype, the shape and the TableConfig's ``dim`` give the storage type unambiguously
(:func:`embserve.storage.storage_of`). A key that kept its name but not its dtype is what makes
TensorFlow refuse to restore a quantized table into its float32 variable (a dtype mismatch)
instead of silently serving the variable's initial values, as it does for a missing key.

One more key, ``_EMBSERVE_STORAGE`` (:data:`~embserve.checkpointing.STORAGE_KEY`), outside the
object graph, holds a JSON manifest: per table its object path, name, key, storage type, rows,
dim, source key and stored bytes; the source checkpoint; the embserve version
(:func:`~embserve.checkpointing.read_storage_manifest`). TensorFlow's ``list_variables`` lists
it (a string scalar) and its restore never reads it.

**Not written:** optimizer slots (a quantized checkpoint is a serving checkpoint; their
object-graph entries are kept without values, so a serving object built with an optimizer is
refused at restore, naming the slot). Every other tensor of the source (a Keras model beside
the embedding, the ``save_counter``) is copied unchanged. A **SparseCore** (``TPUEmbeddingV2``)
source is quantized logical row by logical row out of its stacks and written as plain
per-table variables under a new object graph (root → object path → the embedding object with
its tables, as :func:`embserve.checkpointing.write_checkpoint` lays them out, plus the
``save_counter``); other objects of such a checkpoint are not carried over.

**Streaming.** Each table is read a block of rows at a time from its memory map (rows of a
SparseCore stack are gathered per block), quantized and appended to the data file
(:meth:`embserve.checkpoint.BundleWriter.add_streamed`): private memory stays within a block
(16 MiB of float32 by default) whatever the table's size. The source's checksum is computed
over the same blocks as they are read and checked before the bundle is published (a table
stored in slices is checked first, slice by slice); a mismatch, a NaN / inf row (named) or any
other failure leaves nothing behind.

This module sits above :mod:`embserve.checkpointing`; :func:`quantize_table` (in-memory, also
used by ``restore(..., storage=...)``) lives there and is re-exported here.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from embserve.checkpoint import (
    OBJECT_GRAPH_KEY,
    BundleReader,
    BundleWriter,
    DataType,
    ObjectGraph,
    ObjectGraphBuilder,
    crc32c,
    read_checkpoint_state,
    write_checkpoint_state,
)
from embserve.checkpoint.bundle import ProgressCallback, ProgressCounter, index_path
from embserve.checkpointing import (
    SAVE_COUNTER,
    STORAGE_KEY,
    FoundTable,
    StorageRequest,
    _load_graph,
    _stacked_table,
    chunk_rows_for,
    find_embedding_tables,
    quantize_table,
    read_storage_manifest,
)
from embserve.embedding import TPUEmbeddingForServing
from embserve.errors import CheckpointMismatchError, ConfigError, CorruptCheckpointError
from embserve.storage import STORAGE_TYPES, quantize_rows, row_bytes

__all__ = [
    "MANIFEST_FORMAT",
    "STORAGE_KEY",
    "QuantizedTableInfo",
    "quantize_checkpoint",
    "quantize_embedding",
    "quantize_table",
    "read_storage_manifest",
]

#: The manifest's ``format`` field.
MANIFEST_FORMAT = "embserve-quantized"

_STORED_DTYPE = {
    "float32": DataType.FLOAT,
    "float16": DataType.HALF,
    "bfloat16": DataType.BFLOAT16,
    "int8": DataType.UINT8,
    "int4": DataType.UINT8,
}


class QuantizedTableInfo(NamedTuple):
    """One table :func:`quantize_checkpoint` wrote.

    Attributes:
        name: the table's name.
        key: its key in the quantized checkpoint.
        storage: its storage type (``"float32"`` for a table copied unchanged).
        rows: its rows.
        dim: its logical width.
        source_nbytes: its float32 bytes in the source.
        stored_nbytes: its bytes in the quantized checkpoint.
        object_path: the edge names of its embedding object.
        source_key: its key in the source (a SparseCore table's: its stack's).
    """

    name: str
    key: str
    storage: str
    rows: int
    dim: int
    source_nbytes: int
    stored_nbytes: int
    object_path: tuple[str, ...] = ()
    source_key: str = ""


def _version() -> str:
    """The installed embserve's version (the package root imports every layer, so it is not
    imported here)."""
    try:
        return importlib.metadata.version("embserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _width(storage: str, dim: int) -> int:
    return dim if storage in ("float32", "float16", "bfloat16") else row_bytes(storage, dim)


def _choose(
    found: Sequence[FoundTable], storage: StorageRequest, tables: Sequence[str] | None
) -> dict[str, str]:
    """Table name → storage type to write (``float32``: copied unchanged)."""
    names = list(dict.fromkeys(t.table for t in found))
    if isinstance(tables, str):
        tables = [t for t in tables.split(",") if t]
    if tables is not None:
        unknown = sorted({str(t) for t in tables} - set(names))
        if unknown:
            raise ConfigError(
                f"no table named {', '.join(map(repr, unknown))} in the checkpoint; its tables "
                f"are {', '.join(map(repr, names))}"
            )
    chosen = set(names if tables is None else tables)
    if isinstance(storage, str) or storage is None:
        if storage not in STORAGE_TYPES:
            raise ConfigError(f"storage must be one of {', '.join(STORAGE_TYPES)}, got {storage!r}")
        return {n: storage if n in chosen else "float32" for n in names}
    if not isinstance(storage, Mapping):
        raise ConfigError(
            "storage must be a storage type or a mapping table name -> storage type, got a "
            f"{type(storage).__name__}"
        )
    unknown = sorted(str(k) for k in storage if k not in names)
    if unknown:
        raise ConfigError(
            f"storage names no table {', '.join(map(repr, unknown))} of the checkpoint; its "
            f"tables are {', '.join(map(repr, names))}"
        )
    out = {}
    for n in names:
        kind = storage.get(n, "float32") if n in chosen else "float32"
        if kind not in STORAGE_TYPES:
            raise ConfigError(
                f"storage of table {n!r} must be one of {', '.join(STORAGE_TYPES)}, got {kind!r}"
            )
        out[n] = kind
    return out


def _target_prefix(
    target: str | os.PathLike[str], source_prefix: str, overwrite: bool
) -> tuple[str, str | None]:
    """(prefix to write, directory whose state file records it, or None)."""
    target = os.fspath(target)
    if os.path.exists(index_path(target)):
        prefix, directory = target, None
    else:
        if os.path.exists(target) and not os.path.isdir(target):
            raise FileExistsError(f"{target!r} exists and is not a directory")
        directory = target
        prefix = os.path.join(target, os.path.basename(source_prefix))
    if os.path.realpath(prefix) == os.path.realpath(source_prefix):
        raise FileExistsError(
            f"{prefix!r} is the source checkpoint itself; write the quantized checkpoint elsewhere"
        )
    if os.path.exists(index_path(prefix)) and not overwrite:
        raise FileExistsError(
            f"a checkpoint already exists at {prefix!r}; refusing to overwrite it (pass "
            "overwrite=True to replace it)"
        )
    return prefix, directory


class _Stacks:
    """SparseCore stacks, each mapped and checksummed once, however many tables it holds."""

    def __init__(self, reader: BundleReader) -> None:
        self.reader = reader
        self.arrays: dict[str, np.ndarray] = {}

    def table(self, found: FoundTable) -> Any:
        assert found.layout is not None
        stack = self.arrays.get(found.key)
        if stack is None:
            stack = self.arrays[found.key] = self.reader.get_tensor(found.key, verify=True)
        return _stacked_table(stack, found.layout, False)


def _blocks(
    reader: BundleReader,
    found: FoundTable,
    storage: str,
    stacks: _Stacks,
    chunk_rows: int | None,
    advance: Any,
) -> Iterator[np.ndarray]:
    """The stored rows of one table, a block at a time; the source's checksum is checked
    after the last block (a streamed source) or before the first (slices, stacks)."""
    rows, dim = int(found.shape[0]), int(found.shape[1])
    step = chunk_rows_for(dim, chunk_rows)
    info = reader.info(found.key)
    stream = found.layout is None and not info.slices
    if found.layout is not None:
        source: Any = stacks.table(found)
    else:
        source = reader.get_tensor(found.key, verify=not stream)
    crc = 0
    for start in range(0, rows, step):
        block = np.asarray(source[start : start + step])
        if stream:
            raw = np.ascontiguousarray(block).reshape(-1).view(np.uint8).data
            crc = crc32c.value_of_buffer(raw, crc=crc)
        if storage == "float32":
            out = np.ascontiguousarray(block, dtype=np.float32)
        else:
            out = quantize_rows(block, storage, table=found.table, first_row=start)
        advance(block.shape[0] * dim * 4)
        yield out
    if stream and crc32c.mask(crc) != info.crc32c:
        path = reader.data_paths[info.shard_id]
        raise CorruptCheckpointError(
            f"corrupt checkpoint file {path!r} at offset {info.offset}: tensor {found.key!r} "
            f"(table {found.table!r}): checksum mismatch over bytes [{info.offset}, "
            f"{info.offset + info.size}) (stored {info.crc32c:#010x}, computed "
            f"{crc32c.mask(crc):#010x})"
        )


def _graph_without_slots(graph: ObjectGraph, found: Sequence[FoundTable]) -> bytes:
    """The source graph with the embedding tables' slot nodes stripped of their values (the
    slots are not written)."""
    proto = type(graph.proto)()
    proto.CopyFrom(graph.proto)
    for t in found:
        for slot in t.slots:
            node = graph.find([*t.object_path, f"{t.table}/{slot}"])
            if node is not None:
                del proto.nodes[node].attributes[:]
                proto.nodes[node].has_checkpoint_values.value = False
    return bytes(proto.SerializeToString())


def _plain_graph(found: Sequence[FoundTable], with_counter: bool) -> tuple[bytes, dict[Any, str]]:
    """A new object graph with each embedding object's tables as plain per-table variables
    (as :func:`embserve.checkpointing.write_checkpoint` lays them out, without the feature
    config and slots). Returns the graph and ``{(object path, table): key}`` (the counter's key
    under ``SAVE_COUNTER``)."""
    b = ObjectGraphBuilder()
    nodes: dict[tuple[str, ...], int] = {(): b.ROOT}
    objects = list(dict.fromkeys(t.object_path for t in found))
    for path in objects:
        for depth in range(1, len(path) + 1):
            if path[:depth] not in nodes:
                nodes[path[:depth]] = b.add_child(nodes[path[: depth - 1]], path[depth - 1])
    table_nodes: dict[Any, int] = {}
    for path in objects:
        emb = nodes[path]
        b.add_child(emb, "_output_shapes")
        b.add_child(emb, "_table_config")
        mine = [t for t in found if t.object_path == path]
        for t in mine:
            node = b.add_child(emb, t.table)
            b.add_attribute(node, full_name=t.table)
            table_nodes[(path, t.table)] = node
        variables = b.add_child(emb, "_variables")
        for t in mine:
            wrapper = b.add_child(variables, t.table)
            b.add_child(wrapper, "parameters", table_nodes[(path, t.table)])
    counter = None
    if with_counter:
        counter = b.add_child(b.ROOT, SAVE_COUNTER)
        b.add_attribute(counter, full_name=SAVE_COUNTER)
    _, keys = b.build()
    out: dict[Any, str] = {k: keys[(n, "VARIABLE_VALUE")] for k, n in table_nodes.items()}
    if counter is not None:
        out[SAVE_COUNTER] = keys[(counter, "VARIABLE_VALUE")]
    return b.serialize(), out


def quantize_checkpoint(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    storage: StorageRequest,
    *,
    tables: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
) -> list[QuantizedTableInfo]:
    """Write a quantized copy of a float32 serving checkpoint (see the module docstring).

    Args:
        source: a checkpoint prefix, or a directory (its latest checkpoint).
        target: a directory (created if needed): the checkpoint is written there under the
            source's prefix name (``ckpt-3`` → ``<target>/ckpt-3``) and recorded in its
            ``checkpoint`` state file, so ``latest_checkpoint(target)`` and a server watching
            ``target`` find it. An existing checkpoint prefix is written in place of itself
            (with ``overwrite``; no state file is written then).
        storage: a storage type for every table chosen (``"int8"``...), or table name →
            storage type (tables not named are copied as float32).
        tables: the tables to quantize (names, or one comma-separated string); the others are
            copied as float32. Default: every table.
        progress: ``progress(bytes_done, bytes_total)`` over the source bytes read: ``(0,
            total)`` first, then after every block, ``(total, total)`` last, before the files
            are published (it may raise to abandon the write).
        chunk_rows: rows per block (default: 16 MiB of float32 per block).
        overwrite: replace an existing checkpoint of the same prefix (never done silently).

    Returns:
        One :class:`QuantizedTableInfo` per table written, in the source's table order.

    Raises:
        ConfigError: an unknown table name or storage type (listing the tables there are).
        QuantizationError: a table row holds NaN / inf or a value the type cannot hold; names
            the table and the row. Nothing is written.
        FileExistsError: the target holds a checkpoint of that name and ``overwrite`` is not
            set, or it is the source itself.
        CheckpointMismatchError: the source holds no TPU embedding tables, or is quantized
            already.
        CheckpointNotFoundError, CorruptCheckpointError: the source is missing or damaged
            (a table's checksum is checked as it is read).
    """
    reader = BundleReader(source)
    graph = _load_graph(reader)
    found = find_embedding_tables(reader, graph)
    if not found:
        raise CheckpointMismatchError(f"checkpoint {reader.prefix!r} holds no TPU embedding tables")
    if read_storage_manifest(reader) is not None or any(t.storage != "float32" for t in found):
        stored = sorted({f"{t.table}: {t.storage or t.dtype}" for t in found})
        raise CheckpointMismatchError(
            f"checkpoint {reader.prefix!r} is not a float32 checkpoint ({', '.join(stored)}); "
            "quantize the float32 checkpoint it came from"
        )
    for t in found:
        if len(t.shape) != 2 or min(t.shape) < 1:
            raise CheckpointMismatchError(
                f"checkpoint {reader.prefix!r}: table {t.table!r} under {t.key!r} has shape "
                f"{list(t.shape)}, not a [rows, dim] table"
            )
    kinds = _choose(found, storage, tables)
    prefix, directory = _target_prefix(target, reader.prefix, overwrite)

    stacked = any(t.layout is not None for t in found)
    counter_key = None
    if stacked:
        counter_node = graph.find([SAVE_COUNTER])
        counter_attr = (
            graph.attributes(counter_node).get("VARIABLE_VALUE") if counter_node else None
        )
        if counter_attr is not None and reader.has_tensor(counter_attr.checkpoint_key):
            counter_key = counter_attr.checkpoint_key
        graph_bytes, new_keys = _plain_graph(found, counter_key is not None)
        others: list[tuple[str, str]] = []
        if counter_key is not None:
            others.append((counter_key, new_keys[SAVE_COUNTER]))
    else:
        graph_bytes = _graph_without_slots(graph, found)
        new_keys = {(t.object_path, t.table): t.key for t in found}
        skip = {t.key for t in found} | {k for t in found for k in t.slots.values()}
        skip |= {OBJECT_GRAPH_KEY}
        others = [(k, k) for k in reader if k not in skip]

    def source_bytes(key: str) -> int:
        info = reader.info(key)
        return info.num_elements * info.numpy_dtype.itemsize

    total = sum(int(t.shape[0]) * int(t.shape[1]) * 4 for t in found)
    total += sum(source_bytes(k) for k, _ in others)
    written: list[QuantizedTableInfo] = []
    stacks = _Stacks(reader)
    with (
        BundleWriter(prefix, overwrite=overwrite, alignment=64) as writer,
        ProgressCounter(progress, total) as tally,
    ):
        for t in found:
            kind = kinds[t.table]
            rows, dim = int(t.shape[0]), int(t.shape[1])
            key = new_keys[(t.object_path, t.table)]
            blocks = _blocks(reader, t, kind, stacks, chunk_rows, tally.advance)
            entry = writer.add_streamed(key, (rows, _width(kind, dim)), _STORED_DTYPE[kind], blocks)
            written.append(
                QuantizedTableInfo(
                    t.table, key, kind, rows, dim, rows * dim * 4, entry.size, t.object_path, t.key
                )
            )
        for old, new in others:
            info = reader.info(old)
            writer.add(new, reader.get_tensor(old), dtype=info.dtype)
            tally.advance(source_bytes(old))
        writer.add(OBJECT_GRAPH_KEY, graph_bytes)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "embserve": _version(),
            "source": os.path.abspath(reader.prefix),
            "tables": [
                {
                    "object_path": list(w.object_path),
                    "table": w.name,
                    "key": w.key,
                    "storage": w.storage,
                    "rows": w.rows,
                    "dim": w.dim,
                    "source_key": w.source_key,
                    "stored_bytes": w.stored_nbytes,
                }
                for w in written
            ],
        }
        writer.add(STORAGE_KEY, json.dumps(manifest, sort_keys=True).encode("utf-8"))
    if directory is not None:
        state = read_checkpoint_state(directory)
        kept = [] if state is None else list(state.all_model_checkpoint_paths)
        kept = [p for p in kept if os.path.abspath(p) != os.path.abspath(prefix)]
        write_checkpoint_state(directory, prefix, kept)
    return written


def quantize_embedding(
    embedding: TPUEmbeddingForServing,
    storage: StorageRequest,
    *,
    chunk_rows: int | None = None,
) -> dict[str, Any]:
    """Quantize a serving object's tables in memory, in place (its slots are left alone).

    For a ``TPUEmbeddingForServing`` built or restored in float32:
    ``quantize_embedding(emb, "int8")`` replaces each table with a
    :class:`~embserve.storage.QuantizedTable` made by :func:`quantize_table` (block by block,
    the stored bytes only). Restoring with ``es.train.Checkpoint(embedding=emb).restore(path,
    storage="int8")`` does the same at restore, without the float32 tables ever being served.

    Args:
        embedding: the serving object (built first if it is not).
        storage: a storage type for every table, or table name → storage type.
        chunk_rows: rows per block.

    Returns:
        Table name → the table now served.

    Raises:
        ConfigError: an unknown table or storage type, or a table already quantized to another
            type.
        QuantizationError: a row holds NaN / inf (the object is left unchanged).
    """
    variables = embedding.variables  # builds
    names = [str(t.name) for t in embedding._table_configs]
    if isinstance(storage, str):
        wanted = dict.fromkeys(names, storage)
    elif isinstance(storage, Mapping):
        unknown = sorted(str(k) for k in storage if k not in names)
        if unknown:
            raise ConfigError(f"storage names table(s) {unknown}; the tables are {names}")
        wanted = {str(k): str(v) for k, v in storage.items()}
    else:
        raise ConfigError(f"storage must be a storage type or a mapping, got {storage!r}")
    new = {name: dict(slots) for name, slots in variables.items()}
    for name, kind in wanted.items():
        if kind not in STORAGE_TYPES:
            raise ConfigError(
                f"storage of table {name!r} must be one of {', '.join(STORAGE_TYPES)}, got {kind!r}"
            )
        if kind == "float32":
            continue
        new[name]["parameters"] = quantize_table(
            new[name]["parameters"], kind, name=name, chunk_rows=chunk_rows
        )
    embedding._set_variables(new)
    return {name: new[name]["parameters"] for name in names}
