"""The TF2 object graph stored in ``_CHECKPOINTABLE_OBJECT_GRAPH``, and its checkpoint keys.

A TF2 object-based checkpoint (``tf.train.Checkpoint``, Keras, ``CheckpointManager``) holds a
scalar string tensor ``_CHECKPOINTABLE_OBJECT_GRAPH`` whose value is a serialized
``TrackableObjectGraph``: node 0 is the root (the ``tf.train.Checkpoint``), every node lists
named edges to its children and the tensors saved for it (attributes), and each attribute names
the bundle key that holds its value (CHECKPOINT_FORMAT.md §6).

Restoring matches *edge names from the root*, not keys: a value is found by walking the child
names of an object path (e.g. ``("embedding", "table_a")``) and reading the attribute's
``checkpoint_key``. :class:`ObjectGraph` does that walk. Keys TensorFlow writes are formed from
the first breadth-first path to each object, with ``.`` escaped as ``..`` and ``/`` as ``.S`` in
every edge name (:func:`attribute_key`)::

    embedding/table_a.Saccumulators/.ATTRIBUTES/VARIABLE_VALUE
    └ edge "embedding" / edge "table_a/accumulators" / attribute "VARIABLE_VALUE"

:class:`ObjectGraphBuilder` builds a graph for a writer the same way TensorFlow does (keys from
breadth-first paths, ``has_checkpoint_values`` on every node).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from embserve.checkpoint._wire import corrupt
from embserve.checkpoint.protos import trackable_object_graph_pb2 as pb
from embserve.errors import CheckpointMismatchError

if TYPE_CHECKING:
    from embserve.checkpoint.bundle import BundleReader

__all__ = [
    "ATTRIBUTES",
    "OBJECT_GRAPH_KEY",
    "VARIABLE_VALUE",
    "Attribute",
    "ObjectGraph",
    "ObjectGraphBuilder",
    "attribute_key",
    "escape_name",
    "object_path_key",
    "split_attribute_key",
    "unescape_name",
]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_VALUE = "VARIABLE_VALUE"
ATTRIBUTES = ".ATTRIBUTES"
OPTIMIZER_SLOT = ".OPTIMIZER_SLOT"

ObjectPath = tuple[str, ...]


def escape_name(name: str) -> str:
    """Escape one edge or attribute name for a checkpoint key: ``.`` -> ``..``, ``/`` -> ``.S``."""
    return name.replace(".", "..").replace("/", ".S")


def unescape_name(escaped: str) -> str:
    """Inverse of :func:`escape_name`.

    Raises:
        ValueError: ``escaped`` contains a ``.`` not followed by ``.`` or ``S`` (such a
            component is a keyword like ``.ATTRIBUTES``, not a name).
    """
    out = []
    i = 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == ".":
            nxt = escaped[i + 1 : i + 2]
            if nxt == ".":
                out.append(".")
            elif nxt == "S":
                out.append("/")
            else:
                raise ValueError(f"not an escaped name: {escaped!r}")
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def object_path_key(path: Sequence[str]) -> str:
    """The key prefix of the object reached by edge names ``path`` from the root."""
    return "/".join(escape_name(p) for p in path)


def attribute_key(path: Sequence[str], attribute: str = VARIABLE_VALUE) -> str:
    """The checkpoint key TensorFlow gives attribute ``attribute`` of the object at ``path``.

    >>> attribute_key(["embedding", "table_a/accumulators"])
    'embedding/table_a.Saccumulators/.ATTRIBUTES/VARIABLE_VALUE'
    """
    return f"{object_path_key(path)}/{ATTRIBUTES}/{escape_name(attribute)}"


def split_attribute_key(key: str) -> tuple[ObjectPath, str]:
    """Split an object-based key into ``(object path, attribute name)``.

    Raises:
        ValueError: ``key`` has no ``/.ATTRIBUTES/`` part or is otherwise not such a key (for
            example an optimizer-slot key or a TF1 name).
    """
    marker = f"/{ATTRIBUTES}/"
    head, sep, attr = key.rpartition(marker)
    if not sep or not head or "/" in attr:
        raise ValueError(f"not an object-based checkpoint key: {key!r}")
    return tuple(unescape_name(p) for p in head.split("/")), unescape_name(attr)


@dataclass(frozen=True)
class Attribute:
    """One tensor saved for an object.

    Attributes:
        node_id: the owning node.
        path: first breadth-first edge path from the root to the owner (``None`` if the owner is
            reachable only as a slot variable).
        name: attribute name (``VARIABLE_VALUE`` for variables).
        full_name: the variable's TF1-style name (informational).
        checkpoint_key: the bundle key holding the value.
    """

    node_id: int
    path: ObjectPath | None
    name: str
    full_name: str
    checkpoint_key: str


class ObjectGraph:
    """A validated ``TrackableObjectGraph`` with path lookups.

    Args:
        proto: the parsed graph.
        source: names the graph in error messages (a file path, usually).

    Raises:
        CorruptCheckpointError: no nodes, an edge or slot reference to a missing node, or two
            edges with one name on one node.
    """

    def __init__(self, proto: pb.TrackableObjectGraph, source: str = "<memory>") -> None:
        self.proto = proto
        self.source = source
        n = len(proto.nodes)
        if n == 0:
            raise corrupt(source, None, "object graph has no nodes")
        self._children: list[dict[str, int]] = []
        for i, node in enumerate(proto.nodes):
            edges: dict[str, int] = {}
            for ref in node.children:
                if not 0 <= ref.node_id < n:
                    raise corrupt(
                        source,
                        None,
                        f"object graph node {i}: child {ref.local_name!r} -> missing node "
                        f"{ref.node_id}",
                    )
                if ref.local_name in edges:
                    raise corrupt(
                        source,
                        None,
                        f"object graph node {i}: two children named {ref.local_name!r}",
                    )
                edges[ref.local_name] = ref.node_id
            for slot in node.slot_variables:
                for ref_id in (slot.original_variable_node_id, slot.slot_variable_node_id):
                    if not 0 <= ref_id < n:
                        raise corrupt(
                            source,
                            None,
                            f"object graph node {i}: slot refers to missing node {ref_id}",
                        )
            self._children.append(edges)
        self._paths = self._breadth_first_paths()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<memory>") -> ObjectGraph:
        """Parse a serialized ``TrackableObjectGraph``."""
        proto = pb.TrackableObjectGraph()
        try:
            proto.ParseFromString(data)
        except DecodeError as exc:
            raise corrupt(
                source, None, f"{OBJECT_GRAPH_KEY} is not a TrackableObjectGraph ({exc})"
            ) from None
        return cls(proto, source)

    @classmethod
    def from_reader(cls, reader: BundleReader) -> ObjectGraph | None:
        """The graph of an open checkpoint, or ``None`` for a TF1 name-based checkpoint."""
        if not reader.has_tensor(OBJECT_GRAPH_KEY):
            return None
        value = reader.get_tensor(OBJECT_GRAPH_KEY)
        if value.shape != () or not isinstance(value[()], bytes):
            raise corrupt(reader.index_path, None, f"{OBJECT_GRAPH_KEY} is not a scalar string")
        return cls.from_bytes(value[()], os.fspath(reader.index_path))

    def _breadth_first_paths(self) -> dict[int, ObjectPath]:
        paths: dict[int, ObjectPath] = {0: ()}
        queue = deque([0])
        while queue:
            node = queue.popleft()
            for name, child in self._children[node].items():
                if child not in paths:
                    paths[child] = (*paths[node], name)
                    queue.append(child)
        return paths

    def __len__(self) -> int:
        return len(self.proto.nodes)

    def children(self, node_id: int) -> dict[str, int]:
        """Edge name -> child node id, in stored order."""
        return dict(self._children[node_id])

    def find(self, path: Sequence[str]) -> int | None:
        """The node reached from the root by the edge names ``path``, or ``None``.

        Edge names are matched literally (an edge may contain ``/``, e.g. a TPU embedding slot
        ``"table_a/accumulators"``), so ``path`` is a sequence of names, never one string.
        """
        node = 0
        for name in path:
            nxt = self._children[node].get(name)
            if nxt is None:
                return None
            node = nxt
        return node

    def path_of(self, node_id: int) -> ObjectPath | None:
        """First breadth-first edge path to ``node_id`` (how TensorFlow forms its keys)."""
        return self._paths.get(node_id)

    def attributes(self, node_id: int) -> dict[str, Attribute]:
        """Attribute name -> :class:`Attribute` of one node."""
        path = self._paths.get(node_id)
        return {
            a.name: Attribute(node_id, path, a.name, a.full_name, a.checkpoint_key)
            for a in self.proto.nodes[node_id].attributes
        }

    def attribute_keys(self, path: Sequence[str]) -> dict[str, str]:
        """Attribute name -> checkpoint key for the object at ``path``.

        Raises:
            CheckpointMismatchError: no object at ``path``.
        """
        node = self.find(path)
        if node is None:
            raise CheckpointMismatchError(
                f"object {'/'.join(path)!r} not found in the object graph of {self.source!r}"
            )
        return {name: a.checkpoint_key for name, a in self.attributes(node).items()}

    def iter_attributes(self) -> Iterator[Attribute]:
        """Every attribute of every node, nodes in id order."""
        for node_id in range(len(self.proto.nodes)):
            yield from self.attributes(node_id).values()

    def has_checkpoint_values(self, node_id: int) -> bool | None:
        """The stored ``has_checkpoint_values`` flag (``None`` when the writer set none)."""
        node = self.proto.nodes[node_id]
        return node.has_checkpoint_values.value if node.HasField("has_checkpoint_values") else None


class ObjectGraphBuilder:
    """Build a ``TrackableObjectGraph`` for a checkpoint writer, TensorFlow's way.

    Node 0 is the root. Add edges with :meth:`add_child` (a new node, or an existing one to make
    a node reachable twice, as TensorFlow's ``_variables`` dictionaries do) and saved tensors
    with :meth:`add_attribute`. :meth:`build` fills in every attribute's checkpoint key from
    the first breadth-first path to its node (unless one was given) and ``has_checkpoint_values``
    on every node (true when the node or something below it has attributes).

    Example, the minimal graph that restores a ``TPUEmbeddingForServing``::

        b = ObjectGraphBuilder()
        emb = b.add_child(b.ROOT, "embedding")
        b.add_attribute(b.add_child(b.ROOT, "save_counter"), full_name="save_counter")
        b.add_attribute(b.add_child(emb, "table_a"), full_name="table_a")
        graph, keys = b.build()     # keys[(node, "VARIABLE_VALUE")] -> bundle key
    """

    ROOT = 0

    def __init__(self) -> None:
        self._children: list[list[tuple[str, int]]] = [[]]
        self._attributes: list[list[tuple[str, str, str | None]]] = [[]]

    def add_node(self) -> int:
        """A new node with no edges yet; returns its id."""
        self._children.append([])
        self._attributes.append([])
        return len(self._children) - 1

    def add_child(self, parent: int, name: str, child: int | None = None) -> int:
        """Add edge ``name`` from ``parent`` to ``child`` (new node if ``None``); return ``child``.

        Raises:
            ValueError: ``parent`` already has an edge called ``name``, or a node id is unknown.
        """
        self._check(parent)
        if any(existing == name for existing, _ in self._children[parent]):
            raise ValueError(f"node {parent} already has a child named {name!r}")
        if child is None:
            child = self.add_node()
        self._check(child)
        self._children[parent].append((name, child))
        return child

    def add_attribute(
        self,
        node: int,
        name: str = VARIABLE_VALUE,
        full_name: str = "",
        checkpoint_key: str | None = None,
    ) -> None:
        """Record that tensor ``name`` of ``node`` is saved (key from its path when ``None``)."""
        self._check(node)
        if any(existing == name for existing, _, _ in self._attributes[node]):
            raise ValueError(f"node {node} already has an attribute named {name!r}")
        self._attributes[node].append((name, full_name, checkpoint_key))

    def _check(self, node: int) -> None:
        if not 0 <= node < len(self._children):
            raise ValueError(f"unknown node id {node}")

    def build(self) -> tuple[pb.TrackableObjectGraph, dict[tuple[int, str], str]]:
        """The graph proto and ``{(node, attribute name): checkpoint key}``.

        Raises:
            ValueError: an attribute's node is unreachable from the root and has no explicit key.
        """
        paths: dict[int, ObjectPath] = {0: ()}
        queue = deque([0])
        while queue:
            node = queue.popleft()
            for name, child in self._children[node]:
                if child not in paths:
                    paths[child] = (*paths[node], name)
                    queue.append(child)

        # has_checkpoint_values: a node with attributes, and every node above it.
        parents: dict[int, set[int]] = {}
        for node, edges in enumerate(self._children):
            for _, child in edges:
                parents.setdefault(child, set()).add(node)
        marked = {node for node, attrs in enumerate(self._attributes) if attrs}
        todo = list(marked)
        while todo:
            for parent in parents.get(todo.pop(), ()):
                if parent not in marked:
                    marked.add(parent)
                    todo.append(parent)

        graph = pb.TrackableObjectGraph()
        keys: dict[tuple[int, str], str] = {}
        for node, edges in enumerate(self._children):
            proto = graph.nodes.add()
            for name, child in edges:
                proto.children.add(node_id=child, local_name=name)
            for name, full_name, key in self._attributes[node]:
                if key is None:
                    if node not in paths:
                        raise ValueError(f"node {node} is not reachable from the root")
                    key = attribute_key(paths[node], name)
                keys[(node, name)] = key
                proto.attributes.add(name=name, full_name=full_name, checkpoint_key=key)
            proto.has_checkpoint_values.value = node in marked
        return graph, keys

    def serialize(self) -> bytes:
        """The serialized graph (the value of ``_CHECKPOINTABLE_OBJECT_GRAPH``)."""
        return self.build()[0].SerializeToString()
