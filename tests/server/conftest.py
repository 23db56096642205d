"""Fixtures: a checkpoint directory holding version 1 of the test model, its config, and a
TestClient running the app (lifespan included, so the reloader has loaded version 1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from embserve.server.app import create_app
from embserve.server.config import ServingConfig, load_config
from tests.server._support import random_tables, save_version, write_config


@pytest.fixture
def v1_tables() -> dict[str, np.ndarray]:
    return random_tables(1)


@pytest.fixture
def ckpt_dir(tmp_path: Path, v1_tables: dict[str, np.ndarray]) -> Path:
    directory = tmp_path / "ckpts"
    directory.mkdir()
    save_version(directory, 1, v1_tables)
    return directory


@pytest.fixture
def config(tmp_path: Path, ckpt_dir: Path) -> ServingConfig:
    # A relative checkpoint path: resolved against the config file's directory.
    return load_config(write_config(tmp_path / "serving.toml", "ckpts"))


@pytest.fixture
def client(config: ServingConfig) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as c:
        yield c
