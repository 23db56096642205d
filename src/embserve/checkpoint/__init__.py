"""TensorFlow checkpoints, read and written natively: bytes, names, dtypes and shapes only.

This package is embserve's TensorFlow-free implementation of the checkpoint format that
``tf.train.Checkpoint``, ``tf.compat.v1.train.Saver`` (V2) and ``tf.train.load_checkpoint`` use
(specified in ``CHECKPOINT_FORMAT.md``). It knows nothing about embeddings: mapping tables and
optimizer slots to keys is the job of :mod:`embserve.checkpointing`, one layer up. It depends on
numpy, protobuf (with embserve's own ``.proto`` subset) and google-crc32c only.

The public surface is small on purpose; the modules hold the details:

- :class:`BundleReader` / :class:`BundleWriter` (:mod:`.bundle`): a checkpoint prefix's tensors
  by name, validated before use, numeric tensors as zero-copy read-only memory-mapped views;
  writing through temporary files and atomic renames. ``BundleReader(prefix, lease=True)``
  guards a long-lived reader against its files being changed in place (``cp`` / ``rsync
  --inplace`` / ``truncate`` onto a mapped file would otherwise kill the process with SIGBUS):
  read leases, :meth:`BundleReader.broken_leases`, :meth:`BundleReader.fence`.
- :class:`TensorInfo`, :class:`DataType` (:mod:`.dtypes`): what the index says about a tensor.
- :class:`ObjectGraph` / :class:`ObjectGraphBuilder` (:mod:`.object_graph`): the TF2 object
  graph (``_CHECKPOINTABLE_OBJECT_GRAPH``), walking edge-name paths to checkpoint keys, and
  building one for a writer; :func:`attribute_key` forms TensorFlow's keys.
- :func:`latest_checkpoint`, :func:`read_checkpoint_state`, :func:`write_checkpoint_state`
  (:mod:`.state`): the ``checkpoint`` state file, with ``tf.train.latest_checkpoint``'s rules;
  :func:`resolve_checkpoint`: the one rule for "a prefix, or a directory meaning its latest
  checkpoint", with errors that say why there is none.

Lower-level pieces (the ``.index`` table in :mod:`.sstable`, masked CRCs in :mod:`.crc32c`, slice
keys in :mod:`.slices`) are importable from their modules for tools and tests.
:mod:`.sparsecore` reads the layouts of SparseCore (``TPUEmbeddingV2``) checkpoints' stacked tables
(``SPARSECORE_FORMAT.md``): decoding, validation, stack entries.

Every failure is an :class:`embserve.errors.CheckpointError`: ``CheckpointNotFoundError`` (also a
``FileNotFoundError``) for missing files, ``CorruptCheckpointError`` naming file, offset and the
expectation that failed (also for a file that is not a regular file or is over a size cap),
``CheckpointMismatchError`` for a missing key or object, ``CheckpointBusyError`` for a data file
still open for writing (with ``lease=True``; transient), and the base class, naming the file,
for any OS error while reading (permissions, a symlink loop, too many open files).
"""

from embserve.checkpoint.bundle import BundleReader, BundleWriter, TensorInfo
from embserve.checkpoint.dtypes import DataType, bfloat16_to_float32, float32_to_bfloat16
from embserve.checkpoint.object_graph import (
    OBJECT_GRAPH_KEY,
    ObjectGraph,
    ObjectGraphBuilder,
    attribute_key,
)
from embserve.checkpoint.state import (
    CheckpointState,
    latest_checkpoint,
    read_checkpoint_state,
    resolve_checkpoint,
    write_checkpoint_state,
)

__all__ = [
    "OBJECT_GRAPH_KEY",
    "BundleReader",
    "BundleWriter",
    "CheckpointState",
    "DataType",
    "ObjectGraph",
    "ObjectGraphBuilder",
    "TensorInfo",
    "attribute_key",
    "bfloat16_to_float32",
    "float32_to_bfloat16",
    "latest_checkpoint",
    "read_checkpoint_state",
    "resolve_checkpoint",
    "write_checkpoint_state",
]
