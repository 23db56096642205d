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

from collections.abc import Mapping, Sequence
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
from embserve.errors import CheckpointMismatchError, CorruptCheckpointError
from embserve.tables import StackedTable

__all__ = [
    "SAVE_COUNTER",
    "VERIFY_ON_RESTORE_MAX_BYTES",
    "FoundTable",
    "RestoreResult",
    "collapse_huge_pages",
    "find_embedding_tables",
    "read_sparsecore_layouts",
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
    """

    object_path: tuple[str, ...]
    table: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    slots: dict[str, str]
    layout: TableLayout | None = None


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


def _found_plain(
    reader: BundleReader, graph: ObjectGraph, path: tuple[str, ...], children: Mapping[str, int]
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
        found.append(FoundTable(path, name, key, info.shape, info.dtype_name, slots))
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

    Raises:
        CorruptCheckpointError: a SparseCore object's layouts are damaged (naming the key).
    """
    graph = graph or _load_graph(reader)
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
            found += _found_plain(reader, graph, tuple(path), children)
    return found


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


class _Plan(NamedTuple):
    """What one object's restore reads: its sources, and every key it consumes."""

    sources: list[_Source]
    keys: frozenset[str]


def _check_plain(
    reader: BundleReader, key: str, what: str, shape: tuple[int, int], table: Any
) -> None:
    """A per-table variable's entry: present, float32, of the TableConfig's shape."""
    if not reader.has_tensor(key):
        raise CheckpointMismatchError(
            f"checkpoint {reader.prefix!r}: the object graph names key {key!r} for {what}, but "
            "the bundle has no such tensor"
        )
    info = reader.info(key)
    if info.dtype != DataType.FLOAT or info.shape != shape:
        raise CheckpointMismatchError(
            f"checkpoint {reader.prefix!r}: {what} is stored under {key!r} as "
            f"{info.dtype_name} {list(info.shape)}, but the TableConfig wants float32 "
            f"{list(shape)} (vocabulary_size={table.vocabulary_size}, dim={table.dim})"
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
        key = _variable_key(graph, node_path, what, reader.prefix, hint)
        _check_plain(reader, key, what, shape, table)
        sources.append(_Source(table, slot, key))
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
    _check_plain(reader, key, f"table {name!r}", shape, table)
    sources = [_Source(table, "parameters", key)]
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
) -> _Plan:
    """Check one object against the checkpoint's metadata; what to read for it."""
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
            table or stack and the key).
    """
    return _restore(
        reader,
        [((name,), obj) for name, obj in objects.items()],
        graph=graph,
        copy=copy,
        verify=verify,
        progress=progress,
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
) -> frozenset[str]:
    """:func:`restore_objects` over ``(object path, object)`` pairs."""
    graph = graph or _load_graph(reader)
    plans = [(obj, _plan_restore(reader, graph, path, obj)) for path, obj in objects]

    def nbytes(key: str) -> int:
        return reader.info(key).num_elements * 4

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
    staged: list[tuple[TPUEmbeddingForServing, dict[Any, dict[str, Table]]]] = []
    # The final report (which may raise to cancel) comes before anything is installed.
    with ProgressCounter(progress, total) as counter:
        for obj, plan in plans:
            variables: dict[Any, dict[str, Table]] = {}
            for source in plan.sources:
                slots = variables.setdefault(source.config.name, {})
                if source.key is None:
                    slots[source.slot] = _initial_slot(source.config, source.slot, slots)
                    continue
                size = nbytes(source.key)
                check = verify or size <= VERIFY_ON_RESTORE_MAX_BYTES
                if source.layout is None:
                    slots[source.slot] = reader.get_tensor(source.key, copy=copy, verify=check)
                    counter.advance(size)
                    continue
                stack = read.get(source.key)
                if stack is None:
                    # Mapped, never copied whole: copy=True copies each table out of it.
                    stack = read[source.key] = reader.get_tensor(source.key, verify=check)
                    counter.advance(size)
                slots[source.slot] = _stacked_table(stack, source.layout, copy)
            staged.append((obj, variables))
    for obj, variables in staged:  # nothing below can fail: install every object
        obj._set_variables(variables)
    return frozenset(key for _, plan in plans for key in plan.keys)


def restore_embedding(
    reader: BundleReader,
    object_path: Sequence[str],
    embedding: TPUEmbeddingForServing,
    *,
    graph: ObjectGraph | None = None,
    copy: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore one object's tables (and slots, when it has an optimizer) from ``reader``.

    :func:`restore_objects` for a single object: every key, dtype, shape and checksum is
    checked before anything is installed, so a failure leaves ``embedding`` as it was.

    Args:
        reader: the open checkpoint.
        object_path: edge names from the root to the embedding object (``["embedding"]``).
        embedding: the serving object; built or not (restoring does not run initializers).
        graph, copy, verify, progress: as in :func:`restore_objects`.

    ``object_path`` may lead anywhere, e.g. to a SparseCore embedding inside a Keras model
    (``["model", "_functional", "_operations", "1", "_tpu_embedding"]``).

    Raises:
        CheckpointMismatchError, CorruptCheckpointError: as in :func:`restore_objects`.
    """
    keys = _restore(
        reader,
        [(object_path, embedding)],
        graph=graph,
        copy=copy,
        verify=verify,
        progress=progress,
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
