"""SparseCore restore paths the TensorFlow fixtures do not cover, on hand-built checkpoints
(tests/checkpoint/_sparsecore.py): how the layouts value is recognised, slot stacks, checksums of
stacks, all-or-nothing over several objects, progress, huge pages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embserve as es
import embserve.checkpointing as checkpointing
from embserve.checkpoint import OBJECT_GRAPH_KEY, BundleReader, BundleWriter, ObjectGraphBuilder
from embserve.checkpoint.sparsecore import LAYOUTS_ATTRIBUTE
from embserve.checkpointing import collapse_huge_pages, find_embedding_tables
from embserve.tables import StackedTable
from tests.checkpoint._sparsecore import layout, write_sparsecore

LAYOUTS_KEY = "embedding/_sparse_core_table_layouts/.ATTRIBUTES/VARIABLE_VALUE"
STACK_KEY = "embedding/a_b/.ATTRIBUTES/VARIABLE_VALUE"

# Two tables in stack a_b (N = 4 SparseCores on 2 chips, width 8, T = 16 rows per shard) and
# one alone.
A = layout("a", "a_b", 10, 8, offset=0, shard_rows=16)
B = layout("b", "a_b", 29, 5, offset=8, rotation=2, shard_rows=16)
C = layout("c", "c", 3, 4, width=8)
LAYOUTS = [A, B, C]


def _model(shapes: dict[str, tuple[int, int]], optimizer: Any = None) -> es.TPUEmbeddingForServing:
    fc = {
        f"f_{name}": es.FeatureConfig(es.TableConfig(v, d, name=name))
        for name, (v, d) in shapes.items()
    }
    return es.TPUEmbeddingForServing(fc, optimizer)


SHAPES = {"a": (10, 8), "b": (29, 5), "c": (3, 4)}


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_restores_hand_built_stacks_with_slots(tmp_path: Path) -> None:
    logical = write_sparsecore(tmp_path / "ckpt-1", LAYOUTS, slots=["accumulators"])
    emb = _model(SHAPES, es.Adagrad())
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "ckpt-1").assert_consumed()
    for table, values in logical.items():
        for slot, value in values.items():
            restored = emb.variables[table][slot]
            assert isinstance(restored, StackedTable)
            np.testing.assert_array_equal(np.asarray(restored), value)
    reader = BundleReader(tmp_path / "ckpt-1")
    assert reader.info(STACK_KEY).contiguous  # one row slice per chip, back to back


def test_an_empty_layouts_string_means_a_plain_checkpoint(tmp_path: Path) -> None:
    """What TensorFlow's TPUEmbedding writes before build() deletes the attribute: the tables
    are plain per-table variables, and a missing one is named as in any plain checkpoint."""
    plain = {"a": np.arange(80, dtype=np.float32).reshape(10, 8)}
    write_sparsecore(tmp_path / "ckpt-1", [], plain=plain, layouts_value=b"")
    emb = _model({"a": (10, 8)})
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "ckpt-1")
    np.testing.assert_array_equal(emb.variables["a"]["parameters"], plain["a"])
    assert type(emb.variables["a"]["parameters"]) is np.ndarray
    with pytest.raises(es.CheckpointMismatchError, match="'b'") as info:
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "ckpt-1")
    assert "SparseCore" not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [np.float32(1.0), np.array([b"x", b"y"], dtype=object)],
    ids=["float", "string vector"],
)
def test_layouts_that_are_not_a_string_scalar_are_corrupt(tmp_path: Path, value: Any) -> None:
    write_sparsecore(tmp_path / "ckpt-1", LAYOUTS, layouts_value=value)
    emb = _model(SHAPES)
    with pytest.raises(es.CorruptCheckpointError, match=re.escape(LAYOUTS_KEY)):
        es.train.Checkpoint(embedding=emb).restore(tmp_path / "ckpt-1")
    with pytest.raises(es.CorruptCheckpointError, match=re.escape(LAYOUTS_KEY)):
        find_embedding_tables(BundleReader(tmp_path / "ckpt-1"))


def test_a_layouts_key_the_bundle_lacks_is_a_mismatch(tmp_path: Path) -> None:
    b = ObjectGraphBuilder()
    emb_node = b.add_child(b.ROOT, "embedding")
    b.add_attribute(b.add_child(emb_node, LAYOUTS_ATTRIBUTE), checkpoint_key="nowhere")
    with BundleWriter(tmp_path / "ckpt-1") as w:
        w.add(OBJECT_GRAPH_KEY, b.serialize())
    with pytest.raises(es.CheckpointMismatchError, match=r"'nowhere'.*no such tensor"):
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "ckpt-1")


def test_a_missing_slot_stack_is_a_mismatch_naming_slot_table_and_key(tmp_path: Path) -> None:
    write_sparsecore(
        tmp_path / "ckpt-1", LAYOUTS, slots=["accumulators"], omit=["a_b/accumulators"]
    )
    emb = _model(SHAPES, es.Adagrad())
    with pytest.raises(es.CheckpointMismatchError) as info:
        es.train.Checkpoint(embedding=emb).restore(tmp_path / "ckpt-1")
    for word in ("'accumulators'", "'a'", "embedding/a_b.Saccumulators/.ATTRIBUTES"):
        assert word in str(info.value)
    assert not emb._built
    # Without an optimizer no slot is wanted: the same checkpoint serves.
    es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "ckpt-1")


def test_a_slot_stack_of_another_shape_is_corrupt(tmp_path: Path) -> None:
    bad = {"a_b/accumulators": np.zeros((60, 8), np.float32)}
    write_sparsecore(tmp_path / "ckpt-1", LAYOUTS, slots=["accumulators"], stack_values=bad)
    with pytest.raises(es.CorruptCheckpointError, match=r"'accumulators'.*\[64, 8\]"):
        es.train.Checkpoint(embedding=_model(SHAPES, es.Adagrad())).restore(tmp_path / "ckpt-1")


def test_a_damaged_stack_is_caught_when_small_and_by_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stacks up to VERIFY_ON_RESTORE_MAX_BYTES are checksummed (every chip slice); larger
    ones are mapped without reading them unless verify=True, as plain tables are."""
    write_sparsecore(tmp_path / "ckpt-1", LAYOUTS)
    reader = BundleReader(tmp_path / "ckpt-1")
    info = reader.info(STACK_KEY)
    data = Path(reader.data_paths[info.shard_id])
    _flip(data, info.offset + info.size - 3)  # inside the second chip's slice
    with pytest.raises(es.CorruptCheckpointError, match="checksum mismatch"):
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "ckpt-1")
    monkeypatch.setattr(checkpointing, "VERIFY_ON_RESTORE_MAX_BYTES", 0)
    es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "ckpt-1")
    with pytest.raises(es.CorruptCheckpointError, match="checksum mismatch"):
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "ckpt-1", verify=True)


