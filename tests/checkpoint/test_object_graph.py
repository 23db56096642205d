"""The TF2 object graph: key escaping, path walks, and building graphs TensorFlow restores."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embserve.checkpoint import ObjectGraph, ObjectGraphBuilder, attribute_key
from embserve.checkpoint.object_graph import (
    escape_name,
    object_path_key,
    split_attribute_key,
    unescape_name,
)
from embserve.checkpoint.protos import trackable_object_graph_pb2 as pb
from embserve.errors import CheckpointMismatchError, CorruptCheckpointError


def test_escaping() -> None:
    assert escape_name("table_a/accumulators") == "table_a.Saccumulators"
    assert escape_name("a.b") == "a..b"
    assert escape_name("e..S/f") == "e....S.Sf"
    assert attribute_key(["embedding", "table_a/accumulators"]) == (
        "embedding/table_a.Saccumulators/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert object_path_key(["a.b", "c/d"]) == "a..b/c.Sd"
    assert split_attribute_key("embedding/t0.Sm/.ATTRIBUTES/VARIABLE_VALUE") == (
        ("embedding", "t0/m"),
        "VARIABLE_VALUE",
    )
    for bad in ("dense/kernel", "/.ATTRIBUTES/X", "a/.ATTRIBUTES/b/c", "a.x/.ATTRIBUTES/V"):
        with pytest.raises(ValueError, match="not"):
            split_attribute_key(bad)


@settings(deadline=None)
@given(st.text(max_size=12))
def test_escape_round_trip(name: str) -> None:
    escaped = escape_name(name)
    assert "/" not in escaped
    assert unescape_name(escaped) == name


@settings(deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4),
    st.text(min_size=1, max_size=8),
)
def test_key_round_trip(path: list[str], attribute: str) -> None:
    assert split_attribute_key(attribute_key(path, attribute)) == (tuple(path), attribute)


def _serving_graph() -> tuple[ObjectGraphBuilder, dict[str, int]]:
    b = ObjectGraphBuilder()
    ids = {"embedding": b.add_child(b.ROOT, "embedding")}
    ids["save_counter"] = b.add_child(b.ROOT, "save_counter")
    b.add_attribute(ids["save_counter"], full_name="save_counter")
    ids["config"] = b.add_child(ids["embedding"], "_table_config")
    for table in ("table_a", "table_b"):
        ids[table] = b.add_child(ids["embedding"], table)
        b.add_attribute(ids[table], full_name=table)
        ids[f"{table}/m"] = b.add_child(ids["embedding"], f"{table}/m")
        b.add_attribute(ids[f"{table}/m"], full_name=f"{table}/m")
    ids["_variables"] = b.add_child(ids["embedding"], "_variables")
    inner = b.add_child(ids["_variables"], "table_a")
    b.add_child(inner, "parameters", ids["table_a"])
    return b, ids


def test_builder_keys_and_flags() -> None:
    b, ids = _serving_graph()
    proto, keys = b.build()
    assert (
        keys[(ids["table_a"], "VARIABLE_VALUE")] == "embedding/table_a/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert (
        keys[(ids["table_b/m"], "VARIABLE_VALUE")]
        == "embedding/table_b.Sm/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert (
        keys[(ids["save_counter"], "VARIABLE_VALUE")] == "save_counter/.ATTRIBUTES/VARIABLE_VALUE"
    )
    graph = ObjectGraph(proto)
    assert graph.has_checkpoint_values(0) is True
    assert graph.has_checkpoint_values(ids["config"]) is False
    assert graph.has_checkpoint_values(ids["_variables"]) is True  # reaches table_a again
    assert graph.find(["embedding", "_variables", "table_a", "parameters"]) == ids["table_a"]
    assert graph.path_of(ids["table_a"]) == ("embedding", "table_a")  # first BFS path
    assert graph.attribute_keys(["embedding", "table_a/m"]) == {
        "VARIABLE_VALUE": "embedding/table_a.Sm/.ATTRIBUTES/VARIABLE_VALUE"
    }
    assert graph.children(0) == {"embedding": 1, "save_counter": 2}
    with pytest.raises(CheckpointMismatchError, match="embedding/nope"):
        graph.attribute_keys(["embedding", "nope"])
    assert graph.find(["nope"]) is None
    assert ObjectGraph.from_bytes(b.serialize()).proto == proto


def test_builder_errors() -> None:
    b = ObjectGraphBuilder()
    child = b.add_child(b.ROOT, "x")
    with pytest.raises(ValueError, match="already has a child"):
        b.add_child(b.ROOT, "x")
    b.add_attribute(child)
    with pytest.raises(ValueError, match="already has an attribute"):
        b.add_attribute(child)
    with pytest.raises(ValueError, match="unknown node"):
        b.add_child(5, "y")
    orphan = b.add_node()
    b.add_attribute(orphan, checkpoint_key="explicit/.ATTRIBUTES/VARIABLE_VALUE")
    assert b.build()[1][(orphan, "VARIABLE_VALUE")] == "explicit/.ATTRIBUTES/VARIABLE_VALUE"
    lost = b.add_node()
    b.add_attribute(lost)
    with pytest.raises(ValueError, match="not reachable"):
        b.build()


def test_corrupt_graphs() -> None:
    with pytest.raises(CorruptCheckpointError, match="no nodes"):
        ObjectGraph(pb.TrackableObjectGraph())
    with pytest.raises(CorruptCheckpointError, match="not a TrackableObjectGraph"):
        ObjectGraph.from_bytes(b"\xff\xff\xff")
    g = pb.TrackableObjectGraph()
    g.nodes.add().children.add(node_id=3, local_name="x")
    with pytest.raises(CorruptCheckpointError, match="missing node 3"):
        ObjectGraph(g, "f.index")
    g = pb.TrackableObjectGraph()
    root = g.nodes.add()
    root.children.add(node_id=0, local_name="x")
    root.children.add(node_id=0, local_name="x")
    with pytest.raises(CorruptCheckpointError, match="two children named 'x'"):
        ObjectGraph(g)
    g = pb.TrackableObjectGraph()
    g.nodes.add().slot_variables.add(original_variable_node_id=0, slot_variable_node_id=9)
    with pytest.raises(CorruptCheckpointError, match="missing node 9"):
        ObjectGraph(g)


def test_cycles_terminate() -> None:
    g = pb.TrackableObjectGraph()
    a, b = g.nodes.add(), g.nodes.add()
    a.children.add(node_id=1, local_name="b")
    b.children.add(node_id=0, local_name="back")
    graph = ObjectGraph(g)
    assert graph.find(["b", "back", "b", "back"]) == 0
    assert graph.path_of(1) == ("b",)
