"""The REST codec follows each feature's ``FeatureSpec`` (the lookup's own rules) for what a
feature accepts and what its output holds, decided once per codec, never per request."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

import embserve as es
from embserve.lookup import FeatureSpec
from embserve.server.config import Limits
from embserve.server.rest import DecodedRequest, RequestError, RestCodec

TABLE = es.TableConfig(50, 3, combiner="sum", name="items")
FEATURES = {
    "plain": es.FeatureConfig(TABLE),
    "seq": es.FeatureConfig(TABLE, max_sequence_length=4),
    "shaped": es.FeatureConfig(TABLE, output_shape=[2, 2]),
}
MODEL = es.TPUEmbeddingForServing(FEATURES, optimizer=None)
MODEL.build()


def _decode(codec: RestCodec, inputs: dict[str, list[object]]) -> DecodedRequest:
    return codec.decode(orjson.dumps({"inputs": inputs}))


def _lookup_error(inputs: dict[str, object], weights: dict[str, object] | None) -> str:
    with pytest.raises(es.InputError) as info:
        MODEL(inputs, weights)
    return str(info.value)


@pytest.fixture
def codec() -> RestCodec:
    return RestCodec(FEATURES, Limits())


def test_single_ids_go_dense_only_where_the_spec_accepts_dense_ids(codec: RestCodec) -> None:
    request = _decode(codec, {"plain": [1, 2, 3, 4], "seq": [1, 2, 3, 4], "shaped": [1, 2, 3, 4]})
    ids = request.ids
    assert isinstance(ids["plain"], np.ndarray)
    # A sequence feature takes no dense ids; dense ids would ignore output_shape.
    assert isinstance(ids["seq"], es.RaggedTensor)
    assert isinstance(ids["shaped"], es.RaggedTensor)
    outputs = MODEL(ids)
    for name, feature in request.features.items():
        assert feature.output_floats == math.prod(outputs[name].shape), name
    assert outputs["shaped"].shape == (2, 2, 3)
    assert outputs["seq"].shape == (4, 4, 3)


def test_output_floats_are_the_specs_shapes(codec: RestCodec) -> None:
    specs = {name: FeatureSpec.of(name, cfg) for name, cfg in FEATURES.items()}
    request = _decode(codec, {"plain": [[1, 2], [3]], "seq": [[1, 2], [3]]})
    for name, feature in request.features.items():
        assert feature.output_floats == math.prod(specs[name].ragged_output_shape(2))
    request = _decode(codec, {"plain": [[[1], [2, 3]], [[4]]], "seq": [[[1], []], [[2]]]})
    for name, feature in request.features.items():
        assert feature.output_floats == 2 * 2 * 3  # [batch, most bags, dim] at rank 3
        out = MODEL({name: feature.ids})[name]
        assert out.size == feature.output_floats


def test_weights_for_a_feature_that_takes_none_are_refused_while_decoding(
    codec: RestCodec,
) -> None:
    """The lookup's message, before any array is built (with no lookup at all)."""
    value = {"ids": [1, 2], "weights": [0.5, 1.0]}
    with pytest.raises(RequestError) as info:
        _decode(codec, {"seq": [value]})
    assert info.value.status == 400
    expected = _lookup_error(
        {"seq": es.RaggedTensor.from_list([[1, 2]])},
        {"seq": es.RaggedTensor.from_list([[0.5, 1.0]])},
    )
    assert info.value.message == expected
    # Without weights the same ids are a plain bag, which a sequence feature takes.
    _decode(codec, {"seq": [{"ids": [1, 2]}]})


def test_an_output_shape_that_cannot_apply_is_refused_while_decoding(codec: RestCodec) -> None:
    with pytest.raises(RequestError) as info:
        _decode(codec, {"shaped": [[1], [2], [3]]})
    assert info.value.status == 400
    assert info.value.message == _lookup_error(
        {"shaped": es.RaggedTensor.from_list([[1], [2], [3]])}, None
    )


def test_specs_are_made_once_per_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = RestCodec(FEATURES, Limits())
    assert set(codec.specs) == set(FEATURES)

    def made_again(*args: object) -> None:
        raise AssertionError("FeatureSpec.of called per request")

    monkeypatch.setattr(FeatureSpec, "of", made_again)
    _decode(codec, {"plain": [1], "seq": [[1]], "shaped": [[1], [2], [3], [4]]})
    _decode(codec, {"plain": [{"ids": [1], "weights": [2.0]}]})
