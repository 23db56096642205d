"""Where a predict request runs: on the event loop when its output is small, in a bounded set
of lookup threads when it is large (whatever its body size), and never more lookups at once
than ``[server] max_concurrent_lookups``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numba
import pytest
from starlette.testclient import TestClient

from embserve.kernels import _jit
from embserve.lookup import kernel_threads
from tests.server._support import (
    HOLD_S,
    PREDICT,
    held_request,
    recording_client,
    write_config,
)

WAIT_S = HOLD_S

# Output floats: user 4 per example, hist 3, tag 2. SMALL: 40 floats. LARGE_OUTPUT: 4,096
# examples x 9 = 36,864 floats, over the default inline_max_output_floats (32,768), from a
# 50 KB body (under inline_max_body_bytes, 256 KiB).
SMALL = {"inputs": {"user": [1] * 10}}
LARGE_OUTPUT = {"inputs": {"user": [1] * 4096, "hist": [[1]] * 4096, "tag": [[2]] * 4096}}


def _client(tmp_path: Path, ckpt_dir: Path, server: str = "") -> tuple[TestClient, list[Any]]:
    return recording_client(write_config(tmp_path / "sched.toml", ckpt_dir, server=server))


def _event_loop_thread(client: TestClient) -> threading.Thread:
    async def which() -> threading.Thread:
        return threading.current_thread()

    assert client.portal is not None
    thread: threading.Thread = client.portal.call(which)
    return thread


def test_small_output_runs_on_the_loop_and_large_output_in_a_lookup_thread(
    tmp_path: Path, ckpt_dir: Path
) -> None:
    client, models = _client(tmp_path, ckpt_dir)
    with client:
        loop = _event_loop_thread(client)
        model = models[0]
        assert client.post(PREDICT, json=SMALL).status_code == 200
        assert model.threads[-1] is loop
        # A small body whose output is large runs off the loop (it used to run on the loop,
        # since only the body size was looked at).
        assert client.post(PREDICT, json=LARGE_OUTPUT).status_code == 200
        assert model.threads[-1] is not loop
        assert model.threads[-1].name.startswith("embserve-lookup")


def test_thresholds_are_configurable(tmp_path: Path, ckpt_dir: Path) -> None:
    # Output threshold 0: every request with an output leaves the loop.
    client, models = _client(tmp_path, ckpt_dir, "inline_max_output_floats = 0\n")
    with client:
        assert client.post(PREDICT, json=SMALL).status_code == 200
        assert models[0].threads[-1].name.startswith("embserve-lookup")
    # A large output threshold keeps the large-output request on the loop.
    client, models = _client(tmp_path, ckpt_dir, "inline_max_output_floats = 100000\n")
    with client:
        loop = _event_loop_thread(client)
        assert client.post(PREDICT, json=LARGE_OUTPUT).status_code == 200
        assert models[0].threads[-1] is loop


def test_large_body_is_decoded_off_the_loop(
    tmp_path: Path, ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embserve.server import rest

    decoded_on: list[threading.Thread] = []
    original = rest.RestCodec.decode

    def decode(self: rest.RestCodec, body: bytes) -> rest.DecodedRequest:
        decoded_on.append(threading.current_thread())
        return original(self, body)

    monkeypatch.setattr(rest.RestCodec, "decode", decode)
    client, models = _client(tmp_path, ckpt_dir, "inline_max_body_bytes = 100\n")
    with client:
        loop = _event_loop_thread(client)
        assert client.post(PREDICT, json={"inputs": {"user": [1]}}).status_code == 200
        assert decoded_on[-1] is loop
        assert models[0].threads[-1] is loop
        big_body = {"inputs": {"user": [1] * 40}}  # ~150 bytes, 160 output floats
        assert client.post(PREDICT, json=big_body).status_code == 200
        assert decoded_on[-1] is not loop
        # Decoded in a codec thread, not a lookup thread (those are few: one per core's worth
        # of kernel threads); the lookup's own size then decides where it runs: 160 floats,
        # on the loop.
        assert decoded_on[-1].name.startswith("embserve-codec")
        assert models[0].threads[-1] is loop


def test_a_long_decode_leaves_the_lookup_threads_free(
    tmp_path: Path, ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one lookup thread, a large body held in its decode must not keep other requests'
    lookups waiting: decoding ran in the lookup threads, where a slow parse of megabytes of
    JSON blocked every large lookup behind it."""
    from embserve.server import rest

    gate = threading.Event()
    entered = threading.Event()
    original = rest.RestCodec.decode

    def decode(self: rest.RestCodec, body: bytes) -> rest.DecodedRequest:
        if b"5" in body:  # the held request's marker (no other body here holds a 5)
            entered.set()
            assert gate.wait(WAIT_S)
        return original(self, body)

    monkeypatch.setattr(rest.RestCodec, "decode", decode)
    client, models = _client(
        tmp_path, ckpt_dir, "inline_max_body_bytes = 100\nmax_concurrent_lookups = 1\n"
    )
    with client:
        held: dict[str, Any] = {}
        sender = threading.Thread(
            target=lambda: held.setdefault(
                "r", client.post(PREDICT, json={"inputs": {"user": [5] * 40}})
            )
        )
        sender.start()
        try:
            assert entered.wait(WAIT_S)
            answered: dict[str, Any] = {}
            other = threading.Thread(
                target=lambda: answered.setdefault("r", client.post(PREDICT, json=LARGE_OUTPUT)),
                daemon=True,
            )
            other.start()
            other.join(WAIT_S / 2)
            assert "r" in answered, "a large lookup waited for another request's decode"
            assert answered["r"].status_code == 200
            assert models[0].threads[-1].name.startswith("embserve-lookup")
        finally:
            gate.set()
            sender.join(WAIT_S)
        assert held["r"].status_code == 200


