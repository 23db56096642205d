"""embserve reads every checkpoint real TensorFlow 2.21 wrote exactly as TensorFlow does.

The fixtures under ``tests/data/checkpoints/`` come from ``tools/make_checkpoint_fixtures.py``
(TensorFlow venv); each ``expected.json`` records what ``tf.train.load_checkpoint``,
``tf.train.list_variables`` and ``tf.train.latest_checkpoint`` returned. Every key, dtype, shape
and value (byte for byte, bfloat16 as bits, NaN payloads included) must match, and re-encoding a
single-shard unsliced fixture with :class:`BundleWriter` must reproduce TensorFlow's files
byte for byte.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from embserve.checkpoint import BundleReader, BundleWriter, ObjectGraph, latest_checkpoint
from embserve.checkpoint.object_graph import OBJECT_GRAPH_KEY, split_attribute_key
from embserve.checkpoint.protos import trackable_object_graph_pb2 as og_pb

from ._data import FIXTURE_NAMES, FIXTURES, expected, record_array

CHECKPOINTS = [
    (name, prefix) for name in FIXTURE_NAMES for prefix in sorted(expected(name)["checkpoints"])
]


def test_fixtures_present() -> None:
    assert set(FIXTURE_NAMES) >= {
        "dtypes",
        "keras",
        "manager",
        "partitioned",
        "sharded",
        "tpu_adagrad",
        "tpu_adam",
        "tpu_none",
    }


@pytest.mark.parametrize(("name", "prefix"), CHECKPOINTS)
def test_every_value_equals_tensorflows(name: str, prefix: str) -> None:
    want = expected(name)["checkpoints"][prefix]
    with BundleReader(FIXTURES / name / prefix, verify=True) as reader:
        assert [[k, list(reader.shapes[k])] for k in reader] == want["list_variables"]
        assert sorted(reader.keys()) == sorted(want["tensors"])
        for key, record in want["tensors"].items():
            info = reader.info(key)
            assert info.dtype_name == record["dtype"], key
            assert list(info.shape) == record["shape"], key
            value = reader.get_tensor(key)
            assert value.shape == tuple(record["shape"]), key
            assert value.dtype == info.numpy_dtype, key
            want_value = record_array(record)
            if want_value is None:
                raw = np.ascontiguousarray(value).tobytes()
                assert hashlib.sha256(raw).hexdigest() == record["sha256"], key
            elif value.dtype == object:
                assert value.tolist() == want_value.tolist(), key
            else:
                assert value.tobytes() == want_value.tobytes(), key


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_latest_checkpoint_matches(name: str) -> None:
    want = expected(name)["latest_checkpoint"]
    got = latest_checkpoint(FIXTURES / name)
    if want is None:
        assert got is None
    else:
        assert got == str(FIXTURES / name / want)
        # A directory given to the reader resolves like tf.train.load_checkpoint(dir).
        with BundleReader(FIXTURES / name) as reader:
            assert reader.prefix == got


def test_dtype_fixture_covers_every_dtype() -> None:
    tensors = expected("dtypes")["checkpoints"]["ckpt-1"]["tensors"]
    names = {t["dtype"] for t in tensors.values()}
    assert names >= {
        "float32", "float64", "bfloat16", "float16", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128", "string",
    }  # fmt: skip


def test_views_are_zero_copy_and_read_only() -> None:
    prefix = FIXTURES / "tpu_adam" / "ckpt-1"
    with BundleReader(prefix) as reader:
        key = "embedding/t1/.ATTRIBUTES/VARIABLE_VALUE"
        value = reader.get_tensor(key)
        assert not value.flags.writeable
        assert not value.flags.owndata  # a view into the shard's memory map
        with pytest.raises(ValueError, match="read-only"):
            value[0, 0] = 1.0
        copied = reader.get_tensor(key, copy=True)
        assert copied.flags.writeable
        assert copied.flags.owndata
        np.testing.assert_array_equal(copied, value)


def test_unaligned_tensor_is_copied_aligned() -> None:
    with BundleReader(FIXTURES / "dtypes" / "ckpt-1") as reader:
        info = reader.info("z_unaligned/.ATTRIBUTES/VARIABLE_VALUE")
        assert info.offset % 4, "the fixture should place this float32 at an unaligned offset"
        value = reader.get_tensor(info.key)
        assert value.flags.aligned
        assert not value.flags.writeable
        np.testing.assert_array_equal(value, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_sliced_tensors_assemble() -> None:
    """TF1's partitioned variable is three row slices stored back to back in one file: a view
    of the file. The sharded fixture's slices span files: assembled."""
    with BundleReader(FIXTURES / "partitioned" / "model.ckpt") as reader:
        info = reader.info("emb")
        assert info.is_sliced
        assert len(info.slices) == 3
        assert info.contiguous
        assert info.zero_copy
        value = reader.get_tensor("emb")
        np.testing.assert_array_equal(value, np.arange(40, dtype=np.float32).reshape(10, 4) / 4.0)
        assert np.shares_memory(value, reader.get_tensor("emb"))
        assert not reader.has_tensor(OBJECT_GRAPH_KEY)
    with BundleReader(FIXTURES / "sharded" / "ckpt") as reader:
        assert reader.num_shards == 3
        sliced = [reader.info(k) for k in reader if reader.info(k).is_sliced]
        assert sliced
        assert not any(info.contiguous for info in sliced)


