"""SparseCore (``TPUEmbeddingV2``) checkpoints restore like TensorFlow 2.21's ForServing, or better.

Every fixture of ``tests/data/sparsecore`` (made by real TensorFlow, see its README) is restored
by ``es.train.Checkpoint(embedding=es.TPUEmbeddingForServing(...)).restore(path)`` (or, for a
Keras-nested embedding, :func:`embserve.checkpointing.restore_embedding` at the object's path),
before and after ``build()``, zero-copy and with ``copy=True``. Tables must equal what
TensorFlow's ForServing restored, bit for bit (padding rows hold 1e30 and padding columns NaN,
so serving any padding shows), slots must equal TensorFlow's own unstacking, and lookups must
equal TensorFlow's. Every case of ``mismatch/expected.json`` must raise exactly the error class
it names, with the names it lists in the message, and leave the object as it was, or serve what
it says.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embserve as es
from embserve.checkpoint import BundleReader
from embserve.checkpointing import find_embedding_tables, restore_embedding, write_checkpoint
from embserve.tables import StackedTable

DATA = Path(__file__).parent / "data" / "sparsecore"
VALID = sorted(p.parent.name for p in DATA.glob("*/expected.json") if p.parent.name != "mismatch")
MISMATCH = json.loads((DATA / "mismatch" / "expected.json").read_text(encoding="utf-8"))
ORDERS = ["restore_then_build", "build_then_restore"]

Json = Any


def _expected(name: str) -> Json:
    return json.loads((DATA / name / "expected.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The JSON of the fixtures, as embserve objects


def _optimizer(spec: Json) -> Any:
    return None if spec is None else getattr(es, spec["class"])(**spec["kwargs"])


def _serving(spec: Json) -> tuple[Any, Any, dict[str, Any]]:
    """``(feature_config, optimizer, {table name: TableConfig})`` of a ``serving`` entry."""
    tables = {}
    for ref, t in spec["tables"].items():
        assert t["initializer"] == {"type": "rowid", "offset": 9000}
        tables[ref] = es.TableConfig(
            t["vocabulary_size"],
            t["dim"],
            initializer=es.RowIdInitializer(offset=9000),
            optimizer=_optimizer(t["optimizer"]),
            combiner=t["combiner"],
            name=t["name"],
        )
    structure = spec["feature_config"]
    assert structure["type"] == "dict"
    features = {}
    for path, leaf in structure["items"]:
        assert leaf["type"] == "feature"
        features[path] = es.FeatureConfig(
            tables[leaf["table"]],
            max_sequence_length=leaf["max_sequence_length"],
            validate_weights_and_indices=leaf["validate_weights_and_indices"],
            output_shape=leaf["output_shape"],
            name=leaf["name"],
        )
    return features, _optimizer(spec["optimizer"]), {t.name: t for t in tables.values()}


def _embedding(spec: Json, **kwargs: Any) -> tuple[es.TPUEmbeddingForServing, dict[str, Any]]:
    features, optimizer, tables = _serving(spec)
    return es.TPUEmbeddingForServing(features, optimizer, **kwargs), tables


def _leaf(d: Json) -> Any:
    """An input leaf: dense ids / weights, es.SparseTensor or es.RaggedTensor."""
    if d["type"] == "dense":
        return np.array(d["values"], dtype=d["dtype"]).reshape(d["shape"])
    if d["type"] == "sparse":
        indices = np.array(d["indices"], dtype=np.int64).reshape(-1, len(d["dense_shape"]))
        values = np.array(d["values"], dtype=d["dtype"])
        return es.SparseTensor(indices, values, np.array(d["dense_shape"], dtype=np.int64))
    if d["type"] == "ragged":
        out: Any = np.array(d["values"], dtype=d["dtype"])
        for splits in reversed(d["nested_row_splits"]):
            out = es.RaggedTensor.from_row_splits(out, np.array(splits, dtype=d["splits_dtype"]))
        return out
    raise AssertionError(f"unknown input leaf {d['type']}")


def _data(spec: Json) -> np.ndarray:
    """A table recorded as ``data_hex`` (little-endian float32), in its shape."""
    return np.frombuffer(bytes.fromhex(spec["data_hex"]), dtype="<f4").reshape(spec["shape"])


def _sha256(value: Any) -> str:
    return hashlib.sha256(
        np.ascontiguousarray(np.asarray(value), dtype="<f4").tobytes()
    ).hexdigest()


def _assert_bits(actual: Any, expected: np.ndarray, what: str) -> None:
    """Bit for bit (NaN payloads included): a padding value served would show here."""
    value = np.asarray(actual)
    assert value.shape == expected.shape, f"{what}: shape {value.shape}, TF {expected.shape}"
    assert value.dtype == np.float32, f"{what}: dtype {value.dtype}"
    same = value.view(np.uint32) == expected.view(np.uint32)
    if not same.all():
        row, col = np.argwhere(~same)[0]
        raise AssertionError(
            f"{what}: row {row}, column {col} is {value[row, col]}, TF {expected[row, col]}"
        )


def _restore(name: str, emb: es.TPUEmbeddingForServing, **kwargs: Any) -> None:
    """Restore fixture ``name`` into ``emb`` at the fixture's object path."""
    expected = _expected(name)
    prefix = DATA / name / expected["checkpoint"]
    if expected["embedding_path"] == "embedding":
        es.train.Checkpoint(embedding=emb).restore(prefix, **kwargs)
    else:
        path = expected["embedding_path"].split("/")
        restore_embedding(BundleReader(prefix), path, emb, **kwargs)


