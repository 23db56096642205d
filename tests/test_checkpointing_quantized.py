"""Quantized checkpoints (issue 12): embserve.quantizing.quantize_checkpoint writes them, restore
serves them as QuantizedTables (or quantizes float32 tables at restore with ``storage=``).

Every restored value is compared with ``storage.quantize_rows`` of the source rows, byte for byte
(the stored rows), so a wrong row, block boundary or layout fails here."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embserve as es
import embserve.quantizing as quantizing
from embserve import storage as st
from embserve.checkpoint import OBJECT_GRAPH_KEY, BundleReader, BundleWriter
from embserve.checkpointing import (
    STORAGE_KEY,
    find_embedding_tables,
    quantize_table,
    read_storage_manifest,
)
from embserve.quantizing import QuantizedTableInfo, quantize_checkpoint, quantize_embedding
from embserve.tables import StackedTable
from tests.checkpoint._sparsecore import layout, write_sparsecore

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data" / "checkpoints"
SPARSECORE = ROOT / "tests" / "data" / "sparsecore"
QUANTIZED = st.QUANTIZED_TYPES
KEY = "embedding/{}/.ATTRIBUTES/VARIABLE_VALUE"


def _model(shapes: dict[str, tuple[int, int]], optimizer: Any = None) -> es.TPUEmbeddingForServing:
    fc = {
        f"f_{name}": es.FeatureConfig(es.TableConfig(v, d, name=name))
        for name, (v, d) in shapes.items()
    }
    return es.TPUEmbeddingForServing(fc, optimizer)


SHAPES = {"users": (1000, 16), "items": (37, 5)}


def _float32_checkpoint(path: Path, shapes: dict[str, tuple[int, int]] = SHAPES) -> dict[str, Any]:
    """A float32 checkpoint written by embserve (``path/ckpt-1``), with its tables' values."""
    emb = _model(shapes)
    emb.build()
    rng = np.random.default_rng(7)
    values = {
        name: (rng.standard_normal((v, d)) * (1 + np.arange(v)[:, None] % 5)).astype(np.float32)
        for name, (v, d) in shapes.items()
    }
    emb._set_variables({name: {"parameters": value} for name, value in values.items()})
    es.train.Checkpoint(embedding=emb).save(path / "ckpt")
    return values


def _tables(emb: es.TPUEmbeddingForServing) -> dict[str, Any]:
    return {str(t.name): v for t, v in emb.embedding_tables.items()}


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("storage", QUANTIZED)
def test_round_trip_every_storage_type(tmp_path: Path, storage: str) -> None:
    values = _float32_checkpoint(tmp_path / "src")
    info = quantize_checkpoint(tmp_path / "src", tmp_path / "q", storage, chunk_rows=64)
    assert sorted((i.name, i.storage, i.rows, i.dim) for i in info) == [
        ("items", storage, 37, 5),
        ("users", storage, 1000, 16),
    ]
    for i in info:
        assert i.key == KEY.format(i.name)
        assert i.source_nbytes == i.rows * i.dim * 4
        assert i.stored_nbytes == i.rows * st.row_bytes(storage, i.dim)
    assert es.train.latest_checkpoint(tmp_path / "q") == str(tmp_path / "q" / "ckpt-1")

    emb = _model(SHAPES)
    status = es.train.Checkpoint(embedding=emb).restore(tmp_path / "q")
    status.assert_consumed()
    for name, table in _tables(emb).items():
        assert isinstance(table, st.QuantizedTable)
        assert table.storage == storage
        assert table.shape == SHAPES[name]
        np.testing.assert_array_equal(table.data, st.quantize_rows(values[name], storage))
        # zero-copy: a read-only view of the mapped data file
        assert not table.data.flags.owndata
        assert not table.data.flags.writeable


