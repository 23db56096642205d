"""Checkpoints whose TPU embedding object sits below another object, written by embserve.

``tf.train.Checkpoint(model=keras_model)``, where the Keras model holds the TPUEmbedding layer,
stores the embedding at object path ``("model", "layer_with_weights-0")`` (or under the
attribute name the model gave the layer), not at the root. No TensorFlow-made fixture has that
layout, so :func:`nest_embedding` makes one from a fixture: the same tensors, with the root's
``embedding`` edge moved under new objects and every key renamed after its new path, as
TensorFlow names keys (written with :class:`~embserve.checkpoint.BundleWriter`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from embserve.checkpoint import OBJECT_GRAPH_KEY, BundleReader, BundleWriter, ObjectGraph
from embserve.checkpoint.object_graph import object_path_key
from embserve.checkpoint.protos import trackable_object_graph_pb2 as pb


def nest_embedding(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    path: Sequence[str],
    edge: str = "embedding",
) -> str:
    """Copy checkpoint ``source`` to prefix ``target`` with the root's ``edge`` at ``path``.

    Args:
        source: a checkpoint prefix (or directory) whose root has the embedding at ``edge``.
        target: the prefix to write.
        path: the embedding's new object path, e.g. ``("model", "layer_with_weights-0")``;
            every edge but the last is a new, empty object.
        edge: the root's edge to move.

    Returns:
        ``target`` as a string.
    """
    reader = BundleReader(source)
    try:
        graph = ObjectGraph.from_reader(reader)
        assert graph is not None
        proto = pb.TrackableObjectGraph()
        proto.CopyFrom(graph.proto)
        root = proto.nodes[0]
        at = next(i for i, ref in enumerate(root.children) if ref.local_name == edge)
        embedding = root.children[at].node_id
        del root.children[at]
        parent = 0
        for name in path[:-1]:
            node = proto.nodes.add()
            node.has_checkpoint_values.value = True
            proto.nodes[parent].children.add(node_id=len(proto.nodes) - 1, local_name=name)
            parent = len(proto.nodes) - 1
        proto.nodes[parent].children.add(node_id=embedding, local_name=path[-1])

        old, new = object_path_key([edge]) + "/", object_path_key(path) + "/"

        def rename(key: str) -> str:
            return new + key[len(old) :] if key.startswith(old) else key

        for node in proto.nodes:
            for attribute in node.attributes:
                attribute.checkpoint_key = rename(attribute.checkpoint_key)
        with BundleWriter(target) as writer:
            for key in reader:
                if key != OBJECT_GRAPH_KEY:
                    writer.add(rename(key), reader.get_tensor(key))
            writer.add(OBJECT_GRAPH_KEY, proto.SerializeToString())
    finally:
        reader.close()
    return os.fspath(target)
