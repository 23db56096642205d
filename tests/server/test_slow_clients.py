"""Slow and idle clients against a real server on a loopback socket (``main.running``): request
heads and bodies must arrive within ``[server] header_timeout_s`` / ``body_timeout_s``, and a
worker holds at most ``max_connections`` connections.

Before these limits, a connection that sent half a request was held open forever (an outside
probe found 54 of 60 still open after 75 s). Every wait here has a deadline; timings are
generous multiples of the configured timeouts (these run on loaded 2-core machines).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from embserve.server.main import running
from tests.server._support import MODEL, random_tables, save_version, write_config

pytestmark = pytest.mark.slow

PREDICT = f"/v1/models/{MODEL}:predict"
TIMEOUT_S = 0.5  # header and body timeouts of the test server
CLOSE_DEADLINE_S = 10.0  # how long a test waits for the server to close a connection


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    server = f"header_timeout_s = {TIMEOUT_S}\nbody_timeout_s = {TIMEOUT_S}\nmax_connections = 8\n"
    config = write_config(tmp_path / "serving.toml", directory, server=server)
    with running(config) as url:
        yield int(url.rsplit(":", 1)[1])


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLOSE_DEADLINE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it;
    fails if it is still open after CLOSE_DEADLINE_S."""
    started = time.monotonic()
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {CLOSE_DEADLINE_S} s")
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def _head(body_length: int) -> bytes:
    return (
        f"POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode()


def _request(body: bytes) -> bytes:
    return _head(len(body)) + body


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One Content-Length-framed response on a keep-alive connection."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "closed before a response"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head[9:12]), rest[:length]


SMALL = json.dumps({"instances": [{"user": 1}]}).encode()


def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    with _connect(port) as sock:
        data, after = _read_until_closed(sock)
    assert data == b""
    assert after >= TIMEOUT_S * 0.8


@pytest.mark.parametrize(
    "partial",
    [b"POST", _head(10)[:-2], f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n".encode()],
    ids=["method", "all-but-blank-line", "some-headers"],
)
def test_a_partial_request_head_is_closed(port: int, partial: bytes) -> None:
    with _connect(port) as sock:
        sock.sendall(partial)
        data, _ = _read_until_closed(sock)
    assert data == b""


def test_trickling_the_head_does_not_extend_the_deadline(port: int) -> None:
    """A byte every 0.1 s (slowloris) is still cut at header_timeout_s after the first."""
    head = _head(len(SMALL))
    with _connect(port) as sock:
        started = time.monotonic()
        closed = False
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - started > CLOSE_DEADLINE_S:
                break
        if not closed:
            _read_until_closed(sock)
        assert time.monotonic() - started < CLOSE_DEADLINE_S


def test_a_stalled_body_gets_408_and_is_closed(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(_head(100) + b'{"instances": [')
        data, after = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"connection: close" in data.lower()
    assert b"body_timeout_s" in data
    assert after >= TIMEOUT_S * 0.8


def test_trickling_the_body_gets_408(port: int) -> None:
    body = b" " * 60 + SMALL
    with _connect(port) as sock:
        sock.sendall(_head(len(body)))
        started = time.monotonic()
        for i in range(len(body)):
            try:
                sock.sendall(body[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
            if time.monotonic() - started > CLOSE_DEADLINE_S:
                break
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert time.monotonic() - started < CLOSE_DEADLINE_S


def test_keep_alive_clients_are_unaffected(port: int) -> None:
    """Requests that arrive in time are answered on one connection, with pauses between them
    shorter than uvicorn's keep-alive timeout (5 s) but longer than header_timeout_s."""
    with _connect(port) as sock:
        for _ in range(3):
            sock.sendall(_request(SMALL))
            status, body = _read_response(sock)
            assert status == 200, body
            time.sleep(TIMEOUT_S * 2)
        # A second request's head that stalls is cut like a first one's.
        sock.sendall(b"POST /v1")
        data, _ = _read_until_closed(sock)
    assert data == b""


def test_half_sent_requests_are_all_closed(port: int) -> None:
    """The review's probe, smaller: connections with half a head or half a body, all closed."""
    socks = []
    try:
        for i in range(6):
            sock = _connect(port)
            sock.sendall(_head(100)[:20] if i % 2 else _head(100) + b"{")
            socks.append(sock)
        for sock in socks:
            _read_until_closed(sock)
        with _connect(port) as sock:  # and the server still answers
            sock.sendall(_request(SMALL))
            assert _read_response(sock)[0] == 200
    finally:
        for sock in socks:
            sock.close()


def test_connections_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    config = write_config(
        tmp_path / "serving.toml", directory, server="max_connections = 3\nheader_timeout_s = 60\n"
    )
    with running(config) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [_connect(port) for _ in range(3)]
        try:
            # Accepted after the three (the accept queue is first in, first out): refused.
            with _connect(port) as extra:
                data, _ = _read_until_closed(extra)
            assert data.startswith(b"HTTP/1.1 503 "), data[:200]
            assert b"max_connections" in data
            idle.pop().close()
            # Served again once the server has seen that close (polled: no sleep decides).
            deadline = time.monotonic() + CLOSE_DEADLINE_S
            while True:
                with _connect(port) as sock:
                    try:
                        sock.sendall(_request(SMALL))
                        status = _read_response(sock)[0]
                    except (AssertionError, BrokenPipeError, ConnectionResetError):
                        status = 503  # refused and closed before our request was read
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert status == 200
        finally:
            for sock in idle:
                sock.close()


_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8  # tcpi_state values (include/net/tcp_states.h)


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="needs Linux TCP_INFO")
def test_a_reader_is_served_while_it_reads_and_cut_when_it_stalls(tmp_path: Path) -> None:
    """A 2 MB request asking for a ~10 MB answer, read slowly (64 KiB every 0.2 s, far below
    what the answer needs) and then not at all. While the client reads something every
    body_timeout_s (here 1 s) it is served; once it stops, the server drops the connection and
    the answer (which would otherwise sit in its memory as long as the connection lived: 45 MB
    for a 390 KB request at dim 64, measured), without waiting for the client."""
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    server = "header_timeout_s = 1.0\nbody_timeout_s = 1.0\n"
    bags = 700_000  # 2.1 M output floats: far more than the loopback socket buffers hold
    body = json.dumps({"inputs": {"hist": [[[]] * bags]}}, separators=(",", ":")).encode()
    with running(write_config(tmp_path / "serving.toml", directory, server=server)) as url:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        sock.settimeout(CLOSE_DEADLINE_S)
        with sock:
            sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            sock.sendall(_request(body))
            data = sock.recv(65536)  # the answer has started
            for _ in range(10):  # 2 s, two write timeouts: slow, but reading
                time.sleep(0.2)
                burst = b""
                while len(burst) < 65536 and (chunk := sock.recv(65536 - len(burst))):
                    burst += chunk
                data += burst
            assert _tcp_state(sock) not in (_TCP_CLOSE, _TCP_CLOSE_WAIT)
            # Now not a byte read: wait until the server has given up on the connection.
            deadline = time.monotonic() + 60
            while _tcp_state(sock) not in (_TCP_CLOSE, _TCP_CLOSE_WAIT):
                assert time.monotonic() < deadline, "the server kept writing to a stalled reader"
                time.sleep(0.05)
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    head, _, answer = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    assert len(answer) > 10 * 65536  # served while it read...
    assert len(answer) < length  # ... and cut when it stopped: the rest dropped unsent