def _two_objects(tmp_path: Path) -> Path:
    """A checkpoint with SparseCore objects `a` (good) and `b` (its layouts damaged)."""
    write_sparsecore(tmp_path / "one", LAYOUTS)
    reader = BundleReader(tmp_path / "one")
    b = ObjectGraphBuilder()
    values = {}
    for name in ("a", "b"):
        node = b.add_child(b.ROOT, name)
        for edge in ("a_b", "c", LAYOUTS_ATTRIBUTE):
            child = b.add_child(node, edge)
            b.add_attribute(child)
            value = reader.get_tensor(f"embedding/{edge}/.ATTRIBUTES/VARIABLE_VALUE")
            if edge == LAYOUTS_ATTRIBUTE:
                value = value[()] if name == "a" else value[()][:-3]
            values[(child, "VARIABLE_VALUE")] = value
    _, keys = b.build()
    with BundleWriter(tmp_path / "two") as w:
        for where, value in values.items():
            w.add(keys[where], value)
        w.add(OBJECT_GRAPH_KEY, b.serialize())
    return tmp_path / "two"


def test_several_objects_restore_all_or_nothing(tmp_path: Path) -> None:
    prefix = _two_objects(tmp_path)
    first, second = _model(SHAPES), _model(SHAPES)
    second.build()
    before = second.variables
    with pytest.raises(es.CorruptCheckpointError, match=re.escape("b/_sparse_core_table_layouts")):
        es.train.Checkpoint(a=first, b=second).restore(prefix)
    assert not first._built
    assert second.variables is before
    es.train.Checkpoint(a=first).restore(prefix)
    assert isinstance(first.variables["b"]["parameters"], StackedTable)


