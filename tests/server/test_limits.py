"""The output-size limit (``[limits] max_output_floats``): counted from the request's shape for
every input form, before anything is allocated, and refused with a 400 naming the feature."""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from embserve.server.app import create_app
from embserve.server.config import Limits, load_config
from embserve.server.rest import RequestError, RestCodec
from tests.server._support import (
    MODEL,
    amplification_body,
    feature_config,
    held_request,
    metric,
    recording_client,
    write_config,
)

PREDICT = f"/v1/models/{MODEL}:predict"

# The test model's dims: user 4 (users), hist 3 (items), recent 3 x max_sequence_length 3,
# tag 2 (tags); "shaped" (added below) is tags with output_shape [60]: 120 floats always.
SHAPED = """
[[features]]
path = "shaped"
table = "tags"
output_shape = [60]
"""


@pytest.fixture
def limited(tmp_path: Path, ckpt_dir: Path) -> Any:
    config = load_config(
        write_config(
            tmp_path / "limited.toml",
            ckpt_dir,
            limits="max_output_floats = 100\n",
            extra_features=SHAPED,
        )
    )
    with TestClient(create_app(config)) as client:
        yield client


def _status(client: TestClient, body: Any) -> tuple[int, str]:
    response = client.post(PREDICT, json=body)
    return response.status_code, response.text


def _refused(client: TestClient, body: Any, feature: str) -> str:
    status, text = _status(client, body)
    assert status == 400, text
    message: str = json.loads(text)["error"]
    assert f"feature {feature!r}" in message
    assert "limits.max_output_floats" in message
    assert "100" in message
    return message


@pytest.mark.parametrize(
    ("fits", "over", "feature"),
    [
        # dense ids: n x dim (25 x 4 = 100, 26 x 4 = 104)
        ({"inputs": {"user": [1] * 25}}, {"inputs": {"user": [1] * 26}}, "user"),
        ({"instances": [{"user": 1}] * 25}, {"instances": [{"user": 1}] * 26}, "user"),
        # one bag per example: batch x dim (33 x 3 = 99, 34 x 3 = 102)
        ({"inputs": {"hist": [[1]] * 33}}, {"inputs": {"hist": [[1]] * 34}}, "hist"),
        (
            {"inputs": {"hist": [{"ids": [1], "weights": [2.0]}] * 33}},
            {"inputs": {"hist": [{"ids": [1], "weights": [2.0]}] * 34}},
            "hist",
        ),
        # several bags per example: batch x most bags x dim, empty bags included (they hold no
        # ids, so max_ids_per_request never sees them): 1 x 33 x 3 = 99, 1 x 34 x 3 = 102
        ({"inputs": {"hist": [[[]] * 33]}}, {"inputs": {"hist": [[[]] * 34]}}, "hist"),
        (
            {"inputs": {"hist": [[[1]], [[]] * 16]}},  # 2 x 16 x 3 = 96
            {"inputs": {"hist": [[[1]], [[]] * 17]}},  # 2 x 17 x 3 = 102
            "hist",
        ),
        (
            {"instances": [{"hist": {"ids": [[1]] * 33, "weights": [[1.0]] * 33}}]},
            {"instances": [{"hist": {"ids": [[1]] * 34, "weights": [[1.0]] * 34}}]},
            "hist",
        ),
        # a sequence feature: batch x max_sequence_length x dim (11 x 3 x 3 = 99, 12: 108),
        # whatever the bags hold
        ({"inputs": {"recent": [[1]] * 11}}, {"inputs": {"recent": [[]] * 12}}, "recent"),
        ({"inputs": {"recent": [1] * 11}}, {"inputs": {"recent": [1] * 12}}, "recent"),
        # several features add up: 13 x 4 + 16 x 3 = 100; 13 x 4 + 17 x 3 = 103
        (
            {"inputs": {"user": [1] * 13, "hist": [[1]] * 16}},
            {"inputs": {"user": [1] * 13, "hist": [[1]] * 17}},
            "hist",
        ),
    ],
)
def test_output_floats_are_counted_for_every_form(
    limited: TestClient, fits: Any, over: Any, feature: str
) -> None:
    status, text = _status(limited, fits)
    assert status == 200, text
    _refused(limited, over, feature)


def test_output_shape_counts_its_product(limited: TestClient) -> None:
    # output_shape [60] x dim 2 = 120 floats, whatever the batch (TensorFlow's sequence
    # reading of output_shape fills 60 rows from 2 examples of 30 steps).
    message = _refused(limited, {"inputs": {"shaped": [[1], [2]]}}, "shaped")
    assert "120" in message


def test_limit_follows_max_body_bytes_by_default(tmp_path: Path, ckpt_dir: Path) -> None:
    config = load_config(
        write_config(tmp_path / "s.toml", ckpt_dir, limits="max_body_bytes = 4000\n")
    )
    assert config.limits.max_output_floats == 4000
    with TestClient(create_app(config)) as client:
        # 2 examples x 667 bags x 3 = 4,002 floats from a 2 KB body
        status, text = _status(client, {"inputs": {"hist": [[[1]], [[]] * 667]}})
        assert status == 400, text
        assert "limits.max_output_floats" in text
        status, text = _status(client, {"inputs": {"hist": [[[1]], [[]] * 666]}})
        assert status == 200, text


