"""The bridge between embeddings and checkpoint files: tables and slots ↔ object-graph keys.

This is the one module that knows both :class:`~embserve.embedding.TPUEmbeddingForServing` and
the checkpoint format (:mod:`embserve.checkpoint`). It reproduces what TensorFlow 2.21 does for
``tf.train.Checkpoint(embedding=TPUEmbeddingForServing(...))`` (CHECKPOINT_FORMAT.md §6.4):

* the embedding object hangs off the root under the attribute name the user chose
  (``embedding`` above); each table is its child named after ``TableConfig.name``, each optimizer
  slot the child ``"<table>/<slot>"`` (keys escape the ``/`` as ``.S``);
* restore matches objects through the object graph, so a checkpoint that also holds a Keras model
  and its optimizer restores just its embedding part;
* a table or slot missing from the checkpoint, or stored with another shape or dtype, raises
  :class:`~embserve.errors.CheckpointMismatchError` naming the table and key (TensorFlow would
  leave the initial values in place and only complain on ``assert_existing_objects_matched``:
  serving random tables silently is worse than refusing);
* slots are restored when the serving object has an optimizer and never read when it has none;
* restoring several objects (``tf.train.Checkpoint(a=emb1, b=emb2)``) is all or nothing
  (:func:`restore_objects`): every object is checked and every table read and checksummed
  before any object is given its tables.

Restored tables are read-only memory-mapped views of the data files: restoring a 40 GB table
opens files and checks metadata; it does not read or copy the table.

**SparseCore checkpoints** (``TPUEmbeddingV2``, SPARSECORE_FORMAT.md) are recognised by the
embedding object's child ``_sparse_core_table_layouts`` holding a non-empty string (an empty one
means a plain checkpoint, as in TensorFlow). Its ``SparseCoreTableLayouts`` proto is decoded and
checked (:mod:`embserve.checkpoint.sparsecore`), and each config table that a layout names is
restored from its stack ``P/<stack>`` (slots from ``P/<stack>/<slot>``) as a
:class:`~embserve.tables.StackedTable`: a view of the mapped stack that lookups address through
the layout, so no table is unstacked into new memory (``copy=True`` gives plain private
arrays instead). Where TensorFlow 2.21 is lax, embserve refuses, naming the table and key
(SPARSECORE_FORMAT.md §7, §10):

* a config table whose vocabulary size or dim differs from its layout:
  ``CheckpointMismatchError`` (TensorFlow silently serves the checkpoint's shape);
* a damaged or inconsistent layouts proto, or a stack whose shape disagrees with its layouts:
  ``CorruptCheckpointError``; a missing or non-float32 stack: ``CheckpointMismatchError``;
* a config table that no layout names restores from its own key ``P/<table>`` (a *mixed*
  checkpoint, as TensorFlow does), else ``CheckpointMismatchError``;
* a checkpoint holding more tables than the config asks for serves the asked-for subset, as for
  plain checkpoints (TensorFlow raises ``KeyError``);
* restoring after ``build()`` works (TensorFlow silently keeps the initial values, or fails);
* a ForServing object that restored a SparseCore checkpoint and was saved again by TensorFlow
  (the stack keys hold scalars, the tables are under ``P/_variables/<table>/parameters``)
  restores from those per-table keys (TensorFlow 2.21 fails with ``IndexError``).

Writing such an object back (:func:`write_checkpoint`) writes plain per-table keys, which
TensorFlow's ``TPUEmbeddingForServing`` restores (and a TPU job's checkpoint adapter reshards).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from embserve.checkpoint import (
    OBJECT_GRAPH_KEY,
    BundleReader,
    BundleWriter,
    DataType,
    ObjectGraph,
    ObjectGraphBuilder,
    attribute_key,
    crc32c,
)
from embserve.checkpoint._mapping import collapse_huge_pages as _collapse
from embserve.checkpoint.bundle import ProgressCallback, ProgressCounter
from embserve.checkpoint.sparsecore import (
    LAYOUTS_ATTRIBUTE,
    SparseCoreLayouts,
    TableLayout,
    check_stack_entry,
    parse_layouts,
    slot_edge,
)
from embserve.embedding import Table, TPUEmbeddingForServing, _initial_value
from embserve.errors import (
    CheckpointMismatchError,
    ConfigError,
    CorruptCheckpointError,
    QuantizationError,
)
from embserve.storage import (
    QUANTIZED_TYPES,
    STORAGE_TYPES,
    QuantizedTable,
    quantize_rows,
    row_bytes,
    storage_dtype,
    storage_of,
)
from embserve.tables import StackedTable

__all__ = [
    "CHUNK_BYTES",
    "SAVE_COUNTER",
    "STORAGE_KEY",
    "VERIFY_ON_RESTORE_MAX_BYTES",
    "FoundTable",
    "RestoreResult",
    "StorageRequest",
    "chunk_rows_for",
    "collapse_huge_pages",
    "find_embedding_tables",
    "quantize_table",
    "read_sparsecore_layouts",
    "read_storage_manifest",
    "restore_embedding",
    "restore_keys",
    "restore_objects",
    "write_checkpoint",
]

#: The root's save counter edge, as ``tf.train.Checkpoint`` names it.
SAVE_COUNTER = "save_counter"

#: Tables up to this size have their checksum verified when restored. Larger ones are mapped
#: without reading them (verifying 4 GB costs ~1-2 s of reading); pass ``verify=True`` (or run
#: ``embserve inspect --verify``) to check every byte.
VERIFY_ON_RESTORE_MAX_BYTES = 64 << 20

# Children TensorFlow's TPUEmbedding objects carry besides their tables: their signature.
_EMBEDDING_MARKERS = ("_table_config", "_variables", "_output_shapes")

#: ``progress(done_bytes, total_bytes)``, reported as :class:`ProgressCounter` does: ``(0,
#: total)`` first, then after each tensor read (a table, a slot, or a SparseCore stack shared
#: by several tables, counted once), ``(total, total)`` last.
Progress = ProgressCallback

_VALUE = "VARIABLE_VALUE"

#: The key of a quantized checkpoint's manifest: a string scalar outside the object graph (so
#: restores, TensorFlow's included, never read it) holding JSON that says, per table, its
#: storage type, key, rows and dim and where it came from (:func:`read_storage_manifest`).
STORAGE_KEY = "_EMBSERVE_STORAGE"

#: Float32 bytes per block when a table is quantized block by block (16 MiB: the private
#: memory of a quantization, whatever the table's size).
CHUNK_BYTES = 16 << 20

#: The storage a restore serves: ``None`` (every table as stored), one storage type for every
#: table, or table name → storage type (tables not named: as stored).
StorageRequest = str | Mapping[str, str] | None


class FoundTable(NamedTuple):
    """A table (with its slots) found in a checkpoint's object graph.

    Attributes:
        object_path: edge names from the root to the embedding object, e.g. ``("embedding",)``.
        table: the table name.
        key: the bundle key holding the table: its own variable, or for a table of a SparseCore
            checkpoint the key of the stack it lies in (``layout`` says where).
        shape: its logical shape ``(vocabulary_size, dim)``.
        dtype: TensorFlow's dtype name (``"float32"``).
        slots: slot name → bundle key (for a stacked table, the keys of its stack's slots).
        layout: for a table stored in a SparseCore stack, its layout: stack name
            (``layout.stack``), N, chips, SparseCores per chip, T, row offset, rotation, padded
            shape and the stack's shape ``layout.stack_shape``
            (:class:`~embserve.checkpoint.sparsecore.TableLayout`); ``None`` for a table
            stored as its own variable.
        storage: the storage type (:mod:`embserve.storage`): ``"float32"``, or for a table
            of a quantized checkpoint the type its manifest (:data:`STORAGE_KEY`) records,
            with ``shape`` the logical ``(rows, dim)`` and ``dtype`` the stored dtype
            (``"uint8"`` for int8 / int4); float16 / bfloat16 entries of the table's shape are
            recognised without a manifest. ``None``: the entry stores no table type known to
            embserve (``shape`` and ``dtype`` as stored).
    """

    object_path: tuple[str, ...]
    table: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    slots: dict[str, str]
    layout: TableLayout | None = None
    storage: str | None = "float32"


def _load_graph(reader: BundleReader) -> ObjectGraph:
    graph = ObjectGraph.from_reader(reader)
    if graph is None:
        raise CheckpointMismatchError(
            f"checkpoint {reader.prefix!r} has no object graph ({OBJECT_GRAPH_KEY}): it is a "
            "TF1 name-based checkpoint, which embserve does not restore into objects; read "
            "its tensors with embserve.train.load_checkpoint"
        )
    return graph


def _value_key(graph: ObjectGraph, path: Sequence[str]) -> str | None:
    """The ``VARIABLE_VALUE`` key of the object at ``path``, or ``None`` (no such object, or it
    saves no value)."""
    node = graph.find(path)
    if node is None:
        return None
    attribute = graph.attributes(node).get(_VALUE)
    return None if attribute is None else attribute.checkpoint_key


def read_sparsecore_layouts(
    reader: BundleReader, graph: ObjectGraph, object_path: Sequence[str]
) -> SparseCoreLayouts | None:
    """The SparseCore table layouts of the embedding object at ``object_path``, or ``None``.

    An object is a SparseCore (``TPUEmbeddingV2``) embedding when its child
    ``_sparse_core_table_layouts`` holds a non-empty string: a serialized
    ``SparseCoreTableLayouts``, decoded and checked against SPARSECORE_FORMAT.md §10.3. No such
    child, or an empty string (what a plain ``TPUEmbedding`` writes before TensorFlow's ``build``
    deletes it), means a plain per-table checkpoint.

    Raises:
        CheckpointMismatchError: the object graph names a layouts key the bundle lacks.
        CorruptCheckpointError: the value is not a string scalar, or the proto is damaged or
            breaks a rule (naming the key and the table).
    """
    key = _value_key(graph, [*object_path, LAYOUTS_ATTRIBUTE])
    if key is None:
        return None
    if not reader.has_tensor(key):
        raise CheckpointMismatchError(
            f"checkpoint {reader.prefix!r}: the object graph names key {key!r} for the SparseCore "
            "table layouts, but the bundle has no such tensor"
        )
    info = reader.info(key)
    if info.dtype != DataType.STRING or info.shape != ():
        raise CorruptCheckpointError(
            f"checkpoint {reader.prefix!r}: the SparseCore table layouts {key!r} are "
            f"{info.dtype_name} {list(info.shape)}, not a string scalar"
        )
    data = reader.get_tensor(key)[()]
    assert isinstance(data, bytes)  # a string scalar's element
    if not data:
        return None
    return parse_layouts(data, key, reader.prefix)


def _is_resaved(
    reader: BundleReader, graph: ObjectGraph, path: Sequence[str], stack: str, table: str
) -> str | None:
    """The per-table key of ``table`` when the object is a TensorFlow ForServing object that
    restored a SparseCore checkpoint and was saved again (its stack key holds a scalar, the
    table is under ``_variables/<table>/parameters``, SPARSECORE_FORMAT.md §5.3), else None."""
    stack_key = _value_key(graph, [*path, stack])
    if stack_key is None or not reader.has_tensor(stack_key) or reader.info(stack_key).shape:
        return None
    key = _value_key(graph, [*path, "_variables", table, "parameters"])
    return key if key is not None and reader.has_tensor(key) else None


def _found_sparsecore(
    reader: BundleReader,
    graph: ObjectGraph,
    path: tuple[str, ...],
    layouts: SparseCoreLayouts,
    children: Mapping[str, int],
) -> list[FoundTable]:
    """The tables of a SparseCore object: every layout whose stack is stored, then the plain
    per-table variables beside the stacks (a mixed checkpoint)."""
    found: list[FoundTable] = []
    for layout in layouts.tables.values():
        resaved = _is_resaved(reader, graph, path, layout.stack, layout.table)
        if resaved is not None:
            info = reader.info(resaved)
            found.append(FoundTable(path, layout.table, resaved, info.shape, info.dtype_name, {}))
            continue
        key = _value_key(graph, [*path, layout.stack])
        if key is None or not reader.has_tensor(key):
            continue
        # Slot names have no "/" (a stack "item" must not claim stack "item/sku" or its slots).
        prefix = slot_edge(layout.stack, "")
        slots = {
            name[len(prefix) :]: slot_key
            for name in children
            if name.startswith(prefix)
            and "/" not in name[len(prefix) :]
            and name not in layouts.stacks
            and (slot_key := _value_key(graph, [*path, name])) is not None
        }
        dtype = reader.info(key).dtype_name
        found.append(FoundTable(path, layout.table, key, layout.shape, dtype, slots, layout))
    stacks = set(layouts.stacks)
    plain = {
        name: child
        for name, child in children.items()
        if name not in stacks and not any(name.startswith(slot_edge(s, "")) for s in stacks)
    }
    found += _found_plain(reader, graph, path, plain)
    return found


def _manifest_tables(reader: BundleReader) -> dict[str, dict[str, Any]]:
    """Key → the manifest's entry, for a quantized checkpoint (else empty)."""
    manifest = read_storage_manifest(reader)
    return {} if manifest is None else {e["key"]: e for e in manifest["tables"]}


def _found_storage(
    info: Any, entry: Mapping[str, Any] | None
) -> tuple[tuple[int, ...], str | None]:
    """(logical shape, storage type) of a table's entry, from the manifest when it has one."""
    if entry is not None:
        np_dtype = _STORED_DTYPES.get(info.dtype)
        rows, dim = int(entry["rows"]), int(entry["dim"])
        if (
            np_dtype is not None
            and len(info.shape) == 2
            and info.shape[0] == rows
            and storage_of(np_dtype, int(info.shape[1]), dim) == entry["storage"]
        ):
            return (rows, dim), str(entry["storage"])
    if info.dtype == DataType.FLOAT:
        return info.shape, "float32"
    if info.dtype in (DataType.HALF, DataType.BFLOAT16) and len(info.shape) == 2:
        return info.shape, "float16" if info.dtype == DataType.HALF else "bfloat16"
    return info.shape, None


def _found_plain(
    reader: BundleReader,
    graph: ObjectGraph,
    path: tuple[str, ...],
    children: Mapping[str, int],
    manifest: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[FoundTable]:
    """Plain per-table variables among ``children``: values whose name has no ``/`` and does
    not start with ``_``; ``"<table>/<slot>"`` children are their slots."""
    found: list[FoundTable] = []
    for name, child in children.items():
        if "/" in name or name.startswith("_"):
            continue
        attrs = graph.attributes(child)
        if _VALUE not in attrs:
            continue
        key = attrs[_VALUE].checkpoint_key
        if not reader.has_tensor(key):
            continue
        info = reader.info(key)
        slots = {}
        for other, other_child in children.items():
            if other.startswith(name + "/"):
                slot_attrs = graph.attributes(other_child)
                if _VALUE in slot_attrs:
                    slots[other[len(name) + 1 :]] = slot_attrs[_VALUE].checkpoint_key
        shape, storage = _found_storage(info, (manifest or {}).get(key))
        found.append(FoundTable(path, name, key, shape, info.dtype_name, slots, storage=storage))
    return found


def find_embedding_tables(
    reader: BundleReader, graph: ObjectGraph | None = None
) -> list[FoundTable]:
    """Every TPUEmbedding table in a checkpoint, found by the object graph's shape.

    An embedding object is a node with all of TensorFlow's bookkeeping children
    (``_table_config``, ``_variables``, ``_output_shapes``); its tables are the children
    holding a value whose name has no ``/``, and ``"<table>/<slot>"`` children are that
    table's slots.

    A SparseCore (``TPUEmbeddingV2``) embedding is a node whose ``_sparse_core_table_layouts``
    child holds a non-empty layouts proto: its tables are the logical tables the layouts name
    (those whose stack is stored), each with ``key`` = its stack's key and ``layout`` set, plus
    any plain per-table variable beside the stacks.

    In a quantized checkpoint (:func:`embserve.quantizing.quantize_checkpoint`), each table's
    ``storage`` and logical ``shape`` come from the manifest (:data:`STORAGE_KEY`).

    Raises:
        CorruptCheckpointError: a SparseCore object's layouts are damaged (naming the key), or
            a quantized checkpoint's manifest is.
    """
    graph = graph or _load_graph(reader)
    manifest = _manifest_tables(reader)
    found: list[FoundTable] = []
    for node in range(len(graph.proto.nodes)):
        children = graph.children(node)
        is_plain = all(m in children for m in _EMBEDDING_MARKERS)
        if not is_plain and LAYOUTS_ATTRIBUTE not in children:
            continue
        path = graph.path_of(node)
        if path is None:
            continue
        layouts = read_sparsecore_layouts(reader, graph, path)
        if layouts is not None:
            found += _found_sparsecore(reader, graph, tuple(path), layouts, children)
        elif is_plain:
            found += _found_plain(reader, graph, tuple(path), children, manifest)
    return found


# ---------------------------------------------------------------------------------------------
# Quantized tables: in memory, and the manifest of quantized checkpoints


def chunk_rows_for(dim: int, chunk_rows: int | None = None) -> int:
    """Rows per block of a ``dim``-wide table: ``chunk_rows``, or :data:`CHUNK_BYTES` of
    float32 (at least one row)."""
    if chunk_rows is not None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)):
            raise ConfigError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        if chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be a positive integer, got {chunk_rows}")
        return int(chunk_rows)
    return max(1, CHUNK_BYTES // (4 * max(1, int(dim))))


def quantize_table(
    table: Any,
    storage: str,
    *,
    name: str | None = None,
    chunk_rows: int | None = None,
    on_block: Callable[[int, np.ndarray], None] | None = None,
) -> QuantizedTable:
    """Quantize a float32 table into private memory, block by block.

    The result holds the stored rows only (``rows x`` :func:`~embserve.storage.row_bytes`
    bytes): the float32 rows are read a block of ``chunk_rows`` at a time (a view of a mapped
    table, or rows copied out of a :class:`~embserve.tables.StackedTable`) and quantized with
    :func:`~embserve.storage.quantize_rows`, so no float32 copy of the table is ever made. The
    rows are checked while quantized (a NaN / inf row is refused); the scales it writes are
    finite by construction.

    Args:
        table: ``[rows, dim]`` float32 rows: an array (a memory map of a checkpoint is
            typical), a :class:`~embserve.tables.StackedTable`, or a
            :class:`~embserve.storage.QuantizedTable` already in ``storage`` (returned as is).
        storage: ``"float16"``, ``"bfloat16"``, ``"int8"`` or ``"int4"``.
        name: the table's name, for messages and the result's repr.
        chunk_rows: rows per block (default: 16 MiB of float32).
        on_block: called as ``on_block(first_row, rows)`` with each float32 block before it is
            quantized (a checksum over the source is computed this way at restore).

    Returns:
        A :class:`~embserve.storage.QuantizedTable` over a new read-only array.

    Raises:
        QuantizationError: a row holds NaN / inf or a value the type cannot hold; names the
            table and the row.
        ConfigError: an unknown or float32 storage type, a table that is not 2-D and
            non-empty, or a QuantizedTable in another storage type (quantized tables are never
            re-quantized).
    """
    label = name if name is not None else "table"
    if storage not in QUANTIZED_TYPES:
        raise ConfigError(
            f"table {label!r}: storage must be one of {', '.join(QUANTIZED_TYPES)} to quantize "
            f"(float32 tables are served as they are), got {storage!r}"
        )
    if isinstance(table, QuantizedTable):
        if table.storage == storage:
            return table
        raise ConfigError(
            f"table {label!r} is already stored as {table.storage}; quantized tables are not "
            f"re-quantized (quantize its float32 values to {storage} instead)"
        )
    shape = tuple(getattr(table, "shape", ()))
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ConfigError(f"table {label!r}: a [rows, dim] table is needed, got shape {shape}")
    rows, dim = int(shape[0]), int(shape[1])
    step = chunk_rows_for(dim, chunk_rows)
    width = dim if storage in ("float16", "bfloat16") else row_bytes(storage, dim)
    out = np.empty((rows, width), storage_dtype(storage))
    for start in range(0, rows, step):
        block = np.asarray(table[start : start + step])
        if on_block is not None:
            on_block(start, block)
        out[start : start + len(block)] = quantize_rows(
            block, storage, table=label, first_row=start
        )
    out.flags.writeable = False
    return QuantizedTable(out, storage, dim, name=name, check=False)


def _storage_request(storage: StorageRequest, names: Sequence[str]) -> dict[str, str]:
    """Table name → storage type asked for, checked against the tables there are."""
    if storage is None:
        return {}
    if isinstance(storage, str):
        if storage not in STORAGE_TYPES:
            raise ConfigError(f"storage must be one of {', '.join(STORAGE_TYPES)}, got {storage!r}")
        return dict.fromkeys(names, storage)
    if not isinstance(storage, Mapping):
        raise ConfigError(
            "storage must be a storage type or a mapping table name -> storage type, got a "
            f"{type(storage).__name__}"
        )
    unknown = sorted(str(k) for k in storage if k not in names)
    if unknown:
        raise ConfigError(
            f"storage names table(s) {unknown} that are not tables here; the tables are "
            f"{list(names)}"
        )
    for table, kind in storage.items():
        if kind not in STORAGE_TYPES:
            raise ConfigError(
                f"storage of table {table!r} must be one of {', '.join(STORAGE_TYPES)}, got "
                f"{kind!r}"
            )
    return {str(k): str(v) for k, v in storage.items()}


def read_storage_manifest(reader: BundleReader) -> dict[str, Any] | None:
    """The manifest of a quantized checkpoint (:data:`STORAGE_KEY`), or None for others.

    A JSON object: ``format`` (``"embserve-quantized"``), ``version`` (1), ``embserve``
    (the writer's version), ``source`` (the float32 checkpoint quantized), and ``tables``: one
    object per table written, with ``object_path``, ``table``, ``key``, ``storage``, ``rows``,
    ``dim``, ``source_key`` and ``stored_bytes``.

    Raises:
        CorruptCheckpointError: the key is there but does not hold such JSON.
    """
    if not reader.has_tensor(STORAGE_KEY):
        return None
    info = reader.info(STORAGE_KEY)

    def bad(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"checkpoint {reader.prefix!r}: the quantized checkpoint manifest {STORAGE_KEY!r} {why}"
        )

    if info.dtype != DataType.STRING or info.shape != ():
        raise bad(f"is {info.dtype_name} {list(info.shape)}, not a string scalar")
    raw = reader.get_tensor(STORAGE_KEY)[()]
    assert isinstance(raw, bytes)  # a string scalar's element
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tables"), list):
        raise bad("is not a JSON object with a 'tables' list")
    for entry in manifest["tables"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("key"), str)
            and entry.get("storage") in STORAGE_TYPES
            and isinstance(entry.get("dim"), int)
            and isinstance(entry.get("rows"), int)
        ):
            raise bad(f"has a table entry without key, storage, rows and dim: {entry!r}")
    return manifest


