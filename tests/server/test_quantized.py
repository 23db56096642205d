"""The server on quantized tables (issue 12): a quantized checkpoint served as stored, a float32
checkpoint quantized at load with ``storage`` in the config, hot reload of quantized versions, the
checksum pass over stored rows, and configs that disagree with the checkpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

import embserve as es
from embserve import storage as st
from embserve.checkpoint import BundleReader
from embserve.checkpointing import find_embedding_tables
from embserve.quantizing import quantize_checkpoint
from embserve.server import reloader as reloader_module
from embserve.server.app import create_app
from embserve.server.config import (
    ServingConfigError,
    load_config,
    parse_config,
    serving_config_toml,
    to_toml,
)
from embserve.server.reloader import make_loader, verify_served_tables
from tests.server._support import (
    PREDICT,
    TABLES,
    config_text,
    expected,
    random_tables,
    save_version,
    wait_for,
)

REQUEST = {"user": [[1, 99], [0]], "hist": [[3, 4, 49]], "tag": [[19, 0, 7]], "recent": [[1, 2]]}


def _with_storage(text: str, storage: dict[str, str]) -> str:
    """Add ``storage = ...`` to the named [[tables]] entries of a config text."""
    for name, kind in storage.items():
        text = re.sub(
            rf'(name = "{name}"\nvocabulary_size = \d+\ndim = \d+\ncombiner = "\w+"\n)',
            rf'\1storage = "{kind}"\n',
            text,
        )
        assert f'storage = "{kind}"' in text
    return text


def _config(tmp_path: Path, checkpoint: Path, storage: dict[str, str], **kw: Any) -> Any:
    path = tmp_path / "serving.toml"
    path.write_text(_with_storage(config_text(checkpoint, **kw), storage))
    return load_config(path)


def _served(tables: dict[str, np.ndarray], storage: dict[str, str]) -> dict[str, np.ndarray]:
    """The float32 values lookups read: each table dequantized from its stored rows."""
    out = {}
    for name, values in tables.items():
        kind = storage.get(name, "float32")
        stored = st.quantize_rows(values, kind)
        out[name] = st.dequantize_rows(stored, kind, values.shape[1])
    return out


def _check_answer(response: Any, tables: dict[str, np.ndarray]) -> None:
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    for feature, examples in REQUEST.items():
        for k, value in enumerate(examples):
            want = expected(tables, feature, value)
            got = np.asarray(outputs[feature][k], dtype=np.float32)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=feature)


ALL_INT8 = dict.fromkeys(TABLES, "int8")
MIXED = {"users": "int4", "items": "float16", "tags": "bfloat16"}


@pytest.mark.parametrize("storage", [ALL_INT8, MIXED], ids=["int8", "mixed"])
def test_serves_a_quantized_checkpoint(tmp_path: Path, storage: dict[str, str]) -> None:
    tables = random_tables(1)
    save_version(tmp_path / "f32", 1, tables)
    quantize_checkpoint(tmp_path / "f32", tmp_path / "q", storage)
    # no storage key: served as stored; the same keys: accepted
    for asked in ({}, storage):
        config = _config(tmp_path, tmp_path / "q", asked)
        with TestClient(create_app(config)) as client:
            _check_answer(client.post(PREDICT, json={"inputs": REQUEST}), _served(tables, storage))
    model = make_loader(config)(es.train.latest_checkpoint(tmp_path / "q") or "")
    for table, served in model.embedding_tables.items():
        assert isinstance(served, st.QuantizedTable)
        assert served.storage == storage[str(table.name)]
        assert not served.data.flags.owndata  # mapped from the checkpoint


def test_quantizes_a_float32_checkpoint_at_load(tmp_path: Path) -> None:
    tables = random_tables(2)
    save_version(tmp_path / "f32", 1, tables)
    config = _config(tmp_path, tmp_path / "f32", {"users": "int8", "items": "int4"})
    with TestClient(create_app(config)) as client:
        served = _served(tables, {"users": "int8", "items": "int4"})
        _check_answer(client.post(PREDICT, json={"inputs": REQUEST}), served)
    model = make_loader(config)(es.train.latest_checkpoint(tmp_path / "f32") or "")
    by_name = {str(t.name): v for t, v in model.embedding_tables.items()}
    assert isinstance(by_name["tags"], np.ndarray)  # no storage key: float32, mapped
    for name in ("users", "items"):
        assert by_name[name].data.flags.owndata  # private: the quantized bytes only
        np.testing.assert_array_equal(
            by_name[name].data, st.quantize_rows(tables[name], by_name[name].storage)
        )


def test_hot_reload_of_a_new_quantized_version(tmp_path: Path) -> None:
    first, second = random_tables(3), random_tables(4)
    save_version(tmp_path / "f32", 1, first)
    quantize_checkpoint(tmp_path / "f32", tmp_path / "q", "int8")
    config = _config(tmp_path, tmp_path / "q", {}, poll_interval_s=0.05)
    with TestClient(create_app(config)) as client:
        response = client.post(PREDICT, json={"inputs": REQUEST})
        assert response.headers["x-model-version"] == "1"
        _check_answer(response, _served(first, ALL_INT8))
        save_version(tmp_path / "f32", 2, second)
        quantize_checkpoint(tmp_path / "f32", tmp_path / "q", "int8")  # ckpt-2, state file

        def version() -> str:
            return str(client.post(PREDICT, json={"inputs": REQUEST}).headers["x-model-version"])

        wait_for("version 2 to serve", lambda: version() == "2")
        _check_answer(client.post(PREDICT, json={"inputs": REQUEST}), _served(second, ALL_INT8))


def test_hot_reload_quantizing_at_load(tmp_path: Path) -> None:
    first, second = random_tables(5), random_tables(6)
    save_version(tmp_path / "f32", 1, first)
    config = _config(tmp_path, tmp_path / "f32", {"items": "int8"}, poll_interval_s=0.05)
    with TestClient(create_app(config)) as client:
        _check_answer(
            client.post(PREDICT, json={"inputs": REQUEST}), _served(first, {"items": "int8"})
        )
        save_version(tmp_path / "f32", 2, second)

        def version() -> str:
            return str(client.post(PREDICT, json={"inputs": REQUEST}).headers["x-model-version"])

        wait_for("version 2 to serve", lambda: version() == "2")
        _check_answer(
            client.post(PREDICT, json={"inputs": REQUEST}), _served(second, {"items": "int8"})
        )


def test_a_storage_key_that_disagrees_with_the_checkpoint_is_refused(tmp_path: Path) -> None:
    save_version(tmp_path / "f32", 1, random_tables(7))
    quantize_checkpoint(tmp_path / "f32", tmp_path / "q", "int8")
    config = _config(tmp_path, tmp_path / "q", {"users": "int4"})
    prefix = es.train.latest_checkpoint(tmp_path / "q") or ""
    with pytest.raises(
        es.CheckpointMismatchError,
        match=r"'users' is stored as int8 .* storage 'int4' was asked for.*serving config's "
        r"storage keys ask for \{'users': 'int4'\}",
    ):
        make_loader(config)(prefix)
    with TestClient(create_app(config)) as client:
        response = client.post(PREDICT, json={"inputs": REQUEST})
        assert response.status_code == 503
        status = client.get("/v1/models/rec").json()
        assert "int4" in str(status)


def test_a_nan_row_is_refused_when_quantizing_at_load(tmp_path: Path) -> None:
    tables = random_tables(8)
    tables["items"][17, 1] = np.nan
    save_version(tmp_path / "f32", 1, tables)
    config = _config(tmp_path, tmp_path / "f32", {"items": "int8"})
    with pytest.raises(es.CheckpointMismatchError, match=r"'items': row 17 holds NaN or inf"):
        make_loader(config)(es.train.latest_checkpoint(tmp_path / "f32") or "")


def test_the_checksum_pass_covers_stored_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reloader_module, "VERIFY_ON_RESTORE_MAX_BYTES", 0)  # check every one
    save_version(tmp_path / "f32", 1, random_tables(9))
    quantize_checkpoint(tmp_path / "f32", tmp_path / "q", MIXED)
    prefix = es.train.latest_checkpoint(tmp_path / "q") or ""
    config = _config(tmp_path, tmp_path / "q", {})
    model = make_loader(config)(prefix)
    with BundleReader(prefix) as reader:
        verify_served_tables(model, reader, "embedding")
        info = reader.info("embedding/users/.ATTRIBUTES/VARIABLE_VALUE")
        path = Path(reader.data_paths[info.shard_id])
    with open(path, "r+b") as f:  # a code byte of row 5 (int4): scales stay finite
        f.seek(info.offset + 5 * st.row_bytes("int4", 4))
        byte = f.read(1)
        f.seek(info.offset + 5 * st.row_bytes("int4", 4))
        f.write(bytes([byte[0] ^ 0x11]))
    with BundleReader(prefix) as fresh, pytest.raises(es.CorruptCheckpointError, match="users"):
        verify_served_tables(model, fresh, "embedding")


def test_config_storage_keys_parse_and_round_trip(tmp_path: Path) -> None:
    text = _with_storage(config_text(tmp_path), {"users": "int8", "tags": "float32"})
    config = parse_config(text)
    assert dict(config.storage) == {"users": "int8", "tags": "float32"}
    again = parse_config(to_toml(config))
    assert dict(again.storage) == dict(config.storage)
    with pytest.raises(ServingConfigError, match=r"tables\[0\] \('users'\)\.storage.*int3"):
        parse_config(text.replace('storage = "int8"', 'storage = "int3"'))
    bad = text.replace("[model]\n", '[model]\nstorage = "int8"\n')
    with pytest.raises(ServingConfigError, match=r"model\.storage.*\[\[tables\]\]"):
        parse_config(bad)


def test_python_form_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "feats_q.py").write_text(
        "import embserve as es\n"
        "a = es.TableConfig(10, 2, name='a')\nb = es.TableConfig(5, 3, name='b')\n"
        "FEATURES = {'x': es.FeatureConfig(a), 'y': es.FeatureConfig(b)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = f'[model]\nname = "m"\ncheckpoint = "{tmp_path}"\nfeature_config = "feats_q:FEATURES"\n'
    every = parse_config(base + 'storage = "int4"\n')
    assert dict(every.storage) == {"a": "int4", "b": "int4"}
    some = parse_config(base + 'storage = { b = "bfloat16" }\n')
    assert dict(some.storage) == {"b": "bfloat16"}
    for config in (every, some):
        assert dict(parse_config(to_toml(config)).storage) == dict(config.storage)
    with pytest.raises(ServingConfigError, match="no table named 'c'"):
        parse_config(base + 'storage = { c = "int8" }\n')


def test_inspect_config_skeleton_of_a_quantized_checkpoint(tmp_path: Path) -> None:
    save_version(tmp_path / "f32", 1, random_tables(10))
    quantize_checkpoint(tmp_path / "f32", tmp_path / "q", MIXED)
    prefix = es.train.latest_checkpoint(tmp_path / "q") or ""
    text = serving_config_toml(find_embedding_tables(BundleReader(prefix)), str(tmp_path / "q"))
    config = parse_config(text)
    assert dict(config.storage) == MIXED
    assert {str(t.name): (t.vocabulary_size, t.dim) for t in config.tables} == {
        name: (v, d) for name, (v, d, _) in TABLES.items()
    }
    make_loader(config)(prefix)  # the skeleton loads the checkpoint it was made from
