"""Shared helpers for the checkpoint tests: where the TensorFlow-made fixtures live and how to
turn their ``expected.json`` records back into arrays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

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