@pytest.mark.parametrize(("name", "prefix"), CHECKPOINTS)
def test_object_graph_keys_follow_bfs_paths(name: str, prefix: str) -> None:
    with BundleReader(FIXTURES / name / prefix) as reader:
        graph = ObjectGraph.from_reader(reader)
        if graph is None:
            assert name == "partitioned"
            return
        attributes = list(graph.iter_attributes())
        assert attributes
        for attr in attributes:
            assert reader.has_tensor(attr.checkpoint_key)
            assert attr.path is not None
            assert split_attribute_key(attr.checkpoint_key) == (attr.path, attr.name)
            assert graph.find(attr.path) == attr.node_id
            assert graph.attribute_keys(attr.path)[attr.name] == attr.checkpoint_key
        # Every key but the graph itself belongs to an attribute.
        owned = {a.checkpoint_key for a in attributes}
        assert set(reader.keys()) - owned == {OBJECT_GRAPH_KEY}


@pytest.mark.parametrize("name", ["tpu_none", "tpu_adagrad", "tpu_adam"])
def test_tpu_embedding_layout(name: str) -> None:
    slots = {"tpu_none": [], "tpu_adagrad": ["accumulators"], "tpu_adam": ["momenta", "velocities"]}
    with BundleReader(FIXTURES / name) as reader:
        graph = ObjectGraph.from_reader(reader)
        assert graph is not None
        for table, shape in (("t0", (7, 3)), ("t1", (11, 5))):
            key = graph.attribute_keys(["embedding", table])["VARIABLE_VALUE"]
            assert key == f"embedding/{table}/.ATTRIBUTES/VARIABLE_VALUE"
            assert reader.shapes[key] == shape
            # The same node is reachable through the _variables dictionary.
            assert graph.find(["embedding", "_variables", table, "parameters"]) == graph.find(
                ["embedding", table]
            )
            for slot in slots[name]:
                key = graph.attribute_keys(["embedding", f"{table}/{slot}"])["VARIABLE_VALUE"]
                assert key == f"embedding/{table}.S{slot}/.ATTRIBUTES/VARIABLE_VALUE"
                assert reader.shapes[key] == shape
        assert graph.has_checkpoint_values(graph.find(["embedding", "_table_config"]) or 0) is False
        assert reader.get_tensor("save_counter/.ATTRIBUTES/VARIABLE_VALUE") == 1


# TensorFlow's multi-shard / sliced layouts come from its sharding policies, which the writer
# does not imitate; every other fixture must be reproduced exactly.
SINGLE_SHARD = [(n, p) for n, p in CHECKPOINTS if n not in ("sharded", "partitioned")]


@pytest.mark.parametrize(("name", "prefix"), SINGLE_SHARD)
def test_reencoding_is_byte_identical(name: str, prefix: str, tmp_path: Path) -> None:
    """Single-shard unsliced checkpoints: same tensors in the same order -> TF's exact bytes."""
    src = FIXTURES / name / prefix
    with BundleReader(src) as reader:
        infos = sorted((reader.info(k) for k in reader), key=lambda t: t.offset)
        assert reader.num_shards == 1
        assert not any(t.is_sliced for t in infos)
        out = tmp_path / "re"
        with BundleWriter(out) as writer:
            for t in infos:
                writer.add(t.key, reader.get_tensor(t.key), dtype=t.dtype)
    for suffix in (".index", ".data-00000-of-00001"):
        assert (Path(str(out) + suffix)).read_bytes() == Path(str(src) + suffix).read_bytes()


def test_builder_reproduces_tensorflows_object_graph() -> None:
    """ObjectGraphBuilder mirroring §6.4 gives TensorFlow's serialized graph byte for byte."""
    from embserve.checkpoint import ObjectGraphBuilder

    with BundleReader(FIXTURES / "tpu_adagrad") as reader:
        tf_bytes = reader.get_tensor(OBJECT_GRAPH_KEY)[()]
    b = ObjectGraphBuilder()
    emb = b.add_child(b.ROOT, "embedding")
    counter = b.add_child(b.ROOT, "save_counter")
    b.add_attribute(counter, full_name="save_counter")
    for wrapper in ("_feature_config", "_output_shapes", "_table_config"):
        b.add_child(emb, wrapper)
    nodes = {}
    for table in ("t0", "t1"):
        nodes[table] = b.add_child(emb, table)
        b.add_attribute(nodes[table], full_name=table)
        nodes[f"{table}/accumulators"] = b.add_child(emb, f"{table}/accumulators")
        b.add_attribute(nodes[f"{table}/accumulators"], full_name=f"{table}/accumulators")
    variables = b.add_child(emb, "_variables")
    for table in ("t0", "t1"):
        per_table = b.add_child(variables, table)
        b.add_child(per_table, "accumulators", nodes[f"{table}/accumulators"])
        b.add_child(per_table, "parameters", nodes[table])
    ours = b.serialize()
    theirs = og_pb.TrackableObjectGraph.FromString(tf_bytes)
    assert og_pb.TrackableObjectGraph.FromString(ours) == theirs
    assert ours == tf_bytes
