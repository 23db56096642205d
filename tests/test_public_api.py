"""embserve's public names and signatures against TensorFlow 2.21's recorded API.

``import embserve as es`` is meant as a drop-in for ``tf.tpu.experimental.embedding`` (serving
half). The reference is ``tf-2.21-embedding-api.json``, recorded by running real TensorFlow: for
each name of that module, its kind, parameters (name, kind, default repr) and public members.
The file's ``tf.train`` section is checked against ``embserve.train`` (``es.train`` mirrors the
``tf.train`` checkpoint calls).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embserve

_FILE = "tf-2.21-embedding-api.json"
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / _FILE
_COPY = Path(__file__).resolve().parent / "data" / _FILE
REFERENCE_PATH = _SHARED if _SHARED.is_file() else _COPY
REFERENCE: dict[str, Any] = json.loads(REFERENCE_PATH.read_text())
TF_NAMES: dict[str, dict[str, Any]] = REFERENCE["names"]

# The promised __all__: TensorFlow's serving names, then embserve's own containers and errors.
EXPECTED_ALL = [
    "FTRL",
    "SGD",
    "Adagrad",
    "AdagradMomentum",
    "Adam",
    "FeatureConfig",
    "QuantizationConfig",
    "RowIdInitializer",
    "TPUEmbeddingForServing",
    "TableConfig",
    "serving_embedding_lookup",
    "train",
    "CheckpointBusyError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ConfigError",
    "CorruptCheckpointError",
    "EmbserveError",
    "FeatureConfigTypeError",
    "IdOutOfRangeError",
    "InputError",
    "QuantizationError",
    "QuantizedTable",
    "RaggedTensor",
    "SparseTensor",
]

# TensorFlow names embserve deliberately leaves out, each with the reason.
NOT_PROVIDED = {
    "CustomCombiner": "a TPU-only combiner program; serving on the CPU has no use for it",
    "CustomOptimizer": "a TPU-only optimizer program; no slot layout to serve from",
    "SparseCoreEmbeddingConfig": "SparseCore (TPU v5+) table-stacking settings",
    "TPUEmbedding": "the TPU training object (enqueue / dequeue / apply_gradients)",
    "TPUEmbeddingV0": "the TPU training object, mid-level API variant",
    "TPUEmbeddingV2": "the SparseCore training object",
}

PROVIDED = sorted(set(TF_NAMES) - set(NOT_PROVIDED))

# Defaults TensorFlow records as TensorFlow objects, and their embserve equivalents.
_DEFAULT_EQUIVALENTS = {"tf.float32": repr(np.float32)}


def _expected_parameters(name: str) -> list[tuple[str, str, str | None]]:
    return [
        (p["name"], p["kind"], _DEFAULT_EQUIVALENTS.get(p["default"], p["default"]))
        for p in TF_NAMES[name]["parameters"]
    ]


def _actual_parameters(obj: Any) -> list[tuple[str, str, str | None]]:
    return [
        (p.name, p.kind.name, None if p.default is inspect.Parameter.empty else repr(p.default))
        for p in inspect.signature(obj).parameters.values()
    ]


def test_reference_copy_matches_the_shared_reference() -> None:
    assert _COPY.is_file(), f"keep a copy of the reference at {_COPY}"
    if _SHARED.is_file():
        assert json.loads(_COPY.read_text()) == json.loads(_SHARED.read_text())


def test_reference_is_tensorflow_2_21() -> None:
    assert REFERENCE["tensorflow_version"] == "2.21.0"
    assert REFERENCE["module"] == "tf.tpu.experimental.embedding"


def test_all_is_exactly_the_promised_names() -> None:
    assert len(embserve.__all__) == len(set(embserve.__all__)), "duplicates in __all__"
    assert sorted(embserve.__all__) == sorted(EXPECTED_ALL)


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_every_exported_name_exists(name: str) -> None:
    assert getattr(embserve, name) is not None


def test_not_provided_names_are_tensorflow_names() -> None:
    assert set(NOT_PROVIDED) <= set(TF_NAMES)


def test_tensorflow_names_are_provided_or_deliberately_left_out() -> None:
    assert set(TF_NAMES) - set(embserve.__all__) == set(NOT_PROVIDED)
    assert not set(NOT_PROVIDED) & set(embserve.__all__)


@pytest.mark.parametrize("name", PROVIDED)
def test_kind_matches(name: str) -> None:
    obj = getattr(embserve, name)
    if TF_NAMES[name]["kind"] == "class":
        assert inspect.isclass(obj)
    else:
        assert inspect.isfunction(obj)


@pytest.mark.parametrize("name", PROVIDED)
def test_signature_matches(name: str) -> None:
    assert _actual_parameters(getattr(embserve, name)) == _expected_parameters(name)


@pytest.mark.parametrize(
    ("name", "member"),
    [(name, member) for name in PROVIDED for member in TF_NAMES[name].get("public_members", [])],
)
def test_public_members_exist(name: str, member: str) -> None:
    assert hasattr(getattr(embserve, name), member)


def test_tpu_embedding_for_serving_members_are_checked() -> None:
    # Guards the parametrization above: the serving object's members are in the reference.
    members = TF_NAMES["TPUEmbeddingForServing"]["public_members"]
    assert {"build", "embedding_lookup", "embedding_tables", "variables"} <= set(members)


TF_TRAIN: dict[str, list[dict[str, Any]]] = REFERENCE["tf.train"]
# tf.train names embserve.train does not provide yet, each with the reason.
TRAIN_NOT_PROVIDED = {
    "CheckpointManager": "checkpoint rotation is a training-side tool; embserve reads the state "
    "files it writes (latest_checkpoint, restore of a directory)",
}


@pytest.mark.parametrize("name", sorted(set(TF_TRAIN) - set(TRAIN_NOT_PROVIDED)))
def test_train_names_and_parameters(name: str) -> None:
    obj = getattr(embserve.train, name)
    actual = [
        (p.name, None if p.default is inspect.Parameter.empty else repr(p.default))
        for p in inspect.signature(obj).parameters.values()
    ]
    assert actual == [(p["name"], p["default"]) for p in TF_TRAIN[name]]


def test_train_names_left_out_are_tensorflow_names() -> None:
    assert set(TRAIN_NOT_PROVIDED) <= set(TF_TRAIN)
