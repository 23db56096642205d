"""SparseCore (``TPUEmbeddingV2``) checkpoints: the table layouts proto and the stacked variables.

A checkpoint written by TensorFlow's ``TPUEmbeddingV2`` (TPU v5p, v6e and later) holds no
per-table variables. Tables that share a padded width and an optimizer are one *stack*, a
float32 variable ``[T·N, W]`` named after its tables joined with ``_``, and the serialized
``SparseCoreTableLayouts`` proto stored beside the stacks under the object's child
``_sparse_core_table_layouts`` says where each logical table lies in its stack
(SPARSECORE_FORMAT.md §0-§5)::

    P/_sparse_core_table_layouts/.ATTRIBUTES/VARIABLE_VALUE     string scalar (the proto)
    P/<stack>/.ATTRIBUTES/VARIABLE_VALUE                        float32 [T·N, W], one slice/chip
    P/<stack>.S<slot>/.ATTRIBUTES/VARIABLE_VALUE                each optimizer slot, same layout

Logical row ``r`` of a table is stacked row ``((r mod N + ρ) mod N)·T + o + r div N``, and its
values are the first ``D`` of that row's ``W`` columns (§3.1).

This module is the format layer only (bytes, names, shapes), like the rest of
:mod:`embserve.checkpoint`: it decodes the proto (:func:`decode_layouts`), checks it
(:func:`validate_layouts`, every rule of §10.3; TensorFlow checks only one of them), groups it by
stack (:class:`SparseCoreLayouts`), checks a stack's checkpoint entry against its layouts
(:func:`check_stack_entry`) and has a NumPy reference of TensorFlow's unstacking
(:func:`unstack_table`). Serving a table from its stack without copying is
:class:`embserve.tables.StackedTable`'s job; matching layouts to an embedding's tables is
:mod:`embserve.checkpointing`'s.

Every failure names the checkpoint, the key and the table: a damaged or inconsistent proto, or a
stack whose shape disagrees with it, is a :class:`~embserve.errors.CorruptCheckpointError`; a
stack that is missing or is not float32 is a :class:`~embserve.errors.CheckpointMismatchError`,
as a per-table variable of another dtype would be.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from embserve.checkpoint.bundle import TensorInfo
from embserve.checkpoint.dtypes import DataType
from embserve.checkpoint.protos import sparse_core_layout_pb2 as pb
from embserve.errors import CheckpointMismatchError, CorruptCheckpointError

__all__ = [
    "LAYOUTS_ATTRIBUTE",
    "SparseCoreLayouts",
    "StackLayout",
    "TableLayout",
    "check_stack_entry",
    "decode_layouts",
    "encode_layouts",
    "parse_layouts",
    "slot_edge",
    "stacked_rows",
    "unstack_table",
    "validate_layouts",
]

#: The child of a SparseCore embedding object holding the serialized layouts
#: (``SPARSECORE_LAYOUTS_CHECKPOINT_KEY`` in TensorFlow's ``tpu_embedding_v3_utils.py``).
LAYOUTS_ATTRIBUTE = "_sparse_core_table_layouts"


def slot_edge(stack: str, slot: str) -> str:
    """The object-graph edge of a stack's optimizer slot: ``"<stack>/<slot>"`` (its key escapes
    the ``/`` as ``.S``: ``P/<stack>.S<slot>/.ATTRIBUTES/VARIABLE_VALUE``)."""
    return f"{stack}/{slot}"


@dataclass(frozen=True)
class TableLayout:
    """One ``SparseCoreTableLayout``: where a logical table lies inside its stack.

    Field names follow SPARSECORE_FORMAT.md §1; the proto field each comes from is given. After
    :func:`validate_layouts`, ``shape`` and ``padded_shape`` have two elements and the
    properties below are meaningful.

    Attributes:
        table: ``table_name`` (1), the logical table (``TableConfig.name``).
        stack: ``stacked_table_name`` (2), the checkpoint variable holding it.
        num_sparse_cores: N, ``num_sparse_cores`` (3): SparseCores of the whole job.
        num_partitions: ``num_partitions`` (4): TPU chips (one row slice each on disk).
        shard_rows: T, ``total_rows_per_sparse_core_shard`` (5).
        shape: ``unsharded_shape`` (6): ``(R, D)``, the logical table.
        padded_shape: ``unsharded_padded_shape`` (7): ``(Rp, W)``.
        row_offset: o, ``sparse_core_shard_row_offset`` (8).
        rotation: ρ, ``sparse_core_shard_rotation`` (9).
        per_sparse_core_batch_size: (10), training information only.
        num_features: (11), training information only.
        fdo_key: (12), training information only.
    """

    table: str
    stack: str
    num_sparse_cores: int
    num_partitions: int
    shard_rows: int
    shape: tuple[int, ...]
    padded_shape: tuple[int, ...]
    row_offset: int = 0
    rotation: int = 0
    per_sparse_core_batch_size: int = 0
    num_features: int = 0
    fdo_key: str = ""

    @property
    def rows(self) -> int:
        """R, the logical vocabulary size."""
        return self.shape[0]

    @property
    def dim(self) -> int:
        """D, the logical dimension."""
        return self.shape[1]

    @property
    def padded_rows(self) -> int:
        """Rp, the vocabulary padded to a multiple of N (of 8·N, as TensorFlow pads)."""
        return self.padded_shape[0]

    @property
    def width(self) -> int:
        """W, the stack's padded width."""
        return self.padded_shape[1]

    @property
    def block_rows(self) -> int:
        """Rp / N: rows this table owns in every SparseCore shard, from ``row_offset`` on."""
        return self.padded_rows // self.num_sparse_cores

    @property
    def sparse_cores_per_chip(self) -> int:
        """N / ``num_partitions``: 4 on v5p, 2 on v6e."""
        return self.num_sparse_cores // self.num_partitions

    @property
    def stack_shape(self) -> tuple[int, int]:
        """``(T·N, W)``, the shape its stack must have."""
        return (self.shard_rows * self.num_sparse_cores, self.width)

    def to_proto(self) -> pb.SparseCoreTableLayout:
        """The message this layout came from (or would be written as)."""
        return pb.SparseCoreTableLayout(
            table_name=self.table,
            stacked_table_name=self.stack,
            num_sparse_cores=self.num_sparse_cores,
            num_partitions=self.num_partitions,
            total_rows_per_sparse_core_shard=self.shard_rows,
            unsharded_shape=self.shape,
            unsharded_padded_shape=self.padded_shape,
            sparse_core_shard_row_offset=self.row_offset,
            sparse_core_shard_rotation=self.rotation,
            per_sparse_core_batch_size=self.per_sparse_core_batch_size,
            num_features=self.num_features,
            fdo_key=self.fdo_key,
        )