class RestoreResult(NamedTuple):
    """What one embedding restore read: the bundle keys it used."""

    keys: frozenset[str]


def _variable_key(
    graph: ObjectGraph, path: Sequence[str], what: str, prefix: str, hint: str = ""
) -> str:
    key = _value_key(graph, path)
    if key is None:
        raise CheckpointMismatchError(
            f"checkpoint {prefix!r} has no {what} at object path {'/'.join(path)!r} "
            f"(expected key {'/'.join(path)}/.ATTRIBUTES/VARIABLE_VALUE, with '/' in names "
            f"escaped as '.S'){hint}"
        )
    return key


class _Source(NamedTuple):
    """One value to restore: a table's parameters or slot, and where it comes from."""

    config: Any  # the TableConfig
    slot: str  # "parameters" or the slot's name
    key: str | None  # the bundle key read; None: the slot's initial value (re-saved checkpoints)
    layout: TableLayout | None = None  # set when ``key`` is a SparseCore stack
    stored: str = "float32"  # the storage type of the entry read
    served: str = "float32"  # the storage type served (stored, or quantized at restore)


class _Plan(NamedTuple):
    """What one object's restore reads: its sources, and every key it consumes."""

    sources: list[_Source]
    keys: frozenset[str]


# The checkpoint dtypes a table may be stored in, with the numpy dtype storage_of() takes.
_STORED_DTYPES: dict[DataType, Any] = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.BFLOAT16: np.uint16,
    DataType.UINT8: np.uint8,
}


