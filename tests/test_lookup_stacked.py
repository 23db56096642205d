"""Lookups on tables served in place from SparseCore stacks (:class:`embserve.tables.StackedTable`).

Every lookup path (one-hot gathers, the fused dense group, dense / ragged / sparse bags with every
combiner and weights, the plain sparse path, sequence features from ragged and sparse input,
``output_shape``, the overflow re-checks) is run on stacked tables and on the same tables
unstacked into plain arrays: the results must be identical bit for bit, and match
tests/reference.py. The stacks are packed here with TensorFlow's arithmetic (reshape, roll,
transpose: SPARSECORE_FORMAT.md §3.3 run backwards), not with StackedTable's row formula, and
their padding rows and columns hold sentinels (1e30, NaN) that a lookup serving padding would
return. Ids are checked against the logical row count: ``id == rows`` is refused although the
stack has a (padding) row there.

The last tests read the real TensorFlow fixture ``tests/data/sparsecore/stacked_2x4`` with
:class:`embserve.checkpoint.BundleReader` and the layouts of its expected.json, and compare with
the tables and lookups TensorFlow's ``TPUEmbeddingForServing`` gave.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

import embserve as es
from embserve import lookup
from embserve.checkpoint import BundleReader
from embserve.lookup import LookupPlan
from embserve.tables import StackedTable
from tests.reference import reference_serving_lookup
from tests.test_tf_fixtures import _array, _feature_config, _inputs, _tables

PAD_ROW = 1e30  # padding rows [R, Rp) of a table's block
PAD_COL = np.nan  # padding columns [D, W) of real rows
UNUSED = -7.0  # stack rows no table owns
TOL = {"rtol": 1e-5, "atol": 1e-5}
FIXTURE = Path(__file__).parent / "data" / "sparsecore" / "stacked_2x4"


# ---------------------------------------------------------------------------------------------
# Stacks packed with TensorFlow's arithmetic


def pack(stack: np.ndarray, logical: np.ndarray, n: int, t: int, o: int, rot: int) -> None:
    """Write ``logical`` [R, D] into its block of ``stack`` [t·n, W]: pad to a multiple of n
    rows, deal row r to shard r mod n at position r div n, roll the shards by ``rot`` (the
    inverse of TF's ``unshuffle_from_sc_to_cpu``: reshape, slice, roll by -rot, transpose)."""
    rows, dim = logical.shape
    per = -(-rows // n)
    padded = np.full((per * n, dim), PAD_ROW, stack.dtype)
    padded[:rows] = logical
    blocks = np.roll(padded.reshape(per, n, dim).transpose(1, 0, 2), rot, axis=0)
    view = stack.reshape(n, t, stack.shape[1])
    view[:, o : o + per, :dim] = blocks
    view[:, o : o + per, dim:] = PAD_COL


class Stacked(NamedTuple):
    tables: list[StackedTable]
    plain: list[np.ndarray]  # the logical tables the stack was packed from


def make_stack(
    rng: np.random.Generator,
    n: int,
    shapes: list[tuple[int, int]],
    width: int,
    dtype: Any = np.float32,
    rotations: list[int] | None = None,
    gap: int = 1,
) -> Stacked:
    """Random logical tables of ``shapes`` packed into one stack of ``width`` over ``n`` shards,
    with ``gap`` unused rows before every block and after the last (rotations random unless
    given)."""
    offsets = []
    position = gap
    for rows, _ in shapes:
        offsets.append(position)
        position += -(-rows // n) + gap
    t = position
    stack = np.full((t * n, width), UNUSED, dtype)
    if rotations is None:
        rotations = [int(rng.integers(0, n)) for _ in shapes]
    tables, plain = [], []
    for i, ((rows, dim), o, rot) in enumerate(zip(shapes, offsets, rotations, strict=True)):
        logical = rng.standard_normal((rows, dim)).astype(dtype)
        pack(stack, logical, n, t, o, rot)
        plain.append(logical)
        tables.append(
            StackedTable(
                stack,
                rows=rows,
                dim=dim,
                num_shards=n,
                shard_rows=t,
                row_offset=o,
                rotation=rot,
                name=f"s{i}",
            )
        )
    stack.flags.writeable = False  # served read-only, like a mapped checkpoint
    return Stacked(tables, plain)


# N = 6 is not a power of two (the division path); N = 1 with offsets is still a real mapping.
SHARDS = [1, 2, 4, 8, 6]
DTYPES = [np.float32, np.float64]


@pytest.fixture(params=[False, True], ids=["serial", "parallel"])
def parallel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run every lookup through the serial kernels, or through the parallel ones (from the
    first float on; the same kernels as serial where numba has no threading layer)."""
    monkeypatch.setattr(lookup, "PARALLEL_MIN_FLOATS", 0 if request.param else 1 << 60)
    return bool(request.param)


def check_same(
    stacked: dict[Any, Any], plain: dict[Any, Any], inputs: Any, weights: Any, fc: Any
) -> Any:
    """The lookup on stacked tables equals the lookup on their plain copies bit for bit, and the
    NumPy reference within float tolerance; returns the stacked result."""
    got = es.serving_embedding_lookup(inputs, weights, stacked, fc)
    want = es.serving_embedding_lookup(inputs, weights, plain, fc)
    ref = reference_serving_lookup(inputs, weights, plain, fc)
    for path in got:
        assert got[path].dtype == want[path].dtype
        np.testing.assert_array_equal(got[path], want[path], err_msg=path)
        np.testing.assert_allclose(got[path], ref[path], **TOL, err_msg=path)
    return got


def ragged_ids(rng: np.random.Generator, rows: int, batch: int, most: int) -> Any:
    lengths = rng.integers(0, most + 1, batch)
    values = rng.integers(0, rows, int(lengths.sum()))
    return es.RaggedTensor.from_row_lengths(values, lengths)


def sparse_ids(rng: np.random.Generator, rows: int, shape: tuple[int, ...], count: int) -> Any:
    """``count`` distinct positions of ``shape`` in row-major order, random ids (a few
    negative: the validated path drops them)."""
    flat = np.sort(rng.choice(int(np.prod(shape)), size=count, replace=False))
    indices = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)
    values = rng.integers(0, rows, count)
    values[rng.random(count) < 0.1] = -1
    return es.SparseTensor(indices, values, np.asarray(shape, np.int64))


def weights_for(rng: np.random.Generator, ids: Any, low: float = 0.1) -> Any:
    """Random float32 weights paired with ``ids`` (from ``low``: a negative ``low`` makes some
    weights the validated path drops under mean / sqrtn)."""
    w = rng.uniform(low, 2.0, ids.values.shape[0]).astype(np.float32)
    if isinstance(ids, es.SparseTensor):
        return es.SparseTensor(ids.indices, w, ids.dense_shape)
    return es.RaggedTensor.from_row_splits(w, ids.row_splits)


# ---------------------------------------------------------------------------------------------
# Every path, stacked = plain


# Shapes sharing one stack of width 32: a dim the register kernel serves (16, read from rows 32
# floats apart), the full width, and an odd dim.
SHAPES = [(100, 16), (37, 32), (50, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SHARDS)
def test_every_path_reads_the_stack_like_the_unstacked_tables(
    n: int, dtype: Any, parallel: bool
) -> None:
    rng = np.random.default_rng(n * 10 + (dtype == np.float64))
    st = make_stack(rng, n, SHAPES, width=32, dtype=dtype)
    for i, (table, logical) in enumerate(zip(st.tables, st.plain, strict=True)):
        np.testing.assert_array_equal(table.unstack(), logical)
        rows = table.rows
        for combiner in ("sum", "mean", "sqrtn"):
            cfg = es.TableConfig(rows, table.dim, combiner=combiner, name=f"t{i}")
            fc = {
                "pooled": es.FeatureConfig(cfg),
                "plain_sparse": es.FeatureConfig(cfg, validate_weights_and_indices=False),
                "seq": es.FeatureConfig(cfg, max_sequence_length=4),
                "shaped": es.FeatureConfig(cfg, output_shape=[6 * 3]),
            }
            stacked = {cfg: table}
            plain = {cfg: logical}
            dense = rng.integers(0, rows, (6, 3))
            dense[0, 0] = rows - 1  # the last logical row: the block's end
            check_same(stacked, plain, {"pooled": dense.reshape(-1)}, None, fc)
            check_same(stacked, plain, {"pooled": dense.astype(np.int32)}, None, fc)
            bags = ragged_ids(rng, rows, 6, 7)
            check_same(stacked, plain, {"pooled": bags}, None, fc)
            check_same(stacked, plain, {"pooled": bags}, {"pooled": weights_for(rng, bags)}, fc)
            sp = sparse_ids(rng, rows, (6, 5), 17)
            check_same(stacked, plain, {"pooled": sp}, None, fc)
            check_same(stacked, plain, {"pooled": sp}, {"pooled": weights_for(rng, sp, -0.5)}, fc)
            sp3 = sparse_ids(rng, rows, (2, 3, 4), 11)
            check_same(stacked, plain, {"pooled": sp3}, {"pooled": weights_for(rng, sp3, -0.5)}, fc)
            plain_sp = sparse_ids(rng, rows, (5, 4), 9)
            plain_sp = es.SparseTensor(
                plain_sp.indices, np.abs(plain_sp.values), plain_sp.dense_shape
            )
            got = check_same(stacked, plain, {"plain_sparse": plain_sp}, None, fc)
            assert got["plain_sparse"].shape[1] == table.dim
            check_same(
                stacked,
                plain,
                {"plain_sparse": plain_sp},
                {"plain_sparse": weights_for(rng, plain_sp)},
                fc,
            )
            seq = ragged_ids(rng, rows, 5, 6)
            got = check_same(stacked, plain, {"seq": seq}, None, fc)
            assert got["seq"].shape == (5, 4, table.dim)
            seq_sp = sparse_ids(rng, rows, (5, 6), 12)
            seq_sp = es.SparseTensor(seq_sp.indices, np.abs(seq_sp.values), seq_sp.dense_shape)
            check_same(stacked, plain, {"seq": seq_sp}, None, fc)
            check_same(stacked, plain, {"shaped": ragged_ids(rng, rows, 6, 5)}, None, fc)
            check_same(stacked, plain, {"shaped": ragged_ids(rng, rows, 3, 8)}, None, fc)


@pytest.mark.parametrize("n", SHARDS)
def test_every_rotation_of_a_table(n: int) -> None:
    """One table at each rotation 0..N-1 (two blocks, the second offset): one-hot and bags."""
    rng = np.random.default_rng(100 + n)
    for rot in range(n):
        st = make_stack(rng, n, [(23, 8), (41, 16)], width=16, rotations=[rot, (rot + 1) % n])
        for table, logical in zip(st.tables, st.plain, strict=True):
            cfg = es.TableConfig(table.rows, table.dim, combiner="sum", name="t")
            fc = {"f": es.FeatureConfig(cfg)}
            every = np.arange(table.rows)
            got = check_same({cfg: table}, {cfg: logical}, {"f": every}, None, fc)
            np.testing.assert_array_equal(got["f"], logical)
            bags = ragged_ids(rng, table.rows, 9, 6)
            check_same({cfg: table}, {cfg: logical}, {"f": bags}, None, fc)


def test_fused_dense_group_mixes_stacked_and_plain_tables(parallel: bool) -> None:
    """All-dense requests take one kernel call for every feature: stacked tables (power-of-two
    and other N) and a plain table in one group, checked against the logical rows."""
    rng = np.random.default_rng(7)
    a = make_stack(rng, 8, [(300, 16), (77, 16)], width=16)
    b = make_stack(rng, 6, [(90, 16)], width=32)
    plain_table = rng.standard_normal((55, 16)).astype(np.float32)
    tables = [*a.tables, *b.tables]
    logical = [*a.plain, *b.plain, plain_table]
    cfgs = [es.TableConfig(t.shape[0], 16, name=f"t{i}") for i, t in enumerate(logical)]
    fc = {f"f{i}": es.FeatureConfig(c) for i, c in enumerate(cfgs)}
    stacked: dict[Any, Any] = dict(zip(cfgs, [*tables, plain_table], strict=True))
    plain = dict(zip(cfgs, logical, strict=True))
    for n in (1, 5, 16, 17, 200):
        inputs = {f"f{i}": rng.integers(0, t.shape[0], n) for i, t in enumerate(logical)}
        plan = LookupPlan(fc)
        got = plan.run(inputs, None, stacked)
        group = plan._dense[2][tuple(inputs)]
        assert group is not None  # the fused path served it
        assert group.layout[:, 0].tolist() == [t.shape[0] for t in logical]
        want = es.serving_embedding_lookup(inputs, None, plain, fc)
        for key in inputs:
            np.testing.assert_array_equal(got[key], want[key])
            np.testing.assert_array_equal(got[key], plain[cfgs[int(key[1:])]][inputs[key]])


@pytest.mark.parametrize("n", [4, 6])
def test_an_empty_batch_on_a_stacked_table_is_served_on_every_path(n: int, parallel: bool) -> None:
    """No ids at all: every path (the fused group too) returns the plain tables' empty outputs,
    with the logical dim, and maps nothing."""
    rng = np.random.default_rng(11)
    st = make_stack(rng, n, [(37, 16), (13, 16)], width=32)
    cfg = es.TableConfig(37, 16, combiner="mean", name="t0")
    other = es.TableConfig(13, 16, name="t1")
    fc = {
        "f": es.FeatureConfig(cfg),
        "g": es.FeatureConfig(other),
        "plain_sparse": es.FeatureConfig(cfg, validate_weights_and_indices=False),
        "seq": es.FeatureConfig(cfg, max_sequence_length=3),
    }
    stacked = {cfg: st.tables[0], other: st.tables[1]}
    plain = {cfg: st.plain[0], other: st.plain[1]}
    no_ids = np.zeros(0, np.int64)
    empty_sparse = es.SparseTensor(np.zeros((0, 2), np.int64), no_ids, np.array([2, 3]))
    requests = [
        {"f": no_ids},  # dense, general path
        {"f": no_ids, "g": no_ids.astype(np.int32)},  # the fused group
        {"f": es.RaggedTensor.from_row_lengths(no_ids, [0, 0])},
        {"f": empty_sparse},
        {"plain_sparse": es.SparseTensor(np.zeros((0, 2), np.int64), no_ids, np.array([0, 3]))},
        {"seq": es.RaggedTensor.from_row_lengths(no_ids, [0, 0])},
        {"seq": empty_sparse},
    ]
    for inputs in requests:
        got = es.serving_embedding_lookup(inputs, None, stacked, fc)
        want = es.serving_embedding_lookup(inputs, None, plain, fc)
        for key in inputs:
            assert got[key].shape == want[key].shape
            assert got[key].shape[-1] == 16
            np.testing.assert_array_equal(got[key], want[key])


# ---------------------------------------------------------------------------------------------
# Bounds: the logical row count, never the stack's


@pytest.mark.parametrize("n", [4, 6])
def test_an_id_at_the_logical_row_count_is_refused_on_every_path(n: int) -> None:
    rng = np.random.default_rng(3)
    st = make_stack(rng, n, [(37, 16), (13, 16)], width=16)
    table = st.tables[0]
    rows = table.rows
    assert rows % n != 0  # the block has padding rows: id `rows` is a row of the stack
    assert table.stacked_rows(rows) < table.stack.shape[0]
    cfg = es.TableConfig(rows, 16, combiner="mean", name="t0")
    other = es.TableConfig(13, 16, name="t1")
    fc = {
        "f": es.FeatureConfig(cfg),
        "g": es.FeatureConfig(other),
        "seq": es.FeatureConfig(cfg, max_sequence_length=3),
        "plain": es.FeatureConfig(cfg, validate_weights_and_indices=False),
    }
    tables = {cfg: table, other: st.tables[1]}
    bad_inputs = [
        {"f": np.array([0, rows, 1])},  # dense, general path (one feature)
        {"f": np.array([0, rows]), "g": np.array([1, 2])},  # the fused group
        {"f": np.array([1, 2]), "g": np.array([13, 2])},  # the fused group, second table
        {"f": es.RaggedTensor.from_row_lengths(np.array([1, rows]), [1, 1])},
        {"f": es.SparseTensor(np.array([[0, 0], [1, 2]]), np.array([4, rows]), np.array([2, 3]))},
        {"seq": es.RaggedTensor.from_row_lengths(np.array([1, 2, rows]), [3])},
        {"seq": es.SparseTensor(np.array([[0, 1]]), np.array([rows]), np.array([1, 3]))},
        {"plain": es.SparseTensor(np.array([[0, 0]]), np.array([rows]), np.array([1, 3]))},
    ]
    for inputs in bad_inputs:
        with pytest.raises(es.IdOutOfRangeError) as info:
            es.serving_embedding_lookup(inputs, None, tables, fc)
        expected_rows = 13 if "g" in inputs and inputs["g"][0] == 13 else rows
        assert info.value.num_rows == expected_rows
        assert info.value.id == expected_rows
    with pytest.raises(es.IdOutOfRangeError):
        es.serving_embedding_lookup({"f": np.array([-1])}, None, tables, fc)
    # Ids past the stack's own rows, too (the check is the only guard of the gather).
    with pytest.raises(es.IdOutOfRangeError):
        es.serving_embedding_lookup({"f": np.array([10**9])}, None, tables, fc)


# ---------------------------------------------------------------------------------------------
# Overflow re-checks read the stacked rows


def test_overflow_of_finite_stacked_rows_is_refused_and_a_non_finite_row_is_served() -> None:
    rng = np.random.default_rng(11)
    logical = rng.standard_normal((30, 16)).astype(np.float32)
    logical[3] = 3e38
    logical[4] = np.inf
    stack = np.full((8 * 6, 16), UNUSED, np.float32)
    pack(stack, logical, 8, 6, 1, 5)
    table = StackedTable(
        stack, rows=30, dim=16, num_shards=8, shard_rows=6, row_offset=1, rotation=5
    )
    cfg = es.TableConfig(30, 16, combiner="sum", name="big")
    fc = {"f": es.FeatureConfig(cfg), "seq": es.FeatureConfig(cfg, max_sequence_length=2)}
    tables = {cfg: table}
    served = es.serving_embedding_lookup(
        {"f": es.RaggedTensor.from_row_lengths(np.array([4, 0, 1]), [3])}, None, tables, fc
    )
    assert np.isinf(served["f"]).all()  # the table's own inf, served as TensorFlow does
    with pytest.raises(es.InputError, match="example 1"):
        es.serving_embedding_lookup(
            {"f": es.RaggedTensor.from_row_lengths(np.array([4, 3, 3]), [1, 2])}, None, tables, fc
        )
    # Sparse sequence input: two entries at one position are added.
    dup = es.SparseTensor(np.array([[0, 1], [0, 1]]), np.array([3, 3]), np.array([1, 2]))
    with pytest.raises(es.InputError, match="position 1"):
        es.serving_embedding_lookup({"seq": dup}, None, tables, fc)
    fed = es.SparseTensor(np.array([[0, 1], [0, 1]]), np.array([4, 3]), np.array([1, 2]))
    out = es.serving_embedding_lookup({"seq": fed}, None, tables, fc)["seq"]
    assert np.isinf(out[0, 1]).all()
    np.testing.assert_array_equal(out[0, 0], 0)


# ---------------------------------------------------------------------------------------------
# The serving object and the table objects


def test_the_serving_object_serves_and_returns_stacked_tables() -> None:
    rng = np.random.default_rng(5)
    st = make_stack(rng, 8, [(40, 8), (20, 4)], width=8)
    a = es.TableConfig(40, 8, name="a")
    b = es.TableConfig(20, 4, combiner="mean", name="b")
    emb = es.TPUEmbeddingForServing({"x": es.FeatureConfig(a), "y": es.FeatureConfig(b)}, None)
    slots = make_stack(rng, 8, [(40, 8)], width=8).tables[0]
    emb._set_variables(
        {
            "a": {"parameters": st.tables[0], "accumulators": slots},
            "b": {"parameters": st.tables[1]},
        }
    )
    assert emb.embedding_tables[a] is st.tables[0]
    assert emb.variables["a"]["accumulators"] is slots
    np.testing.assert_array_equal(np.asarray(emb.embedding_tables[b]), st.plain[1])
    assert emb.embedding_tables[b].shape == (20, 4)
    ids = np.array([[0, 39], [7, 8]])
    out = emb({"x": ids, "y": es.RaggedTensor.from_row_lengths(np.array([19, 0, 5]), [2, 1])})
    np.testing.assert_array_equal(out["x"], st.plain[0][ids])
    np.testing.assert_allclose(out["y"][0], (st.plain[1][19] + st.plain[1][0]) / 2, rtol=1e-6)
    with pytest.raises(es.IdOutOfRangeError):
        emb({"y": np.array([20])})


def test_a_stack_reshaped_in_place_after_it_was_wrapped_is_refused() -> None:
    stack = np.zeros((32, 8), np.float32)
    table = StackedTable(
        stack, rows=20, dim=8, num_shards=4, shard_rows=8, row_offset=0, rotation=1
    )
    stack.shape = (64, 4)  # the same buffer, narrower rows: dim 8 no longer fits
    cfg = es.TableConfig(20, 8, name="t")
    with pytest.raises(es.InputError, match="no longer has the layout"):
        es.serving_embedding_lookup(
            {"f": np.array([1])}, None, {cfg: table}, {"f": es.FeatureConfig(cfg)}
        )


# ---------------------------------------------------------------------------------------------
# The real TensorFlow fixture


def _fixture() -> tuple[dict[str, Any], dict[str, StackedTable]]:
    expected = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
    reader = BundleReader(str(FIXTURE / expected["checkpoint"]))
    stacks = {name: reader.get_tensor(spec["key"]) for name, spec in expected["stacks"].items()}
    tables = {}
    for layout in expected["layouts"]["tables"]:
        rows, dim = layout["unsharded_shape"]
        tables[layout["table_name"]] = StackedTable(
            stacks[layout["stacked_table_name"]],
            rows=rows,
            dim=dim,
            num_shards=layout["num_sparse_cores"],
            shard_rows=layout["total_rows_per_sparse_core_shard"],
            row_offset=layout["sparse_core_shard_row_offset"],
            rotation=layout["sparse_core_shard_rotation"],
            name=layout["table_name"],
        )
    return expected, tables


def test_fixture_tables_equal_what_tensorflow_restored() -> None:
    expected, tables = _fixture()
    assert sorted(tables) == sorted(expected["restored"])
    for name, restored in expected["restored"].items():
        want = np.frombuffer(bytes.fromhex(restored["data_hex"]), "<f4").reshape(restored["shape"])
        got = np.asarray(tables[name])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("case", range(6))
def test_fixture_lookups_equal_tensorflow(case: int, parallel: bool) -> None:
    expected, stacked = _fixture()
    lk = expected["lookups"][case]
    configs = _tables(expected["serving"]["tables"])
    fc = _feature_config(expected["serving"]["feature_config"], configs)
    by_config = {cfg: stacked[name] for name, cfg in configs.items()}
    inputs = _inputs({"type": "dict", "items": list(lk["features"].items())})
    weights = None
    if lk["weights"] is not None:
        weights = _inputs({"type": "dict", "items": list(lk["weights"].items())})
    got = es.serving_embedding_lookup(inputs, weights, by_config, fc)
    plain = {cfg: t.unstack() for cfg, t in by_config.items()}
    same = es.serving_embedding_lookup(inputs, weights, plain, fc)
    for feature, want in lk["outputs"].items():
        np.testing.assert_array_equal(got[feature], same[feature])
        np.testing.assert_allclose(got[feature], _array(want), rtol=1e-6, atol=1e-6)
        assert np.isfinite(got[feature]).all()  # no 1e30 padding row, no NaN padding column


def test_fixture_ids_past_a_table_are_refused_although_its_padding_rows_exist() -> None:
    expected, stacked = _fixture()
    configs = _tables(expected["serving"]["tables"])
    fc = _feature_config(expected["serving"]["feature_config"], configs)
    by_config = {cfg: stacked[name] for name, cfg in configs.items()}
    for name in configs:
        feature = f"f_{name}"
        rows = stacked[name].rows
        with pytest.raises(es.IdOutOfRangeError) as info:
            es.serving_embedding_lookup({feature: np.array([0, rows])}, None, by_config, fc)
        assert info.value.table == name
        assert info.value.num_rows == rows
