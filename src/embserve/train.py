"""``embserve.train``: the ``tf.train`` checkpoint calls, for embedding serving objects.

Moving a serving job over stays an import change::

    embedding = es.TPUEmbeddingForServing(feature_config, optimizer=None)
    es.train.Checkpoint(embedding=embedding).restore(tf_training_checkpoint_path)

``Checkpoint`` tracks :class:`~embserve.TPUEmbeddingForServing` objects under the attribute names
the training job used (``tf.train.Checkpoint(model=model, embedding=embedding)`` → ``embedding``).
``restore`` / ``read`` take a prefix or a directory (its latest checkpoint); ``save`` numbers its
checkpoints and updates the ``checkpoint`` state file; ``write`` writes exactly the prefix given.
``load_checkpoint``, ``list_variables`` and ``latest_checkpoint`` read any TensorFlow checkpoint by
name, as their ``tf.train`` namesakes do.

Checkpoints written by SparseCore training (``TPUEmbeddingV2``, TPU v5p / v6e and later: stacked,
padded tables described by a ``_sparse_core_table_layouts`` proto) restore into the same
``TPUEmbeddingForServing`` with the same call; each table is served in place from its stack
(:mod:`embserve.checkpointing` lists what is checked). ``load_checkpoint`` and ``list_variables``
show such checkpoints' keys as stored: the stacks, not the logical tables.

Quantized checkpoints (written by :func:`embserve.quantizing.quantize_checkpoint` / ``embserve
quantize``: tables stored as float16, bfloat16, int8 or int4 row-wise) restore with the same call:
each such table is served as a :class:`~embserve.storage.QuantizedTable` over the mapped stored
rows (zero-copy). ``restore(path, storage="int8")`` (or ``storage={"users": "int4"}``), an
embserve argument TensorFlow does not have, quantizes float32 tables at restore instead.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from embserve.checkpoint import BundleReader, write_checkpoint_state
from embserve.checkpoint import latest_checkpoint as _latest_checkpoint
from embserve.checkpointing import (
    SAVE_COUNTER,
    Progress,
    StorageRequest,
    _load_graph,
    restore_objects,
)
from embserve.checkpointing import write_checkpoint as _write_checkpoint
from embserve.embedding import TPUEmbeddingForServing
from embserve.errors import CheckpointMismatchError

__all__ = [
    "Checkpoint",
    "CheckpointLoadStatus",
    "CheckpointReader",
    "latest_checkpoint",
    "list_variables",
    "load_checkpoint",
]


def latest_checkpoint(
    checkpoint_dir: str | os.PathLike[str], latest_filename: str | None = None
) -> str | None:
    """The newest checkpoint prefix recorded in ``checkpoint_dir``'s state file, or ``None``."""
    return _latest_checkpoint(checkpoint_dir, latest_filename or "checkpoint")


class CheckpointReader:
    """Name-based access to a checkpoint's tensors (``tf.train.load_checkpoint``'s reader).

    Numeric tensors come back as read-only memory-mapped views; ``bfloat16`` tensors as their
    ``uint16`` bit patterns and strings as ``bytes`` objects.
    """

    def __init__(self, reader: BundleReader) -> None:
        self._reader = reader

    @property
    def prefix(self) -> str:
        """The checkpoint prefix read."""
        return self._reader.prefix

    def get_tensor(self, tensor_str: str) -> np.ndarray:
        """The tensor named ``tensor_str`` (checksum verified)."""
        return self._reader.get_tensor(tensor_str)

    def has_tensor(self, tensor_str: str) -> bool:
        """Whether the checkpoint holds a tensor of that name."""
        return self._reader.has_tensor(tensor_str)

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        """Tensor name → shape."""
        return {k: list(v) for k, v in self._reader.shapes.items()}

    def get_variable_to_dtype_map(self) -> dict[str, str]:
        """Tensor name → TensorFlow's dtype name (``"float32"``, ``"int64"``, ``"string"``...)."""
        return {k: self._reader.info(k).dtype_name for k in self._reader}


def load_checkpoint(ckpt_dir_or_file: str | os.PathLike[str]) -> CheckpointReader:
    """Open a checkpoint (a prefix, or a directory → its latest checkpoint) for reading by name.

    Raises:
        CheckpointNotFoundError: nothing to read there.
        CorruptCheckpointError: the index is damaged.
    """
    return CheckpointReader(BundleReader(ckpt_dir_or_file))