def _stored_type(info: Any, table: Any) -> str | None:
    """The storage type of a table's entry for ``table`` (a TableConfig), or None when its
    dtype and shape store no ``[vocabulary_size, dim]`` table."""
    np_dtype = _STORED_DTYPES.get(info.dtype)
    if np_dtype is None or len(info.shape) != 2 or info.shape[0] != table.vocabulary_size:
        return None
    return storage_of(np_dtype, int(info.shape[1]), int(table.dim))


def _storage_shapes(table: Any) -> str:
    """What each storage type stores for ``table``, for mismatch messages."""
    v, d = table.vocabulary_size, table.dim
    return (
        f"float32 [{v}, {d}], float16 [{v}, {d}], bfloat16 [{v}, {d}], int8 uint8 "
        f"[{v}, {row_bytes('int8', d)}] or int4 uint8 [{v}, {row_bytes('int4', d)}]"
    )


def _check_plain(
    reader: BundleReader,
    key: str,
    what: str,
    shape: tuple[int, int],
    table: Any,
    *,
    quantized_ok: bool = False,
) -> str:
    """A per-table variable's entry: present, float32 of the TableConfig's shape or, with
    ``quantized_ok`` (a table's parameters), one of the quantized storage types
    (:mod:`embserve.storage`) for that shape. Returns the storage type."""
    if not reader.has_tensor(key):
        raise CheckpointMismatchError(
            f"checkpoint {reader.prefix!r}: the object graph names key {key!r} for {what}, but "
            "the bundle has no such tensor"
        )
    info = reader.info(key)
    if info.dtype == DataType.FLOAT and info.shape == shape:
        return "float32"
    stored = _stored_type(info, table) if quantized_ok else None
    if stored is not None:
        return stored
    wants = f"float32 {list(shape)}"
    if quantized_ok:
        wants = _storage_shapes(table)
    raise CheckpointMismatchError(
        f"checkpoint {reader.prefix!r}: {what} is stored under {key!r} as "
        f"{info.dtype_name} {list(info.shape)}, but the TableConfig wants {wants} "
        f"(vocabulary_size={table.vocabulary_size}, dim={table.dim})"
    )


