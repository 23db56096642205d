"""StackedTable: the row formula of SPARSECORE_FORMAT.md §3.1, checked against TensorFlow's own
unstacking algorithm (§3.3, restated below with reshape / roll / transpose), the worked example of
§9.4, the constructor's checks, and the array-like surface."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from embserve.errors import ConfigError
from embserve.tables import StackedTable


def tf_unstack(stack: np.ndarray, n: int, t: int, o: int, rot: int, rows: int, dim: int) -> Any:
    """TF's ``unshuffle_from_sc_to_cpu`` + ``remove_padding_from_sc`` (§3.3), in numpy."""
    width = stack.shape[1]
    per = -(-rows // n)
    blocks = stack.reshape(n, t, width)[:, o : o + per, :]
    if rot:
        blocks = np.roll(blocks, -rot, axis=0)
    return blocks.transpose(1, 0, 2).reshape(per * n, width)[:rows, :dim]


def random_table(
    rng: np.random.Generator, n: int, rot: int, dtype: Any = np.float32, width: int = 7
) -> tuple[StackedTable, np.ndarray]:
    rows = int(rng.integers(1, 80))
    per = -(-rows // n)
    o = int(rng.integers(0, 6))
    t = o + per + int(rng.integers(0, 4))
    dim = int(rng.integers(1, width + 1))
    stack = rng.standard_normal((t * n, width)).astype(dtype)
    table = StackedTable(
        stack, rows=rows, dim=dim, num_shards=n, shard_rows=t, row_offset=o, rotation=rot, name="x"
    )
    return table, tf_unstack(stack, n, t, o, rot, rows, dim)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 6, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unstack_matches_tensorflow_for_every_rotation(n: int, dtype: Any) -> None:
    rng = np.random.default_rng(n)
    for rot in range(n):
        for _ in range(3):
            table, expected = random_table(rng, n, rot, dtype)
            got = table.unstack()
            assert got.dtype == np.dtype(dtype)
            assert got.flags.c_contiguous
            assert got.flags.owndata
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(np.asarray(table), expected)
            rows = np.arange(table.rows)
            np.testing.assert_array_equal(
                table.stack[table.stacked_rows(rows), : table.dim], expected
            )


def test_worked_example_rows() -> None:
    """§9.4: t_a, t_b, t_c in the 256 x 16 stack t_a_t_b_t_c, t_d alone (N = 8, T = 32 / 8)."""
    stack = np.zeros((256, 16), np.float32)
    t_a = StackedTable(
        stack, rows=100, dim=16, num_shards=8, shard_rows=32, row_offset=0, rotation=0
    )
    t_b = StackedTable(
        stack, rows=37, dim=16, num_shards=8, shard_rows=32, row_offset=16, rotation=4
    )
    t_c = StackedTable(
        stack, rows=50, dim=12, num_shards=8, shard_rows=32, row_offset=24, rotation=0
    )
    t_d = StackedTable(
        np.zeros((64, 8), np.float32),
        rows=64,
        dim=8,
        num_shards=8,
        shard_rows=8,
        row_offset=0,
        rotation=0,
    )
    cases = [
        (t_a, 0, 0),
        (t_a, 99, 108),
        (t_a, 7, 224),
        (t_b, 0, 144),
        (t_b, 13, 49),
        (t_b, 36, 20),
    ]
    cases += [(t_c, 13, 185), (t_c, 49, 62), (t_d, 13, 41)]
    for table, row, stacked in cases:
        assert table.stacked_rows(row) == stacked
        assert table.stacked_rows([row]).tolist() == [stacked]
    assert t_b.stacked_rows(np.array([[0, 13], [36, 0]], np.int32)).tolist() == [
        [144, 49],
        [20, 144],
    ]
    assert t_c.width == 16
    assert t_c.dim == 12


def test_array_like_surface() -> None:
    stack = np.arange(12 * 5, dtype=np.float64).reshape(12, 5)
    table = StackedTable(
        stack, rows=9, dim=3, num_shards=3, shard_rows=4, row_offset=1, rotation=2, name="emb"
    )
    plain = table.unstack()
    assert table.shape == (9, 3)
    assert table.ndim == 2
    assert len(table) == 9
    assert table.dtype == np.float64
    assert table.itemsize == 8
    assert table.size == 27
    assert table.nbytes == 27 * 8
    assert table.stack is stack
    assert table.name == "emb"
    assert repr(table) == (
        "StackedTable('emb', shape=(9, 3), dtype=float64, stack=(12, 5), num_shards=3, "
        "shard_rows=4, row_offset=1, rotation=2)"
    )
    np.testing.assert_array_equal(table[4], plain[4])
    np.testing.assert_array_equal(table[-1], plain[-1])
    np.testing.assert_array_equal(table[2:7:2], plain[2:7:2])
    np.testing.assert_array_equal(table[[8, 0, -2]], plain[[8, 0, -2]])
    np.testing.assert_array_equal(table[np.array([[1, 2], [3, 4]])], plain[[[1, 2], [3, 4]]])
    mask = np.arange(9) % 2 == 0
    np.testing.assert_array_equal(table[mask], plain[mask])
    np.testing.assert_array_equal(table[:, 1:], plain[:, 1:])
    assert table[5, 2] == plain[5, 2]
    np.testing.assert_array_equal(table[()], plain)
    np.testing.assert_array_equal(np.asarray(table, dtype=np.float32), plain.astype(np.float32))
    # Rows handed out are copies: writing them leaves the stack alone.
    row = table[0]
    row[:] = -1
    assert not (stack == -1).any()
    for bad in (9, -10, [0, 9], np.array([-10])):
        with pytest.raises(IndexError, match="'emb'"):
            table[bad]
    with pytest.raises(IndexError):
        table[True]
    with pytest.raises(IndexError, match="mask"):
        table[np.ones(4, bool)]
    with pytest.raises(IndexError):
        table[np.array([1.0])]
    with pytest.raises(ValueError, match="without a copy"):
        np.asarray(table, copy=False)


def test_works_on_a_read_only_memory_map(tmp_path: Any) -> None:
    stack = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    path = tmp_path / "stack.bin"
    stack.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(16, 4))
    table = StackedTable(
        mapped, rows=7, dim=3, num_shards=4, shard_rows=4, row_offset=2, rotation=1
    )
    np.testing.assert_array_equal(table.unstack(), tf_unstack(stack, 4, 4, 2, 1, 7, 3))
    assert table.unstack().flags.writeable


def make(stack: Any = None, **overrides: Any) -> StackedTable:
    kwargs: dict[str, Any] = dict(
        rows=10, dim=3, num_shards=4, shard_rows=5, row_offset=1, rotation=3, name="tbl"
    )
    kwargs.update(overrides)
    if stack is None:
        stack = np.zeros((20, 4), np.float32)
    return StackedTable(stack, **kwargs)


def test_the_defaults_of_make_are_valid() -> None:
    # The block [1, 1 + ceil(10 / 4)) = [1, 4) fits a 5-row shard; [2, 5) still does.
    assert make().shape == (10, 3)
    assert make(row_offset=2).row_offset == 2
    assert make(rows=16, row_offset=1).rows == 16


@pytest.mark.parametrize(
    ("stack", "overrides", "words"),
    [
        (np.zeros((21, 4), np.float32), {}, "21 rows"),
        (np.zeros((20, 4), np.float32), {"shard_rows": 4}, "16"),
        (np.zeros((20, 4), np.int32), {}, "float32 or float64"),
        (np.zeros((20, 4), ">f4"), {}, "native byte order"),
        (np.zeros((20,), np.float32), {}, "2-D"),
        (np.zeros((20, 4), np.float32, order="F"), {}, "C-ordered"),
        (np.zeros((20, 8), np.float32)[:, ::2], {}, "C-ordered"),
        (np.zeros((20, 4), np.float32)[::-1], {}, "C-ordered"),
        ([[0.0] * 4] * 20, {}, "numpy array"),
        (None, {"dim": 0}, "dim"),
        (None, {"dim": 5}, "dim"),
        (None, {"rows": 0}, "rows"),
        (None, {"num_shards": 0}, "num_shards must be positive"),
        (None, {"shard_rows": 0}, "shard_rows must be positive"),
        (None, {"rotation": 4}, "rotation"),
        (None, {"rotation": -1}, "rotation"),
        (None, {"row_offset": -1}, "row_offset"),
        (None, {"row_offset": 3}, r"\[3, 6\)"),
        (None, {"rows": 17}, r"\[1, 6\)"),
        (None, {"rows": 2.0}, "integer"),
        (None, {"dim": True}, "integer"),
    ],
)
def test_constructor_refuses(stack: Any, overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        make(stack, **overrides)
    assert "'tbl'" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_numpy_integers_are_counts() -> None:
    table = make(rows=np.int64(10), dim=np.int32(3), rotation=np.uint8(0))
    assert type(table.rows) is int
    assert type(table.dim) is int
    assert table.rotation == 0


def test_the_layout_is_read_only() -> None:
    """Lookups trust that every logical row maps inside the stack: nothing can be re-pointed."""
    table = make()
    for attribute, value in [("rows", 10**6), ("stack", np.zeros((4, 4))), ("rotation", 0)]:
        with pytest.raises(AttributeError):
            setattr(table, attribute, value)
    with pytest.raises(AttributeError):
        table.extra = 1  # type: ignore[attr-defined]