def test_amplification_request_is_refused_before_any_allocation(client: TestClient) -> None:
    """256 examples, one with 20,000 empty bags: 61 KB asking for 256 x 20,000 x 3 floats
    (15.4 M; with a 64-dim table, 1.25 GiB). Refused by the codec, before the lookup, with
    memory proportional to the body."""
    body = amplification_body()
    assert len(body) < 70_000
    tracemalloc.start()
    try:
        response = client.post(PREDICT, content=body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 400, response.text[:300]
    message = response.json()["error"]
    assert "feature 'hist'" in message
    assert "256 × 20,000 × 3" in message
    assert "limits.max_output_floats" in message
    assert peak < 64 << 20, peak  # the output alone would be 61 MiB here, 1.25 GiB at dim 64


def test_codec_refuses_before_building_arrays() -> None:
    """The codec alone: the limit is checked before the ids are flattened or converted."""
    codec = RestCodec(feature_config(), Limits(max_output_floats=1000))
    parts: list[Any] = [[[]] * 400, [[1, "x"]]]  # a bad id that conversion would report first
    with pytest.raises(RequestError) as info:
        codec.decode(json.dumps({"inputs": {"hist": parts}}).encode())
    assert info.value.status == 400
    assert "2 × 400 × 3 = 2,400" in info.value.message
    request = codec.decode(json.dumps({"inputs": {"hist": [[[]] * 100, [[1]]]}}).encode())
    assert request.output_floats == 2 * 100 * 3


# -- the output budget of one worker ([limits] max_output_floats_in_flight) ----------------------

# 10 examples of user (dim 4): 40 output floats.
FORTY = {"inputs": {"user": [1] * 10}}


def _budget_client(tmp_path: Path, ckpt_dir: Path, budget: int) -> tuple[TestClient, list[Any]]:
    return recording_client(
        write_config(
            tmp_path / "budget.toml",
            ckpt_dir,
            limits=f"max_output_floats_in_flight = {budget}\n",
            # Every lookup in a thread (a held one must not hold the loop), several at once.
            server="inline_max_output_floats = 0\nmax_concurrent_lookups = 4\n",
        )
    )


def _in_flight(client: TestClient) -> float:
    return metric(client.get("/metrics").text, "embserve_output_floats_in_flight")


def test_requests_past_the_output_budget_get_503_with_retry_after(
    tmp_path: Path, ckpt_dir: Path
) -> None:
    client, models = _budget_client(tmp_path, ckpt_dir, budget=50)
    with client:
        with held_request(client, models[0], FORTY):
            assert _in_flight(client) == 40
            response = client.post(PREDICT, json=FORTY)  # 40 + 40 > 50
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            message = response.json()["error"]
            assert "limits.max_output_floats_in_flight = 50" in message
            assert "40" in message
            page = client.get("/metrics").text
            assert metric(page, "embserve_requests_shed_total", reason="output_budget") == 1
        # Once the held answer is sent, its floats are given back: the same request is served.
        assert _in_flight(client) == 0
        assert client.post(PREDICT, json=FORTY).status_code == 200
        assert _in_flight(client) == 0


def test_a_request_larger_than_the_budget_is_served_when_nothing_else_is(
    tmp_path: Path, ckpt_dir: Path
) -> None:
    """The budget may be set below max_output_floats: a single request is always admitted, so
    a request within max_output_floats is never refused forever."""
    client, _ = _budget_client(tmp_path, ckpt_dir, budget=10)
    with client:
        assert client.post(PREDICT, json=FORTY).status_code == 200
        assert _in_flight(client) == 0


def test_refused_and_failed_requests_give_their_floats_back(tmp_path: Path, ckpt_dir: Path) -> None:
    client, _ = _budget_client(tmp_path, ckpt_dir, budget=50)
    with client:
        bad_id = {"inputs": {"user": [1] * 9 + [10**6]}}  # 40 floats, one id out of range
        assert client.post(PREDICT, json=bad_id).status_code == 400
        assert _in_flight(client) == 0
        # Were the 400's floats kept, this request (40 more) would be shed.
        assert client.post(PREDICT, json=FORTY).status_code == 200
        assert _in_flight(client) == 0


def test_an_answer_whose_sending_fails_gives_its_floats_back(
    tmp_path: Path, ckpt_dir: Path
) -> None:
    """A client that leaves while its answer is sent (the ASGI send raises) must not keep its
    floats: a budget that leaked them would shed every request after a few disconnects."""
    import asyncio

    config = load_config(
        write_config(tmp_path / "b.toml", ckpt_dir, limits="max_output_floats_in_flight = 50\n")
    )
    app = create_app(config)
    body = json.dumps(FORTY).encode()

    async def call(fail_send: bool) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if received:
                await asyncio.sleep(3600)
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if fail_send and message["type"] == "http.response.body":
                raise OSError("connection reset by peer")
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PREDICT,
            "raw_path": PREDICT.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "app": app,
        }
        with contextlib.suppress(OSError):
            await app(scope, receive, send)  # type: ignore[arg-type]
        return sent

    with TestClient(app) as client:  # runs the lifespan: the model is loaded
        assert client.portal is not None
        for _ in range(3):
            client.portal.call(call, True)
        assert _in_flight(client) == 0
        sent = client.portal.call(call, False)
        assert sent[0]["status"] == 200
        assert _in_flight(client) == 0