@pytest.mark.parametrize("fixture", ["tpu_none", "tpu_adagrad", "tpu_adam", "keras"])
@pytest.mark.parametrize("storage", QUANTIZED)
def test_round_trip_from_tensorflow_checkpoints(tmp_path: Path, fixture: str, storage: str) -> None:
    source = es.train.load_checkpoint(FIXTURES / fixture)
    quantize_checkpoint(FIXTURES / fixture, tmp_path, storage)
    found = find_embedding_tables(BundleReader(FIXTURES / fixture))
    emb = _model({t.table: (int(t.shape[0]), int(t.shape[1])) for t in found})
    es.train.Checkpoint(embedding=emb).restore(tmp_path)
    for name, table in _tables(emb).items():
        want = st.quantize_rows(source.get_tensor(KEY.format(name)), storage)
        np.testing.assert_array_equal(table.data, want)
    quantized = es.train.load_checkpoint(tmp_path)
    slot_keys = {k for t in found for k in t.slots.values()}
    table_keys = {t.key for t in found}
    assert slot_keys or fixture == "tpu_none"
    # everything else (a Keras model and its optimizer, the save counter) is copied unchanged
    copied = 0
    for key in source.get_variable_to_shape_map():
        if key in slot_keys:
            assert not quantized.has_tensor(key)
        elif key not in table_keys and key != OBJECT_GRAPH_KEY:
            np.testing.assert_array_equal(quantized.get_tensor(key), source.get_tensor(key))
            copied += 1
    assert copied >= 1  # the save counter at least


def test_manifest_and_listing(tmp_path: Path) -> None:
    _float32_checkpoint(tmp_path / "src")
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", {"users": "int4"})
    names = dict(es.train.list_variables(tmp_path / "q"))
    assert names[STORAGE_KEY] == []
    assert names[KEY.format("users")] == [1000, st.row_bytes("int4", 16)]
    assert names[KEY.format("items")] == [37, 5]
    dtypes = es.train.load_checkpoint(tmp_path / "q").get_variable_to_dtype_map()
    assert dtypes[KEY.format("users")] == "uint8"
    assert dtypes[KEY.format("items")] == "float32"
    manifest = read_storage_manifest(BundleReader(tmp_path / "q"))
    assert manifest is not None
    assert manifest["format"] == "embserve-quantized"
    assert manifest["source"] == str(tmp_path / "src" / "ckpt-1")
    by_table = {e["table"]: e for e in manifest["tables"]}
    assert by_table["users"]["storage"] == "int4"
    assert by_table["users"]["dim"] == 16
    assert by_table["items"]["storage"] == "float32"
    found = {t.table: t for t in find_embedding_tables(BundleReader(tmp_path / "q"))}
    assert found["users"].storage == "int4"
    assert found["users"].shape == (1000, 16)
    assert found["users"].dtype == "uint8"
    assert found["items"].storage == "float32"


def test_subset_of_tables_and_mapping(tmp_path: Path) -> None:
    values = _float32_checkpoint(tmp_path / "src")
    info = quantize_checkpoint(tmp_path / "src", tmp_path / "a", "int8", tables=["items"])
    assert {i.name: i.storage for i in info} == {"users": "float32", "items": "int8"}
    emb = _model(SHAPES)
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "a")
    tables = _tables(emb)
    assert isinstance(tables["users"], np.ndarray)
    np.testing.assert_array_equal(tables["users"], values["users"])
    np.testing.assert_array_equal(tables["items"].data, st.quantize_rows(values["items"], "int8"))

    info = quantize_checkpoint(tmp_path / "src", tmp_path / "b", {"users": "bfloat16"})
    assert {i.name: i.storage for i in info} == {"users": "bfloat16", "items": "float32"}


