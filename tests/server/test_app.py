"""Every route of the app through Starlette's TestClient: answers, values, errors and metrics."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import anyio
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

import embserve as es
from embserve.server.app import create_app
from embserve.server.config import ServingConfig, load_config
from embserve.server.metrics import ServerMetrics
from embserve.server.reloader import Reloader, make_loader
from tests.server._support import (
    MODEL,
    TABLES,
    expected,
    metric,
    random_tables,
    save_damaged_version,
    save_version,
    write_config,
)

PREDICT = f"/v1/models/{MODEL}:predict"


def _predict(client: TestClient, body: Any, url: str = PREDICT) -> Any:
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _error(client: TestClient, body: Any, status: int = 400, url: str = PREDICT) -> str:
    response = client.post(url, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error"}
    message: str = payload["error"]
    return message


def _reloader(client: TestClient) -> Reloader:
    app = client.app
    assert isinstance(app, Starlette)
    reloader: Reloader = app.state.reloader
    return reloader


# ---------------------------------------------------------------------------------------------
# predict: values


INSTANCES = [
    {"user": 3, "hist": [1, 2, 7], "recent": [4, 5], "tag": {"ids": [1, 2], "weights": [0.5, 2]}},
    {"user": 99, "hist": [], "recent": [], "tag": 3},
    {"user": 0, "hist": {"ids": [9], "weights": [3.0]}, "recent": [1, 2, 3, 4], "tag": [0, 0]},
]


def test_predict_instances_values(client: TestClient, v1_tables: dict[str, np.ndarray]) -> None:
    response = client.post(PREDICT, json={"instances": INSTANCES})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-model-version"] == "1"
    predictions = response.json()["predictions"]
    assert len(predictions) == len(INSTANCES)
    for instance, prediction in zip(INSTANCES, predictions, strict=True):
        assert list(prediction) == list(instance)
        for feature, value in instance.items():
            np.testing.assert_allclose(
                prediction[feature], expected(v1_tables, feature, value), rtol=1e-5, atol=1e-6
            )


def test_predict_inputs_values(client: TestClient, v1_tables: dict[str, np.ndarray]) -> None:
    columns = {f: [inst[f] for inst in INSTANCES] for f in INSTANCES[0]}
    outputs = _predict(client, {"inputs": columns})["outputs"]
    assert list(outputs) == list(columns)
    for feature, values in columns.items():
        want = np.stack([expected(v1_tables, feature, v) for v in values])
        np.testing.assert_allclose(outputs[feature], want, rtol=1e-5, atol=1e-6)


def test_predict_dense_ids_and_subset(client: TestClient, v1_tables: dict[str, np.ndarray]) -> None:
    body = {"inputs": {"user": [5, 6, 7]}}
    outputs = _predict(client, body)["outputs"]
    assert list(outputs) == ["user"]
    np.testing.assert_allclose(outputs["user"], v1_tables["users"][[5, 6, 7]], rtol=1e-6)


def test_predict_single_ids_mixed_with_bags(
    client: TestClient, v1_tables: dict[str, np.ndarray]
) -> None:
    outputs = _predict(client, {"inputs": {"hist": [4, [4, 5], {"ids": 6, "weights": 2.0}]}})
    want = [expected(v1_tables, "hist", v) for v in (4, [4, 5], [6])]
    np.testing.assert_allclose(outputs["outputs"]["hist"], np.stack(want), rtol=1e-5)


def test_predict_several_bags_per_example(
    client: TestClient, v1_tables: dict[str, np.ndarray]
) -> None:
    values = [
        [[1, 2], [3]],
        [[4]],
        {"ids": [[5, 6], [7, 8, 9]], "weights": [[1.0, 2.0], [0.5, 0.5, 1]]},
    ]
    out = np.asarray(_predict(client, {"inputs": {"hist": values}})["outputs"]["hist"])
    assert out.shape == (3, 2, 3)  # [batch, most bags, dim], missing bags are zeros
    for i, value in enumerate(values):
        want = expected(v1_tables, "hist", value)
        np.testing.assert_allclose(out[i, : len(want)], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out[i, len(want) :], 0.0)


def test_ids_object_without_weights_sends_no_weights(
    client: TestClient, v1_tables: dict[str, np.ndarray]
) -> None:
    """``{"ids": ...}`` without "weights" is the plain bag: a sequence feature (which refuses
    weights) takes it, and a bag feature gives what the plain list gives."""
    body = {"instances": [{"recent": {"ids": [1, 2]}}, {"recent": [4]}]}
    predictions = _predict(client, body)["predictions"]
    np.testing.assert_allclose(predictions[0]["recent"], expected(v1_tables, "recent", [1, 2]))
    np.testing.assert_allclose(predictions[1]["recent"], expected(v1_tables, "recent", [4]))
    outputs = _predict(client, {"inputs": {"recent": [{"ids": [[3]]}, {"ids": [[1], [2, 3]]}]}})
    assert np.asarray(outputs["outputs"]["recent"]).shape == (2, 2, 3)  # bags of a sequence
    plain = _predict(client, {"inputs": {"hist": [[1, 2], [3]]}})
    wrapped = _predict(client, {"inputs": {"hist": [{"ids": [1, 2]}, [3]]}})
    assert wrapped == plain
    # Weights the client did send still reach the lookup, which refuses them here.
    message = _error(client, {"inputs": {"recent": [{"ids": [1]}, {"ids": [2], "weights": [1]}]}})
    assert "sequence feature" in message


def test_predict_versioned_url(client: TestClient) -> None:
    url = f"/v1/models/{MODEL}/versions/1:predict"
    assert _predict(client, {"instances": [{"user": 1}]}, url)["predictions"]
    message = _error(
        client, {"instances": [{"user": 1}]}, 404, f"/v1/models/{MODEL}/versions/2:predict"
    )
    assert "Specific(rec, 2)" in message
    assert "serving version 1" in message
    _error(client, {"instances": [{"user": 1}]}, 404, f"/v1/models/{MODEL}/versions/x:predict")


# Unicode digits (superscript two, circled one, Arabic-Indic one, full-width one) pass
# str.isdigit(); only ASCII digits name a version.
UNICODE_DIGITS = ["%C2%B2", "%E2%91%A0", "%D9%A1", "%EF%BC%91"]


@pytest.mark.parametrize("version", UNICODE_DIGITS)
@pytest.mark.parametrize("route", ["predict", "status", "metadata"])
def test_version_of_unicode_digits_is_404(client: TestClient, version: str, route: str) -> None:
    url = {
        "predict": f"/v1/models/{MODEL}/versions/{version}:predict",
        "status": f"/v1/models/{MODEL}/versions/{version}",
        "metadata": f"/v1/models/{MODEL}/versions/{version}/metadata",
    }[route]
    if route == "predict":
        response = client.post(url, json={"instances": [{"user": 1}]})
    else:
        response = client.get(url)
    assert response.status_code == 404, response.text
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize(
    ("version", "status"),
    [
        ("9" * 4301, 400),  # past Python's 4,300-digit int() limit
        ("9" * 20, 400),
        (str(2**63), 400),  # one past int64
        (str(2**63 - 1), 404),  # a valid version, not served
        ("0" * 30 + "1", 200),  # leading zeros: version 1, as TF Serving's SimpleAtoi reads it
        ("+1", 404),
        ("-1", 404),
        ("1.0", 404),
        (" 1", 404),
    ],
)
def test_version_numbers(client: TestClient, version: str, status: int) -> None:
    for method, url in [
        ("POST", f"/v1/models/{MODEL}/versions/{version}:predict"),
        ("GET", f"/v1/models/{MODEL}/versions/{version}"),
        ("GET", f"/v1/models/{MODEL}/versions/{version}/metadata"),
    ]:
        body = {"instances": [{"user": 1}]} if method == "POST" else None
        response = client.request(method, url, json=body)
        assert response.status_code == status, (url, response.text)
        if status == 400:
            message = response.json()["error"]
            assert "int64" in message
            assert len(message) < 300  # the digits are not echoed whole


@pytest.mark.parametrize("depth", [960, 970, 1000, 1030, 10_000])
def test_deeply_nested_json_is_400(client: TestClient, depth: int) -> None:
    """Nesting past what a request can mean is refused with a short message, at any depth
    (orjson parses up to 1,024 levels; wording a message about such a value must not recurse)."""
    deep = "[" * depth + "1" + "]" * depth
    bodies = [
        f'{{"instances": [{{"user": {deep}}}]}}',
        f'{{"instances": [{{"hist": {deep}}}]}}',
        f'{{"inputs": {{"hist": [[1], {deep}]}}}}',
        f'{{"inputs": {{"hist": [[[1]], {deep}]}}}}',
        f'{{"inputs": {{"hist": [{{"ids": [1], "weights": {deep}}}]}}}}',
        f'{{"inputs": {{"hist": [{{"ids": {deep}}}]}}}}',
        f'{{"inputs": {{"hist": [{{"ids": [1, 2], "weights": [1, {deep}]}}]}}}}',
        f'{{"inputs": {{"hist": [{{"ids": [[1]], "weights": [{deep}]}}]}}}}',
        f'{{"inputs": {{"user": [{{"x": {deep}}}]}}}}',
        f'{{"instances": {deep}}}',
        f'{{"inputs": {deep}}}',
        f'{{"signature_name": {deep}, "instances": []}}',
        deep,
    ]
    for body in bodies:
        response = client.post(PREDICT, content=body.encode())
        assert response.status_code == 400, (body[:60], response.text[:300])
        assert len(response.json()["error"]) < 1000


def test_thread_pool_path_answers_the_same(
    tmp_path: Path, ckpt_dir: Path, client: TestClient
) -> None:
    config = load_config(
        write_config(tmp_path / "pool.toml", ckpt_dir, server="inline_max_body_bytes = 0\n")
    )
    with TestClient(create_app(config)) as pooled:
        body = {"instances": INSTANCES}
        assert _predict(pooled, body) == _predict(client, body)
        bad = {"instances": [{"user": 100}]}
        assert _error(pooled, bad) == _error(client, bad)


def test_predict_empty_batches(client: TestClient) -> None:
    assert _predict(client, {"instances": []}) == {"predictions": []}
    outputs = _predict(client, {"inputs": {"user": [], "hist": []}})["outputs"]
    assert outputs == {"user": [], "hist": []}


def test_signature_name_is_accepted(client: TestClient) -> None:
    body = {"signature_name": "serving_default", "instances": [{"user": 1}]}
    assert _predict(client, body)["predictions"]
    assert "signature_name" in _error(client, {"signature_name": "x", "instances": []})


# ---------------------------------------------------------------------------------------------
# predict: errors name the feature and the problem


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"instances": [{"usr": 1}]}, ["unknown feature 'usr'", "did you mean 'user'"]),
        ({"inputs": {"nope": [1]}}, ["unknown feature 'nope'", "'user'"]),
        ({"instances": [{"user": "7"}]}, ["feature 'user', instance 0", "a string"]),
        ({"instances": [{"user": 1}, {"user": True}]}, ["feature 'user', instance 1", "boolean"]),
        ({"instances": [{"user": None}]}, ["feature 'user', instance 0", "null"]),
        ({"inputs": {"user": [1.5]}}, ["feature 'user', example 0", "floating-point"]),
        ({"inputs": {"hist": [[1, "a"]]}}, ["feature 'hist', example 0", "a string"]),
        ({"inputs": {"hist": [[1, 2.0]]}}, ["feature 'hist', example 0", "floating-point"]),
        ({"inputs": {"hist": [[1], [True]]}}, ["feature 'hist', example 1", "boolean"]),
        ({"inputs": {"hist": [[1, [2]]]}}, ["feature 'hist', example 0", "list of lists"]),
        ({"inputs": {"hist": [[[1]], [2]]}}, ["feature 'hist', example 1", "list of lists"]),
        ({"inputs": {"user": [2**63]}}, ["feature 'user', example 0", "int64"]),
        ({"inputs": {"hist": [[2**64]]}}, ["feature 'hist', example 0", "floating-point"]),
        (
            {"instances": [{"user": 100}]},
            ["feature 'user'", "table 'users'", "id 100", "[0, 100)"],
        ),
        (
            {"inputs": {"hist": [[1], [2, 50]]}},
            ["feature 'hist'", "table 'items'", "id 50", "row 1, position 1"],
        ),
        ({"inputs": {"hist": [[-1]]}}, ["feature 'hist'", "id -1"]),
        ({"inputs": {"recent": [[3, 77]]}}, ["feature 'recent'", "id 77"]),
        (
            {"inputs": {"hist": [{"ids": [1, 2], "weights": [1.0]}]}},
            ["feature 'hist', example 0", '"weights" has 1 entries but "ids" has 2'],
        ),
        (
            {"inputs": {"hist": [{"ids": [1], "weights": ["x"]}]}},
            ["feature 'hist'", "weights must be numbers", "a string"],
        ),
        (
            {"inputs": {"hist": [{"ids": [1], "weights": [1e300]}]}},
            ["feature 'hist'", "does not fit in float32"],
        ),
        (
            {"inputs": {"hist": [{"ids": [1], "weight": [1.0]}]}},
            ["feature 'hist', example 0", "unknown key 'weight'"],
        ),
        ({"inputs": {"hist": [{"weights": [1.0]}]}}, ["feature 'hist', example 0", '"ids"']),
        (
            {"inputs": {"hist": [{"ids": 1, "weights": [1.0]}]}},
            ["feature 'hist', example 0", "one number for one id"],
        ),
        (
            {"inputs": {"recent": [{"ids": [1], "weights": [1.0]}]}},
            ["recent", "sequence feature"],
        ),
        ({"inputs": {"user": 3}}, ["feature 'user'", "one value per example", "an integer"]),
        ({"instances": [{"user": 1}, {"user": 2, "hist": [1]}]}, ["instance 1", "'hist'"]),
        ({"instances": [{"user": 1, "hist": [1]}, {"user": 2}]}, ["instance 1", "lacks", "'hist'"]),
        ({"instances": [{"user": 1}, {"usr": 2}]}, ["unknown feature 'usr'"]),
        ({"instances": [{"user": 1}, 5]}, ["instance 1", "object"]),
        ({"instances": [{}]}, ["instance 0 names no feature"]),
        ({"instances": {"user": 1}}, ["'instances' must be a list"]),
        ({"inputs": [1]}, ["'inputs' must be an object"]),
        ({"inputs": {}}, ["'inputs' names no feature"]),
        ({"instances": [], "inputs": {}}, ["Only one of 'instances' or 'inputs'"]),
        ({}, ["Missing 'inputs' or 'instances' key"]),
        ({"instance": []}, ["unknown key 'instance'"]),
        ([1, 2], ["JSON object"]),
    ],
)
def test_predict_bad_input_is_400(client: TestClient, body: Any, fragments: list[str]) -> None:
    message = _error(client, body)
    for fragment in fragments:
        assert fragment in message


def _big_row(table: np.ndarray) -> int:
    """An id whose row holds a component of magnitude > 1 (so 3.4e38 times it overflows)."""
    return int(np.flatnonzero(np.abs(table).max(axis=1) > 1.0)[0])


def test_finite_weights_whose_output_overflows_are_400(
    client: TestClient, v1_tables: dict[str, np.ndarray]
) -> None:
    """Finite weights can still overflow float32 in the combined row: the answer is a 400
    naming the feature, never ``null`` (orjson's rendering of inf / NaN) in a 200. The lookup
    raises ``es.InputError`` for a non-finite output from finite inputs; the server maps it."""
    user, item = _big_row(v1_tables["users"]), _big_row(v1_tables["items"])
    bodies = [
        ({"instances": [{"user": {"ids": [user], "weights": [3.4e38]}}]}, "user"),  # sum
        ({"inputs": {"hist": [{"ids": [item, item], "weights": [3e38, 3e38]}]}}, "hist"),  # mean
    ]
    for body, feature in bodies:
        response = client.post(PREDICT, json=body)
        assert b"null" not in response.content
        assert response.status_code == 400, response.text
        assert repr(feature) in response.json()["error"]


def test_invalid_json_is_400(client: TestClient) -> None:
    response = client.post(PREDICT, content=b'{"instances": [')
    assert response.status_code == 400
    assert response.json()["error"].startswith("JSON Parse error")


def test_unknown_model_is_404(client: TestClient) -> None:
    for response in (
        client.post("/v1/models/other:predict", json={"instances": [{"user": 1}]}),
        client.get("/v1/models/other"),
        client.get("/v1/models/other/metadata"),
    ):
        assert response.status_code == 404
        assert "other" in response.json()["error"]


def test_unknown_route_and_method(client: TestClient) -> None:
    response = client.get("/v1/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"error": "Malformed request: GET /v1/nothing/here"}
    response = client.get(PREDICT.replace(":predict", "/metadata/x"))
    assert response.status_code == 404
    response = client.put("/healthz")
    assert response.status_code == 405
    assert response.json()["error"] == "Malformed request: PUT /healthz"


# ---------------------------------------------------------------------------------------------
# limits


def _limited_client(tmp_path: Path, ckpt_dir: Path, limits: str) -> TestClient:
    config = load_config(write_config(tmp_path / "limited.toml", ckpt_dir, limits=limits))
    return TestClient(create_app(config))


def test_body_limit_is_413(tmp_path: Path, ckpt_dir: Path) -> None:
    with _limited_client(tmp_path, ckpt_dir, "max_body_bytes = 200\n") as client:
        small = {"inputs": {"hist": [[1, 2, 3]]}}
        assert client.post(PREDICT, json=small).status_code == 200
        big = {"inputs": {"hist": [list(range(40))] * 4}}
        message = _error(client, big, 413)
        assert "exceeds the limit of 200 bytes" in message
        assert "max_body_bytes" in message

        # Without a Content-Length (chunked upload) the body is cut off while it streams.
        def chunks() -> Any:
            for _ in range(10):
                yield b" " * 50

        response = client.post(PREDICT, content=chunks())
        assert response.status_code == 413
        assert "limits.max_body_bytes" in response.json()["error"]


def test_batch_and_id_limits_are_400(tmp_path: Path, ckpt_dir: Path) -> None:
    limits = "max_batch = 3\nmax_ids_per_request = 10\n"
    with _limited_client(tmp_path, ckpt_dir, limits) as client:
        assert client.post(PREDICT, json={"instances": [{"user": 1}] * 3}).status_code == 200
        message = _error(client, {"instances": [{"user": 1}] * 4})
        assert "4 examples" in message
        assert "max_batch" in message
        message = _error(client, {"inputs": {"hist": [1, 2, 3, 4]}})
        assert "feature 'hist'" in message
        assert "max_batch" in message
        message = _error(client, {"inputs": {"hist": [list(range(11))]}})
        assert "feature 'hist' holds 11 ids" in message
        assert "max_ids_per_request" in message
        message = _error(client, {"inputs": {"hist": [list(range(6))], "tag": [list(range(6))]}})
        assert "more than 10 ids" in message
        assert "'tag'" in message
        message = _error(client, {"inputs": {"hist": [[[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5]]]}})
        assert "11 ids" in message


# ---------------------------------------------------------------------------------------------
# status, metadata, health


def test_status_and_reload(
    client: TestClient, ckpt_dir: Path, v1_tables: dict[str, np.ndarray]
) -> None:
    response = client.get(f"/v1/models/{MODEL}")
    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    v2 = random_tables(2)
    save_version(ckpt_dir, 2, v2)
    reloader = _reloader(client)
    assert reloader.poll() is not None
    response = client.post(PREDICT, json={"instances": [{"user": 5}]})
    assert response.headers["x-model-version"] == "2"
    np.testing.assert_allclose(response.json()["predictions"][0]["user"], v2["users"][5])
    save_damaged_version(ckpt_dir, 3, random_tables(3))
    assert reloader.poll() is None
    statuses = client.get(f"/v1/models/{MODEL}").json()["model_version_status"]
    assert [(s["version"], s["state"], s["status"]["error_code"]) for s in statuses] == [
        ("3", "END", "DATA_LOSS"),
        ("2", "AVAILABLE", "OK"),
        ("1", "END", "OK"),
    ]
    assert "CorruptCheckpointError" in statuses[0]["status"]["error_message"]
    one = client.get(f"/v1/models/{MODEL}/versions/2").json()["model_version_status"]
    assert [s["state"] for s in one] == ["AVAILABLE"]
    response = client.get(f"/v1/models/{MODEL}/versions/9")
    assert response.status_code == 404
    assert "version 9" in response.json()["error"]
    # Still serving version 2.
    response = client.post(PREDICT, json={"instances": [{"user": 5}]})
    assert response.headers["x-model-version"] == "2"


def test_metadata(client: TestClient) -> None:
    body = client.get(f"/v1/models/{MODEL}/metadata").json()
    assert body["model_spec"] == {
        "name": MODEL,
        "signature_name": "serving_default",
        "version": "1",
    }
    features = body["metadata"]["features"]
    assert list(features) == ["user", "hist", "recent", "tag"]
    assert features["recent"] == {
        "table": "items",
        "dim": 3,
        "combiner": "mean",
        "max_sequence_length": 3,
        "output_shape": None,
        "validate_weights_and_indices": True,
        "example_output_shape": [3, 3],
    }
    assert features["user"]["example_output_shape"] == [4]
    tables = body["metadata"]["tables"]
    assert tables == {
        name: {"vocabulary_size": v, "dim": d, "combiner": c} for name, (v, d, c) in TABLES.items()
    }
    versioned = client.get(f"/v1/models/{MODEL}/versions/1/metadata")
    assert versioned.status_code == 200
    assert client.get(f"/v1/models/{MODEL}/versions/4/metadata").status_code == 404


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": MODEL, "version": "1"}


def test_nothing_loaded_is_503_until_a_checkpoint_appears(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    config = load_config(write_config(tmp_path / "serving.toml", empty))
    with TestClient(create_app(config)) as client:
        response = client.get("/healthz")
        assert response.status_code == 503
        assert "no version loaded" in response.json()["error"]
        message = _error(client, {"instances": [{"user": 1}]}, 503)
        assert MODEL in message
        assert client.get(f"/v1/models/{MODEL}").json() == {"model_version_status": []}
        assert client.get(f"/v1/models/{MODEL}/metadata").json()["model_spec"]["version"] is None
        save_version(empty, 4, random_tables(4))
        _reloader(client).poll()
        assert client.get("/healthz").json()["version"] == "4"


def test_damaged_first_checkpoint_is_503_with_the_reason(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_damaged_version(directory, 1, random_tables(1))
    config = load_config(write_config(tmp_path / "serving.toml", directory))
    with TestClient(create_app(config)) as client:
        response = client.get("/healthz")
        assert response.status_code == 503
        assert "CorruptCheckpointError" in response.json()["error"]


# ---------------------------------------------------------------------------------------------
# metrics


def test_metrics_count_requests_ids_and_failures(client: TestClient, ckpt_dir: Path) -> None:
    _predict(client, {"instances": [{"user": 1, "hist": [1, 2, 3]}, {"user": 2, "hist": [4]}]})
    _error(client, {"inputs": {"hist": [[1, 60, 70], [80]]}})
    client.get("/nowhere")
    save_damaged_version(ckpt_dir, 2, random_tables(2))
    _reloader(client).poll()
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = "/v1/models/{name}:predict"
    assert metric(text, "embserve_requests_total", route=route, code="200") == 1
    assert metric(text, "embserve_requests_total", route=route, code="400") == 1
    assert metric(text, "embserve_requests_total", route="unmatched", code="404") == 1
    assert metric(text, "embserve_request_duration_seconds_count", route=route) == 2
    assert metric(text, "embserve_lookup_ids_total", feature="user") == 2
    assert metric(text, "embserve_lookup_ids_total", feature="hist") == 4
    assert metric(text, "embserve_out_of_range_ids_total", feature="hist") == 3
    assert metric(text, "embserve_model_version") == 1
    assert metric(text, "embserve_model_loads_total") == 1
    assert metric(text, "embserve_model_load_duration_seconds_count") == 1
    assert metric(text, "embserve_model_reload_failures_total", reason="corrupt") == 1
    assert metric(text, "embserve_internal_errors_total") == 0
    assert "process_resident_memory_bytes" in text


def test_metrics_of_two_apps_are_separate(config: ServingConfig) -> None:
    with TestClient(create_app(config)) as a, TestClient(create_app(config)) as b:
        a.get("/healthz")
        text = b.get("/metrics").text
        assert metric(text, "embserve_requests_total", route="/healthz", code="200") == 0


# ---------------------------------------------------------------------------------------------
# 500 only for bugs; requests in flight keep their version


class _BrokenModel:
    """Looks up like a model but fails the way a bug would."""

    def __call__(self, features: Any, weights: Any = None) -> Any:
        raise RuntimeError("kaboom")


def test_a_bug_is_500_and_counted(config: ServingConfig, caplog: pytest.LogCaptureFixture) -> None:
    """A bug answers a bare 500 (its type and message are for the log, not for clients, as in
    Starlette's ServerErrorMiddleware), is logged with its traceback, and is counted."""
    metrics = ServerMetrics()
    app = create_app(config, model_loader=lambda prefix: cast(Any, _BrokenModel()), metrics=metrics)
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level("ERROR"):
        response = client.post(PREDICT, json={"instances": [{"user": 1}]})
        assert response.status_code == 500
        assert response.json() == {"error": "Internal Server Error"}
        assert "kaboom" not in response.text
        assert "RuntimeError" not in response.text
        logged = [r for r in caplog.records if r.name == "embserve.server" and r.exc_info]
        assert len(logged) == 1
        assert "POST /v1/models/rec:predict" in logged[0].getMessage()
        exc_info = logged[0].exc_info
        assert exc_info is not None
        assert isinstance(exc_info[1], RuntimeError)
        assert str(exc_info[1]) == "kaboom"
        text = client.get("/metrics").text
        route = "/v1/models/{name}:predict"
        assert metric(text, "embserve_internal_errors_total", route=route) == 1
        assert metric(text, "embserve_requests_total", route=route, code="500") == 1


def test_client_leaving_mid_upload_is_not_a_bug(client: TestClient) -> None:
    """A client that disconnects while sending its body is counted as 499, not as a 500."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"inputs": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": PREDICT,
        "raw_path": PREDICT.encode(),
        "query_string": b"",
        "headers": [],
    }
    anyio.run(cast(Any, client.app), scope, receive, send)
    assert sent[0]["status"] == 499
    text = client.get("/metrics").text
    route = "/v1/models/{name}:predict"
    assert metric(text, "embserve_requests_total", route=route, code="499") == 1
    assert metric(text, "embserve_internal_errors_total", route=route) == 0


class _GatedModel:
    """A real model whose lookups wait for a gate: holds requests in flight during a swap."""

    def __init__(self, model: es.TPUEmbeddingForServing, gate: threading.Event) -> None:
        self.model = model
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, features: Any, weights: Any = None) -> Any:
        self.entered.set()
        assert self.gate.wait(30)
        return self.model(features, weights)


@pytest.mark.parametrize("inline", [True, False], ids=["event-loop", "thread-pool"])
def test_request_in_flight_finishes_on_its_version(
    tmp_path: Path, ckpt_dir: Path, v1_tables: dict[str, np.ndarray], inline: bool
) -> None:
    server = "" if inline else "inline_max_body_bytes = 0\n"
    config = load_config(write_config(tmp_path / "s.toml", ckpt_dir, server=server))
    real = make_loader(config)
    gate = threading.Event()
    gated: list[_GatedModel] = []

    def loader(prefix: str) -> Any:
        model = _GatedModel(real(prefix), gate)
        gated.append(model)
        return model

    with TestClient(create_app(config, model_loader=loader)) as client:
        result: dict[str, Any] = {}

        def send() -> None:
            result["response"] = client.post(PREDICT, json={"instances": [{"user": 7}]})

        thread = threading.Thread(target=send)
        thread.start()
        assert gated[0].entered.wait(30)
        v2 = random_tables(2)
        save_version(ckpt_dir, 2, v2)
        assert _reloader(client).poll() is not None
        gate.set()
        thread.join(30)
        response = result["response"]
        assert response.status_code == 200
        assert response.headers["x-model-version"] == "1"
        np.testing.assert_allclose(response.json()["predictions"][0]["user"], v1_tables["users"][7])
        after = client.post(PREDICT, json={"instances": [{"user": 7}]})
        assert after.headers["x-model-version"] == "2"
        np.testing.assert_allclose(after.json()["predictions"][0]["user"], v2["users"][7])


# ---------------------------------------------------------------------------------------------
# output_shape features


def test_output_shape_feature(
    tmp_path: Path, ckpt_dir: Path, v1_tables: dict[str, np.ndarray]
) -> None:
    shaped = """
    [[features]]
    path = "shaped"
    table = "tags"
    output_shape = [4]
    """
    config = load_config(write_config(tmp_path / "shaped.toml", ckpt_dir, extra_features=shaped))
    with TestClient(create_app(config)) as client:
        # Batch 4 = output_shape: one combined row per example.
        body = {"inputs": {"shaped": [[1], [2], [3], [4, 5]]}}
        out = np.asarray(_predict(client, body)["outputs"]["shaped"])
        assert out.shape == (4, 2)
        # Batch 2: TensorFlow reads output_shape [4] as 2 sequence steps per example.
        body = {"inputs": {"shaped": [[1, 2], [3]]}}
        out = np.asarray(_predict(client, body)["outputs"]["shaped"])
        assert out.shape == (4, 2)
        np.testing.assert_allclose(out[0], v1_tables["tags"][1], rtol=1e-6)
        message = _error(client, {"instances": [{"shaped": [1, 2]}, {"shaped": [3]}]})
        assert "feature 'shaped'" in message
        assert "'inputs' form" in message
        message = _error(client, {"inputs": {"shaped": [[1], [2], [3]]}})
        assert "Output shape" in message
        assert "'shaped'" in message
