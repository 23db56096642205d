"""Flatten and pack nested structures in ``tf.nest`` order, with joined string paths.

TensorFlow addresses features by the position of their ``FeatureConfig`` in a nested structure
and matches inputs to features by the *joined string path* of each leaf (dict keys and sequence
indices joined with ``/``; a bare leaf has path ``""``). This module reproduces that order:

* mappings are visited in **sorted key** order (whatever their insertion order);
* lists and tuples in order; namedtuples in field order;
* anything else (including ``None``) is a leaf.

Packing rebuilds the original container types: a dict keeps its insertion order, a namedtuple
is rebuilt with its fields, lists stay lists and tuples stay tuples.

A feature_config is flattened by :func:`embserve.lookup.flatten_feature_config` (path →
``FeatureConfig``, with the config errors), which builds on :func:`flatten_with_paths`.

:func:`flatten_with_paths` takes an optional set of *stop paths*: when the walk reaches a node whose
path is in the set, that node is a leaf whatever its type. Lookups use it so that a Python list of
ids sitting at a feature's path is an input, not more structure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from embserve.errors import InputError

__all__ = [
    "assert_same_structure",
    "flatten",
    "flatten_with_paths",
    "is_nested",
    "join_path",
    "map_structure_with_paths",
    "pack_sequence_as",
]


def _is_namedtuple(x: object) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def is_nested(x: object) -> bool:
    """Whether ``tf.nest`` would descend into ``x`` (a mapping, list or tuple)."""
    return isinstance(x, (Mapping, list, tuple))


def _children(x: Any) -> list[tuple[Any, Any]]:
    """(key, child) pairs of a nested node, in tf.nest order."""
    if isinstance(x, Mapping):
        # sorted() raises TypeError for keys that cannot be compared, exactly as tf.nest does.
        return [(k, x[k]) for k in sorted(x)]
    if _is_namedtuple(x):
        return list(zip(type(x)._fields, x, strict=True))
    return list(enumerate(x))


def join_path(prefix: str, key: object) -> str:
    """The path of child ``key`` under ``prefix`` (``"a" + 0 → "a/0"``)."""
    return str(key) if prefix == "" else f"{prefix}/{key}"


def _flatten_into(
    node: Any, path: str, stop_paths: AbstractSet[str] | None, out: list[tuple[str, Any]]
) -> None:
    # A module-level function, not a closure: a recursive closure is a reference cycle, which
    # left ~38 objects per lookup for the garbage collector (a collection every ~65 requests).
    if (stop_paths is not None and path in stop_paths) or not is_nested(node):
        out.append((path, node))
        return
    try:
        children = _children(node)
    except TypeError as exc:  # tf.nest's class and words, plus where
        where = f"at path {path!r}" if path else "at the top level"
        raise TypeError(f"{exc} (the keys of the mapping {where} cannot be sorted)") from None
    for key, child in children:
        _flatten_into(child, join_path(path, key), stop_paths, out)


def flatten_with_paths(
    structure: Any, stop_paths: AbstractSet[str] | None = None
) -> list[tuple[str, Any]]:
    """Leaves of ``structure`` with their joined string paths, in tf.nest order.

    Args:
        structure: a leaf, or nested mappings / lists / tuples / namedtuples.
        stop_paths: paths at which the walk stops and takes the node as a leaf.

    Raises:
        TypeError: the keys of a mapping cannot be sorted (as in ``tf.nest``); the message
            names the mapping's path.
    """
    out: list[tuple[str, Any]] = []
    _flatten_into(structure, "", stop_paths, out)
    return out


def flatten(structure: Any) -> list[Any]:
    """Leaves of ``structure`` in tf.nest order."""
    return [leaf for _, leaf in flatten_with_paths(structure)]


def _rebuild(node: Any, children: Sequence[Any]) -> Any:
    if isinstance(node, Mapping):
        by_key = dict(zip(sorted(node), children, strict=True))
        # Keep the caller's key order (tf.nest does the same), rebuild the mapping type.
        rebuilt = {k: by_key[k] for k in node}
        if type(node) is dict:
            return rebuilt
        try:
            mapping_type: Any = type(node)
            return mapping_type(rebuilt)
        except TypeError:  # e.g. a defaultdict or an exotic Mapping: fall back to dict
            return rebuilt
    if _is_namedtuple(node):
        return type(node)(*children)
    if isinstance(node, tuple):
        return tuple(children)
    return list(children)


def _build(node: Any, path: str, it: Iterator[Any], stop_paths: AbstractSet[str] | None) -> Any:
    if (stop_paths is not None and path in stop_paths) or not is_nested(node):
        return next(it)
    return _rebuild(
        node, [_build(child, join_path(path, k), it, stop_paths) for k, child in _children(node)]
    )


def pack_sequence_as(
    structure: Any, flat: Sequence[Any], stop_paths: AbstractSet[str] | None = None
) -> Any:
    """Rebuild ``structure`` with its leaves replaced, in order, by ``flat``."""
    it: Iterator[Any] = iter(flat)
    result = _build(structure, "", it, stop_paths)
    if next(it, _SENTINEL) is not _SENTINEL:
        raise ValueError("pack_sequence_as: more leaves given than the structure holds")
    return result


_SENTINEL = object()


def map_structure_with_paths(
    fn: Callable[[str, Any], Any], structure: Any, stop_paths: AbstractSet[str] | None = None
) -> Any:
    """Apply ``fn(path, leaf)`` to every leaf and rebuild the structure."""
    flat = flatten_with_paths(structure, stop_paths)
    return pack_sequence_as(structure, [fn(p, leaf) for p, leaf in flat], stop_paths)


def _kind(x: Any) -> str:
    if isinstance(x, Mapping):
        return "mapping"
    if _is_namedtuple(x):
        return f"namedtuple {type(x).__name__}"
    if isinstance(x, tuple):
        return "tuple"
    return "list"


def _same_structure(
    x: Any, y: Any, path: str, stop_paths: AbstractSet[str] | None, what: str
) -> None:
    x_leaf = (stop_paths is not None and path in stop_paths) or not is_nested(x)
    y_leaf = (stop_paths is not None and path in stop_paths) or not is_nested(y)
    where = f"at path {path!r}" if path else "at the top level"
    if x_leaf and y_leaf:
        return
    if x_leaf != y_leaf:
        raise InputError(
            "The two structures don't have the same nested structure: "
            f"{what} {where} is {'a leaf' if y_leaf else 'a structure'} but the features "
            f"there are {'a leaf' if x_leaf else 'a structure'}."
        )
    if _kind(x) != _kind(y):
        raise TypeError(
            "The two structures don't have the same sequence type: "
            f"{what} {where} is a {_kind(y)} but the features there are a {_kind(x)}."
        )
    xc, yc = _children(x), _children(y)
    if [k for k, _ in xc] != [k for k, _ in yc]:
        raise InputError(
            "The two structures don't have the same nested structure: "
            f"{what} {where} have keys {[k for k, _ in yc]} but the features have "
            f"{[k for k, _ in xc]}."
        )
    for (k, xv), (_, yv) in zip(xc, yc, strict=True):
        _same_structure(xv, yv, join_path(path, k), stop_paths, what)


def assert_same_structure(
    a: Any, b: Any, stop_paths: AbstractSet[str] | None = None, what: str = "weights"
) -> None:
    """Raise unless ``a`` and ``b`` have the same nested structure (types checked).

    Mirrors ``tf.nest.assert_same_structure(a, b, check_types=True)``: a sequence-type mismatch
    (list vs tuple, dict vs list) is a ``TypeError``; a different number of children, different
    keys, or a leaf against a structure is a ``ValueError`` (an :class:`InputError`). Messages
    start with TensorFlow's "The two structures don't have the same nested structure" and name
    the path where they differ.
    """

    _same_structure(a, b, "", stop_paths, what)