def _plan_plain(
    reader: BundleReader,
    graph: ObjectGraph,
    path: Sequence[str],
    table: Any,
    slots: Sequence[str],
    hint: str = "",
) -> list[_Source]:
    """A table stored as its own variable ``P/<table>``, slots as ``P/<table>/<slot>``."""
    name = str(table.name)
    shape = (table.vocabulary_size, table.dim)
    entries = [("parameters", [*path, name], f"table {name!r}")]
    entries += [
        (slot, [*path, f"{name}/{slot}"], f"slot {slot!r} of table {name!r}") for slot in slots
    ]
    sources = []
    for slot, node_path, what in entries:
        slot_hint = hint
        if slot != "parameters" and reader.has_tensor(STORAGE_KEY):
            slot_hint += (
                "; this is a quantized checkpoint, which holds no optimizer slots: restore it "
                "into a serving object built with optimizer=None"
            )
        key = _variable_key(graph, node_path, what, reader.prefix, slot_hint)
        stored = _check_plain(reader, key, what, shape, table, quantized_ok=slot == "parameters")
        sources.append(_Source(table, slot, key, stored=stored, served=stored))
    return sources


def _plan_resaved(
    reader: BundleReader,
    graph: ObjectGraph,
    path: Sequence[str],
    table: Any,
    key: str,
    slots: Sequence[str],
) -> list[_Source]:
    """A table of a re-saved ForServing checkpoint: ``P/_variables/<table>/parameters``.

    TensorFlow's serving object creates no slot variables for the tables it restored from
    stacks, so such a checkpoint never holds slots: a slot stored under
    ``P/_variables/<table>/<slot>`` is restored, any other gets its initial value, as
    ``build()`` would give it.
    """
    name = str(table.name)
    shape = (table.vocabulary_size, table.dim)
    stored = _check_plain(reader, key, f"table {name!r}", shape, table, quantized_ok=True)
    sources = [_Source(table, "parameters", key, stored=stored, served=stored)]
    for slot in slots:
        slot_key = _value_key(graph, [*path, "_variables", name, slot])
        if slot_key is not None:
            _check_plain(reader, slot_key, f"slot {slot!r} of table {name!r}", shape, table)
        sources.append(_Source(table, slot, slot_key))
    return sources


