"""Check that TensorFlow 2.21 restores what embserve writes for objects restored from SparseCore
checkpoints (issue 11, item 5).

Runs in the TensorFlow venv (embserve pip-installed there, editable), from the repository root::

    .venvs/tf/bin/python tools/check_tf_sparsecore_writeback.py

For every valid fixture of ``tests/data/sparsecore`` (``tools/make_sparsecore_fixtures.py``):

1. embserve restores it into ``es.TPUEmbeddingForServing`` built from the fixture's serving
   config (zero-copy: tables served from their stacks; a Keras-nested embedding through
   ``embserve.checkpointing.restore_embedding`` at its object path) and saves it with
   ``es.train.Checkpoint(embedding=emb).write(prefix)``: plain per-table keys, each stacked table
   unstacked as it is written;
2. TensorFlow's ``tf.tpu.experimental.embedding.TPUEmbeddingForServing``, from the same config,
   restores that checkpoint with ``tf.train.Checkpoint(embedding=...).restore`` once before
   ``build()`` and once after it: ``assert_consumed()`` and
   ``assert_existing_objects_matched()`` must pass, every table must equal the table TensorFlow
   restored from the original SparseCore checkpoint (``expected.json``), bit for bit, every slot
   must equal embserve's, and every lookup of the fixture must give TensorFlow's recorded output.

Exit status 1 when any check fails; each line of the report says which and why.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "sparsecore"
ORDERS = ("restore_then_build", "build_then_restore")

Json = Any


def _fixtures() -> list[str]:
    return sorted(
        p.parent.name for p in DATA.glob("*/expected.json") if p.parent.name != "mismatch"
    )


def _tables_of(expected: Json) -> dict[str, np.ndarray]:
    tables = expected["tables"] if expected["name"] == "resaved" else expected["restored"]
    return {
        name: np.frombuffer(bytes.fromhex(t["data_hex"]), "<f4").reshape(t["shape"])
        for name, t in tables.items()
    }


def _embserve_write(expected: Json, prefix: str) -> dict[str, dict[str, np.ndarray]]:
    """Restore the fixture with embserve and write it back; returns what was written."""
    import embserve as es
    from embserve.checkpoint import BundleReader
    from embserve.checkpointing import restore_embedding

    def optimizer(spec: Json) -> Any:
        return None if spec is None else getattr(es, spec["class"])(**spec["kwargs"])

    serving = expected["serving"]
    tables = {
        ref: es.TableConfig(
            t["vocabulary_size"],
            t["dim"],
            initializer=es.RowIdInitializer(offset=t["initializer"]["offset"]),
            optimizer=optimizer(t["optimizer"]),
            combiner=t["combiner"],
            name=t["name"],
        )
        for ref, t in serving["tables"].items()
    }
    features = {
        path: es.FeatureConfig(tables[leaf["table"]])
        for path, leaf in serving["feature_config"]["items"]
    }
    emb = es.TPUEmbeddingForServing(features, optimizer(serving["optimizer"]))
    source = str(DATA / expected["name"] / expected["checkpoint"])
    path = expected["embedding_path"].split("/")
    restore_embedding(BundleReader(source), path, emb)
    es.train.Checkpoint(embedding=emb).write(prefix)
    return {
        name: {slot: np.array(value, dtype=np.float32) for slot, value in slots.items()}
        for name, slots in emb.variables.items()
    }


def _tf_restore(expected: Json, prefix: str, order: str) -> Any:
    import tensorflow as tf

    E = tf.tpu.experimental.embedding  # noqa: N806

    def optimizer(spec: Json) -> Any:
        return None if spec is None else getattr(E, spec["class"])(**spec["kwargs"])

    serving = expected["serving"]
    tables = {
        ref: E.TableConfig(
            vocabulary_size=t["vocabulary_size"],
            dim=t["dim"],
            initializer=E.RowIdInitializer(offset=t["initializer"]["offset"]),
            optimizer=optimizer(t["optimizer"]),
            combiner=t["combiner"],
            name=t["name"],
        )
        for ref, t in serving["tables"].items()
    }
    features = {
        path: E.FeatureConfig(tables[leaf["table"]])
        for path, leaf in serving["feature_config"]["items"]
    }
    emb = E.TPUEmbeddingForServing(features, optimizer(serving["optimizer"]))
    if order == "build_then_restore":
        emb.build()
    status = tf.train.Checkpoint(embedding=emb).restore(prefix)
    if order == "restore_then_build":
        emb.build()
    status.assert_consumed()
    status.assert_existing_objects_matched()
    return emb


def _tf_leaf(d: Json) -> Any:
    import tensorflow as tf

    if d["type"] == "dense":
        return tf.constant(np.array(d["values"], d["dtype"]).reshape(d["shape"]))
    if d["type"] == "ragged":
        return tf.RaggedTensor.from_nested_row_splits(
            np.array(d["values"], d["dtype"]),
            [np.array(s, d["splits_dtype"]) for s in d["nested_row_splits"]],
        )
    return tf.SparseTensor(
        np.array(d["indices"], np.int64).reshape(-1, len(d["dense_shape"])),
        np.array(d["values"], d["dtype"]),
        np.array(d["dense_shape"], np.int64),
    )


def _check_tf(
    expected: Json, emb: Any, written: dict[str, dict[str, np.ndarray]]
) -> tuple[list[str], int]:
    """What differs between TF's restored object and the truth (empty: nothing), and the
    number of slots compared."""
    problems = []
    slots_compared = 0
    truth = _tables_of(expected)
    for config, table in emb.embedding_tables.items():
        got = table.numpy()
        want = truth[config.name]
        if got.shape != want.shape or got.view(np.uint32).tolist() != want.view(np.uint32).tolist():
            problems.append(f"table {config.name!r} differs from TF's SparseCore restore")
    for name, slots in emb.variables.items():
        for slot, variable in slots.items():
            if slot == "parameters":
                continue
            slots_compared += 1
            if not np.array_equal(variable.numpy(), written[name][slot], equal_nan=True):
                problems.append(f"slot {slot!r} of {name!r} differs from embserve's")
    for case in expected.get("lookups", []):
        features = {k: _tf_leaf(v) for k, v in case["features"].items()}
        weights = None
        if case["weights"]:
            weights = {
                k: _tf_leaf(case["weights"][k]) if case["weights"].get(k) else None
                for k in features
            }
        result = emb(features, weights=weights)
        for feature, want in case["outputs"].items():
            expected_out = np.array(want["values"], want["dtype"]).reshape(want["shape"])
            if not np.array_equal(result[feature].numpy(), expected_out):
                problems.append(f"lookup {case['name']!r}, feature {feature!r} differs")
    return problems, slots_compared


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in _fixtures():
            expected = json.loads((DATA / name / "expected.json").read_text(encoding="utf-8"))
            prefix = os.path.join(tmp, name, "ckpt-1")
            try:
                written = _embserve_write(expected, prefix)
            except Exception:
                failures += 1
                print(f"FAIL {name}: embserve could not restore and write it")
                traceback.print_exc()
                continue
            for order in ORDERS:
                slots = 0
                try:
                    emb = _tf_restore(expected, prefix, order)
                    problems, slots = _check_tf(expected, emb, written)
                except Exception as exc:
                    problems = [f"{type(exc).__name__}: {exc}"]
                if problems:
                    failures += 1
                    print(f"FAIL {name} ({order}): " + "; ".join(problems))
                else:
                    n_tables = len(expected["serving"]["tables"])
                    print(
                        f"PASS {name} ({order}): TF restored embserve's write-back, "
                        f"{n_tables} tables bit-exact, {slots} slots equal, "
                        f"{len(expected.get('lookups', []))} lookups equal"
                    )
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
