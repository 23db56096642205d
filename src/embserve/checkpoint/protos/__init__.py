"""Generated protobuf modules for the checkpoint format (do not edit the ``*_pb2`` files).

The ``.proto`` files here are embserve's own minimal subset of TensorFlow's messages: the same
field numbers and wire types, under the package ``embserve.ckpt`` so they never collide with
TensorFlow's descriptors in one process. Regenerate the ``*_pb2.py`` / ``*_pb2.pyi`` files with
``python3 tools/gen_protos.py`` (``make protos``); CI never needs ``protoc``.

- ``tensor_bundle.proto``: ``DataType``, ``TensorShape``, ``TensorSlice``, ``VersionDef``,
  ``BundleHeader``, ``BundleEntry`` (the ``.index`` values).
- ``trackable_object_graph.proto``: ``TrackableObjectGraph`` (``_CHECKPOINTABLE_OBJECT_GRAPH``).
- ``checkpoint_state.proto``: ``CheckpointState`` (the text-format ``checkpoint`` file).
- ``sparse_core_layout.proto``: ``SparseCoreTableLayouts`` (TensorFlow's package
  ``tensorflow.tpu``), the layouts of a SparseCore checkpoint's stacked tables.
"""
