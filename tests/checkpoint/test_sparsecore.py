"""The SparseCore layouts proto: decoding, the rules of SPARSECORE_FORMAT.md §10.3, stack entries.

Every rule has its own test with a hand-built layout that breaks that rule alone, and checks the
rule's own words in the message (plus the table and the key), so removing a rule fails its test
even when a later check would refuse the layout for another reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from embserve.checkpoint import DataType, TensorInfo
from embserve.checkpoint._wire import encode_varint
from embserve.checkpoint.sparsecore import (
    SparseCoreLayouts,
    TableLayout,
    check_stack_entry,
    decode_layouts,
    encode_layouts,
    parse_layouts,
    stacked_rows,
    unstack_table,
    validate_layouts,
)
from embserve.errors import CheckpointMismatchError, CorruptCheckpointError

KEY = "embedding/_sparse_core_table_layouts/.ATTRIBUTES/VARIABLE_VALUE"
STACK_KEY = "embedding/t_a_t_b_t_c/.ATTRIBUTES/VARIABLE_VALUE"


def _layout(table: str, stack: str, shape: Any, padded: Any, **fields: Any) -> TableLayout:
    values: dict[str, Any] = {"num_sparse_cores": 8, "num_partitions": 2, "shard_rows": 32}
    values.update(fields)
    return TableLayout(table, stack, shape=tuple(shape), padded_shape=tuple(padded), **values)


#: SPARSECORE_FORMAT.md §9.1: the worked example, 2 chips x 4 SparseCores.
T_A = _layout("t_a", "t_a_t_b_t_c", (100, 16), (128, 16))
T_B = _layout("t_b", "t_a_t_b_t_c", (37, 16), (64, 16), row_offset=16, rotation=4)
T_C = _layout("t_c", "t_a_t_b_t_c", (50, 12), (64, 16), row_offset=24)
T_D = _layout("t_d", "t_d", (64, 8), (64, 8), shard_rows=8)
EXAMPLE = (T_A, T_B, T_C, T_D)


def _refused(layouts: Any, *words: str) -> str:
    """Validate ``layouts``; it must raise CorruptCheckpointError naming the key and ``words``."""
    with pytest.raises(CorruptCheckpointError) as info:
        validate_layouts(layouts, KEY, "/ckpts/ckpt-1")
    message = str(info.value)
    for word in (KEY, "/ckpts/ckpt-1", *words):
        assert word in message, f"{word!r} not in {message!r}"
    return message


def _replace(target: TableLayout, **changes: Any) -> tuple[TableLayout, ...]:
    """The example with one layout changed."""
    return tuple(dataclasses.replace(t, **changes) if t is target else t for t in EXAMPLE)


# ---------------------------------------------------------------------------------------------
# Decoding


def test_decodes_the_bytes_of_the_spec() -> None:
    """§9.2: t_b's 36 bytes, and t_a's with fields 8 and 9 absent (0) and 10, 11 present."""
    t_b = bytes.fromhex(
        "0a03745f62"  # 1 table_name "t_b"
        "120b745f615f745f625f745f63"  # 2 stacked_table_name "t_a_t_b_t_c"
        "1808"  # 3 num_sparse_cores 8
        "2002"  # 4 num_partitions 2
        "2820"  # 5 total_rows_per_sparse_core_shard 32
        "32022510"  # 6 unsharded_shape [37, 16] (packed)
        "3a024010"  # 7 unsharded_padded_shape [64, 16] (packed)
        "4010"  # 8 sparse_core_shard_row_offset 16
        "4804"  # 9 sparse_core_shard_rotation 4
    )
    t_a = bytes.fromhex(
        "0a03745f61120b745f615f745f625f745f63180820022820320264103a0380011050085801"
    )
    data = b"".join(b"\x0a" + encode_varint(len(m)) + m for m in (t_a, t_b))
    decoded = decode_layouts(data, KEY)
    assert decoded == (
        dataclasses.replace(T_A, per_sparse_core_batch_size=8, num_features=1),
        T_B,
    )
    assert encode_layouts(decoded) == data


def test_round_trip_and_proto3_defaults() -> None:
    data = encode_layouts(EXAMPLE)
    assert decode_layouts(data, KEY) == EXAMPLE
    assert decode_layouts(b"", KEY) == ()


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | wire) + payload


def test_unpacked_shapes_and_unknown_fields_are_accepted() -> None:
    """Shapes written one varint per element are valid proto3 too; unknown fields (a later
    TensorFlow's) are skipped by their wire type."""
    message = b"".join(
        [
            _field(1, 2, b"\x01x"),
            _field(2, 2, b"\x01x"),
            _field(3, 0, encode_varint(4)),
            _field(4, 0, encode_varint(1)),
            _field(5, 0, encode_varint(2)),
            _field(6, 0, encode_varint(5)),
            _field(6, 0, encode_varint(3)),
            _field(7, 0, encode_varint(8)),
            _field(7, 0, encode_varint(8)),
            _field(40, 2, b"\x03abc"),  # unknown, length-delimited
            _field(41, 0, encode_varint(300)),  # unknown varint
            _field(42, 5, b"\x00\x00\x80\x3f"),  # unknown fixed32
        ]
    )
    data = _field(1, 2, encode_varint(len(message)) + message)
    (layout,) = decode_layouts(data, KEY)
    assert layout == TableLayout("x", "x", 4, 1, 2, (5, 3), (8, 8))
    assert validate_layouts([layout], KEY).stacks["x"].shape == (8, 8)


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("truncated", encode_layouts(EXAMPLE)[:-5]),
        ("garbage", b"\xff" * 12),
        ("bad wire type", b"\x0f\x01"),
        ("table name not UTF-8", _field(1, 2, b"\x04" + _field(1, 2, b"\x02\xc3\x28"))),
    ],
)
def test_damaged_bytes_are_corrupt_naming_the_key(what: str, data: bytes) -> None:
    with pytest.raises(CorruptCheckpointError, match=f"{KEY}.*not a serialized"):
        decode_layouts(data, KEY, "/ckpts/ckpt-1")


