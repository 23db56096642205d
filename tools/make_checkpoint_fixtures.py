"""Write ``tests/data/checkpoints/``: small checkpoints made by REAL TensorFlow 2.21, and check
that TensorFlow reads what embserve's writer produces.

Runs ONLY in the separate TensorFlow venv, from the repository root::

    .venvs/tf/bin/pip install google-crc32c        # once; numpy and protobuf come with TF
    .venvs/tf/bin/python tools/make_checkpoint_fixtures.py

Why: ``tests/checkpoint/`` must prove that embserve reads TensorFlow's files exactly, on machines
without TensorFlow. Each fixture directory holds the checkpoint files TensorFlow wrote and an
``expected.json`` with what ``tf.train.load_checkpoint`` returns for every key (dtype name, shape,
the raw little-endian bytes of the value or, for strings, each element's bytes), what
``tf.train.list_variables`` lists and what ``tf.train.latest_checkpoint`` answers. Tests compare
every value.

The other direction is checked here, with TensorFlow as the oracle: bundles written by
``embserve.checkpoint.BundleWriter`` (imported from ``src/`` via ``sys.path``) are read back with
``tf.train.load_checkpoint`` and restored into real objects, including ``TPUEmbeddingForServing``
before and after ``build()``; a 6 000-variable checkpoint (an index with two data blocks) is
re-encoded by embserve and compared byte for byte. The outcome goes into the generated
``tests/data/checkpoints/README.md``; any failure makes the script exit non-zero.

Output is deterministic: fixed seeds, ``CheckpointManager``'s clock pinned, sorted JSON keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from embserve.checkpoint import (  # noqa: E402 - needs the sys.path entry above
    BundleReader,
    BundleWriter,
    DataType,
    ObjectGraphBuilder,
    attribute_key,
)

E = tf.tpu.experimental.embedding
TF_VERSION = "2.21.0"
OUT = ROOT / "tests" / "data" / "checkpoints"
HEX_LIMIT = 4096  # bytes; larger values are recorded by sha256

Json = Any


# ---------------------------------------------------------------------------------------------
# Recording what TensorFlow's reader returns


def _value_record(value: Any, dtype: tf.DType) -> dict[str, Json]:
    if dtype == tf.string:
        arr = np.asarray(value, dtype=object)
        return {"strings_hex": [bytes(x).hex() for x in arr.reshape(-1)]}
    arr = np.ascontiguousarray(np.asarray(value))
    if dtype == tf.bfloat16:
        arr = arr.view(np.uint16)
    raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    if len(raw) > HEX_LIMIT:
        return {"sha256": hashlib.sha256(raw).hexdigest(), "nbytes": len(raw)}
    return {"data_hex": raw.hex()}


def record_checkpoint(prefix: str) -> dict[str, Json]:
    """Everything ``tf.train.load_checkpoint`` / ``list_variables`` say about ``prefix``."""
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    tensors = {}
    for key in sorted(dtypes):
        entry = {"dtype": dtypes[key].name, "shape": list(shapes[key])}
        entry.update(_value_record(reader.get_tensor(key), dtypes[key]))
        tensors[key] = entry
    return {
        "list_variables": [[name, list(shape)] for name, shape in tf.train.list_variables(prefix)],
        "tensors": tensors,
    }


def write_expected(directory: Path, description: str, prefixes: list[str]) -> None:
    latest = tf.train.latest_checkpoint(str(directory))
    doc = {
        "meta": {
            "generator": "tools/make_checkpoint_fixtures.py",
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
        },
        "description": description,
        "latest_checkpoint": None if latest is None else os.path.relpath(latest, directory),
        "checkpoints": {
            os.path.relpath(p, directory): record_checkpoint(p) for p in sorted(prefixes)
        },
    }
    (directory / "expected.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def fresh(name: str) -> Path:
    path = OUT / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------------------------------------
# Fixtures made by TensorFlow

FIXTURES: list[tuple[str, str]] = []  # (directory, one-line description) for the README


def fixture(
    name: str, description: str
) -> Callable[[Callable[[Path], list[str]]], Callable[[], None]]:
    def wrap(make: Callable[[Path], list[str]]) -> Callable[[], None]:
        def run() -> None:
            directory = fresh(name)
            prefixes = make(directory)
            write_expected(directory, description, prefixes)
            FIXTURES.append((name, description))

        return run

    return wrap


class _Nested(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(7)
        self.kernel = tf.Variable(rng.standard_normal((3, 5)).astype(np.float32))
        self.child = tf.Module()
        self.child.bias = tf.Variable(np.arange(5, dtype=np.float64) - 2.5)


@fixture(
    "dtypes",
    "tf.train.Checkpoint.save of plain variables of every dtype TensorFlow can checkpoint "
    "(float32/64, bfloat16, float16, int8/16/32/64, uint8/16/32/64, bool, complex64/128, strings "
    "scalar and vector with empty / 00 / FF bytes), scalars, zero-element tensors, a nested "
    "module, edge names needing escaping ('.', '/') and an unaligned float32 after an int8",
)
def make_dtypes(directory: Path) -> list[str]:
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((4, 3)).astype(np.float32)
    f32[0, 0], f32[0, 1], f32[0, 2] = np.nan, np.inf, -0.0
    values: dict[str, Any] = {
        "f32": tf.Variable(f32),
        "f64": tf.Variable(rng.standard_normal(5)),
        "bf16": tf.Variable(tf.constant([1e30, 3.3, -0.1, 0.0, 65504.0], tf.bfloat16)),
        "f16": tf.Variable(np.array([1.5, -2.25, 65504.0, 6e-8], np.float16)),
        "i8": tf.Variable(np.array([-128, 0, 127], np.int8)),
        "i16": tf.Variable(np.array([[-32768, 7], [8, 32767]], np.int16)),
        "i32": tf.Variable(np.array([-(2**31), 0, 2**31 - 1], np.int32)),
        "i64": tf.Variable(np.array([-(2**63), 1, 2**63 - 1], np.int64)),
        "u8": tf.Variable(np.array([0, 1, 255], np.uint8)),
        "u16": tf.Variable(np.array([0, 65535], np.uint16)),
        "u32": tf.Variable(np.array([0, 2**32 - 1], np.uint32)),
        "u64": tf.Variable(np.array([0, 2**64 - 1], np.uint64)),
        "flags": tf.Variable(np.array([True, False, True])),
        "c64": tf.Variable(np.array([1 + 2j, -3.5j], np.complex64)),
        "c128": tf.Variable(np.array([[1e-300 + 1j]], np.complex128)),
        "s_scalar": tf.Variable(b"scalar-string"),
        "s_vec": tf.Variable([b"", b"a\x00b", b"\xff\xfe", "héllo".encode(), b"x" * 200]),
        "s_empty": tf.Variable(tf.zeros([0], tf.string)),
        "f32_empty": tf.Variable(tf.zeros([0, 3], tf.float32)),
        "f32_scalar": tf.Variable(2.5),
        "i64_scalar": tf.Variable(tf.constant(-7, tf.int64)),
        "b_scalar": tf.Variable(False),
        # 3 int8 bytes then float32: in save order the float lands at an unaligned offset.
        "z_i8_then": tf.Variable(np.array([1, 2, 3], np.int8)),
        "z_unaligned": tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3)),
    }
    ckpt = tf.train.Checkpoint(
        **values,
        nested=_Nested(),
        escaped={"a.b": tf.Variable(1.0), "c/d": tf.Variable(2.0), "e..S/f": tf.Variable(3.0)},
    )
    return [ckpt.save(str(directory / "ckpt"))]


@fixture(
    "sharded",
    "tf.train.Checkpoint.write with CheckpointOptions(experimental_sharding_callback="
    "MaxShardSizePolicy(max_shard_size=300)): three data shards; variables that cross a shard "
    "boundary are stored as slices along their first axis (explicit extents on every "
    "dimension), slices of one variable in different shards",
)
def make_sharded(directory: Path) -> list[str]:
    rng = np.random.default_rng(2)
    ckpt = tf.train.Checkpoint(
        v1=tf.Variable(rng.standard_normal(64).astype(np.float32)),
        v2=tf.Variable(rng.standard_normal((20, 3)).astype(np.float32)),
        v3=tf.Variable(np.arange(40, dtype=np.int64)),
        v4=tf.Variable(rng.standard_normal((2, 2)).astype(np.float32)),
    )
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=300)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    return [ckpt.write(str(directory / "ckpt"), options=options)]


@fixture(
    "partitioned",
    "tf.compat.v1.train.Saver (graph mode) with a partitioned variable [10, 4] in 3 row "
    "partitions plus an unpartitioned one; saved with write_meta_graph=False and "
    "write_state=False (the state file would hold absolute paths)",
)
def make_partitioned(directory: Path) -> list[str]:
    prefix = str(directory / "model.ckpt")
    graph = tf.Graph()
    with graph.as_default():
        full = np.arange(40, dtype=np.float32).reshape(10, 4) / 4.0

        def init(shape: Any, dtype: Any = None, partition_info: Any = None) -> tf.Tensor:
            start = partition_info.var_offset[0] if partition_info is not None else 0
            return tf.constant(full[start : start + int(shape[0])])

        tf.compat.v1.get_variable(
            "emb",
            initializer=init,
            shape=[10, 4],
            dtype=tf.float32,
            partitioner=tf.compat.v1.fixed_size_partitioner(3),
        )
        tf.compat.v1.get_variable(
            "dense/kernel", initializer=tf.constant_initializer([[1.0, -1.0]]), shape=[1, 2]
        )
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False, write_state=False)
    return [prefix]


def _tables(dims: tuple[tuple[int, int], ...], optimizer: Any) -> tuple[list[Any], dict[str, Any]]:
    tables = []
    features = {}
    for i, (vocab, dim) in enumerate(dims):
        base = 100.0 * (i + 1)

        def init(shape: Any, dtype: Any = tf.float32, base: float = base) -> tf.Tensor:
            rows, cols = int(shape[0]), int(shape[1])
            grid = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
            return tf.constant(base + grid / 8.0, dtype=dtype)

        table = E.TableConfig(
            vocabulary_size=vocab, dim=dim, initializer=init, optimizer=optimizer, name=f"t{i}"
        )
        tables.append(table)
        features[f"f{i}"] = E.FeatureConfig(table=table)
    return tables, features


def _serving_checkpoint(directory: Path, optimizer: Any, seed: int) -> list[str]:
    _, features = _tables(((7, 3), (11, 5)), optimizer)
    emb = E.TPUEmbeddingForServing(features, optimizer)
    emb.build()
    # Give the slots distinctive values so a reader that mixes them up fails.
    rng = np.random.default_rng(seed)
    for table_vars in emb._variables.values():  # the only handle on slots
        for slot, var in table_vars.items():
            if slot != "parameters":
                var.assign(rng.standard_normal(var.shape).astype(np.float32))
    return [tf.train.Checkpoint(embedding=emb).save(str(directory / "ckpt"))]


@fixture(
    "tpu_none",
    "tf.train.Checkpoint(embedding=TPUEmbeddingForServing(...)).save(), no optimizer; tables "
    "t0 [7, 3] and t1 [11, 5] with deterministic values",
)
def make_tpu_none(directory: Path) -> list[str]:
    return _serving_checkpoint(directory, None, 0)


@fixture(
    "tpu_adagrad",
    "as tpu_none with Adagrad: one 'accumulators' slot per table (seeded random values)",
)
def make_tpu_adagrad(directory: Path) -> list[str]:
    return _serving_checkpoint(directory, E.Adagrad(learning_rate=0.1), 3)


@fixture(
    "tpu_adam",
    "as tpu_none with Adam: 'momenta' and 'velocities' slots per table (seeded random values)",
)
def make_tpu_adam(directory: Path) -> list[str]:
    return _serving_checkpoint(directory, E.Adam(learning_rate=0.1), 4)


@fixture(
    "keras",
    "tf.train.Checkpoint(embedding=TPUEmbeddingForServing (Adagrad), model=Keras Sequential, "
    "optimizer=keras Adam) after one training step",
)
def make_keras(directory: Path) -> list[str]:
    tf.keras.utils.set_random_seed(5)
    _, features = _tables(((5, 3),), E.Adagrad(learning_rate=0.1))
    emb = E.TPUEmbeddingForServing(features, E.Adagrad(learning_rate=0.1))
    emb.build()
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    optimizer = tf.keras.optimizers.Adam(0.01)
    x = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x) ** 2)
    optimizer.apply_gradients(
        zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
    )
    ckpt = tf.train.Checkpoint(embedding=emb, model=model, optimizer=optimizer)
    return [ckpt.save(str(directory / "ckpt"))]


@fixture(
    "manager",
    "tf.train.CheckpointManager(max_to_keep=2) after three saves (ckpt-2 and ckpt-3 kept, "
    "clock pinned), with its 'checkpoint' state file",
)
def make_manager(directory: Path) -> list[str]:
    from tensorflow.python.checkpoint import checkpoint_management

    clock = iter(1_800_000_000.0 + 0.25 * i for i in range(100))
    real_time = checkpoint_management.time.time
    checkpoint_management.time.time = lambda: next(clock)
    try:
        v = tf.Variable([1.0, 2.0])
        ckpt = tf.train.Checkpoint(v=v)
        manager = tf.train.CheckpointManager(ckpt, str(directory), max_to_keep=2)
        for step in range(3):
            v.assign_add([10.0, 20.0])
            manager.save(checkpoint_number=step + 1)
    finally:
        checkpoint_management.time.time = real_time
    return list(manager.checkpoints)


# ---------------------------------------------------------------------------------------------
# embserve -> TensorFlow cross-checks (nothing committed but the report)


class CrossCheckError(Exception):
    """A cross-check found TensorFlow disagreeing with embserve."""


def _require(condition: object, detail: object = "") -> None:
    """Like ``assert`` but never stripped by ``python -O``: these checks are the point."""
    if not condition:
        raise CrossCheckError(repr(detail))


def _equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "O" or b.dtype.kind == "O":
        return a.shape == b.shape and all(
            bytes(x) == bytes(y) for x, y in zip(a.reshape(-1), b.reshape(-1), strict=True)
        )
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def check_plain(tmp: Path) -> str:
    rng = np.random.default_rng(11)
    values: dict[str, tuple[Any, DataType | None, tf.DType]] = {
        "f32": (rng.standard_normal((3, 4)).astype(np.float32), None, tf.float32),
        "f64": (rng.standard_normal(3), None, tf.float64),
        "f16": (np.array([1.5, -2.0], np.float16), None, tf.float16),
        "bf16": (np.array([1e30, 3.3, -0.1, np.nan], np.float32), DataType.BFLOAT16, tf.bfloat16),
        "i8": (np.array([-1, 2, 3], np.int8), None, tf.int8),
        "i16": (np.array([-1, 2], np.int16), None, tf.int16),
        "i32": (np.array([[1, -2]], np.int32), None, tf.int32),
        "i64": (np.array(7, np.int64), None, tf.int64),
        "u8": (np.array([255], np.uint8), None, tf.uint8),
        "u16": (np.array([65535], np.uint16), None, tf.uint16),
        "u32": (np.array([2**32 - 1], np.uint32), None, tf.uint32),
        "u64": (np.array([2**64 - 1], np.uint64), None, tf.uint64),
        "flags": (np.array([True, False]), None, tf.bool),
        "c64": (np.array([1 - 1j], np.complex64), None, tf.complex64),
        "c128": (np.array([2 + 3j], np.complex128), None, tf.complex128),
        "s": (np.array([b"", b"a\x00b", b"\xff", "é".encode()], dtype=object), None, tf.string),
        "s0": (b"scalar", None, tf.string),
        "empty": (np.zeros((0, 2), np.float32), None, tf.float32),
    }
    prefix = tmp / "plain" / "ckpt-1"
    builder = ObjectGraphBuilder()
    nodes = {}
    for name in [*values, "save_counter"]:
        nodes[name] = builder.add_child(builder.ROOT, name)
        builder.add_attribute(nodes[name], full_name=name)
    graph, keys = builder.build()
    with BundleWriter(prefix) as w:
        for name, (value, dtype, _) in values.items():
            w.add(keys[(nodes[name], "VARIABLE_VALUE")], value, dtype=dtype)
        w.add(keys[(nodes["save_counter"], "VARIABLE_VALUE")], np.int64(1))
        w.add("_CHECKPOINTABLE_OBJECT_GRAPH", graph.SerializeToString())
    reader = tf.train.load_checkpoint(str(prefix))
    for name, (value, dtype, tf_dtype) in values.items():
        got = reader.get_tensor(attribute_key([name]))
        if dtype == DataType.BFLOAT16:
            expected = tf.cast(tf.constant(value), tf.bfloat16).numpy().view(np.uint16)
            got = np.asarray(got).view(np.uint16)
        else:
            expected = value
        _require(_equal(got, expected), (name, got, expected))
        _require(reader.get_variable_to_dtype_map()[attribute_key([name])] == tf_dtype, name)
    # Restore into real variables through the object graph.
    variables = {
        name: tf.Variable(tf.zeros(np.shape(value), tf_dtype))
        for name, (value, _, tf_dtype) in values.items()
    }
    ckpt = tf.train.Checkpoint(**variables)
    ckpt.restore(str(prefix)).assert_consumed()
    for name, (value, dtype, _) in values.items():
        if dtype != DataType.BFLOAT16:
            _require(_equal(variables[name].numpy(), value), name)
    _require(int(ckpt.save_counter.numpy()) == 1)
    return (
        f"plain bundle, {len(values)} tensors of every writable dtype: load_checkpoint values "
        "and dtypes equal; Checkpoint.restore().assert_consumed() passes"
    )


def _serving_bundle(
    prefix: Path, slots: tuple[str, ...], tables: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    builder = ObjectGraphBuilder()
    emb = builder.add_child(builder.ROOT, "embedding")
    counter = builder.add_child(builder.ROOT, "save_counter")
    builder.add_attribute(counter, full_name="save_counter")
    written: dict[str, np.ndarray] = {}
    ids = {}
    for name, table in tables.items():
        ids[(name, "")] = builder.add_child(emb, name)
        builder.add_attribute(ids[(name, "")], full_name=name)
        written[name] = table
        for j, slot in enumerate(slots):
            ids[(name, slot)] = builder.add_child(emb, f"{name}/{slot}")
            builder.add_attribute(ids[(name, slot)], full_name=f"{name}/{slot}")
            written[f"{name}/{slot}"] = table * 0.0 + (j + 1) * 0.5
    graph, keys = builder.build()
    with BundleWriter(prefix) as w:
        w.add(keys[(counter, "VARIABLE_VALUE")], np.int64(1))
        for (name, slot), node in ids.items():
            w.add(keys[(node, "VARIABLE_VALUE")], written[f"{name}/{slot}" if slot else name])
        w.add("_CHECKPOINTABLE_OBJECT_GRAPH", graph.SerializeToString())
    return written


def check_serving(tmp: Path) -> list[str]:
    lines = []
    cases = (
        ("none", None, ()),
        ("adagrad", E.Adagrad(0.1), ("accumulators",)),
        ("adam", E.Adam(0.1), ("momenta", "velocities")),
    )
    for label, optimizer, slots in cases:
        tables = {
            "t0": np.arange(21, dtype=np.float32).reshape(7, 3) - 3.0,
            "t1": np.arange(55, dtype=np.float32).reshape(11, 5) / 7.0,
        }
        prefix = tmp / f"serving_{label}" / "ckpt-1"
        written = _serving_bundle(prefix, slots, tables)
        for when in ("before build", "after build"):
            _, features = _tables(((7, 3), (11, 5)), optimizer)
            emb = E.TPUEmbeddingForServing(features, optimizer)
            if when == "after build":
                emb.build()
            status = tf.train.Checkpoint(embedding=emb).restore(str(prefix))
            if when == "before build":
                emb.build()
            status.assert_consumed()
            for name, table in tables.items():
                got = emb._variables[name]["parameters"].numpy()
                _require(_equal(got, table), (label, when, name))
                for slot in slots:
                    got = emb._variables[name][slot].numpy()
                    _require(_equal(got, written[f"{name}/{slot}"]), (label, when, name, slot))
            out = emb({"f0": tf.constant([[0], [6]]), "f1": tf.constant([[10], [3]])})
            rows = out["f0"].numpy()
            rows = rows[:, 0, :] if rows.ndim == 3 else rows
            _require(_equal(rows, tables["t0"][[0, 6]]), (label, when, rows))
            lines.append(
                f"TPUEmbeddingForServing, optimizer {label}, restore {when}: tables and slots "
                "equal, lookups return the written rows, assert_consumed() passes"
            )
    return lines


def check_sliced_sharded(tmp: Path) -> str:
    prefix = tmp / "sliced" / "ckpt-1"
    full = np.arange(20, dtype=np.float32).reshape(5, 4)
    strings = np.array([b"a", b"", b"\x00\xff"], dtype=object)
    builder = ObjectGraphBuilder()
    nodes = {
        name: builder.add_child(builder.ROOT, name) for name in ("w", "s", "bf", "save_counter")
    }
    for node in nodes.values():
        builder.add_attribute(node)
    graph, keys = builder.build()
    with BundleWriter(prefix, num_shards=3) as w:
        w.add_sliced(
            keys[(nodes["w"], "VARIABLE_VALUE")],
            (5, 4),
            [(((0, 2), (0, None)), full[:2]), (((2, 3), (0, None)), full[2:])],
            shard=[0, 2],
        )
        w.add(keys[(nodes["s"], "VARIABLE_VALUE")], strings, shard=1)
        w.add(
            keys[(nodes["bf"], "VARIABLE_VALUE")],
            np.array([0.5, -2.0], np.float32),
            dtype=DataType.BFLOAT16,
            shard=1,
        )
        w.add(keys[(nodes["save_counter"], "VARIABLE_VALUE")], np.int64(3), shard=2)
        w.add("_CHECKPOINTABLE_OBJECT_GRAPH", graph.SerializeToString())
    reader = tf.train.load_checkpoint(str(prefix))
    _require(_equal(reader.get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE"), full))
    listed = dict(tf.train.list_variables(str(prefix)))
    _require(listed["w/.ATTRIBUTES/VARIABLE_VALUE"] == [5, 4], listed)
    _require(_equal(reader.get_tensor("s/.ATTRIBUTES/VARIABLE_VALUE"), strings))
    v = {
        "w": tf.Variable(tf.zeros([5, 4])),
        "s": tf.Variable(tf.constant([b"", b"", b""])),
        "bf": tf.Variable(tf.zeros([2], tf.bfloat16)),
    }
    tf.train.Checkpoint(**v).restore(str(prefix)).assert_consumed()
    _require(_equal(v["w"].numpy(), full), v["w"])
    _require(_equal(v["s"].numpy(), strings), v["s"])
    _require(v["bf"].numpy().astype(np.float32).tolist() == [0.5, -2.0])
    return (
        "3 data shards, a float32 [5, 4] written as two row slices in shards 0 and 2 (second "
        "dimension a whole-dimension extent), a string vector and a bfloat16 vector in shard 1: "
        "load_checkpoint assembles the sliced tensor, list_variables shows [5, 4], "
        "Checkpoint.restore().assert_consumed() passes with equal values"
    )


def check_reencode_large(tmp: Path) -> str:
    n = 6000
    ckpt = tf.train.Checkpoint(**{f"v{i:04d}": tf.Variable(float(i)) for i in range(n)})
    prefix = ckpt.write(str(tmp / "large" / "ckpt"))
    reader = BundleReader(prefix)
    infos = sorted((reader.info(k) for k in reader), key=lambda t: t.offset)
    out = tmp / "large_re" / "ckpt"
    with BundleWriter(out) as w:
        for t in infos:
            w.add(t.key, reader.get_tensor(t.key), dtype=t.dtype)
    from embserve.checkpoint.sstable import read_table

    blocks = len(read_table(prefix + ".index").data_blocks)
    same_index = Path(prefix + ".index").read_bytes() == Path(str(out) + ".index").read_bytes()
    same_data = (
        Path(prefix + ".data-00000-of-00001").read_bytes()
        == Path(str(out) + ".data-00000-of-00001").read_bytes()
    )
    _require(blocks >= 2 and same_index and same_data, (blocks, same_index, same_data))
    size = os.path.getsize(prefix + ".index")
    return (
        f"{n + 2}-key checkpoint written by TensorFlow ({size} byte index, {blocks} data "
        "blocks) re-encoded by BundleWriter: .index and .data byte-identical"
    )


def check_reencode_fixtures() -> str:
    done = []
    for name, _ in FIXTURES:
        for index in sorted((OUT / name).glob("*.index")):
            prefix = str(index)[: -len(".index")]
            reader = BundleReader(prefix)
            if reader.num_shards != 1 or any(reader.info(k).is_sliced for k in reader):
                continue
            infos = sorted((reader.info(k) for k in reader), key=lambda t: t.offset)
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "re")
                with BundleWriter(out) as w:
                    for t in infos:
                        w.add(t.key, reader.get_tensor(t.key), dtype=t.dtype)
                for suffix in (".index", ".data-00000-of-00001"):
                    same = Path(prefix + suffix).read_bytes() == Path(out + suffix).read_bytes()
                    _require(same, (prefix, suffix))
            done.append(os.path.relpath(prefix, OUT))
    listed = ", ".join(done)
    return f"re-encoding {len(done)} single-shard unsliced fixtures ({listed}): byte-identical"


# ---------------------------------------------------------------------------------------------


README_HEAD = """\
# TensorFlow checkpoint fixtures