def _plan_stacked(
    reader: BundleReader,
    graph: ObjectGraph,
    path: Sequence[str],
    table: Any,
    layouts: SparseCoreLayouts,
    slots: Sequence[str],
) -> list[_Source]:
    """A table the SparseCore layouts place in a stack: check the config against the layout
    and the stack (and its slot stacks) against the layouts."""
    name = str(table.name)
    layout = layouts.tables[name]
    stack = layouts.stacks[layout.stack]
    key = _value_key(graph, [*path, stack.name])
    shown = key or attribute_key([*path, stack.name])
    if (table.vocabulary_size, table.dim) != layout.shape:
        raise CheckpointMismatchError(
            f"checkpoint {reader.prefix!r}: table {name!r} is {layout.rows} x {layout.dim} in "
            f"the SparseCore layouts {layouts.key!r} (stored in stack {stack.name!r}, key "
            f"{shown!r}), but the TableConfig wants {table.vocabulary_size} x {table.dim} "
            f"(vocabulary_size={table.vocabulary_size}, dim={table.dim})"
        )
    resaved = _is_resaved(reader, graph, path, stack.name, name)
    if resaved is not None:
        return _plan_resaved(reader, graph, path, table, resaved, slots)
    info = reader.info(key) if key is not None and reader.has_tensor(key) else None
    check_stack_entry(stack, info, shown, reader.prefix)
    assert key is not None  # check_stack_entry raised otherwise
    sources = [_Source(table, "parameters", key, layout)]
    for slot in slots:
        edge = slot_edge(stack.name, slot)
        slot_key = _value_key(graph, [*path, edge])
        slot_shown = slot_key or attribute_key([*path, edge])
        slot_info = (
            reader.info(slot_key) if slot_key is not None and reader.has_tensor(slot_key) else None
        )
        check_stack_entry(
            stack,
            slot_info,
            slot_shown,
            reader.prefix,
            what=f"optimizer slot {slot!r} (of table {name!r}) of the stacked variable",
        )
        assert slot_key is not None
        sources.append(_Source(table, slot, slot_key, layout))
    return sources


def _plan_restore(
    reader: BundleReader,
    graph: ObjectGraph,
    object_path: Sequence[str],
    embedding: TPUEmbeddingForServing,
    requested: Mapping[str, str] | None = None,
) -> _Plan:
    """Check one object against the checkpoint's metadata; what to read for it (tables
    quantized at restore when ``requested`` asks for another storage than a float32 one)."""
    path = list(object_path)
    if graph.find(path) is None:
        raise CheckpointMismatchError(
            f"checkpoint {reader.prefix!r} has no object {'/'.join(path)!r}; objects at its "
            f"root: {sorted(graph.children(0))}"
        )
    layouts = read_sparsecore_layouts(reader, graph, path)
    consumed: set[str] = set()
    if layouts is not None:
        consumed.add(layouts.key)
    hint = ""
    if layouts is not None:
        hint = (
            f"; no SparseCore layout in {layouts.key!r} names it either (they name "
            f"{sorted(layouts.tables)})"
        )
    sources: list[_Source] = []
    for table in embedding._table_configs:
        slots = embedding._table_slot_names(table)
        if layouts is not None and str(table.name) in layouts.tables:
            sources += _plan_stacked(reader, graph, path, table, layouts, slots)
        else:
            sources += _plan_plain(reader, graph, path, table, slots, hint)
    for i, source in enumerate(sources):
        want = (requested or {}).get(str(source.config.name))
        if source.slot != "parameters" or want is None or want == source.stored:
            continue
        if source.stored != "float32":
            name = str(source.config.name)
            instead = (
                "its float32 values are not in this checkpoint (serve the float32 checkpoint "
                "it was quantized from)"
                if want == "float32"
                else f"quantize the float32 checkpoint to {want} instead, or ask for "
                f"{source.stored}"
            )
            raise CheckpointMismatchError(
                f"checkpoint {reader.prefix!r}: table {name!r} is stored as {source.stored} "
                f"under {source.key!r}, but storage {want!r} was asked for; a quantized table "
                f"is served as stored: {instead}"
            )
        sources[i] = source._replace(served=want)
    consumed.update(s.key for s in sources if s.key is not None)
    return _Plan(sources, frozenset(consumed))


