"""Large answers are encoded in pieces (``rest.ENCODE_PIECE_FLOATS`` floats per orjson call, so
that no single call holds the GIL for long): the bytes must be exactly those of one call."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from embserve.server import rest
from embserve.server.config import Limits
from embserve.server.rest import DecodedRequest, RestCodec
from tests.server._support import feature_config

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _outputs(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.parametrize("piece", [1, 2, 5, 7, 64])
@pytest.mark.parametrize(
    "shapes",
    [
        {"a": (9,)},  # 1-D
        {"a": (6, 4), "b": (6, 3)},  # 2-D
        {"a": (5, 3, 4), "b": (5, 2)},  # 3-D (sequence features)
        {"a": (2, 40)},  # one example larger than a piece
        {"a": (3, 0)},  # empty rows
    ],
)
def test_pieces_give_the_bytes_of_one_call(
    monkeypatch: pytest.MonkeyPatch, shapes: dict[str, tuple[int, ...]], piece: int
) -> None:
    outputs = _outputs(shapes)
    floats = sum(v.size for v in outputs.values())
    batch = next(iter(shapes.values()))[0]
    codec = RestCodec(feature_config(), Limits())
    columnar = DecodedRequest(columnar=True, batch=batch, features={}, output_floats=floats)
    rows = DecodedRequest(columnar=False, batch=batch, features={}, output_floats=floats)
    whole_columns = codec.encode(columnar, outputs)
    whole_rows = codec.encode(rows, outputs)
    assert whole_columns == orjson.dumps({"outputs": outputs}, option=_OPTIONS)
    names = list(outputs)
    instances = [{k: outputs[k][i] for k in names} for i in range(batch)]
    assert whole_rows == orjson.dumps({"predictions": instances}, option=_OPTIONS)

    calls: list[int] = []
    real_dumps = orjson.dumps

    def dumps(value: object, option: int = 0) -> bytes:
        if isinstance(value, np.ndarray):
            calls.append(value.size)
        return real_dumps(value, option=option)

    monkeypatch.setattr(rest, "ENCODE_PIECE_FLOATS", piece)
    monkeypatch.setattr(rest.orjson, "dumps", dumps)
    assert codec.encode(columnar, outputs) == whole_columns
    assert codec.encode(rows, outputs) == whole_rows
    if floats > piece:
        # Pieces were used, and none of them (arrays serialized alone) is over the limit.
        assert calls
        assert max(calls) <= piece, calls