Small checkpoints written by **real TensorFlow {tf_version}** (CPU build, numpy {np_version}) for
`tests/checkpoint/`. The tests read them with `embserve.checkpoint` only; they never import
TensorFlow. Generated by `tools/make_checkpoint_fixtures.py` — do not edit by hand.

## Regenerating

From the repository root, in the TensorFlow venv (never embserve's `.venv`):

```sh
python3 -m venv .venvs/tf && .venvs/tf/bin/pip install tensorflow-cpu==2.21.0 google-crc32c  # once
.venvs/tf/bin/python tools/make_checkpoint_fixtures.py
```

The script rewrites every fixture directory, this README included, and exits non-zero if any
cross-check below fails. Output is deterministic (seeded values, pinned clock).

## Fixtures

Each directory holds TensorFlow's files and `expected.json`: for every checkpoint prefix in it,
what `tf.train.load_checkpoint` returns per key (`dtype` as `tf.DType.name`, `shape`, and the
value as `data_hex` — the little-endian bytes in C order, bfloat16 as its 16-bit patterns — or
`strings_hex` per string element, or `sha256` + `nbytes` for values over {hex_limit} bytes),
what `tf.train.list_variables` lists, and what `tf.train.latest_checkpoint` answers for the
directory (relative to it).

| directory | what |
| --- | --- |
"""


def main() -> int:
    if tf.__version__ != TF_VERSION:
        print(f"need TensorFlow {TF_VERSION}, found {tf.__version__}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    for make in (
        make_dtypes,
        make_sharded,
        make_partitioned,
        make_tpu_none,
        make_tpu_adagrad,
        make_tpu_adam,
        make_keras,
        make_manager,
    ):
        make()

    results: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        checks: list[Callable[[], str | list[str]]] = [
            lambda: check_plain(tmp),
            lambda: check_serving(tmp),
            lambda: check_sliced_sharded(tmp),
            lambda: check_reencode_large(tmp),
            check_reencode_fixtures,
        ]
        for check in checks:
            try:
                out = check()
                for line in [out] if isinstance(out, str) else out:
                    results.append(("PASS", line))
            except Exception:  # every failure is reported, then the exit code
                results.append(("FAIL", traceback.format_exc().strip().splitlines()[-1]))
                traceback.print_exc()

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file() and p.name != "README.md")
    lines = [
        README_HEAD.format(
            tf_version=tf.__version__, np_version=np.__version__, hex_limit=HEX_LIMIT
        )
    ]
    lines += [f"| `{name}/` | {description} |\n" for name, description in FIXTURES]
    lines.append(
        "\n## Cross-check: TensorFlow reads what embserve writes\n\n"
        "Bundles written by `embserve.checkpoint.BundleWriter` / `ObjectGraphBuilder` (in a "
        "temporary directory, not committed), then read by TensorFlow "
        f"{tf.__version__}. Output of the last run:\n\n"
    )
    lines += [f"- {status}: {line}\n" for status, line in results]
    lines.append(f"\nTotal size of the fixtures (this README aside): {total} bytes.\n")
    (OUT / "README.md").write_text("".join(lines))
    for status, line in results:
        print(f"{status}: {line}")
    print(f"fixtures: {total} bytes in {OUT}")
    return 1 if any(status != "PASS" for status, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
