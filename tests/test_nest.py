"""tf.nest order, paths, packing and structure checks (embserve.nest)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest

from embserve import nest
from embserve.errors import InputError

Pair = namedtuple("Pair", ["z", "a"])


def test_dict_keys_sorted_and_paths_joined() -> None:
    s = {"b": [1, (2, 3)], "a": {"y": 4, "x": 5}}
    assert nest.flatten_with_paths(s) == [
        ("a/x", 5),
        ("a/y", 4),
        ("b/0", 1),
        ("b/1/0", 2),
        ("b/1/1", 3),
    ]


def test_lone_leaf_has_empty_path_and_none_is_a_leaf() -> None:
    assert nest.flatten_with_paths(7) == [("", 7)]
    assert nest.flatten_with_paths(None) == [("", None)]
    assert nest.flatten_with_paths({}) == []
    assert nest.flatten_with_paths([]) == []


def test_namedtuple_in_field_order_and_ordereddict_sorted() -> None:
    assert nest.flatten_with_paths(Pair(1, 2)) == [("z", 1), ("a", 2)]
    assert nest.flatten(OrderedDict([("b", 1), ("a", 2)])) == [2, 1]


def test_unsortable_keys_raise_type_error() -> None:
    with pytest.raises(TypeError, match=r"not supported between.*at the top level"):
        nest.flatten({1: 1, "a": 2})
    with pytest.raises(TypeError, match=r"not supported between.*at path 'x/0'"):
        nest.flatten({"x": [{1: 1, "a": 2}]})


def test_pack_keeps_container_types_and_dict_order() -> None:
    s = {"b": Pair(1, [2, 3]), "a": (4,)}
    flat = nest.flatten(s)
    packed = nest.pack_sequence_as(s, [x * 10 for x in flat])
    assert list(packed) == ["b", "a"]
    assert packed == {"b": Pair(10, [20, 30]), "a": (40,)}
    assert isinstance(packed["b"], Pair)
    assert isinstance(packed["a"], tuple)
    od = nest.pack_sequence_as(OrderedDict([("b", 1), ("a", 2)]), [5, 6])
    assert isinstance(od, OrderedDict)
    assert od == OrderedDict([("b", 6), ("a", 5)])


def test_pack_rejects_wrong_leaf_count() -> None:
    with pytest.raises(ValueError, match="more leaves"):
        nest.pack_sequence_as([1, 2], [1, 2, 3])
    with pytest.raises(StopIteration):
        nest.pack_sequence_as([1, 2], [1])


def test_stop_paths_make_lists_leaves() -> None:
    s = {"f": [1, 2], "g": {"h": [3]}}
    stop = {"f", "g/h"}
    assert nest.flatten_with_paths(s, stop) == [("f", [1, 2]), ("g/h", [3])]
    assert nest.map_structure_with_paths(lambda p, x: p, s, stop) == {"f": "f", "g": {"h": "g/h"}}
    assert nest.flatten_with_paths([5, 6], {""}) == [("", [5, 6])]


def test_assert_same_structure() -> None:
    nest.assert_same_structure({"a": 1, "b": [1, 2]}, {"b": [None, 3], "a": None})
    with pytest.raises(InputError, match="don't have the same nested structure"):
        nest.assert_same_structure({"a": 1, "b": 2}, {"a": 1})
    with pytest.raises(TypeError, match="sequence type"):
        nest.assert_same_structure({"a": [1]}, {"a": (1,)})
    with pytest.raises(InputError, match="'a'"):
        nest.assert_same_structure({"a": [1]}, {"a": 1})
    # At a stop path anything goes: the leaf there is an input, not structure.
    nest.assert_same_structure({"a": [1, 2]}, {"a": None}, stop_paths={"a"})
