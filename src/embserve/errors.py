"""Every exception embserve raises, in one hierarchy users can catch.

Where TensorFlow raises a Python built-in (``ValueError``, ``TypeError``, ``AttributeError``,
``KeyError``), embserve raises a class that derives from the same built-in, so code written
against ``tf.tpu.experimental.embedding`` that catches built-ins keeps working. Where TensorFlow
raises ``tf.errors.InvalidArgumentError`` from a kernel (bad ids, bad indices, bad dtypes), embserve
raises an :class:`InputError`, which is a ``ValueError``.

::

    EmbserveError
    ├── ConfigError(ValueError)              bad TableConfig / FeatureConfig / optimizer arguments
    │   └── FeatureConfigTypeError(AttributeError)
    │                                        a feature_config leaf that is not a FeatureConfig
    ├── InputError(ValueError)               structure mismatch, wrong dtype or rank, bad weights
    │   └── IdOutOfRangeError(IndexError)    feature, table, row, position, id, valid range
    ├── QuantizationError(ValueError)        a row that a storage type cannot hold, or a stored
    │                                        scale / bias that is NaN or inf: table + row
    └── CheckpointError                      also: an OS error reading a file (names the file)
        ├── CheckpointNotFoundError(FileNotFoundError)
        ├── CorruptCheckpointError           bad magic, crc mismatch, truncation, not a regular
        │                                    file, over a size cap: file + offset
        ├── CheckpointMismatchError          missing table or slot, shape / dtype differs
        └── CheckpointBusyError              a data file is open for writing elsewhere (transient)
"""

from __future__ import annotations

__all__ = [
    "CheckpointBusyError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ConfigError",
    "CorruptCheckpointError",
    "EmbserveError",
    "FeatureConfigTypeError",
    "IdOutOfRangeError",
    "InputError",
    "QuantizationError",
]


class EmbserveError(Exception):
    """Base class of every error embserve raises on purpose."""


class ConfigError(EmbserveError, ValueError):
    """A configuration object (table, feature, optimizer) was given an invalid argument."""


class FeatureConfigTypeError(ConfigError, AttributeError):
    """A leaf of ``feature_config`` is not a ``FeatureConfig``.

    TensorFlow fails here with ``AttributeError`` ("... has no attribute 'output_shape'"); this
    class is both that and a :class:`ConfigError`, and names the offending path.
    """


class InputError(EmbserveError, ValueError):
    """The features or weights given to a lookup are malformed.

    Covers structure mismatches, unsupported dtypes or ranks, inconsistent sparse / ragged
    components, weights that do not pair with their ids, and non-finite weights. The message
    always names the feature path.
    """


class IdOutOfRangeError(InputError, IndexError):
    """An id is outside ``[0, rows)`` of its table.

    Attributes:
        feature: the feature path (``"a/b"``; ``""`` for a lone feature).
        table: the table name.
        row: the example (bag) index of the offending id.
        position: its position within the example (an index tuple for dense ids of rank > 1,
            the sparse index for sparse input, the offset in the row for ragged input).
        id: the offending id value.
        num_rows: the table's row count; valid ids are ``0 <= id < num_rows``.
    """

    def __init__(
        self,
        feature: str,
        table: str,
        row: int,
        position: object,
        id: int,
        num_rows: int,
    ) -> None:
        self.feature = feature
        self.table = table
        self.row = row
        self.position = position
        self.id = id
        self.num_rows = num_rows
        super().__init__(
            f"feature {feature!r} (table {table!r}): id {id} at row {row}, position {position} "
            f"is out of range; valid ids are in [0, {num_rows})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.feature, self.table, self.row, self.position, self.id, self.num_rows),
        )


class CheckpointError(EmbserveError):
    """Base class of every checkpoint reading or writing failure.

    Raised as such for an OS error on a checkpoint file (permissions, a symlink loop, too many
    open files): the message names the file, and the ``OSError`` is the ``__cause__``.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint exists at the given prefix or directory, or one of its files is missing."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is damaged: bad magic, checksum mismatch, truncation, bad offsets."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not match the object restoring it (missing key, shape or dtype)."""


class CheckpointBusyError(CheckpointError):
    """A checkpoint data file is open for writing by another process, so it cannot be protected
    against changes (``BundleReader(..., lease=True)``): most likely it is still being written.
    Transient: retry later."""


class QuantizationError(EmbserveError, ValueError):
    """A table row cannot be stored in the requested type, or stored rows are damaged.

    Raised when quantizing a row that holds NaN or inf (or a value the type cannot hold), and
    when a quantized table's scale or bias is NaN or inf.

    Attributes:
        table: the table name.
        row: the offending row.
    """

    def __init__(self, table: str, row: int, why: str) -> None:
        super().__init__(f"table {table!r}: row {row} {why}")
        self.table = table
        self.row = row