@dataclass(frozen=True)
class StackLayout:
    """One stacked variable and the layouts of the tables inside it (all agreeing on N, chips,
    T and W, as :func:`validate_layouts` checked).

    Attributes:
        name: ``stacked_table_name``, the variable's name (its object-graph edge).
        tables: the layouts of its tables, by row offset (the order of their blocks).
    """

    name: str
    tables: tuple[TableLayout, ...]

    @property
    def num_sparse_cores(self) -> int:
        """N."""
        return self.tables[0].num_sparse_cores

    @property
    def num_partitions(self) -> int:
        """TPU chips."""
        return self.tables[0].num_partitions

    @property
    def sparse_cores_per_chip(self) -> int:
        """N / chips."""
        return self.tables[0].sparse_cores_per_chip

    @property
    def shard_rows(self) -> int:
        """T."""
        return self.tables[0].shard_rows

    @property
    def width(self) -> int:
        """W."""
        return self.tables[0].width

    @property
    def shape(self) -> tuple[int, int]:
        """``(T·N, W)``: the shape its checkpoint entry must have."""
        return self.tables[0].stack_shape

    @property
    def table_names(self) -> tuple[str, ...]:
        """Its tables' names, by row offset."""
        return tuple(t.table for t in self.tables)


class SparseCoreLayouts:
    """A validated ``SparseCoreTableLayouts``: layouts by table name, grouped by stack.

    Build one with :func:`parse_layouts` (bytes) or :func:`validate_layouts` (decoded layouts).

    Attributes:
        key: the checkpoint key the proto was read from (named in every error).
        tables: table name → :class:`TableLayout`, in stored order. TensorFlow stores them in
            table-name order; readers must key by name and never rely on position (§2.5).
        stacks: stack name → :class:`StackLayout`, in order of first appearance.
    """

    def __init__(self, tables: Iterable[TableLayout], key: str) -> None:
        self.key = key
        self.tables: dict[str, TableLayout] = {t.table: t for t in tables}
        grouped: dict[str, list[TableLayout]] = {}
        for t in self.tables.values():
            grouped.setdefault(t.stack, []).append(t)
        self.stacks: dict[str, StackLayout] = {
            name: StackLayout(name, tuple(sorted(ts, key=lambda t: t.row_offset)))
            for name, ts in grouped.items()
        }

    def stack_of(self, table: str) -> StackLayout:
        """The stack holding ``table`` (KeyError when no layout names it)."""
        return self.stacks[self.tables[table].stack]

    def __repr__(self) -> str:
        stacks = ", ".join(f"{s.name}: {list(s.table_names)}" for s in self.stacks.values())
        return f"SparseCoreLayouts({stacks})"