def test_unknown_names_are_refused_listing_the_tables(tmp_path: Path) -> None:
    _float32_checkpoint(tmp_path / "src")
    with pytest.raises(es.ConfigError, match=r"'usrs'.*'items', 'users'"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int8", tables=["usrs"])
    with pytest.raises(es.ConfigError, match=r"'itms'.*'items', 'users'"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "q", {"itms": "int8"})
    with pytest.raises(es.ConfigError, match="storage must be one of"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int3")
    assert not (tmp_path / "q").exists()


def test_progress_reports_source_bytes_block_by_block(tmp_path: Path) -> None:
    _float32_checkpoint(tmp_path / "src")
    calls: list[tuple[int, int]] = []
    quantize_checkpoint(
        tmp_path / "src",
        tmp_path / "q",
        "int8",
        chunk_rows=100,
        progress=lambda d, t: calls.append((d, t)),
    )
    total = (1000 * 16 + 37 * 5) * 4 + 8  # the tables and the int64 save counter
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert len(calls) >= 10 + 1 + 2  # ten blocks of users, one of items, first and last


def test_streams_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded by a block: every quantize_rows call sees at most chunk_rows rows,
    and the source is read block by block (no whole-table array)."""
    values = _float32_checkpoint(tmp_path / "src")
    seen: list[int] = []
    real = st.quantize_rows

    def counting(rows: np.ndarray, storage: str, **kw: Any) -> np.ndarray:
        seen.append(rows.shape[0])
        return real(rows, storage, **kw)

    monkeypatch.setattr(quantizing, "quantize_rows", counting)
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int8", chunk_rows=128)
    assert sorted(seen) == sorted([128] * 7 + [1000 - 7 * 128] + [37])
    emb = _model(SHAPES)
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "q")
    np.testing.assert_array_equal(
        _tables(emb)["users"].data, st.quantize_rows(values["users"], "int8")
    )


def test_default_block_is_16_mib_of_float32() -> None:
    from embserve.checkpointing import chunk_rows_for

    assert chunk_rows_for(64) == (16 << 20) // 256
    assert chunk_rows_for(10**9) == 1
    with pytest.raises(es.ConfigError):
        chunk_rows_for(4, 0)


# ---------------------------------------------------------------------------------------------
# Refusals


def test_nan_or_inf_row_is_refused_naming_the_row_and_nothing_is_written(tmp_path: Path) -> None:
    values = _float32_checkpoint(tmp_path / "src")
    for bad, row in ((np.nan, 517), (np.inf, 3), (-np.inf, 999)):
        patched = values["users"].copy()
        patched[row, 5] = bad
        # a table written that way by its writer (checksum valid): the row itself is refused
        shutil.rmtree(tmp_path / "bad", ignore_errors=True)
        emb = _model(SHAPES)
        emb._set_variables(
            {"users": {"parameters": patched}, "items": {"parameters": values["items"]}}
        )
        es.train.Checkpoint(embedding=emb).save(tmp_path / "bad" / "ckpt")
        with pytest.raises(es.QuantizationError, match=rf"'users': row {row} holds NaN or inf"):
            quantize_checkpoint(tmp_path / "bad", tmp_path / "q", "int8", chunk_rows=100)
        left = list((tmp_path / "q").iterdir()) if (tmp_path / "q").exists() else []
        assert left == []  # no index, no data file, no temporary file, no state file


def test_damaged_source_bytes_are_refused(tmp_path: Path) -> None:
    _float32_checkpoint(tmp_path / "src")
    info = BundleReader(tmp_path / "src").info(KEY.format("users"))
    path = tmp_path / "src" / "ckpt-1.data-00000-of-00001"
    raw = bytearray(path.read_bytes())
    raw[info.offset + 4 * 16 * 900 + 2] ^= 0x01  # a mantissa bit of row 900: still finite
    path.write_bytes(bytes(raw))
    with pytest.raises(es.CorruptCheckpointError, match=r"table 'users'.*checksum mismatch"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int8")
    assert not list((tmp_path / "q").glob("*.index"))
    # the same damage caught when quantizing at restore (a table under 64 MiB is verified by
    # the restore anyway; the quantizing path checks it over its own blocks)
    with pytest.raises(es.CorruptCheckpointError, match="checksum mismatch"):
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "src", storage="int8")


def test_existing_target_is_refused_unless_overwrite(tmp_path: Path) -> None:
    _float32_checkpoint(tmp_path / "src")
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int8")
    before = (tmp_path / "q" / "ckpt-1.index").read_bytes()
    with pytest.raises(FileExistsError, match=r"already exists.*overwrite"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int4")
    assert (tmp_path / "q" / "ckpt-1.index").read_bytes() == before
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int4", overwrite=True)
    emb = _model(SHAPES)
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "q")
    assert _tables(emb)["users"].storage == "int4"
    # a prefix names that checkpoint itself
    with pytest.raises(FileExistsError, match="already exists"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "q" / "ckpt-1", "int8")
    with pytest.raises(FileExistsError, match="source checkpoint itself"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "src", "int8", overwrite=True)


def test_a_quantized_checkpoint_is_not_quantized_again(tmp_path: Path) -> None:
    _float32_checkpoint(tmp_path / "src")
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int8")
    with pytest.raises(es.CheckpointMismatchError, match="not a float32 checkpoint"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "q2", "int4")


def _rewrite(src: Path, dst: Path, key: str, value: np.ndarray) -> None:
    """Copy checkpoint ``src`` to prefix ``dst`` with ``key`` replaced by ``value`` (checksums
    valid: the damage is in the values, as a faulty writer would leave it)."""
    reader = BundleReader(src)
    with BundleWriter(dst) as w:
        for k in reader:
            info = reader.info(k)
            w.add(
                k,
                value if k == key else reader.get_tensor(k),
                dtype=None if k == key else info.dtype,
            )


@pytest.mark.parametrize("storage", ["int8", "int4"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("which", ["scale", "bias"])
def test_damaged_scale_is_refused_naming_table_key_and_row(
    tmp_path: Path, storage: str, bad: float, which: str
) -> None:
    values = _float32_checkpoint(tmp_path / "src")
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", storage)
    data = st.quantize_rows(values["users"], storage).copy()
    dim = 16
    tail = dim if storage == "int8" else (dim + 1) // 2
    size = 4 if storage == "int8" else 2
    at = tail + (0 if which == "scale" else size)
    fdt = "<f4" if storage == "int8" else "<f2"
    data[612, at : at + size] = np.array([bad], fdt).view(np.uint8)
    _rewrite(tmp_path / "q" / "ckpt-1", tmp_path / "d" / "ckpt-1", KEY.format("users"), data)
    emb = _model(SHAPES)
    with pytest.raises(
        es.CorruptCheckpointError,
        match=rf"table 'users' \(key '{KEY.format('users')}', {storage}\): row 612",
    ):
        es.train.Checkpoint(embedding=emb).restore(tmp_path / "d" / "ckpt-1")
    assert not emb._built  # nothing installed


@pytest.mark.parametrize(
    ("dtype", "width"),
    [(np.uint8, 16 + 7), (np.uint8, 16 + 9), (np.int32, 16), (np.float64, 16), (np.float16, 15)],
)
def test_wrong_stored_shape_or_dtype_is_a_mismatch(tmp_path: Path, dtype: Any, width: int) -> None:
    _float32_checkpoint(tmp_path / "src")
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int8")
    value = np.zeros((1000, width), dtype)
    _rewrite(tmp_path / "q" / "ckpt-1", tmp_path / "d" / "ckpt-1", KEY.format("users"), value)
    with pytest.raises(
        es.CheckpointMismatchError,
        match=rf"table 'users' is stored under '{KEY.format('users')}' as .* \[1000, {width}\].*"
        r"int8 uint8 \[1000, 24\] or int4 uint8 \[1000, 12\]",
    ):
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "d" / "ckpt-1")


def test_wrong_row_count_is_a_mismatch(tmp_path: Path) -> None:
    _float32_checkpoint(tmp_path / "src")
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int8")
    with pytest.raises(es.CheckpointMismatchError, match=r"'users'.*uint8 \[1000, 24\]"):
        es.train.Checkpoint(embedding=_model({"users": (999, 16), "items": (37, 5)})).restore(
            tmp_path / "q"
        )


def test_slots_are_not_written_and_an_optimizer_is_refused(tmp_path: Path) -> None:
    quantize_checkpoint(FIXTURES / "tpu_adagrad", tmp_path, "int8")
    emb = _model({"t0": (7, 3), "t1": (11, 5)}, es.Adagrad(0.1))
    with pytest.raises(
        es.CheckpointMismatchError, match=r"holds no optimizer slots.*optimizer=None"
    ):
        es.train.Checkpoint(embedding=emb).restore(tmp_path)


# ---------------------------------------------------------------------------------------------
# storage= at restore


@pytest.mark.parametrize("storage", QUANTIZED)
def test_restore_quantizes_float32_tables(tmp_path: Path, storage: str) -> None:
    values = _float32_checkpoint(tmp_path / "src")
    emb = _model(SHAPES)
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "src", storage=storage).assert_consumed()
    for name, table in _tables(emb).items():
        assert isinstance(table, st.QuantizedTable)
        assert table.storage == storage
        np.testing.assert_array_equal(table.data, st.quantize_rows(values[name], storage))
        assert table.data.flags.owndata  # private memory: the quantized bytes only


def test_restore_storage_mapping_and_refusals(tmp_path: Path) -> None:
    values = _float32_checkpoint(tmp_path / "src")
    emb = _model(SHAPES)
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "src", storage={"items": "int4"})
    tables = _tables(emb)
    assert isinstance(tables["users"], np.ndarray)
    assert tables["items"].storage == "int4"
    with pytest.raises(es.ConfigError, match=r"\['usrs'\].*users"):
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(
            tmp_path / "src", storage={"usrs": "int8"}
        )
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int8")
    # as stored: fine; another type: a mismatch naming the table, key and both types
    es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "q", storage="int8")
    with pytest.raises(
        es.CheckpointMismatchError,
        match=rf"'items' is stored as int8 under '{KEY.format('items')}', but storage 'int4'",
    ):
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "q", storage="int4")
    with pytest.raises(es.CheckpointMismatchError, match="float32 values are not in this"):
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path / "q", storage="float32")
    del values


def test_restore_storage_refuses_a_nan_row_naming_it(tmp_path: Path) -> None:
    emb = _model(SHAPES)
    emb.build()
    bad = np.ones((1000, 16), np.float32)
    bad[444, 0] = np.nan
    emb._set_variables(
        {"users": {"parameters": bad}, "items": {"parameters": np.ones((37, 5), np.float32)}}
    )
    es.train.Checkpoint(embedding=emb).save(tmp_path / "ckpt")
    with pytest.raises(
        es.CheckpointMismatchError, match=r"cannot be served as int8: table 'users': row 444"
    ):
        es.train.Checkpoint(embedding=_model(SHAPES)).restore(tmp_path, storage="int8")


def test_copy_true_copies_the_stored_bytes(tmp_path: Path) -> None:
    values = _float32_checkpoint(tmp_path / "src")
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int4")
    emb = _model(SHAPES)
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "q", copy=True)
    table = _tables(emb)["users"]
    assert table.data.flags.owndata
    np.testing.assert_array_equal(table.data, st.quantize_rows(values["users"], "int4"))


# ---------------------------------------------------------------------------------------------
# SparseCore sources


def test_sparsecore_source_is_written_as_plain_quantized_tables(tmp_path: Path) -> None:
    layouts = [
        layout("a", "a_b", 10, 8, offset=0, shard_rows=16),
        layout("b", "a_b", 29, 5, offset=8, rotation=2, shard_rows=16),
        layout("c", "c", 3, 4, width=8),
    ]
    logical = write_sparsecore(tmp_path / "src" / "ckpt-1", layouts)
    quantize_checkpoint(tmp_path / "src" / "ckpt-1", tmp_path / "q", "int8", chunk_rows=4)
    shapes = {"a": (10, 8), "b": (29, 5), "c": (3, 4)}
    emb = _model(shapes)
    es.train.Checkpoint(embedding=emb).restore(tmp_path / "q").assert_consumed()
    for name, table in _tables(emb).items():
        assert isinstance(table, st.QuantizedTable)
        want = st.quantize_rows(logical[name]["parameters"], "int8")
        np.testing.assert_array_equal(table.data, want)
    names = dict(es.train.list_variables(tmp_path / "q"))
    assert KEY.format("a") in names
    assert "embedding/a_b/.ATTRIBUTES/VARIABLE_VALUE" not in names


def test_sparsecore_tensorflow_fixture(tmp_path: Path) -> None:
    src = SPARSECORE / "four_chips_4sc"
    found = find_embedding_tables(BundleReader(src))
    shapes = {t.table: (int(t.shape[0]), int(t.shape[1])) for t in found}
    emb32 = _model(shapes)
    es.train.Checkpoint(embedding=emb32).restore(src)
    quantize_checkpoint(src, tmp_path, "int4")
    emb = _model(shapes)
    es.train.Checkpoint(embedding=emb).restore(tmp_path)
    for (name, table), stacked in zip(_tables(emb).items(), _tables(emb32).values(), strict=True):
        assert isinstance(stacked, StackedTable)
        want = st.quantize_rows(np.asarray(stacked), "int4", table=name)
        np.testing.assert_array_equal(table.data, want)
    # and quantized at restore straight from the stacks
    emb2 = _model(shapes)
    es.train.Checkpoint(embedding=emb2).restore(src, storage="int8")
    for table, stacked in zip(_tables(emb2).values(), _tables(emb32).values(), strict=True):
        np.testing.assert_array_equal(table.data, st.quantize_rows(np.asarray(stacked), "int8"))


# ---------------------------------------------------------------------------------------------
# In memory


def test_quantize_table_and_embedding_in_memory() -> None:
    rng = np.random.default_rng(3)
    table = rng.standard_normal((300, 7)).astype(np.float32)
    blocks: list[int] = []
    q = quantize_table(
        table, "int4", name="t", chunk_rows=50, on_block=lambda s, b: blocks.append(s)
    )
    assert blocks == [0, 50, 100, 150, 200, 250]
    np.testing.assert_array_equal(q.data, st.quantize_rows(table, "int4"))
    assert quantize_table(q, "int4") is q
    with pytest.raises(es.ConfigError, match="already stored as int4"):
        quantize_table(q, "int8")
    with pytest.raises(es.ConfigError, match="float32 tables are served as they are"):
        quantize_table(table, "float32")

    emb = _model({"a": (300, 7), "b": (10, 2)})
    emb.build()
    before = {k: np.array(v) for k, v in _tables(emb).items()}
    served = quantize_embedding(emb, {"a": "float16"})
    assert served["a"].storage == "float16"
    assert isinstance(served["b"], np.ndarray)
    np.testing.assert_array_equal(_tables(emb)["a"].data, before["a"].astype(np.float16))
    with pytest.raises(es.ConfigError, match="'zz'"):
        quantize_embedding(emb, {"zz": "int8"})


def test_second_checkpoint_into_the_same_directory_becomes_the_latest(tmp_path: Path) -> None:
    _float32_checkpoint(tmp_path / "src")
    emb = _model(SHAPES)
    ckpt = es.train.Checkpoint(embedding=emb)
    ckpt.restore(tmp_path / "src")
    ckpt.save(tmp_path / "src" / "ckpt")  # ckpt-2
    quantize_checkpoint(tmp_path / "src" / "ckpt-1", tmp_path / "q", "int8")
    assert es.train.latest_checkpoint(tmp_path / "q") == str(tmp_path / "q" / "ckpt-1")
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", "int8")  # the directory: its latest
    assert es.train.latest_checkpoint(tmp_path / "q") == str(tmp_path / "q" / "ckpt-2")
    state = (tmp_path / "q" / "checkpoint").read_text()
    assert 'all_model_checkpoint_paths: "ckpt-1"' in state


def test_a_checkpoint_without_tables_is_refused(tmp_path: Path) -> None:
    with pytest.raises(es.CheckpointMismatchError, match="holds no TPU embedding tables"):
        quantize_checkpoint(FIXTURES / "manager", tmp_path, "int8")


def test_info_is_a_named_tuple() -> None:
    info = QuantizedTableInfo("t", "k", "int8", 10, 4, 160, 120)
    assert info._asdict()["stored_nbytes"] == 120


# ---------------------------------------------------------------------------------------------
# TensorFlow reads it (optional: needs .venvs/tf)

TF_PYTHON = ROOT / ".venvs" / "tf" / "bin" / "python"


@pytest.mark.skipif(not TF_PYTHON.exists(), reason="no TensorFlow venv (.venvs/tf)")
def test_tensorflow_lists_a_quantized_checkpoint_and_refuses_it_into_float32(
    tmp_path: Path,
) -> None:
    quantize_checkpoint(FIXTURES / "tpu_none", tmp_path, {"t0": "int8", "t1": "bfloat16"})
    script = """
import json, sys, tensorflow as tf
d = sys.argv[1]
r = tf.train.load_checkpoint(d)
out = {"vars": [[k, s] for k, s in tf.train.list_variables(d)],
       "dtypes": {k: v.name for k, v in r.get_variable_to_dtype_map().items()},
       "manifest": json.loads(r.get_tensor("_EMBSERVE_STORAGE"))}
E = tf.tpu.experimental.embedding
t0, t1 = E.TableConfig(7, 3, name="t0"), E.TableConfig(11, 5, name="t1")
emb = E.TPUEmbeddingForServing({"a": E.FeatureConfig(t0), "b": E.FeatureConfig(t1)}, None)
emb.build()
try:
    tf.train.Checkpoint(embedding=emb).restore(tf.train.latest_checkpoint(d))
    out["restore"] = "restored"
except Exception as e:
    out["restore"] = str(e)
print(json.dumps(out))
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [str(TF_PYTHON), "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert dict((k, s) for k, s in out["vars"])[STORAGE_KEY] == []
    assert out["dtypes"][KEY.format("t0")] == "uint8"
    assert out["dtypes"][KEY.format("t1")] == "bfloat16"
    assert out["manifest"]["tables"][0]["storage"] == "int8"
    assert "expected dtype float does not equal original dtype" in out["restore"]
    assert math.isfinite(1.0)