# ---------------------------------------------------------------------------------------------
# Grouping


def test_groups_by_stack_keyed_by_name_whatever_the_stored_order() -> None:
    """§2.5: the stored order may differ between runs of one job; readers key by name."""
    forward = validate_layouts(EXAMPLE, KEY)
    backward = validate_layouts(EXAMPLE[::-1], KEY)
    for layouts in (forward, backward):
        assert isinstance(layouts, SparseCoreLayouts)
        assert sorted(layouts.tables) == ["t_a", "t_b", "t_c", "t_d"]
        stack = layouts.stacks["t_a_t_b_t_c"]
        assert stack.table_names == ("t_a", "t_b", "t_c")  # by row offset
        assert stack.shape == (256, 16)
        assert (stack.num_sparse_cores, stack.num_partitions, stack.sparse_cores_per_chip) == (
            8,
            2,
            4,
        )
        assert layouts.stacks["t_d"].shape == (64, 8)
        assert layouts.stack_of("t_b") is stack
    assert list(backward.tables) == ["t_d", "t_c", "t_b", "t_a"]
    assert parse_layouts(encode_layouts(EXAMPLE), KEY).tables == forward.tables
    assert validate_layouts([], KEY).stacks == {}


# ---------------------------------------------------------------------------------------------
# One test per rule of §10.3


def test_rule_table_names_unique() -> None:
    message = _refused((*EXAMPLE, dataclasses.replace(T_D, stack="other")), "'t_d'")
    assert "more than one layout" in message


def test_rule_names_not_empty() -> None:
    assert "empty table_name" in _refused(_replace(T_D, table=""))
    assert "empty stacked_table_name" in _refused(_replace(T_D, stack=""), "'t_d'")


