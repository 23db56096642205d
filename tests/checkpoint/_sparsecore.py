"""Hand-built SparseCore checkpoints, written with embserve's own writer, for tests.

:func:`write_sparsecore` lays out what ``tf.train.Checkpoint(embedding=<TPUEmbeddingV2>)`` writes
(SPARSECORE_FORMAT.md §5): under ``embedding``, one object per stack and per ``<stack>/<slot>``
(each stored as one row slice per chip, back to back, as a one-host TPU job writes them), the
layouts string under ``_sparse_core_table_layouts``, plus any plain per-table variable. Values
are packed with the row formula, padding rows 1e30 and padding columns NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embserve.checkpoint import OBJECT_GRAPH_KEY, BundleWriter, ObjectGraphBuilder
from embserve.checkpoint.sparsecore import (
    LAYOUTS_ATTRIBUTE,
    StackLayout,
    TableLayout,
    encode_layouts,
    slot_edge,
    stacked_rows,
    validate_layouts,
)


def layout(
    table: str,
    stack: str,
    rows: int,
    dim: int,
    *,
    cores: int = 4,
    chips: int = 2,
    width: int = 8,
    offset: int = 0,
    rotation: int = 0,
    shard_rows: int | None = None,
) -> TableLayout:
    """A layout padded as TensorFlow pads (rows to a multiple of 8·N); T defaults to the
    table's own block (a stack of one)."""
    padded = -(-rows // (8 * cores)) * 8 * cores
    t = padded // cores if shard_rows is None else shard_rows
    return TableLayout(
        table, stack, cores, chips, t, (rows, dim), (padded, width), offset, rotation
    )


def table_values(layout: TableLayout, seed: int = 0) -> np.ndarray:
    """Distinct values for a logical table: ``1000·(seed+1) + row + col/16``."""
    rows, cols = np.indices(layout.shape, dtype=np.float32)
    return (1000 * (seed + 1) + rows + cols / 16).astype(np.float32)


def pack(stack: StackLayout, tables: Mapping[str, np.ndarray]) -> np.ndarray:
    """The stacked tensor ``[T·N, W]`` holding ``tables``, padding 1e30 (rows) / NaN (columns)."""
    out = np.full(stack.shape, 1e30, dtype=np.float32)
    for t in stack.tables:
        rows = stacked_rows(t, np.arange(t.rows))
        out[rows, : t.dim] = tables[t.table]
        out[rows, t.dim :] = np.nan
    return out


def _chip_slices(value: np.ndarray, chips: int) -> list[tuple[Any, np.ndarray]]:
    per = value.shape[0] // chips
    return [
        (((p * per, per), (0, value.shape[1])), value[p * per : (p + 1) * per])
        for p in range(chips)
    ]


def write_sparsecore(
    prefix: Path | str,
    layouts: Sequence[TableLayout],
    *,
    slots: Sequence[str] = (),
    plain: Mapping[str, np.ndarray] | None = None,
    layouts_value: Any = None,
    stack_values: Mapping[str, np.ndarray] | None = None,
    omit: Sequence[str] = (),
) -> dict[str, dict[str, np.ndarray]]:
    """Write a SparseCore checkpoint; returns ``{table: {"parameters"|slot: logical values}}``.

    Args:
        prefix: where.
        layouts: the layouts (validated; stacks are made from them).
        slots: slot names every stack carries (slot ``j`` adds ``(j+1)·100000``).
        plain: extra per-table variables ``embedding/<name>`` (a mixed checkpoint).
        layouts_value: what to store as the layouts value instead of the encoded proto.
        stack_values: stored values for some stack (or ``<stack>/<slot>``) objects instead of
            the packed ones.
        omit: stack (or ``<stack>/<slot>``) objects to leave out.
    """
    parsed = validate_layouts(layouts, "<test>")
    logical = {
        t: {"parameters": table_values(lay, i)} for i, (t, lay) in enumerate(parsed.tables.items())
    }
    for j, slot in enumerate(slots):
        for t in logical:
            logical[t][slot] = logical[t]["parameters"] + (j + 1) * 100000
    values: dict[str, np.ndarray] = {}
    for name, stack in parsed.stacks.items():
        values[name] = pack(stack, {t: logical[t]["parameters"] for t in stack.table_names})
        for slot in slots:
            tables = {t: logical[t][slot] for t in stack.table_names}
            values[slot_edge(name, slot)] = pack(stack, tables)
    values.update(stack_values or {})
    for name in omit:
        del values[name]

    b = ObjectGraphBuilder()
    emb = b.add_child(b.ROOT, "embedding")
    nodes = {}
    for name in [*values, *(plain or {})]:
        nodes[name] = b.add_child(emb, name)
        b.add_attribute(nodes[name], full_name=name)
    layouts_node = b.add_child(emb, LAYOUTS_ATTRIBUTE)
    b.add_attribute(layouts_node, full_name=LAYOUTS_ATTRIBUTE)
    counter = b.add_child(b.ROOT, "save_counter")
    b.add_attribute(counter, full_name="save_counter")
    _, keys = b.build()
    chips = layouts[0].num_partitions if layouts else 1
    with BundleWriter(prefix, overwrite=True) as w:
        for name, value in values.items():
            key = keys[(nodes[name], "VARIABLE_VALUE")]
            if value.ndim == 2 and value.shape[0] % chips == 0 and chips > 1:
                w.add_sliced(key, value.shape, _chip_slices(value, chips))
            else:
                w.add(key, value)
        for name, value in (plain or {}).items():
            w.add(keys[(nodes[name], "VARIABLE_VALUE")], value)
        stored = encode_layouts(layouts) if layouts_value is None else layouts_value
        w.add(keys[(layouts_node, "VARIABLE_VALUE")], stored)
        w.add(keys[(counter, "VARIABLE_VALUE")], np.int64(1))
        w.add(OBJECT_GRAPH_KEY, b.serialize())
    return logical
