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
)
from embserve.checkpoint._mapping import collapse_huge_pages as _collapse
from embserve.checkpoint.bundle import ProgressCallback, ProgressCounter
from embserve.embedding import TPUEmbeddingForServing
from embserve.errors import CheckpointMismatchError

__all__ = [
    "SAVE_COUNTER",
    "VERIFY_ON_RESTORE_MAX_BYTES",
    "FoundTable",
    "RestoreResult",
    "collapse_huge_pages",
    "find_embedding_tables",
    "restore_embedding",
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
#: total)`` first, then after each table or slot, ``(total, total)`` last.
Progress = ProgressCallback


class FoundTable(NamedTuple):
    """A table (with its slots) found in a checkpoint's object graph.

    Attributes:
        object_path: edge names from the root to the embedding object, e.g. ``("embedding",)``.
        table: the table name.
        key: the bundle key of the table.
        shape: its shape ``(vocabulary_size, dim)``.
        dtype: TensorFlow's dtype name (``"float32"``).
        slots: slot name → bundle key.
    """

    object_path: tuple[str, ...]
    table: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    slots: dict[str, str]


def _load_graph(reader: BundleReader) -> ObjectGraph:
    graph = ObjectGraph.from_reader(reader)
    if graph is None:
        raise CheckpointMismatchError(
            f"checkpoint {reader.prefix!r} has no object graph ({OBJECT_GRAPH_KEY}): it is a "
            "TF1 name-based checkpoint, which embserve does not restore into objects; read "
            "its tensors with embserve.train.load_checkpoint"
        )
    return graph


def find_embedding_tables(
    reader: BundleReader, graph: ObjectGraph | None = None
) -> list[FoundTable]:
    """Every TPUEmbedding table in a checkpoint, found by the object graph's shape.

    An embedding object is a node with all of TensorFlow's bookkeeping children
    (``_table_config``, ``_variables``, ``_output_shapes``); its tables are the children
    holding a value whose name has no ``/``, and ``"<table>/<slot>"`` children are that
    table's slots.
    """
    graph = graph or _load_graph(reader)
    found: list[FoundTable] = []
    for node in range(len(graph.proto.nodes)):
        children = graph.children(node)
        if not all(m in children for m in _EMBEDDING_MARKERS):
            continue
        path = graph.path_of(node)
        if path is None:
            continue
        for name, child in children.items():
            if "/" in name or name.startswith("_"):
                continue
            attrs = graph.attributes(child)
            if "VARIABLE_VALUE" not in attrs:
                continue
            key = attrs["VARIABLE_VALUE"].checkpoint_key
            if not reader.has_tensor(key):
                continue
            info = reader.info(key)
            slots = {}
            for other, other_child in children.items():
                if other.startswith(name + "/"):
                    slot_attrs = graph.attributes(other_child)
                    if "VARIABLE_VALUE" in slot_attrs:
                        slots[other[len(name) + 1 :]] = slot_attrs["VARIABLE_VALUE"].checkpoint_key
            found.append(FoundTable(tuple(path), name, key, info.shape, info.dtype_name, slots))
    return found


class RestoreResult(NamedTuple):
    """What one embedding restore read: the bundle keys it used."""

    keys: frozenset[str]


def _variable_key(graph: ObjectGraph, path: Sequence[str], what: str, prefix: str) -> str:
    node = graph.find(path)
    attrs = graph.attributes(node) if node is not None else {}
    if "VARIABLE_VALUE" not in attrs:
        raise CheckpointMismatchError(
            f"checkpoint {prefix!r} has no {what} at object path {'/'.join(path)!r} "
            f"(expected key {'/'.join(path)}/.ATTRIBUTES/VARIABLE_VALUE, with '/' in names "
            "escaped as '.S')"
        )
    return attrs["VARIABLE_VALUE"].checkpoint_key


_Plan = list[tuple[Any, str, str]]  # (table name, "parameters" or slot name, bundle key)


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
    plan: _Plan = []
    for table in embedding._table_configs:
        name = str(table.name)
        shape = (table.vocabulary_size, table.dim)
        entries = [("parameters", [*path, name], f"table {name!r}")]
        entries += [
            (slot, [*path, f"{name}/{slot}"], f"slot {slot!r} of table {name!r}")
            for slot in embedding._table_slot_names(table)
        ]
        for slot, node_path, what in entries:
            key = _variable_key(graph, node_path, what, reader.prefix)
            if not reader.has_tensor(key):
                raise CheckpointMismatchError(
                    f"checkpoint {reader.prefix!r}: the object graph names key {key!r} for "
                    f"{what}, but the bundle has no such tensor"
                )
            info = reader.info(key)
            if info.dtype != DataType.FLOAT or info.shape != shape:
                raise CheckpointMismatchError(
                    f"checkpoint {reader.prefix!r}: {what} is stored under {key!r} as "
                    f"{info.dtype_name} {list(info.shape)}, but the TableConfig wants float32 "
                    f"{list(shape)} (vocabulary_size={table.vocabulary_size}, dim={table.dim})"
                )
            plan.append((table.name, slot, key))
    return plan


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
            each table or slot, the total covering every object; ``(total, total)`` last,
            before any object is installed (it may raise to abandon the restore).

    Returns:
        The bundle keys restored (for ``assert_consumed``-style bookkeeping).

    Raises:
        CheckpointMismatchError: an object, a table or a slot is missing, or a stored shape /
            dtype differs from its TableConfig.
        CorruptCheckpointError: a checksum does not match.
    """
    return _restore(
        reader,
        [((name,), obj) for name, obj in objects.items()],
        graph=graph,
        copy=copy,
        verify=verify,
        progress=progress,
    )


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
    total = sum(reader.info(key).num_elements * 4 for _, plan in plans for _, _, key in plan)
    staged: list[tuple[TPUEmbeddingForServing, dict[Any, dict[str, np.ndarray]]]] = []
    # The final report (which may raise to cancel) comes before anything is installed.
    with ProgressCounter(progress, total) as counter:
        for obj, plan in plans:
            variables: dict[Any, dict[str, np.ndarray]] = {}
            for table_name, slot, key in plan:
                nbytes = reader.info(key).num_elements * 4
                check = verify or nbytes <= VERIFY_ON_RESTORE_MAX_BYTES
                variables.setdefault(table_name, {})[slot] = reader.get_tensor(
                    key, copy=copy, verify=check
                )
                counter.advance(nbytes)
            staged.append((obj, variables))
    for obj, variables in staged:  # nothing below can fail: install every object
        obj._set_variables(variables)
    return frozenset(key for _, plan in plans for _, _, key in plan)


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

    Raises:
        CheckpointMismatchError: the embedding object, a table or a slot is missing, or a stored
            shape / dtype differs from the TableConfig.
        CorruptCheckpointError: a checksum does not match.
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


class _Node:
    """One object of the graph being written; ids are given breadth-first, as TensorFlow does."""

    __slots__ = ("children", "full_name", "id", "value")

    def __init__(self, full_name: str | None = None, value: np.ndarray | None = None) -> None:
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
    refuses; lookups are correct either way.
    """
    # The tables it holds now: an object not yet restored or built has none (and is not built).
    return sum(_collapse(table) for table in embedding._tables.values())
