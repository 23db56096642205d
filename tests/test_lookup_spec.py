"""The one flattening of a feature_config and the one description of what a feature accepts and
returns (``embserve.lookup.flatten_feature_config``, ``FeatureSpec``): the rules the lookup
itself follows, checked against what lookups actually do."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
import pytest

import embserve as es
from embserve import nest
from embserve.lookup import FeatureSpec, LookupPlan, flatten_feature_config

Point = namedtuple("Point", ["y", "x"])


def _table(dim: int = 3, combiner: str = "mean") -> Any:
    return es.TableConfig(20, dim, combiner=combiner, name="t")


# ---------------------------------------------------------------------------------------------
# flatten_feature_config


def test_paths_in_tf_nest_order_match_nest() -> None:
    t = _table()
    structure = {
        "b": [es.FeatureConfig(t), Point(es.FeatureConfig(t), es.FeatureConfig(t))],
        "a": {"z": es.FeatureConfig(t), "c": (es.FeatureConfig(t),)},
    }
    flat = flatten_feature_config(structure)
    assert list(flat) == ["a/c/0", "a/z", "b/0", "b/1/y", "b/1/x"]
    assert [(p, f) for p, f in flat.items()] == nest.flatten_with_paths(structure)
    assert list(LookupPlan(structure).features) == list(flat)
    assert flatten_feature_config(structure["a"]["z"]) == {"": structure["a"]["z"]}


def test_a_leaf_that_is_not_a_feature_config_names_its_path() -> None:
    with pytest.raises(es.FeatureConfigTypeError, match=r"path 'a/1' is a TableConfig") as info:
        flatten_feature_config({"a": [es.FeatureConfig(_table()), _table()]})
    assert isinstance(info.value, AttributeError)  # TensorFlow's class
    assert isinstance(info.value, es.ConfigError)


def test_unsortable_keys_are_a_type_error_naming_the_path() -> None:
    with pytest.raises(TypeError, match="at path 'a'"):
        flatten_feature_config({"a": {1: es.FeatureConfig(_table()), "b": None}})


def test_duplicate_paths_last_wins_unless_refused() -> None:
    t = _table()
    first, second = es.FeatureConfig(t), es.FeatureConfig(t)
    structure = {"a/b": first, "a": {"b": second}}
    # tf.nest visits "a" (holding second) before "a/b": the later one, first, is kept, as in TF
    assert flatten_feature_config(structure) == {"a/b": first}
    with pytest.raises(es.ConfigError, match="two features at path 'a/b'"):
        flatten_feature_config(structure, unique_paths=True)


# ---------------------------------------------------------------------------------------------
# FeatureSpec against real lookups


CONFIGS = {
    "pooled": {},
    "sequence": {"max_sequence_length": 4},
    "output_shape = batch": {"output_shape": [3]},
    "output_shape > batch": {"output_shape": [3, 2]},
    "plain sparse": {"validate_weights_and_indices": False},
}


def _emb(options: dict[str, Any]) -> tuple[Any, FeatureSpec]:
    fc = {"f": es.FeatureConfig(_table(5), **options)}
    emb = es.TPUEmbeddingForServing(fc, None)
    return emb, emb._plan.spec("f")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_spec_describes_what_lookups_return(name: str) -> None:
    emb, spec = _emb(CONFIGS[name])
    assert spec == FeatureSpec.of("f", emb._plan.features["f"])
    assert (spec.dim, spec.combiner, spec.table) == (5, "mean", "t")
    bags = es.RaggedTensor.from_list([[1, 2], [3], []])
    assert emb({"f": bags})["f"].shape == spec.ragged_output_shape(3)
    sparse = es.SparseTensor([[0, 0], [0, 1], [2, 0]], [1, 2, 3], [3, 4])
    assert emb({"f": sparse})["f"].shape == spec.sparse_output_shape((3, 4))
    rank3 = es.SparseTensor([[0, 0, 0], [1, 1, 1]], [1, 2], [2, 2, 3])
    assert emb({"f": rank3})["f"].shape == spec.sparse_output_shape((2, 2, 3))
    ids = np.array([[1, 2], [3, 4]])
    if spec.accepts_dense:
        assert emb({"f": ids})["f"].shape == spec.dense_output_shape((2, 2))
    else:
        with pytest.raises(es.InputError, match="sequence feature") as info:
            emb({"f": ids})
        with pytest.raises(es.InputError, match=str(info.value)):
            spec.dense_output_shape((2, 2))
    weights = es.RaggedTensor.from_row_splits(np.ones(3, np.float32), bags.row_splits)
    if spec.accepts_weights:
        emb({"f": bags}, {"f": weights})
    else:
        with pytest.raises(es.InputError, match="sequence feature") as info:
            emb({"f": bags}, {"f": weights})
        with pytest.raises(es.InputError, match=str(info.value)):
            spec.check_weights()
    example = spec.example_shape
    if example is not None:
        assert emb({"f": bags})["f"].shape[1:] == example


@pytest.mark.parametrize(
    ("output_shape", "batch", "message"),
    [([3, None], 3, "partially known"), ([4], 0, "empty batch"), ([5], 2, "factor")],
)
def test_an_output_shape_that_does_not_fit_fails_the_same_in_spec_and_lookup(
    output_shape: list[Any], batch: int, message: str
) -> None:
    emb, spec = _emb({"output_shape": output_shape})
    bags = es.RaggedTensor.from_list([[1]] * batch)
    with pytest.raises(es.InputError, match=message) as info:
        emb({"f": bags})
    with pytest.raises(es.InputError) as again:
        spec.ragged_output_shape(batch)
    assert str(again.value) == str(info.value)


def test_ragged_length_says_how_rows_are_read() -> None:
    assert _emb({})[1].ragged_length(7) == 0
    assert _emb({"max_sequence_length": 4})[1].ragged_length(7) == 4
    assert _emb({"output_shape": [6]})[1].ragged_length(6) == 0
    assert _emb({"output_shape": [6]})[1].ragged_length(2) == 3  # TF's sequence reading


def test_sparse_rank_decides_the_sequence_path() -> None:
    spec = _emb({"max_sequence_length": 4})[1]
    assert spec.sparse_sequence(2)
    assert not spec.sparse_sequence(3)
    assert not _emb({"max_sequence_length": 4, "output_shape": [2]})[1].sparse_sequence(2)


def test_a_config_change_gives_a_new_spec_and_the_lookup_follows_it() -> None:
    emb, spec = _emb({})
    bags = es.RaggedTensor.from_list([[1, 2], [3]])
    assert emb({"f": bags})["f"].shape == (2, 5)
    emb._plan.features["f"].max_sequence_length = 3
    new = emb._plan.spec("f")
    assert new is not spec
    assert new.sequence
    assert emb({"f": bags})["f"].shape == new.ragged_output_shape(2) == (2, 3, 5)