def restore_objects(
    reader: BundleReader,
    objects: Mapping[str, TPUEmbeddingForServing],
    *,
    graph: ObjectGraph | None = None,
    copy: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
    storage: StorageRequest = None,
) -> frozenset[str]:
    """Restore several serving objects from one open checkpoint, all or nothing.

    What ``tf.train.Checkpoint(a=emb1, b=emb2).restore(path)`` does, in three steps: every
    object's tables and slots are checked against the index (keys, dtypes, shapes), then every
    value is read (and checksummed), and only then is each object given its tables. A mismatch
    or a damaged table anywhere raises before any object changes.

    Use it with a reader you opened yourself to choose how it is opened (the server opens
    ``BundleReader(prefix, lease=True)`` and keeps it with the version it serves, so that it
    can :meth:`~embserve.checkpoint.BundleReader.fence` the restored tables later).

    Args:
        reader: the open checkpoint.
        objects: attribute name under the checkpoint's root (``"embedding"`` for
            ``tf.train.Checkpoint(embedding=...)``) → the serving object to restore, built or
            not (restoring runs no initializer). :func:`restore_embedding` takes a deeper path.
        graph: the checkpoint's object graph, when the caller has already parsed it.
        copy: load tables into private writable memory instead of mapping the files.
        verify: check every table's checksum (by default only tables up to
            :data:`VERIFY_ON_RESTORE_MAX_BYTES` are checked).
        progress: ``progress(done_bytes, total_bytes)``: ``(0, total)`` first, then after
            each tensor read (a table or slot, or a SparseCore stack once however many tables
            it holds), the total covering every object; ``(total, total)`` last, before any
            object is installed (it may raise to abandon the restore).
        storage: the storage each table is served in (embserve's own argument; TensorFlow has
            none): ``None`` serves every table as stored; a storage type (``"int8"``...) or
            a mapping table name → storage type quantizes float32 tables at restore with
            :func:`quantize_table`, into private memory holding the quantized bytes only
            (each table's checksum is checked over the blocks as they are read). A table
            stored quantized (a checkpoint written by
            :func:`embserve.quantizing.quantize_checkpoint`) is always served as stored:
            asking for another type is a ``CheckpointMismatchError``.

    A table stored quantized is restored as a :class:`~embserve.storage.QuantizedTable` over
    the mapped stored rows (zero-copy; ``copy=True`` copies the stored bytes), with every
    row's scale and bias checked (int8 / int4: this reads those bytes of every row, i.e. the
    table's pages). A NaN or inf scale or bias is a ``CorruptCheckpointError`` naming the
    table, key and row; a stored dtype / shape that is no storage type of the TableConfig's
    shape a ``CheckpointMismatchError`` naming the table and key.

    Returns:
        The bundle keys restored (for ``assert_consumed``-style bookkeeping): tables, slots,
        and for SparseCore objects the stacks read and the layouts key.

    Raises:
        CheckpointMismatchError: an object, a table or a slot is missing, or a stored shape /
            dtype differs from its TableConfig; for a SparseCore object also a table whose
            layout's shape differs from its TableConfig, or a stack (or slot stack) that is
            missing or not float32. The message names the table and the key.
        CorruptCheckpointError: a checksum does not match, or a SparseCore object's layouts
            are damaged or break a rule, or a stack's shape disagrees with them (naming the
            table or stack and the key), or a quantized table's scale or bias is NaN / inf.
        ConfigError: ``storage`` names a table no object has, or an unknown storage type.
    """
    return _restore(
        reader,
        [((name,), obj) for name, obj in objects.items()],
        graph=graph,
        copy=copy,
        verify=verify,
        progress=progress,
        storage=storage,
    )


def _stacked_table(stack: np.ndarray, layout: TableLayout, copy: bool) -> Table:
    """One logical table (or slot) of a stack: served in place, or unstacked when copying."""
    table = StackedTable(
        stack,
        rows=layout.rows,
        dim=layout.dim,
        num_shards=layout.num_sparse_cores,
        shard_rows=layout.shard_rows,
        row_offset=layout.row_offset,
        rotation=layout.rotation,
        name=layout.table,
    )
    return table.unstack() if copy else table


def _initial_slot(config: Any, slot: str, restored: Mapping[str, Table]) -> np.ndarray:
    """A slot's initial value, as ``build()`` creates it (its table restored already)."""
    optimizer = config.optimizer
    names = optimizer._slot_names()
    inits = optimizer._slot_initializers()
    if optimizer.slot_variable_creation_fn is not None:
        created = optimizer.slot_variable_creation_fn(restored["parameters"], names, inits)
        return np.asarray(created[slot])
    shape = (config.vocabulary_size, config.dim)
    init = inits[names.index(slot)]
    return _initial_value(init, shape, f"slot {config.name}/{slot}")


def _restore(
    reader: BundleReader,
    objects: Sequence[tuple[Sequence[str], TPUEmbeddingForServing]],
    *,
    graph: ObjectGraph | None,
    copy: bool,
    verify: bool,
    progress: Progress | None,
    storage: StorageRequest = None,
) -> frozenset[str]:
    """:func:`restore_objects` over ``(object path, object)`` pairs."""
    graph = graph or _load_graph(reader)
    names = [str(t.name) for _, obj in objects for t in obj._table_configs]
    requested = _storage_request(storage, names)
    plans = [(obj, _plan_restore(reader, graph, path, obj, requested)) for path, obj in objects]

    def nbytes(key: str) -> int:
        info = reader.info(key)
        return info.num_elements * info.numpy_dtype.itemsize

    # A stack is read once, however many tables and objects it serves; a per-table variable
    # once per table (each object gets its own private copy when copying).
    stacks: set[str] = set()
    total = 0
    for _, plan in plans:
        for s in plan.sources:
            if s.key is not None and s.layout is None:
                total += nbytes(s.key)
            elif s.key is not None and s.key not in stacks:
                stacks.add(s.key)
                total += nbytes(s.key)
    read: dict[str, np.ndarray] = {}
    verified: set[str] = set()
    # Values are arrays, StackedTables and QuantizedTables (embedding.Table names the first two).
    staged: list[tuple[TPUEmbeddingForServing, dict[Any, dict[str, Any]]]] = []
    # The final report (which may raise to cancel) comes before anything is installed.
    with ProgressCounter(progress, total) as counter:
        for obj, plan in plans:
            variables: dict[Any, dict[str, Any]] = {}
            for source in plan.sources:
                slots = variables.setdefault(source.config.name, {})
                if source.key is None:
                    slots[source.slot] = _initial_slot(source.config, source.slot, slots)
                    continue
                size = nbytes(source.key)
                check = verify or size <= VERIFY_ON_RESTORE_MAX_BYTES
                if source.stored != "float32":
                    slots[source.slot] = _restore_quantized(reader, source, copy, check)
                    counter.advance(size)
                    continue
                if source.served != "float32" and source.layout is None:
                    slots[source.slot] = _quantize_entry(reader, source, counter.advance)
                    continue
                if source.layout is None:
                    slots[source.slot] = reader.get_tensor(source.key, copy=copy, verify=check)
                    counter.advance(size)
                    continue
                stack = read.get(source.key)
                if stack is None:
                    # Mapped, never copied whole: copy=True copies each table out of it. A
                    # stack whose tables are quantized here is checked whole first: its
                    # tables' rows are read scattered, so no checksum can run alongside.
                    check = check or source.served != "float32"
                    stack = read[source.key] = reader.get_tensor(source.key, verify=check)
                    if check:
                        verified.add(source.key)
                    counter.advance(size)
                elif source.served != "float32" and source.key not in verified:
                    reader.get_tensor(source.key, verify=True)
                    verified.add(source.key)
                if source.served != "float32":
                    stacked = _stacked_table(stack, source.layout, False)
                    slots[source.slot] = _quantize_checked(stacked, source, reader.prefix)
                    continue
                slots[source.slot] = _stacked_table(stack, source.layout, copy)
            staged.append((obj, variables))
    for obj, variables in staged:  # nothing below can fail: install every object
        obj._set_variables(variables)
    return frozenset(key for _, plan in plans for key in plan.keys)