def list_variables(ckpt_dir_or_file: str | os.PathLike[str]) -> list[tuple[str, list[int]]]:
    """Sorted ``(name, shape)`` of every tensor in the checkpoint."""
    reader = BundleReader(ckpt_dir_or_file)
    return sorted((k, list(v)) for k, v in reader.shapes.items())


class CheckpointLoadStatus:
    """What a restore matched, with ``tf.train``'s assertions.

    Unlike TensorFlow, embserve's restore is never deferred and never partial for the objects it
    tracks: a missing table or slot already raised. The assertions report the other direction:
    values in the checkpoint that nothing here consumed.

    After a SparseCore checkpoint is restored, the stacks (and slot stacks) that served a table
    and the layouts key count as consumed, so ``assert_consumed`` passes when every stored
    table was asked for. TensorFlow 2.21's ``assert_consumed`` and
    ``assert_existing_objects_matched`` fail after every correct SparseCore restore (its
    per-table variables have no path in the checkpoint); embserve reports what happened
    instead of mirroring that.
    """

    def __init__(self, prefix: str | None, consumed: frozenset[str], available: frozenset[str]):
        self.save_path = prefix
        self.consumed = consumed
        self.unused = available - consumed

    def assert_consumed(self) -> CheckpointLoadStatus:
        """Raise unless every value in the checkpoint was restored into something.

        Fails, as in TensorFlow, for optimizer slots restored into a serving object without an
        optimizer, or for a checkpoint that also holds a model.
        """
        if self.unused:
            shown = sorted(self.unused)[:10]
            raise CheckpointMismatchError(
                f"checkpoint {self.save_path!r}: {len(self.unused)} value(s) were not restored "
                f"into any object: {shown}{' ...' if len(self.unused) > 10 else ''}"
            )
        return self

    def assert_existing_objects_matched(self) -> CheckpointLoadStatus:
        """Every tracked object was matched (always true after a restore that returned)."""
        return self

    def assert_nontrivial_match(self) -> CheckpointLoadStatus:
        """At least one value was restored."""
        if not self.consumed:
            raise CheckpointMismatchError(f"nothing was restored from {self.save_path!r}")
        return self

    def expect_partial(self) -> CheckpointLoadStatus:
        """Silence warnings about unused values (there are none to silence here)."""
        return self