@pytest.mark.parametrize("field", ["shape", "padded_shape"])
@pytest.mark.parametrize("shape", [(37, 16, 1), (37,), ()])
def test_rule_shapes_have_two_dimensions(field: str, shape: tuple[int, ...]) -> None:
    message = _refused(_replace(T_B, **{field: shape}), "'t_b'")
    assert "not 2 dimensions" in message


@pytest.mark.parametrize("cores", [0, -8])
def test_rule_sparse_cores_positive(cores: int) -> None:
    assert "num_sparse_cores is" in _refused(_replace(T_D, num_sparse_cores=cores), "'t_d'")


@pytest.mark.parametrize("chips", [0, -2])
def test_rule_chips_positive(chips: int) -> None:
    assert "num_partitions is" in _refused(_replace(T_D, num_partitions=chips), "'t_d'")


def test_rule_sparse_cores_a_multiple_of_chips() -> None:
    message = _refused(_replace(T_D, num_partitions=3), "'t_d'")
    assert "not a multiple of num_partitions" in message


@pytest.mark.parametrize("rows", [0, -32])
def test_rule_shard_rows_positive(rows: int) -> None:
    message = _refused(_replace(T_D, shard_rows=rows), "'t_d'")
    assert "total_rows_per_sparse_core_shard is" in message


@pytest.mark.parametrize("shape", [(0, 16), (-1, 16), (65, 16)])
def test_rule_rows_positive_and_within_padding(shape: tuple[int, int]) -> None:
    assert "need 0 < rows <= padded rows" in _refused(_replace(T_B, shape=shape), "'t_b'")


@pytest.mark.parametrize("shape", [(37, 0), (37, 17)])
def test_rule_dim_positive_and_within_width(shape: tuple[int, int]) -> None:
    assert "need 0 < dim <= width" in _refused(_replace(T_B, shape=shape), "'t_b'")


def test_rule_padded_rows_a_multiple_of_sparse_cores() -> None:
    message = _refused(_replace(T_D, shape=(60, 8), padded_shape=(60, 8)), "'t_d'")
    assert "not a multiple of num_sparse_cores" in message


@pytest.mark.parametrize("offset", [-1, 25])  # t_c owns 8 rows per shard of 32
def test_rule_block_inside_the_shard(offset: int) -> None:
    message = _refused(_replace(T_C, row_offset=offset), "'t_c'")
    assert "do not fit in the shard's 32 rows" in message


@pytest.mark.parametrize("rotation", [-1, 8, 12])
def test_rule_rotation_below_sparse_cores(rotation: int) -> None:
    message = _refused(_replace(T_B, rotation=rotation), "'t_b'")
    assert "sparse_core_shard_rotation is" in message


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("num_sparse_cores", 16, "num_sparse_cores 16"),
        ("num_partitions", 4, "num_partitions 4"),
        ("shard_rows", 40, "total_rows_per_sparse_core_shard 40"),
        ("padded_shape", (64, 24), "padded width 24"),
    ],
)
def test_rule_a_stack_agrees_on_its_geometry(field: str, value: Any, words: str) -> None:
    """Each value still makes a valid layout on its own: only the stack rule refuses it."""
    message = _refused(_replace(T_C, **{field: value}), "'t_c'", "'t_a'")
    assert words in message
    assert "of the same stack" in message


def test_rule_blocks_of_a_stack_are_disjoint() -> None:
    message = _refused(_replace(T_C, row_offset=20), "'t_c'", "'t_b'")
    assert "overlaps" in message


def test_tables_of_different_stacks_may_share_offsets() -> None:
    other = _layout("t_e", "t_e", (64, 8), (64, 8), shard_rows=8)
    assert validate_layouts([*EXAMPLE, other], KEY).stacks["t_e"].table_names == ("t_e",)


# ---------------------------------------------------------------------------------------------
# The stack's entry


def _info(dtype: DataType, shape: tuple[int, ...]) -> TensorInfo:
    return TensorInfo(STACK_KEY, dtype, shape, 0, 0, 0, 0)


def test_stack_entry_of_the_layouts_shape_passes() -> None:
    stack = validate_layouts(EXAMPLE, KEY).stacks["t_a_t_b_t_c"]
    check_stack_entry(stack, _info(DataType.FLOAT, (256, 16)), STACK_KEY)