def _restore_quantized(
    reader: BundleReader, source: _Source, copy: bool, verify: bool
) -> QuantizedTable:
    """A quantized table of a quantized checkpoint: the stored rows, mapped (or copied), with
    every row's scale and bias checked (int8 / int4)."""
    assert source.key is not None
    data = reader.get_tensor(source.key, copy=copy, verify=verify)
    name = str(source.config.name)
    try:
        return QuantizedTable(data, source.stored, int(source.config.dim), name=name)
    except QuantizationError as exc:
        raise CorruptCheckpointError(
            f"checkpoint {reader.prefix!r}: table {name!r} (key {source.key!r}, "
            f"{source.stored}): row {exc.row} has a scale or bias that is NaN or inf, which "
            "the quantizer never writes: the file is damaged"
        ) from exc


def _quantize_checked(
    table: Table,
    source: _Source,
    prefix: str,
    on_block: Callable[[int, np.ndarray], None] | None = None,
) -> QuantizedTable:
    """``quantize_table`` for a restore: a row the type cannot hold is a mismatch naming the
    table, the key and the row."""
    name = str(source.config.name)
    try:
        return quantize_table(table, source.served, name=name, on_block=on_block)
    except QuantizationError as exc:
        raise CheckpointMismatchError(
            f"checkpoint {prefix!r}: key {source.key!r} cannot be served as {source.served}: {exc}"
        ) from exc


def _quantize_entry(
    reader: BundleReader, source: _Source, advance: Callable[[int], None]
) -> QuantizedTable:
    """Quantize a float32 per-table entry at restore, block by block from its mapping into
    private memory (the stored bytes only). Its checksum is computed over the same blocks as
    they are read (every byte is read anyway) and checked before the table is returned; a
    table stored in slices is checked slice by slice first."""
    assert source.key is not None
    info = reader.info(source.key)
    stream = not info.slices
    view = reader.get_tensor(source.key, verify=not stream)
    if not stream:
        advance(info.size if info.contiguous else view.nbytes)
    crc = 0

    def on_block(start: int, block: np.ndarray) -> None:
        nonlocal crc
        raw = np.ascontiguousarray(block).reshape(-1).view(np.uint8).data
        if stream:
            crc = crc32c.value_of_buffer(raw, crc=crc)
            advance(raw.nbytes)

    table = _quantize_checked(view, source, reader.prefix, on_block)
    if stream and crc32c.mask(crc) != info.crc32c:
        path = reader.data_paths[info.shard_id]
        raise CorruptCheckpointError(
            f"corrupt checkpoint file {path!r} at offset {info.offset}: tensor {source.key!r} "
            f"(table {str(source.config.name)!r}): checksum mismatch over bytes "
            f"[{info.offset}, {info.offset + info.size}) (stored {info.crc32c:#010x}, computed "
            f"{crc32c.mask(crc):#010x})"
        )
    return table


def restore_embedding(
    reader: BundleReader,
    object_path: Sequence[str],
    embedding: TPUEmbeddingForServing,
    *,
    graph: ObjectGraph | None = None,
    copy: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
    storage: StorageRequest = None,
) -> RestoreResult:
    """Restore one object's tables (and slots, when it has an optimizer) from ``reader``.

    :func:`restore_objects` for a single object: every key, dtype, shape and checksum is
    checked before anything is installed, so a failure leaves ``embedding`` as it was.

    Args:
        reader: the open checkpoint.
        object_path: edge names from the root to the embedding object (``["embedding"]``).
        embedding: the serving object; built or not (restoring does not run initializers).
        graph, copy, verify, progress, storage: as in :func:`restore_objects`.

    ``object_path`` may lead anywhere, e.g. to a SparseCore embedding inside a Keras model
    (``["model", "_functional", "_operations", "1", "_tpu_embedding"]``).

    Raises:
        CheckpointMismatchError, CorruptCheckpointError, ConfigError: as in
            :func:`restore_objects`.
    """
    keys = _restore(
        reader,
        [(object_path, embedding)],
        graph=graph,
        copy=copy,
        verify=verify,
        progress=progress,
        storage=storage,
    )
    return RestoreResult(keys)


def restore_keys(
    reader: BundleReader,
    object_path: Sequence[str],
    embedding: TPUEmbeddingForServing,
    *,
    graph: ObjectGraph | None = None,
) -> dict[Any, dict[str, str]]:
    """The bundle keys a restore of ``embedding`` at ``object_path`` reads, without reading them.

    ``{table name: {"parameters": key, slot name: key}}``, checked as :func:`restore_embedding`
    checks them. For a table of a SparseCore checkpoint the key is its stack's (shared by the
    stack's tables; the served :class:`~embserve.tables.StackedTable`'s ``stack`` is that
    tensor), so a checksum pass verifies each such key once, slice by slice
    (``reader.get_tensor(key, verify=True)``), never an unstacked copy. Slots a re-saved
    ForServing checkpoint does not hold (they start from their initializers) are left out.

    Raises:
        CheckpointMismatchError, CorruptCheckpointError: as :func:`restore_embedding` would.
    """
    plan = _plan_restore(reader, graph or _load_graph(reader), object_path, embedding)
    keys: dict[Any, dict[str, str]] = {}
    for source in plan.sources:
        slots = keys.setdefault(source.config.name, {})
        if source.key is not None:
            slots[source.slot] = source.key
    return keys