def _where(key: str, prefix: str | None) -> str:
    checkpoint = f"checkpoint {prefix!r}: " if prefix else ""
    return f"{checkpoint}SparseCore table layouts {key!r}"


def decode_layouts(data: bytes, key: str, prefix: str | None = None) -> tuple[TableLayout, ...]:
    """Decode a serialized ``SparseCoreTableLayouts`` (fields 1-12 of every layout, §4).

    Absent fields are their proto3 defaults (0, empty); unknown fields are skipped; shapes are
    accepted packed or unpacked. Nothing is checked beyond the wire format: see
    :func:`validate_layouts`.

    Args:
        data: the proto bytes (the value of the layouts key).
        key: the key they were read from, for messages.
        prefix: the checkpoint, for messages.

    Raises:
        CorruptCheckpointError: the bytes are not a ``SparseCoreTableLayouts`` (a truncated or
            damaged message, a string field that is not UTF-8); the message names ``key``.
    """
    message = pb.SparseCoreTableLayouts()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise CorruptCheckpointError(
            f"{_where(key, prefix)}: {len(data)} bytes that are not a serialized "
            f"SparseCoreTableLayouts proto ({exc})"
        ) from None
    return tuple(
        TableLayout(
            table=m.table_name,
            stack=m.stacked_table_name,
            num_sparse_cores=int(m.num_sparse_cores),
            num_partitions=int(m.num_partitions),
            shard_rows=int(m.total_rows_per_sparse_core_shard),
            shape=tuple(int(d) for d in m.unsharded_shape),
            padded_shape=tuple(int(d) for d in m.unsharded_padded_shape),
            row_offset=int(m.sparse_core_shard_row_offset),
            rotation=int(m.sparse_core_shard_rotation),
            per_sparse_core_batch_size=int(m.per_sparse_core_batch_size),
            num_features=int(m.num_features),
            fdo_key=m.fdo_key,
        )
        for m in message.tables
    )


def encode_layouts(layouts: Iterable[TableLayout]) -> bytes:
    """Serialize layouts as TensorFlow stores them (for tools and tests)."""
    return pb.SparseCoreTableLayouts(tables=[t.to_proto() for t in layouts]).SerializeToString()