def _stacked_tables(expected: Json) -> set[str]:
    """Tables the fixture serves from a stack (a re-saved checkpoint stores them per table)."""
    if expected["name"] == "resaved":
        return set()
    return {t["table_name"] for t in expected["layouts"]["tables"]}


def _tables_restored(expected: Json) -> dict[str, Json]:
    return expected["tables"] if expected["name"] == "resaved" else expected["restored"]


# ---------------------------------------------------------------------------------------------
# Valid fixtures


@pytest.mark.parametrize("copy", [False, True], ids=["mapped", "copy"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", VALID)
def test_restores_tensorflows_tables_bit_for_bit(name: str, order: str, copy: bool) -> None:
    expected = _expected(name)
    emb, tables = _embedding(expected["serving"])
    if order == "build_then_restore":
        emb.build()
    _restore(name, emb, copy=copy)
    restored = _tables_restored(expected)
    assert sorted(tables) == sorted(restored)
    stacked = _stacked_tables(expected)
    for table_name, config in tables.items():
        value = emb.embedding_tables[config]
        assert value is emb.variables[table_name]["parameters"]
        _assert_bits(value, _data(restored[table_name]), f"{name}: table {table_name!r}")
        if copy:
            assert type(value) is np.ndarray
            assert value.flags.writeable
            assert value.flags.c_contiguous
        elif table_name in stacked:
            assert isinstance(value, StackedTable), f"{table_name} should be served in place"
        else:
            assert type(value) is np.ndarray
            assert not value.flags.writeable


@pytest.mark.parametrize("copy", [False, True], ids=["mapped", "copy"])
@pytest.mark.parametrize("name", [n for n in VALID if _expected(n).get("slots")])
def test_restores_slots_as_tensorflow_unstacks_them(name: str, copy: bool) -> None:
    expected = _expected(name)
    emb, _ = _embedding(expected["serving"])
    _restore(name, emb, copy=copy)
    checked = 0
    for table_name, slots in expected["slots"].items():
        for slot, spec in slots.items():
            value = emb.variables[table_name][slot]
            assert np.asarray(value).shape == tuple(spec["shape"])
            assert _sha256(value) == spec["sha256"], f"{name}: slot {slot!r} of {table_name!r}"
            assert isinstance(value, np.ndarray if copy else StackedTable)
            checked += 1
    assert checked == sum(len(s) for s in expected["slots"].values())


def test_resaved_checkpoint_has_no_slots_so_they_start_from_their_initializers() -> None:
    """A re-saved ForServing checkpoint holds no slots (TensorFlow's serving object never made
    any): with an optimizer, the slots are what build() gives them."""
    expected = _expected("resaved")
    emb, tables = _embedding(expected["serving"])
    _restore("resaved", emb)
    fresh, _ = _embedding(expected["serving"])
    fresh.build()
    for table_name in tables:
        for slot in ("momenta", "velocities"):
            np.testing.assert_array_equal(
                emb.variables[table_name][slot], fresh.variables[table_name][slot]
            )


@pytest.mark.parametrize("copy", [False, True], ids=["mapped", "copy"])
@pytest.mark.parametrize("name", [n for n in VALID if "lookups" in _expected(n)])
def test_lookups_match_tensorflow(name: str, copy: bool) -> None:
    expected = _expected(name)
    emb, _ = _embedding(expected["serving"])
    _restore(name, emb, copy=copy)
    for case in expected["lookups"]:
        features = {k: _leaf(v) for k, v in case["features"].items()}
        weights = None
        if case["weights"] is not None:
            weights = {k: None if v is None else _leaf(v) for k, v in case["weights"].items()}
        out = emb(features, weights)
        assert sorted(out) == sorted(case["outputs"])
        for feature, want in case["outputs"].items():
            tf_out = np.array(want["values"], dtype=want["dtype"]).reshape(want["shape"])
            assert out[feature].shape == tf_out.shape, (case["name"], feature)
            np.testing.assert_allclose(
                out[feature], tf_out, rtol=1e-6, atol=1e-6, err_msg=f"{case['name']} {feature}"
            )


def test_tables_of_a_stack_are_views_of_one_mapped_stack() -> None:
    """Zero copy: the tables of a stack share the one array the checkpoint's stack is mapped as,
    read-only; nothing was unstacked."""
    expected = _expected("stacked_2x4")
    emb, _ = _embedding(expected["serving"])
    reader = BundleReader(DATA / "stacked_2x4" / "ckpt-1")
    restore_embedding(reader, ["embedding"], emb)
    variables = emb.variables
    stack = variables["t_a"]["parameters"].stack
    assert variables["t_b"]["parameters"].stack is stack
    assert variables["t_c"]["parameters"].stack is stack
    assert not stack.flags.writeable
    assert np.shares_memory(stack, reader.get_tensor(expected["stacks"]["t_a_t_b_t_c"]["key"]))
    assert variables["t_a"]["accumulators"].stack is variables["t_b"]["accumulators"].stack
    assert variables["t_a"]["accumulators"].stack is not stack


def test_restore_reports_progress_per_stack_read_once() -> None:
    """Progress as ProgressCounter documents it: (0, total) first, one report per tensor read
    (a stack shared by three tables counted once), (total, total) last."""
    expected = _expected("stacked_2x4")
    emb, _ = _embedding(expected["serving"])
    reports: list[tuple[int, int]] = []
    es.train.Checkpoint(embedding=emb).restore(
        DATA / "stacked_2x4" / "ckpt-1", progress=lambda done, total: reports.append((done, total))
    )
    stacks = expected["stacks"]
    sizes = [4 * int(np.prod(stacks[s]["shape"])) for s in ("t_a_t_b_t_c", "t_d")]
    sizes.append(4 * int(np.prod(stacks["t_a_t_b_t_c"]["slots"]["accumulators"]["shape"])))
    total = sum(sizes)
    assert reports[0] == (0, total)
    assert reports[-1] == (total, total)
    assert len(reports) == 1 + len(sizes)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)


def test_load_status_reports_what_was_consumed() -> None:
    """Unlike TensorFlow (whose assertions fail after every correct SparseCore restore),
    assert_consumed passes when every stored table was asked for, and names what was not."""
    expected = _expected("stacked_2x4")
    emb, _ = _embedding(expected["serving"])
    status = es.train.Checkpoint(embedding=emb).restore(DATA / "stacked_2x4" / "ckpt-1")
    status.assert_consumed()
    status.assert_existing_objects_matched()
    assert expected["layouts_key"] in status.consumed

    serving = dict(expected["serving"])
    serving["feature_config"] = {
        "type": "dict",
        "items": [i for i in serving["feature_config"]["items"] if i[1]["table"] != "t_d"],
    }
    serving["tables"] = {k: v for k, v in serving["tables"].items() if k != "t_d"}
    subset, _ = _embedding(serving)
    status = es.train.Checkpoint(embedding=subset).restore(DATA / "stacked_2x4" / "ckpt-1")
    status.assert_nontrivial_match()
    with pytest.raises(es.CheckpointMismatchError, match=re.escape("embedding/t_d/.ATTRIBUTES")):
        status.assert_consumed()


@pytest.mark.parametrize("name", VALID)
def test_find_embedding_tables_lists_the_logical_tables(name: str) -> None:
    expected = _expected(name)
    found = find_embedding_tables(BundleReader(DATA / name / "ckpt-1"))
    path = tuple(expected["embedding_path"].split("/"))
    assert {f.object_path for f in found} == {path}
    by_name = {f.table: f for f in found}
    assert sorted(by_name) == sorted(_tables_restored(expected))
    stacked = _stacked_tables(expected)
    for table_name, spec in _tables_restored(expected).items():
        f = by_name[table_name]
        assert f.shape == tuple(spec["shape"])
        assert f.dtype == "float32"
        if table_name not in stacked:
            assert f.layout is None
            continue
        assert f.layout is not None
        stack = expected["stacks"][f.layout.stack]
        assert f.key == stack["key"]
        assert f.layout.stack_shape == tuple(stack["shape"])
        assert f.slots == {slot: s["key"] for slot, s in stack.get("slots", {}).items()}
        stored = next(t for t in expected["layouts"]["tables"] if t["table_name"] == table_name)
        assert f.layout.to_proto().SerializeToString() != b""
        assert (f.layout.row_offset, f.layout.rotation, f.layout.num_sparse_cores) == (
            stored["sparse_core_shard_row_offset"],
            stored["sparse_core_shard_rotation"],
            stored["num_sparse_cores"],
        )
        assert f.layout.sparse_cores_per_chip == expected["topology"]["sparse_cores_per_chip"]


@pytest.mark.parametrize("name", VALID)
def test_written_back_as_plain_tables_that_restore_the_same(name: str, tmp_path: Path) -> None:
    """Saving an object restored from a SparseCore checkpoint writes plain per-table keys (each
    stacked table unstacked as it is written); restoring that gives the same tables and slots.
    (tools/check_tf_sparsecore_writeback.py checks that TensorFlow restores them too.)"""
    expected = _expected(name)
    emb, tables = _embedding(expected["serving"])
    _restore(name, emb)
    write_checkpoint(str(tmp_path / "ckpt-1"), {"embedding": emb}, 1)
    keys = dict(es.train.list_variables(tmp_path / "ckpt-1"))
    assert not any("_sparse_core_table_layouts" in k for k in keys)
    again, _ = _embedding(expected["serving"])
    es.train.Checkpoint(embedding=again).restore(tmp_path / "ckpt-1").assert_consumed()
    for table_name, config in tables.items():
        key = f"embedding/{table_name.replace('.', '..').replace('/', '.S')}/.ATTRIBUTES/"
        assert keys[key + "VARIABLE_VALUE"] == [config.vocabulary_size, config.dim]
        for slot, value in emb.variables[table_name].items():
            restored = again.variables[table_name][slot]
            assert type(restored) is np.ndarray
            _assert_bits(restored, np.asarray(value), f"{name}: {table_name}/{slot}")


# ---------------------------------------------------------------------------------------------
# Mismatch and damage cases


def _case_tables(case: Json) -> dict[str, np.ndarray]:
    """The true tables of the checkpoint a case restores."""
    if case["checkpoint"].startswith("../"):
        other = _expected(case["checkpoint"].split("/")[1])
        return {t: _data(spec) for t, spec in other["restored"].items()}
    return {t: _data(spec) for t, spec in MISMATCH["base"]["tables"].items()}


def _initial_values(config: Any) -> np.ndarray:
    """RowIdInitializer(offset=9000): row r holds 9000 + r."""
    rows = np.arange(config.vocabulary_size, dtype=np.float32)[:, None] + 9000
    return np.broadcast_to(rows, (config.vocabulary_size, config.dim)).astype(np.float32)


ERRORS = {
    "CheckpointMismatchError": es.CheckpointMismatchError,
    "CorruptCheckpointError": es.CorruptCheckpointError,
}


def _mismatch_params() -> list[Any]:
    params = []
    for case in MISMATCH["cases"]:
        orders = ORDERS if "raises" in case["embserve_expected"] else [case["order"]]
        params += [pytest.param(case, order, id=f"{case['name']}-{order}") for order in orders]
    return params


@pytest.mark.parametrize(("case", "order"), _mismatch_params())
def test_mismatch_case(case: Json, order: str) -> None:
    """Each case raises exactly its error class naming what it lists and leaves the object as
    it was (unbuilt, or built with its own tables); or serves what it says. Error cases run in
    both orders: restoring after build() must leave the built tables in place."""
    want = case["embserve_expected"]
    kwargs = {}
    if case["experimental_sparsecore_restore_info"] is not None:
        kwargs["experimental_sparsecore_restore_info"] = case[
            "experimental_sparsecore_restore_info"
        ]
    emb, tables = _embedding(case["serving"], **kwargs)
    before = None
    if order == "build_then_restore":
        emb.build()
        before = emb.variables
    checkpoint = es.train.Checkpoint(embedding=emb)
    prefix = DATA / "mismatch" / case["checkpoint"]
    if "raises" in want:
        with pytest.raises(es.CheckpointError) as info:
            checkpoint.restore(prefix)
        assert type(info.value) is ERRORS[want["raises"]], f"{type(info.value)}: {info.value}"
        for word in want["message_names"]:
            assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"
        assert want["object_unchanged"]
        assert not emb._built if before is None else emb.variables is before
        for config in tables.values():
            np.testing.assert_array_equal(emb.embedding_tables[config], _initial_values(config))
        return
    assert want["serves"] in ("correct", "subset")
    checkpoint.restore(prefix)
    truth = _case_tables(case)
    assert set(tables) <= set(truth)
    for table_name, config in tables.items():
        _assert_bits(emb.embedding_tables[config], truth[table_name], f"table {table_name!r}")


def test_every_mismatch_case_is_checked() -> None:
    """The fixture's 31 cases, each with an expectation this module knows how to check."""
    assert len(MISMATCH["cases"]) == 31
    for case in MISMATCH["cases"]:
        want = case["embserve_expected"]
        assert ("raises" in want) != ("serves" in want), case["name"]
        assert want.get("raises", "CheckpointMismatchError") in ERRORS