def test_a_large_answer_is_encoded_off_the_loop(
    tmp_path: Path, ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orjson holds the GIL for a whole call: an answer over _ENCODE_INLINE_MAX_FLOATS is
    encoded in a codec thread, in pieces, so that the loop runs between them."""
    from embserve.server import app, rest

    encoded_on: list[threading.Thread] = []
    original = rest.RestCodec.encode

    def encode(self: rest.RestCodec, request: Any, outputs: Any) -> bytes:
        encoded_on.append(threading.current_thread())
        return original(self, request, outputs)

    monkeypatch.setattr(rest.RestCodec, "encode", encode)
    monkeypatch.setattr(app, "_ENCODE_INLINE_MAX_FLOATS", 30_000)
    client, _ = _client(tmp_path, ckpt_dir)
    with client:
        loop = _event_loop_thread(client)
        smaller = {"inputs": {"user": [1] * 4096, "hist": [[1]] * 4096}}  # 28,672 floats
        assert client.post(PREDICT, json=smaller).status_code == 200
        assert encoded_on[-1] is loop
        response = client.post(PREDICT, json=LARGE_OUTPUT)  # 36,864 floats
        assert response.status_code == 200
        assert len(response.json()["outputs"]["user"]) == 4096
        assert encoded_on[-1].name.startswith("embserve-codec")


def test_a_large_lookup_does_not_stall_the_loop(tmp_path: Path, ckpt_dir: Path) -> None:
    """While a large-output request is held inside its lookup, the loop still answers."""
    client, models = _client(tmp_path, ckpt_dir)
    with client, held_request(client, models[0], LARGE_OUTPUT):
        answered: dict[str, Any] = {}
        probe = threading.Thread(
            target=lambda: answered.setdefault("r", client.get("/healthz")), daemon=True
        )
        probe.start()
        # The lookup is held until this block ends: a blocked loop could not answer at all.
        probe.join(WAIT_S / 2)
        assert "r" in answered, "the event loop is blocked by a lookup"
        assert answered["r"].status_code == 200


def test_concurrent_lookups_are_bounded(tmp_path: Path, ckpt_dir: Path) -> None:
    """8 concurrent large requests with max_concurrent_lookups = 2: at most 2 lookups at once,
    on at most 2 threads ever (each thread that calls the kernels starts an OpenMP team)."""
    client, models = _client(tmp_path, ckpt_dir, "max_concurrent_lookups = 2\n")
    with client:
        model = models[0]
        model.gate.clear()
        statuses: list[int] = []
        senders = [
            threading.Thread(
                target=lambda: statuses.append(client.post(PREDICT, json=LARGE_OUTPUT).status_code)
            )
            for _ in range(8)
        ]
        for s in senders:
            s.start()
        try:
            assert model.entered.acquire(timeout=WAIT_S)
            assert model.entered.acquire(timeout=WAIT_S)
            time.sleep(0.3)  # give the other 6 time to (wrongly) enter
            assert model.running == 2
        finally:
            model.gate.set()
            for s in senders:
                s.join(WAIT_S)
        assert statuses == [200] * 8
        assert model.most_running == 2
        assert len({t.ident for t in model.threads}) <= 2


def test_lookup_threads_default_to_cores_over_kernel_threads() -> None:
    import os

    from embserve.server.app import lookup_threads

    assert lookup_threads(3) == 3

    cores = len(os.sched_getaffinity(0))
    kernel = numba.get_num_threads() if _jit.PARALLEL else 1
    assert kernel_threads() == kernel
    assert lookup_threads(0) == max(1, cores // kernel)


@pytest.mark.parametrize("payload", [SMALL, LARGE_OUTPUT], ids=["on-the-loop", "lookup-thread"])
def test_a_request_is_counted_in_flight_on_its_version(
    tmp_path: Path, ckpt_dir: Path, payload: Any
) -> None:
    """Predict reads its version through ``Reloader.use()``: counted in flight from the
    lookup to the answer (a version taken out of service waits for these requests)."""
    client, models = _client(tmp_path, ckpt_dir)
    with client:
        reloader = client.app.state.reloader  # type: ignore[attr-defined]
        loaded = reloader.current
        with held_request(client, models[0], payload):
            assert loaded.in_flight == 1
        assert loaded.in_flight == 0