def _check_table(t: TableLayout, where: str) -> None:
    """The rules of §10.3 that concern one layout alone."""
    name = f"{where}: table {t.table!r} (stack {t.stack!r})"
    if not t.table:
        raise CorruptCheckpointError(
            f"{where}: a layout has an empty table_name (stack {t.stack!r})"
        )
    if not t.stack:
        raise CorruptCheckpointError(f"{where}: table {t.table!r} has an empty stacked_table_name")
    for field, shape in (("unsharded_shape", t.shape), ("unsharded_padded_shape", t.padded_shape)):
        if len(shape) != 2:
            raise CorruptCheckpointError(
                f"{name}: {field} is {list(shape)}, not 2 dimensions [rows, dim]"
            )
    n, chips = t.num_sparse_cores, t.num_partitions
    if n <= 0:
        raise CorruptCheckpointError(f"{name}: num_sparse_cores is {n}, must be positive")
    if chips <= 0:
        raise CorruptCheckpointError(f"{name}: num_partitions is {chips}, must be positive")
    if n % chips:
        raise CorruptCheckpointError(
            f"{name}: num_sparse_cores {n} is not a multiple of num_partitions {chips} (chips)"
        )
    if t.shard_rows <= 0:
        raise CorruptCheckpointError(
            f"{name}: total_rows_per_sparse_core_shard is {t.shard_rows}, must be positive"
        )
    (rows, dim), (padded_rows, width) = t.shape, t.padded_shape
    if not 0 < rows <= padded_rows:
        raise CorruptCheckpointError(
            f"{name}: unsharded_shape has {rows} rows, unsharded_padded_shape {padded_rows}: "
            "need 0 < rows <= padded rows"
        )
    if not 0 < dim <= width:
        raise CorruptCheckpointError(
            f"{name}: unsharded_shape has dim {dim}, unsharded_padded_shape width {width}: "
            "need 0 < dim <= width"
        )
    if padded_rows % n:
        raise CorruptCheckpointError(
            f"{name}: {padded_rows} padded rows are not a multiple of num_sparse_cores {n}"
        )
    if t.row_offset < 0 or t.row_offset + padded_rows // n > t.shard_rows:
        raise CorruptCheckpointError(
            f"{name}: its rows [{t.row_offset}, {t.row_offset + padded_rows // n}) of every "
            f"SparseCore shard (sparse_core_shard_row_offset {t.row_offset} + {padded_rows} / "
            f"{n}) do not fit in the shard's {t.shard_rows} rows"
        )
    if not 0 <= t.rotation < n:
        raise CorruptCheckpointError(
            f"{name}: sparse_core_shard_rotation is {t.rotation}, must be in [0, {n}) "
            "(num_sparse_cores)"
        )


def _check_stack(tables: Sequence[TableLayout], where: str) -> None:
    """The rules of §10.3 that concern the tables of one stack together."""
    first = tables[0]
    for t in tables[1:]:
        for what, mine, theirs in (
            ("num_sparse_cores", t.num_sparse_cores, first.num_sparse_cores),
            ("num_partitions", t.num_partitions, first.num_partitions),
            ("total_rows_per_sparse_core_shard", t.shard_rows, first.shard_rows),
            ("padded width", t.width, first.width),
        ):
            if mine != theirs:
                raise CorruptCheckpointError(
                    f"{where}: table {t.table!r} has {what} {mine}, but table {first.table!r} of "
                    f"the same stack {t.stack!r} has {theirs}"
                )
    ordered = sorted(tables, key=lambda t: (t.row_offset, t.row_offset + t.block_rows))
    for a, b in itertools.pairwise(ordered):
        if b.row_offset < a.row_offset + a.block_rows:
            raise CorruptCheckpointError(
                f"{where}: in stack {a.stack!r}, table {b.table!r} (shard rows "
                f"[{b.row_offset}, {b.row_offset + b.block_rows})) overlaps table {a.table!r} "
                f"(shard rows [{a.row_offset}, {a.row_offset + a.block_rows}))"
            )


def validate_layouts(
    layouts: Iterable[TableLayout], key: str, prefix: str | None = None
) -> SparseCoreLayouts:
    """Check decoded layouts against every rule of SPARSECORE_FORMAT.md §10.3 and group them.

    Per layout: non-empty names; both shapes of rank 2; N > 0, chips > 0, N a multiple of the
    chips, T > 0; ``0 < R <= Rp``, ``0 < D <= W``, Rp a multiple of N; the block
    ``[o, o + Rp/N)`` inside ``[0, T)``; ``0 <= ρ < N``. Per stack: every layout agrees on N,
    chips, T and W, and the blocks are disjoint. Table names are unique. An empty list is
    allowed (nothing to restore). The stack's own entry is checked by
    :func:`check_stack_entry`.

    Raises:
        CorruptCheckpointError: the first rule broken, naming the table (and the other table
            for a rule between two) and ``key``.
    """
    where = _where(key, prefix)
    tables = list(layouts)
    seen: set[str] = set()
    for t in tables:
        if t.table in seen:
            raise CorruptCheckpointError(f"{where}: table {t.table!r} has more than one layout")
        seen.add(t.table)
        _check_table(t, where)
    grouped: dict[str, list[TableLayout]] = {}
    for t in tables:
        grouped.setdefault(t.stack, []).append(t)
    for members in grouped.values():
        _check_stack(members, where)
    return SparseCoreLayouts(tables, key)