def test_progress_counts_each_stack_once_across_objects(tmp_path: Path) -> None:
    write_sparsecore(tmp_path / "ckpt-1", LAYOUTS)
    reader = BundleReader(tmp_path / "ckpt-1")
    objects = {"embedding": _model(SHAPES)}
    reports: list[tuple[int, int]] = []
    checkpointing.restore_objects(
        reader, objects, progress=lambda done, total: reports.append((done, total))
    )
    total = (64 * 8 + 32 * 8) * 4  # stack a_b once (two tables), stack c
    assert reports == [(0, total), (64 * 8 * 4, total), (total, total)]


def test_huge_pages_are_asked_for_each_stack_once(tmp_path: Path) -> None:
    """collapse_huge_pages works on stacked tables (their stack, once per stack)."""
    big = layout("big", "big", 8192, 64, width=64)  # 2 MiB, one huge page
    write_sparsecore(tmp_path / "ckpt-1", [big])
    emb = _model({"big": (8192, 64)})
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "ckpt-1")
    moved = collapse_huge_pages(emb)
    assert moved in (0, 2 << 20)  # 0 where the kernel or filesystem refuses


def test_restore_keys_name_each_tables_stack(tmp_path: Path) -> None:
    """What a checksum pass over served tables needs: the key each table was restored from."""
    write_sparsecore(tmp_path / "ckpt-1", LAYOUTS, slots=["accumulators"])
    keys = checkpointing.restore_keys(
        BundleReader(tmp_path / "ckpt-1"), ["embedding"], _model(SHAPES, es.Adagrad())
    )
    slot_key = "embedding/a_b.Saccumulators/.ATTRIBUTES/VARIABLE_VALUE"
    assert keys["a"] == {"parameters": STACK_KEY, "accumulators": slot_key}
    assert keys["b"] == keys["a"]
    assert keys["c"]["parameters"] == "embedding/c/.ATTRIBUTES/VARIABLE_VALUE"
    with pytest.raises(es.CheckpointMismatchError, match="'d'"):
        checkpointing.restore_keys(
            BundleReader(tmp_path / "ckpt-1"), ["embedding"], _model({**SHAPES, "d": (2, 2)})
        )


def test_find_tells_a_stack_from_the_slots_of_another(tmp_path: Path) -> None:
    """Table names may hold '/': stack 'item' must not take stack 'item/sku' (or its slots) for
    slots of its own."""
    layouts = [layout("item", "item", 5, 8), layout("item/sku", "item/sku", 7, 8)]
    write_sparsecore(tmp_path / "ckpt-1", layouts, slots=["accumulators"])
    found = {f.table: f for f in find_embedding_tables(BundleReader(tmp_path / "ckpt-1"))}
    assert found["item"].slots == {
        "accumulators": "embedding/item.Saccumulators/.ATTRIBUTES/VARIABLE_VALUE"
    }
    assert found["item/sku"].slots == {
        "accumulators": "embedding/item.Ssku.Saccumulators/.ATTRIBUTES/VARIABLE_VALUE"
    }
    assert found["item/sku"].key == "embedding/item.Ssku/.ATTRIBUTES/VARIABLE_VALUE"
