"""The server on SparseCore (TPUEmbeddingV2) checkpoints: it serves their tables from the
stacks in place, hot-reloads them like any other checkpoint, and checksums a stack once, slice
by slice, never an unstacked copy of a table (issue 11)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

import embserve as es
from embserve.checkpoint import BundleReader
from embserve.checkpoint.state import write_checkpoint_state
from embserve.server import reloader as reloader_module
from embserve.server.app import create_app
from embserve.server.config import load_config
from embserve.server.reloader import make_loader, verify_served_tables
from embserve.tables import StackedTable
from tests.server._support import bag, wait_for

SPARSECORE = Path(__file__).resolve().parents[1] / "data" / "sparsecore"
FIXTURE = SPARSECORE / "stacked_2x4"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
TABLES = {
    name: np.frombuffer(bytes.fromhex(t["data_hex"]), dtype="<f4").reshape(t["shape"])
    for name, t in EXPECTED["restored"].items()
}
PREDICT = "/v1/models/sc:predict"


def _config(tmp_path: Path, checkpoint: Path, server: str = "") -> Path:
    parts = [f'[model]\nname = "sc"\ncheckpoint = "{checkpoint}"\npoll_interval_s = 0.05\n']
    for name, t in EXPECTED["serving"]["tables"].items():
        parts.append(
            f'[[tables]]\nname = "{name}"\nvocabulary_size = {t["vocabulary_size"]}\n'
            f'dim = {t["dim"]}\ncombiner = "{t["combiner"]}"\n'
            f'[[features]]\npath = "{name}"\ntable = "{name}"\n'
        )
    if server:
        parts.append("[server]\n" + textwrap.dedent(server))
    path = tmp_path / "sc.toml"
    path.write_text("\n".join(parts))
    return path


def _copy_version(directory: Path, version: int) -> Path:
    """The fixture's files as ``<directory>/ckpt-<version>``, announced by the state file."""
    directory.mkdir(exist_ok=True)
    for source in FIXTURE.glob("ckpt-1.*"):
        shutil.copy(source, directory / source.name.replace("ckpt-1", f"ckpt-{version}"))
    prefix = directory / f"ckpt-{version}"
    write_checkpoint_state(directory, str(prefix))
    return prefix


def _bags() -> dict[str, list[list[int]]]:
    """Two examples per table: the first, last and a padding-adjacent row of each."""
    return {name: [[0, len(t) - 1], [len(t) // 2, 1, 1]] for name, t in TABLES.items()}


def _expected_bags(bags: dict[str, list[list[int]]]) -> dict[str, np.ndarray]:
    combiners = {n: t["combiner"] for n, t in EXPECTED["serving"]["tables"].items()}
    return {
        name: np.stack([bag(TABLES[name], combiners[name], ids) for ids in examples])
        for name, examples in bags.items()
    }


def test_serves_a_sparsecore_checkpoint_from_its_stacks(tmp_path: Path) -> None:
    _copy_version(tmp_path / "ckpts", 1)
    config = load_config(_config(tmp_path, tmp_path / "ckpts"))
    with TestClient(create_app(config)) as client:
        bags = _bags()
        response = client.post(PREDICT, json={"inputs": bags})
        assert response.status_code == 200, response.text
        for name, want in _expected_bags(bags).items():
            got = np.asarray(response.json()["outputs"][name], dtype=np.float32)
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
        # The last row of t_b is 36: row 37 exists in the stack (padding) but is not served.
        bad = client.post(PREDICT, json={"inputs": {"t_b": [[37]]}})
        assert bad.status_code == 400
        assert "t_b" in bad.json()["error"]
        metadata = client.get("/v1/models/sc/metadata").json()
        assert "t_c" in json.dumps(metadata)


def test_a_new_sparsecore_version_is_hot_reloaded(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    _copy_version(directory, 1)
    config = load_config(_config(tmp_path, directory))
    with TestClient(create_app(config)) as client:
        first = client.post(PREDICT, json={"inputs": {"t_a": [[3]]}})
        assert first.headers["x-model-version"] == "1"
        _copy_version(directory, 2)

        def served_version() -> str:
            r = client.post(PREDICT, json={"inputs": {"t_a": [[3]]}})
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(r.json()["outputs"]["t_a"], [TABLES["t_a"][3]])
            return str(r.headers["x-model-version"])

        wait_for("version 2 to serve", lambda: served_version() == "2")


def _loaded(tmp_path: Path) -> tuple[Any, BundleReader]:
    prefix = _copy_version(tmp_path / "ckpts", 1)
    config = load_config(_config(tmp_path, tmp_path / "ckpts"))
    model = make_loader(config)(str(prefix))
    assert isinstance(model.embedding_tables[config.tables[0]], StackedTable)
    return model, BundleReader(str(prefix))


def test_the_checksum_pass_checks_each_stack_once_and_never_unstacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reloader_module, "VERIFY_ON_RESTORE_MAX_BYTES", 0)  # check every one
    model, reader = _loaded(tmp_path)

    def no_unstacking(self: StackedTable, *args: Any, **kwargs: Any) -> np.ndarray:
        raise AssertionError(f"table {self.name!r} was unstacked to be verified")

    monkeypatch.setattr(StackedTable, "__array__", no_unstacking)
    monkeypatch.setattr(StackedTable, "unstack", no_unstacking)
    verified: list[str] = []
    real = BundleReader.get_tensor

    def get_tensor(self: BundleReader, key: str, **kwargs: Any) -> np.ndarray:
        verified.append(key)
        return real(self, key, **kwargs)

    monkeypatch.setattr(BundleReader, "get_tensor", get_tensor)
    with reader:
        verify_served_tables(model, reader, "embedding")
    # Two stacks (t_a_t_b_t_c, t_d), four tables: each stack once (besides the object graph
    # and the layouts, which the restore keys are found through).
    numeric = [k for k in verified if not k.startswith("_") and "_sparse_core_table" not in k]
    assert sorted(numeric) == sorted(s["key"] for s in EXPECTED["stacks"].values())


def test_a_damaged_stack_is_caught_by_the_checksum_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reloader_module, "VERIFY_ON_RESTORE_MAX_BYTES", 0)
    model, reader = _loaded(tmp_path)
    key = EXPECTED["stacks"]["t_a_t_b_t_c"]["key"]
    with reader:
        info = reader.info(key)
        data = Path(reader.data_paths[info.shard_id])
    # A byte inside the stack's second chip slice (t_b's row 0 lives there, rotation 4).
    with open(data, "r+b") as f:
        f.seek(info.offset + info.size - 100)
        byte = f.read(1)
        f.seek(info.offset + info.size - 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with BundleReader(reader.prefix) as fresh, pytest.raises(es.CorruptCheckpointError) as exc:
        verify_served_tables(model, fresh, "embedding")
    assert key in str(exc.value)