def parse_layouts(data: bytes, key: str, prefix: str | None = None) -> SparseCoreLayouts:
    """:func:`decode_layouts` then :func:`validate_layouts`.

    Raises:
        CorruptCheckpointError: the bytes are damaged or break a rule; names ``key`` (and the
            table).
    """
    return validate_layouts(decode_layouts(data, key, prefix), key, prefix)


def check_stack_entry(
    stack: StackLayout,
    info: TensorInfo | None,
    key: str,
    prefix: str | None = None,
    *,
    what: str = "stacked variable",
) -> None:
    """Check a stack's checkpoint entry (or one of its slots') against its layouts.

    Args:
        stack: the stack's layouts.
        info: the index record of the entry, ``None`` when the checkpoint lacks it.
        key: the entry's key (named in every message).
        prefix: the checkpoint, for messages.
        what: what the entry is, for messages (``"slot 'accumulators' of stack"``...).

    Raises:
        CheckpointMismatchError: the entry is missing, or is not float32 (as for a per-table
            variable of another dtype).
        CorruptCheckpointError: its shape is not ``[T·N, W]``.
    """
    checkpoint = f"checkpoint {prefix!r}: " if prefix else ""
    tables = ", ".join(repr(t) for t in stack.table_names)
    if info is None:
        raise CheckpointMismatchError(
            f"{checkpoint}the SparseCore layouts place tables {tables} in the {what} "
            f"{stack.name!r}, but the checkpoint has no key {key!r}"
        )
    if info.dtype != DataType.FLOAT:
        raise CheckpointMismatchError(
            f"{checkpoint}the {what} {stack.name!r} (tables {tables}) is stored under {key!r} as "
            f"{info.dtype_name}, not float32"
        )
    if info.shape != stack.shape:
        n, t, w = stack.num_sparse_cores, stack.shard_rows, stack.width
        raise CorruptCheckpointError(
            f"{checkpoint}the {what} {stack.name!r} (tables {tables}) is stored under {key!r} "
            f"with shape {list(info.shape)}, but its layouts give [T*N, W] = [{t}*{n}, {w}] = "
            f"{list(stack.shape)}"
        )


def stacked_rows(layout: TableLayout, rows: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The stacked row of each logical row in ``rows`` (§3.1), without any check.

    ``((r mod N + ρ) mod N)·T + o + r div N``.
    """
    r = np.asarray(rows, dtype=np.int64)
    n = layout.num_sparse_cores
    out: npt.NDArray[np.int64] = ((r % n + layout.rotation) % n) * layout.shard_rows + (
        layout.row_offset + r // n
    )
    return out


def unstack_table(stack: npt.NDArray[np.generic], layout: TableLayout) -> npt.NDArray[np.generic]:
    """A new ``[R, D]`` array of one table, cut from its stack the way TensorFlow does.

    The reference implementation of TensorFlow's ``unshuffle_from_sc_to_cpu`` +
    ``remove_padding_from_sc`` (§3.3): reshape to ``(N, T, W)``, keep the table's block
    ``[o, o + Rp/N)`` of every shard, roll the shards by ``-ρ``, interleave them back into
    ``(Rp, W)`` and drop the padding. It copies the table twice on the way; serving code uses
    :class:`embserve.tables.StackedTable` instead.

    Raises:
        ValueError: ``stack`` is not ``[T·N, W]`` for this layout.
    """
    n, t, w = layout.num_sparse_cores, layout.shard_rows, layout.width
    if stack.ndim != 2 or stack.shape[0] % n or tuple(stack.shape) != (t * n, w):
        raise ValueError(
            f"table {layout.table!r}: stack {layout.stack!r} has shape {list(stack.shape)}, "
            f"its layout needs [T*N, W] = {[t * n, w]}"
        )
    shards = stack.reshape(n, t, w)[:, layout.row_offset : layout.row_offset + layout.block_rows]
    if layout.rotation:
        shards = np.roll(shards, -layout.rotation, axis=0)
    padded = shards.transpose(1, 0, 2).reshape(layout.padded_rows, w)
    return np.array(padded[: layout.rows, : layout.dim], copy=True)
