"""Shared helpers for the checkpoint tests: where the TensorFlow-made fixtures live and how to
turn their ``expected.json`` records back into arrays."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from embserve.checkpoint.dtypes import SUPPORTED

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
FIXTURE_NAMES = sorted(p.parent.name for p in FIXTURES.glob("*/expected.json"))

_BY_NAME = {info.name: info for info in SUPPORTED.values()}


def expected(name: str) -> dict[str, Any]:
    """The parsed ``expected.json`` of fixture directory ``name``."""
    data: dict[str, Any] = json.loads((FIXTURES / name / "expected.json").read_text())
    return data


def record_array(record: dict[str, Any]) -> npt.NDArray[Any] | None:
    """The value TensorFlow returned, or ``None`` when only its sha256 was recorded."""
    shape = tuple(record["shape"])
    if "strings_hex" in record:
        out = np.empty(len(record["strings_hex"]), dtype=object)
        out[:] = [bytes.fromhex(h) for h in record["strings_hex"]]
        return out.reshape(shape)
    if "data_hex" not in record:
        return None
    info = _BY_NAME[record["dtype"]]
    return np.frombuffer(bytes.fromhex(record["data_hex"]), dtype=info.numpy).reshape(shape)


def copy_fixture(name: str, dest: Path) -> Path:
    """Copy fixture directory ``name`` under ``dest`` (tests that damage files use the copy)."""
    target = dest / name
    shutil.copytree(FIXTURES / name, target)
    return target


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Let permission bits apply: as root, act as ``nobody`` (uid 65534) for the block (which
    also drops root's capabilities, CAP_LEASE included)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is 0700 under root's tree)."""
    d = Path(tempfile.mkdtemp(prefix="embserve-test-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)