@pytest.mark.parametrize("shape", [(255, 16), (257, 16), (224, 16), (256, 8), (256, 24), (4096,)])
def test_stack_entry_of_another_shape_is_corrupt(shape: tuple[int, ...]) -> None:
    stack = validate_layouts(EXAMPLE, KEY).stacks["t_a_t_b_t_c"]
    with pytest.raises(CorruptCheckpointError, match=rf"'t_a_t_b_t_c'.*{STACK_KEY}.*\[256, 16\]"):
        check_stack_entry(stack, _info(DataType.FLOAT, shape), STACK_KEY)


def test_stack_entry_missing_or_not_float32_is_a_mismatch() -> None:
    stack = validate_layouts(EXAMPLE, KEY).stacks["t_a_t_b_t_c"]
    with pytest.raises(CheckpointMismatchError, match=rf"'t_a_t_b_t_c'.*no key '{STACK_KEY}'"):
        check_stack_entry(stack, None, STACK_KEY)
    for dtype in (DataType.DOUBLE, DataType.BFLOAT16, DataType.STRING):
        with pytest.raises(CheckpointMismatchError, match=rf"'t_a_t_b_t_c'.*{STACK_KEY}.*float32"):
            check_stack_entry(stack, _info(dtype, (256, 16)), STACK_KEY)


# ---------------------------------------------------------------------------------------------
# Row arithmetic and the reference unstacking


@pytest.mark.parametrize(
    ("layout", "row", "stacked"),
    [
        (T_A, 0, 0),
        (T_A, 99, 108),
        (T_A, 7, 224),
        (T_B, 0, 144),
        (T_B, 13, 49),
        (T_B, 36, 20),
        (T_C, 13, 185),
        (T_C, 49, 62),
        (T_D, 13, 41),
    ],
)
def test_stacked_rows_of_the_worked_example(layout: TableLayout, row: int, stacked: int) -> None:
    """§9.4, row by row."""
    assert int(stacked_rows(layout, row)) == stacked


def _pack(layouts: SparseCoreLayouts, stack: str, rng: np.random.Generator) -> Any:
    """A stack with random tables placed by the row formula, padding set to NaN / 1e30."""
    s = layouts.stacks[stack]
    packed = np.full(s.shape, 1e30, dtype=np.float32)
    tables = {}
    for t in s.tables:
        table = rng.standard_normal(t.shape).astype(np.float32)
        rows = stacked_rows(t, np.arange(t.rows))
        packed[rows, : t.dim] = table
        packed[rows, t.dim :] = np.nan
        tables[t.table] = table
    return packed, tables


@pytest.mark.parametrize(("chips", "per_chip"), [(1, 4), (2, 4), (4, 2), (4, 4), (3, 2)])
def test_unstack_table_inverts_the_row_formula(chips: int, per_chip: int) -> None:
    """Three tables in one stack, rotated as the stacker rotates them, come back exactly."""
    n = chips * per_chip
    shapes = [(13, 5), (40, 8), (3, 1)]
    offset = 0
    layouts = []
    for k, (rows, dim) in enumerate(shapes):
        padded = -(-rows // (8 * n)) * 8 * n
        layouts.append(
            TableLayout(
                f"t{k}",
                "s",
                n,
                chips,
                0,
                (rows, dim),
                (padded, 8),
                row_offset=offset,
                rotation=k * per_chip % n,
            )
        )
        offset += padded // n
    layouts = [dataclasses.replace(t, shard_rows=offset) for t in layouts]
    parsed = validate_layouts(layouts, KEY)
    packed, tables = _pack(parsed, "s", np.random.default_rng(n))
    for t in layouts:
        np.testing.assert_array_equal(unstack_table(packed, t), tables[t.table])


def test_unstack_table_refuses_a_stack_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"t_a.*needs"):
        unstack_table(np.zeros((255, 16), np.float32), T_A)