class _Node:
    """One object of the graph being written; ids are given breadth-first, as TensorFlow does."""

    __slots__ = ("children", "full_name", "id", "value")

    def __init__(self, full_name: str | None = None, value: Table | None = None) -> None:
        self.children: list[tuple[str, _Node]] = []
        self.full_name = full_name
        self.value = value
        self.id = -1


def _container_node(obj: Any) -> _Node | None:
    """The node TensorFlow's tracking wrappers give a feature_config container, or ``None``.

    Lists and dicts are always wrapped (their children are the wrapped containers inside, by
    index or key, in order); a tuple only when something inside it is wrapped, and a namedtuple
    then lists each wrapped child twice, under its field name and under its index (all fields
    first). ``FeatureConfig`` leaves are not trackable and get no node. Observed with TF 2.21.
    """
    if isinstance(obj, Mapping):
        node = _Node()
        for key, value in obj.items():
            child = _container_node(value)
            if child is not None:
                node.children.append((str(key), child))
        return node
    if isinstance(obj, list):
        node = _Node()
        for i, value in enumerate(obj):
            child = _container_node(value)
            if child is not None:
                node.children.append((str(i), child))
        return node
    if isinstance(obj, tuple):
        tracked = [(i, c) for i, v in enumerate(obj) if (c := _container_node(v)) is not None]
        if not tracked:
            return None
        node = _Node()
        fields = getattr(type(obj), "_fields", None)
        if fields is not None:
            node.children += [(fields[i], c) for i, c in tracked]
        node.children += [(str(i), c) for i, c in tracked]
        return node
    return None


def _embedding_node(emb: TPUEmbeddingForServing) -> _Node:
    """One embedding object's subgraph as TensorFlow 2.21 lays it out (§6.4)."""
    node = _Node()
    config = _container_node(emb._feature_config)
    if config is not None:
        node.children.append(("_feature_config", config))
    node.children += [("_output_shapes", _Node()), ("_table_config", _Node())]
    variables = emb.variables
    per_table: list[tuple[str, _Node]] = []
    for table in emb._table_configs:
        name = str(table.name)
        params = _Node(name, variables[table.name]["parameters"])
        node.children.append((name, params))
        wrapper = _Node()
        for slot in emb._table_slot_names(table):
            slot_node = _Node(f"{name}/{slot}", variables[table.name][slot])
            node.children.append((f"{name}/{slot}", slot_node))
            wrapper.children.append((slot, slot_node))
        wrapper.children.append(("parameters", params))
        per_table.append((name, wrapper))
    var_node = _Node()
    var_node.children = per_table
    node.children.append(("_variables", var_node))
    return node


def write_checkpoint(
    prefix: str,
    objects: Mapping[str, TPUEmbeddingForServing],
    save_counter: int,
    *,
    progress: Progress | None = None,
) -> str:
    """Write ``objects`` (attribute name → serving object) as a TensorFlow checkpoint.

    The bundle is what ``tf.train.Checkpoint(**objects).write(prefix)`` would write: the same
    object graph (node for node, numbered breadth-first), keys, dtypes, data order and the
    ``save_counter``, so the files are byte-identical to TensorFlow's. Files go to temporary
    names and are renamed into place, so a reader never sees a partial checkpoint and arrays
    mapped from an older checkpoint of the same prefix stay valid.

    Tables always go out as plain per-table variables, also those served from a SparseCore
    stack (each unstacked in turn, ``np.asarray``, while it is written): TensorFlow's
    ``TPUEmbeddingForServing`` restores such a checkpoint, and a TPU job's checkpoint adapter
    reshards it into its stacks.

    Args:
        prefix: where to write.
        objects: attribute name under the root → serving object.
        save_counter: the value of the root's ``save_counter``.
        progress: ``progress(done_bytes, total_bytes)``: ``(0, total)`` first, then after each
            table or slot, ``(total, total)`` last, before the files are renamed into place
            (it may raise to abandon the write).

    Returns:
        ``prefix``.
    """
    root = _Node()
    root.children = [(name, _embedding_node(obj)) for name, obj in objects.items()]
    counter_value = np.asarray(save_counter, dtype=np.int64)
    counter = _Node(SAVE_COUNTER, counter_value)
    root.children.append((SAVE_COUNTER, counter))

    order = [root]
    root.id = 0
    for node in order:  # breadth-first; `order` grows while it is walked
        for _, child in node.children:
            if child.id < 0:
                child.id = len(order)
                order.append(child)
    b = ObjectGraphBuilder()
    for _ in order[1:]:
        b.add_node()
    for node in order:
        for name, child in node.children:
            b.add_child(node.id, name, child.id)
        if node.full_name is not None:
            b.add_attribute(node.id, full_name=node.full_name)
    _, keys = b.build()
    tables = [n for n in order if n.value is not None and n is not counter]
    total = sum(int(n.value.nbytes) for n in tables if n.value is not None)
    with BundleWriter(prefix, overwrite=True) as w:
        w.add(keys[(counter.id, "VARIABLE_VALUE")], counter_value)
        with ProgressCounter(progress, total) as tally:
            for node in tables:
                assert node.value is not None
                w.add(keys[(node.id, "VARIABLE_VALUE")], np.asarray(node.value, dtype=np.float32))
                tally.advance(int(node.value.nbytes))
        w.add(OBJECT_GRAPH_KEY, b.serialize())
    return prefix


def collapse_huge_pages(embedding: TPUEmbeddingForServing) -> int:
    """Back ``embedding``'s tables (not its slots) with 2 MiB pages; returns the bytes moved.

    Random-row lookups in tables of gigabytes spend much of their time on TLB misses with the
    usual 4 KiB pages: with 2 MiB pages, ``benchmarks/huge_pages.py`` measured 1.5x faster
    one-hot gathers and bags on a 1 GiB table. Restored tables are memory-mapped at 2 MiB
    boundaries, and this asks the kernel (``madvise(MADV_COLLAPSE)``, Linux >= 6.1) to move
    their pages into huge pages: the page cache is changed, so every process mapping the
    checkpoint the same way benefits. It copies the memory (about 3.5 s per GiB here): call it
    after a restore and before serving, or off the request path (``embserve serve`` does with
    ``huge_pages = true`` under ``[server]``). Returns 0 where the platform or filesystem
    refuses; lookups are correct either way. A table served from a SparseCore stack collapses
    its whole stack (once, however many of the tables share it).
    """
    # The tables it holds now: an object not yet restored or built has none (and is not built).
    arrays: dict[int, np.ndarray] = {}
    for table in embedding._tables.values():
        array = table.stack if isinstance(table, StackedTable) else table
        arrays.setdefault(id(array), array)
    return sum(_collapse(array) for array in arrays.values())