class Checkpoint:
    """Save and restore ``TPUEmbeddingForServing`` objects in TensorFlow's checkpoint format.

    Args:
        root: not supported (TensorFlow's ``root`` holds a whole object tree); must be ``None``.
        **kwargs: attribute name → ``TPUEmbeddingForServing``; the names must be those the
            checkpoint's writer used (``tf.train.Checkpoint(embedding=...)`` → ``embedding``).

    Raises:
        TypeError: a value is not a ``TPUEmbeddingForServing``.
    """

    def __init__(self, root: Any = None, **kwargs: Any) -> None:
        if root is not None:
            raise TypeError(
                "embserve.train.Checkpoint does not take a root object; pass the embedding as "
                "a keyword argument, e.g. Checkpoint(embedding=emb)"
            )
        for name, obj in kwargs.items():
            if not isinstance(obj, TPUEmbeddingForServing):
                raise TypeError(
                    f"Checkpoint({name}=...) got a {type(obj).__name__}; embserve checkpoints "
                    "track TPUEmbeddingForServing objects only (other objects in a TensorFlow "
                    "checkpoint are simply left unread)"
                )
            if name == SAVE_COUNTER:
                raise ValueError(f"{SAVE_COUNTER!r} is reserved for the checkpoint's counter")
        self._objects: dict[str, TPUEmbeddingForServing] = dict(kwargs)
        self.save_counter = 0

    def __getattr__(self, name: str) -> TPUEmbeddingForServing:
        objects = self.__dict__.get("_objects", {})
        if name in objects:
            return objects[name]
        raise AttributeError(name)

    def read(
        self,
        save_path: str | os.PathLike[str] | None,
        *,
        copy: bool = False,
        verify: bool = False,
        progress: Progress | None = None,
        storage: StorageRequest = None,
    ) -> CheckpointLoadStatus:
        """Restore the tracked objects from ``save_path`` (a prefix or a directory).

        Plain (per-table) and SparseCore (stacked) checkpoints alike; before or after the
        objects are built. All or nothing: every object's tables are checked and read before
        any object is given them (:func:`embserve.checkpointing.restore_objects`), so a
        mismatch or a damaged table leaves every object as it was.

        Args:
            save_path: checkpoint prefix, or a directory (→ its latest checkpoint). ``None``
                restores nothing, as in TensorFlow.
            copy: load tables into private memory instead of memory-mapping the data files
                (tables of a SparseCore stack become plain arrays of their own).
            verify: verify every table's checksum now (tables and stacks up to 64 MiB always
                are).
            progress: ``progress(done_bytes, total_bytes)`` while verifying or copying.
            storage: embserve's own argument: ``None`` serves every table as stored (a
                quantized checkpoint's tables as :class:`~embserve.storage.QuantizedTable` s);
                a storage type (``"float16"``, ``"bfloat16"``, ``"int8"``, ``"int4"``) or
                table name → type quantizes float32 tables at restore, block by block into
                private memory holding the quantized bytes only
                (:func:`embserve.checkpointing.restore_objects`).

        Raises:
            CheckpointNotFoundError: no checkpoint there.
            CheckpointMismatchError: a tracked object, table or slot is missing or differs (for
                a SparseCore checkpoint also: a table's shape differs from its layout, or a
                stack is missing or not float32).
            CorruptCheckpointError: the files are damaged (also: damaged SparseCore layouts,
                or a stack whose shape disagrees with them, or a quantized table's scale or
                bias that is NaN / inf).
            ConfigError: ``storage`` names an unknown table or type.
        """
        if save_path is None:
            return CheckpointLoadStatus(None, frozenset(), frozenset())
        reader = BundleReader(save_path)  # a directory resolves through resolve_checkpoint
        graph = _load_graph(reader)
        # The counter is read first: once the objects are installed, nothing may fail.
        counter_keys = graph.attribute_keys([SAVE_COUNTER]) if graph.find([SAVE_COUNTER]) else {}
        counter_key = counter_keys.get("VARIABLE_VALUE")
        counter = None
        if counter_key is not None and reader.has_tensor(counter_key):
            value = reader.get_tensor(counter_key)
            if value.shape != () or value.dtype.kind not in "iu":
                raise CheckpointMismatchError(
                    f"checkpoint {reader.prefix!r}: {counter_key!r} is {value.dtype} "
                    f"{list(value.shape)}, not the scalar integer save counter"
                )
            counter = int(value)
        consumed = set(
            restore_objects(
                reader,
                self._objects,
                graph=graph,
                copy=copy,
                verify=verify,
                progress=progress,
                storage=storage,
            )
        )
        if counter is not None and counter_key is not None:
            self.save_counter = counter
            consumed.add(counter_key)
        # Keys the graph names but the bundle lacks (a quantized checkpoint's slots) were never
        # there to consume.
        available = frozenset(
            a.checkpoint_key for a in graph.iter_attributes() if reader.has_tensor(a.checkpoint_key)
        )
        return CheckpointLoadStatus(reader.prefix, frozenset(consumed), available)

    def restore(
        self,
        save_path: str | os.PathLike[str] | None,
        *,
        copy: bool = False,
        verify: bool = False,
        progress: Progress | None = None,
        storage: StorageRequest = None,
    ) -> CheckpointLoadStatus:
        """Same as :meth:`read` (the ``save_counter`` is restored by both)."""
        return self.read(save_path, copy=copy, verify=verify, progress=progress, storage=storage)

    def write(
        self, file_prefix: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> str:
        """Write a checkpoint at exactly ``file_prefix`` (no numbering, no state file).

        The objects are built first if needed (as TensorFlow saves variables, not configs).
        Files are written under temporary names and renamed into place.

        Returns:
            ``file_prefix``.
        """
        for obj in self._objects.values():
            obj.build()
        return _write_checkpoint(
            os.fspath(file_prefix), self._objects, self.save_counter, progress=progress
        )

    def save(self, file_prefix: str | os.PathLike[str], *, progress: Progress | None = None) -> str:
        """Write checkpoint ``<file_prefix>-<n>`` and record it in the directory's state file.

        ``n`` is the incremented ``save_counter``. The state file is replaced last, atomically,
        so a watcher never sees a checkpoint before its files are complete.

        Returns:
            The new checkpoint's prefix.
        """
        self.save_counter += 1
        prefix = f"{os.fspath(file_prefix)}-{self.save_counter}"
        try:
            self.write(prefix, progress=progress)
        except BaseException:
            self.save_counter -= 1
            raise
        write_checkpoint_state(os.path.dirname(prefix) or ".", prefix)
        return prefix
