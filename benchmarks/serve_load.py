"""Load figures for ``embserve serve``: requests/s and latency against a bare Starlette endpoint.

What it measures: requests per second and p50 / p99 latency of ``POST /v1/models/load:predict``
with 26 one-hot features (26 tables of 100,000 × 32, Zipf-like ids) at batch 1 and batch 256,
served by ``embserve serve CONFIG --workers N`` with 1 and 2 workers, next to a *bare* endpoint:
Starlette + orjson on uvicorn with the same worker count, which reads and parses the same
request and answers with the same JSON shape and size (26 float32 vectors of 32 per example,
serialized by orjson from numpy arrays as embserve does) but looks nothing up. The bare endpoint
is the floor the framework sets; the ratio says what embserve's decoding, validation, lookup and
metrics add. Aim (issue 5): embserve reaches at least half the bare throughput at batch 1.

How (and why):

- Loopback only (127.0.0.1). Both servers run as subprocesses the same way (uvicorn, access log
  off, log level warning, ``TCP_NODELAY`` on accepted connections as embserve's own protocol
  class does), all four (2 servers × 1 and 2 workers) at once: idle ones cost nothing, and every
  round visits every cell, so slow drifts of this shared machine hit all of them alike.
- Rounds are interleaved: each round runs every (server, workers, batch) cell once, for a fixed
  time, in an order rotated by one each round. req/s is the median over rounds (with the
  range); latencies are pooled over rounds.
- The load generator is a pool of separate client processes (4 by default), each with one
  keep-alive connection sending requests back to back (closed loop: latency is measured under
  that concurrency). The client is a minimal HTTP/1.1 writer/reader over a socket: pre-built
  request bytes, ``Content-Length``-framed responses. ``http.client`` parses every response's
  headers with the ``email`` package, which cost more CPU than a bare endpoint's whole answer;
  on a 2-core machine that CPU is taken from the server.
- The machine has 2 cores, shared by the servers and the clients (and anything else running):
  the table reports the CPU milliseconds per request the server processes and the client
  processes used, so the split is visible.
- Every server's answer to one batch-1 and one batch-256 request is checked before timing
  (embserve's values against the tables; both servers' shapes and sizes).
- After the load, with the servers stopped, the parts of one request are timed in-process
  (decode, lookup, encode, metrics, and both Starlette apps called directly without a socket),
  so the section also says where embserve's time goes.
- Bounded: each cell runs for ``--seconds`` and at most ``--max-requests`` per client; a global
  ``--max-minutes`` budget skips the remaining rounds (with a note) if exceeded; every socket
  has a timeout; the servers are stopped (SIGTERM, then SIGKILL) and the temporary directory
  removed whatever happens.

Usage::

    .venv/bin/python benchmarks/serve_load.py            # full run, ~4 minutes
    .venv/bin/python benchmarks/serve_load.py --write    # ... and insert it into RESULTS.md
    .venv/bin/python benchmarks/serve_load.py --quick    # seconds-long smoke run (tests)
    .venv/bin/python benchmarks/serve_load.py --worker-counts 1 --clients 8 \\
        --batches 1,256,1024 --baseline-src /tmp/old/src   # a change against older code

Needs the ``serve`` extra (``pip install -e '.[serve]'``, part of ``dev``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_model, git_commit, publish
from uvicorn.protocols.http.auto import AutoHTTPProtocol

HOST = "127.0.0.1"
MODEL = "load"
PREDICT = f"/v1/models/{MODEL}:predict"
N_FEATURES = 26
DIM = 32
ZIPF_EXPONENT = 1.05
SEED = 20_260_105
BATCHES = (1, 256)
WORKER_COUNTS = (1, 2)
SERVERS = ("embserve", "bare")
#: With ``--baseline-src DIR``: embserve again, importing embserve from ``DIR`` (another
#: checkout's ``src``), in the same interleaved rounds, so a change is measured against the
#: code before it under the same machine conditions.
BASELINE = "baseline"
#: Distinct request bodies cycled per batch size (batch 256 bodies are ~90 KB each, batch 1024
#: ~360 KB: over the server's 256 KiB inline_max_body_bytes, so answered in its thread pool).
N_BODIES = {1: 512, 256: 16, 1024: 4}
MAX_BATCH = max(N_BODIES)
WARMUP_REQUESTS = 3  # per client and cell, untimed, on the cell's connection
START_TIMEOUT_S = 180.0  # 4 servers importing numba / embserve at once on 2 busy cores
IO_TIMEOUT_S = 60.0
BARE_ENV = "SERVE_LOAD_BARE_SPEC"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    """How big and how long a run is."""

    vocab: int
    rounds: int
    seconds: float
    clients: int
    max_requests: int
    warmup_seconds: float
    worker_counts: tuple[int, ...] = WORKER_COUNTS
    batches: tuple[int, ...] = BATCHES
    servers: tuple[str, ...] = SERVERS


FULL = Sizes(
    vocab=100_000, rounds=7, seconds=3.0, clients=4, max_requests=200_000, warmup_seconds=1.0
)
QUICK = Sizes(vocab=2_000, rounds=1, seconds=0.6, clients=2, max_requests=5_000, warmup_seconds=0.2)


def _log(message: str) -> None:
    """Progress on stderr (stdout carries only the markdown section)."""
    print(f"[serve_load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _feature_names() -> list[str]:
    return [f"f{i:02d}" for i in range(N_FEATURES)]


# ---------------------------------------------------------------------------------------------
# The bare endpoint (runs inside uvicorn worker processes: ``serve_load:bare_app``)


def bare_app() -> Any:
    """The bare Starlette + orjson endpoint, built by each uvicorn worker (app factory).

    ``POST /v1/models/{name}:predict`` reads the body, parses it with orjson, and answers
    ``{"predictions": [{feature: [32 floats], ...} × batch]}`` from fixed float32 arrays, built
    and serialized as embserve's encoder does (a dict of numpy row views per example, orjson's
    numpy serialization); ``GET /healthz`` says it is up. The spec (feature names, dim, the
    largest batch) comes in the ``SERVE_LOAD_BARE_SPEC`` environment variable.
    """
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    spec = json.loads(os.environ[BARE_ENV])
    names: list[str] = spec["features"]
    rng = np.random.default_rng(SEED)
    arrays = [
        rng.standard_normal((spec["max_batch"], spec["dim"]), dtype=np.float32) for _ in names
    ]
    option = orjson.OPT_SERIALIZE_NUMPY

    async def predict(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        n = len(doc["instances"])
        rows = [
            dict(zip(names, row, strict=True)) for row in zip(*(a[:n] for a in arrays), strict=True)
        ]
        return Response(
            orjson.dumps({"predictions": rows}, option=option), media_type="application/json"
        )

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/models/{name}:predict", predict, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol with ``TCP_NODELAY`` on accepted connections.

    The same fix embserve's server applies (``embserve.server.main.NoDelayHTTPProtocol``): with
    ``--workers N``, uvicorn's shared socket leaves Nagle's algorithm on, and keep-alive
    requests then wait ~40 ms for delayed ACKs. Written here so the bare server imports
    nothing of embserve; at module level so uvicorn can pickle it to spawned workers.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_INET:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def _run_bare_server(port: int, workers: int) -> int:
    """``serve_load.py --bare-server``: the bare endpoint on uvicorn, as embserve runs its app."""
    import uvicorn

    # uvicorn re-raises the shutdown signal through the handler it found at start; with the
    # default one a graceful SIGTERM would still end the process with -15 (embserve's serve()
    # installs a no-op handler the same way).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        "serve_load:bare_app",
        factory=True,
        host=HOST,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        http=NoDelayHTTPProtocol,
        timeout_graceful_shutdown=None,
    )
    return 0


# ---------------------------------------------------------------------------------------------
# The model: tables, checkpoint, config, requests


def _zipf_ids(rng: np.random.Generator, vocab: int, perm: np.ndarray, n: int) -> np.ndarray:
    """``n`` ids whose ranks follow r^-1.05, ranks scattered over the table by ``perm``."""
    weights = np.arange(1, vocab + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.minimum(np.searchsorted(cdf, rng.random(n)), vocab - 1)
    ids: np.ndarray = perm[ranks]
    return ids


def _make_tables(vocab: int) -> dict[str, np.ndarray]:
    """Table name → float32 [vocab, 32] values (seeded)."""
    rng = np.random.default_rng(SEED)
    return {
        f"t{i:02d}": rng.standard_normal((vocab, DIM), dtype=np.float32) for i in range(N_FEATURES)
    }


def _write_checkpoint(directory: Path, tables: dict[str, np.ndarray]) -> str:
    """Save the tables as a TensorFlow checkpoint with embserve (``es.train.Checkpoint``)."""
    import embserve as es

    features = {}
    for (name, values), feature in zip(tables.items(), _feature_names(), strict=True):
        table = es.TableConfig(
            vocabulary_size=values.shape[0],
            dim=DIM,
            combiner="sum",
            name=name,
            initializer=lambda shape, dtype, v=values: v,
        )
        features[feature] = es.FeatureConfig(table)
    model = es.TPUEmbeddingForServing(features, optimizer=None)
    model.build()
    directory.mkdir(parents=True, exist_ok=True)
    prefix: str = es.train.Checkpoint(embedding=model).save(directory / "ckpt")
    return prefix


def _write_config(path: Path, checkpoint_dir: Path, vocab: int) -> None:
    """The serving config for the 26 tables and features."""
    lines = [
        "[model]",
        f'name = "{MODEL}"',
        f'checkpoint = "{checkpoint_dir}"',
        "poll_interval_s = 3600.0",
        "",
    ]
    for i, feature in enumerate(_feature_names()):
        lines += [
            "[[tables]]",
            f'name = "t{i:02d}"',
            f"vocabulary_size = {vocab}",
            f"dim = {DIM}",
            'combiner = "sum"',
            "",
            "[[features]]",
            f'path = "{feature}"',
            f'table = "t{i:02d}"',
            "",
        ]
    path.write_text("\n".join(lines))


def _make_bodies(
    vocab: int, batches: Sequence[int]
) -> tuple[dict[int, list[bytes]], dict[int, list[dict[str, int]]]]:
    """Request bodies per batch size (row form), and their instances for checking answers."""
    rng = np.random.default_rng(SEED + 1)
    perms = [rng.permutation(vocab) for _ in range(N_FEATURES)]
    names = _feature_names()
    bodies: dict[int, list[bytes]] = {}
    first: dict[int, list[dict[str, int]]] = {}
    for batch in batches:
        n = N_BODIES[batch]
        ids = np.stack([_zipf_ids(rng, vocab, p, n * batch) for p in perms], axis=1)
        ids = ids.reshape(n, batch, N_FEATURES)
        bodies[batch] = []
        for b in range(n):
            instances = [dict(zip(names, map(int, row), strict=True)) for row in ids[b]]
            if b == 0:
                first[batch] = instances
            bodies[batch].append(json.dumps({"instances": instances}).encode())
    return bodies, first


# ---------------------------------------------------------------------------------------------
# Servers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """One server subprocess (its own session, so its workers can be signalled together)."""

    kind: str
    workers: int
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    threads: int = 0  # most OS threads of its process tree seen after a cell

    @property
    def label(self) -> str:
        return f"{self.kind} ×{self.workers}"

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _start_server(
    kind: str, workers: int, config: Path, tmp: Path, baseline_src: str | None = None
) -> Server:
    port = _free_port()
    log_path = tmp / f"{kind}-{workers}.log"
    env = dict(os.environ)
    if kind == BASELINE:
        assert baseline_src is not None
        env["PYTHONPATH"] = os.pathsep.join(
            [baseline_src, *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    if kind in ("embserve", BASELINE):
        argv = [sys.executable, "-m", "embserve", "serve", str(config)]
        argv += ["--workers", str(workers), "--port", str(port), "--host", HOST]
        argv += ["--log-level", "warning", "--no-access-log"]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--bare-server"]
        argv += ["--workers", str(workers), "--port", str(port)]
        env[BARE_ENV] = json.dumps(
            {"features": _feature_names(), "dim": DIM, "max_batch": MAX_BATCH}
        )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Server(kind, workers, port, proc, log_path)


def _get(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT_S)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_ready(servers: Sequence[Server]) -> None:
    """Until every server answers ``GET /healthz`` with 200 (embserve: checkpoint loaded)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = list(servers)
    while pending:
        for server in list(pending):
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"{server.label} exited with {server.proc.returncode}:\n{server.log_tail()}"
                )
            try:
                status, _ = _get(server.port, "GET", "/healthz")
            except OSError:
                status = 0
            if status == 200:
                pending.remove(server)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {START_TIMEOUT_S:.0f} s: {pending[0].label}")
        time.sleep(0.1)


def _stop_servers(servers: Sequence[Server]) -> None:
    """SIGTERM each server's session (graceful), then SIGKILL whatever is left after 30 s."""
    for server in servers:
        if server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30.0
    for server in servers:
        try:
            server.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)


def _tree_stats(root: int) -> list[list[str]]:
    """The ``/proc/PID/stat`` fields (after the command name) of ``root`` and its live
    descendants."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))  # by parent pid
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in stats:
            tree.append(stats[pid])
        stack.extend(children.get(pid, []))
    return tree


def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and its live descendants."""
    return sum(int(f[11]) + int(f[12]) for f in _tree_stats(root)) / CLK_TCK  # utime + stime


def _tree_threads(root: int) -> int:
    """OS threads of ``root`` and its live descendants (``num_threads`` in /proc/PID/stat).

    Counted after a cell: idle OpenMP teams and thread-pool workers outlive the requests that
    started them, so this is how many threads the load made the server keep.
    """
    return sum(int(f[17]) for f in _tree_stats(root))


def _check_answers(
    servers: Sequence[Server],
    bodies: dict[int, list[bytes]],
    first: dict[int, list[dict[str, int]]],
    tables: dict[str, np.ndarray],
) -> dict[tuple[str, int], int]:
    """Check one answer per server and batch size; return the answer sizes in bytes.

    embserve's values must be the table rows of the ids (one-hot, combiner sum); the bare
    endpoint's answer must have the same shape.
    """
    names = _feature_names()
    sizes: dict[tuple[str, int], int] = {}
    for server in servers:
        for batch in bodies:
            status, raw = _get(server.port, "POST", PREDICT, bodies[batch][0])
            if status != 200:
                raise RuntimeError(f"{server.label} answered {status}: {raw[:500]!r}")
            predictions = json.loads(raw)["predictions"]
            if len(predictions) != batch or any(
                list(p) != names or any(len(p[n]) != DIM for n in names) for p in predictions
            ):
                raise RuntimeError(f"{server.label}: wrong answer shape at batch {batch}")
            if server.kind in ("embserve", BASELINE):
                for instance, prediction in zip(first[batch], predictions, strict=True):
                    for i, name in enumerate(names):
                        row = tables[f"t{i:02d}"][instance[name]]
                        got = np.asarray(prediction[name], np.float32)
                        if not np.array_equal(got, row):
                            raise RuntimeError(f"{server.label}: wrong values for {name}")
            sizes[(server.kind, batch)] = len(raw)
    return sizes


# ---------------------------------------------------------------------------------------------
# Clients (separate processes)


class _Connection:
    """A keep-alive HTTP/1.1 connection: send pre-built requests, read framed responses."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def roundtrip(self, request: bytes) -> int:
        """Send one request; return the response status once its whole body has arrived."""
        self.sock.sendall(request)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError(f"response without Content-Length: {head[:300]!r}")
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        while len(buf) < total:
            self._fill()
        del buf[:total]
        return status

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def _request_bytes(port: int, body: bytes) -> bytes:
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class ClientResult:
    """One client's share of a cell."""

    latencies_ns: np.ndarray
    errors: int
    first_error: str
    cpu_s: float
    started: float
    finished: float


def _client_main(conn: Connection, index: int, bodies: dict[int, list[bytes]]) -> None:
    """A client process: per cell, connect and warm up, then send back to back until told."""
    connection: _Connection | None = None
    requests: list[bytes] = []
    offset = index * 7919  # each client starts at a different body
    while True:
        message = conn.recv()
        command = message[0]
        if command == "stop":
            return
        try:
            if command == "connect":
                _, port, batch = message
                requests = [_request_bytes(port, b) for b in bodies[batch]]
                connection = _Connection(port)
                for i in range(WARMUP_REQUESTS):
                    connection.roundtrip(requests[(offset + i) % len(requests)])
                conn.send(("ready",))
            elif command == "go":
                _, start_at, seconds, max_requests = message
                assert connection is not None
                conn.send(
                    ("done", _load(connection, requests, offset, start_at, seconds, max_requests))
                )
                connection.close()
                connection = None
        except Exception as exc:  # reported to the parent, which stops the run
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _load(
    connection: _Connection,
    requests: list[bytes],
    offset: int,
    start_at: float,
    seconds: float,
    max_requests: int,
) -> ClientResult:
    """Closed-loop requests from ``start_at`` for ``seconds`` (at most ``max_requests``)."""
    latencies = np.zeros(max_requests, np.int64)
    while time.monotonic() < start_at:
        pass
    cpu0 = time.process_time()
    started = time.monotonic()
    stop_ns = time.perf_counter_ns() + int(seconds * 1e9)
    n, errors, first_error = 0, 0, ""
    count = len(requests)
    clock = time.perf_counter_ns
    while n < max_requests:
        t0 = clock()
        if t0 >= stop_ns:
            break
        status = connection.roundtrip(requests[(offset + n) % count])
        latencies[n] = clock() - t0
        if status != 200:
            errors += 1
            first_error = first_error or f"status {status}"
        n += 1
    return ClientResult(
        latencies[:n], errors, first_error, time.process_time() - cpu0, started, time.monotonic()
    )


@dataclass
class Clients:
    """The client process pool."""

    procs: list[Any] = field(default_factory=list)
    conns: list[Connection] = field(default_factory=list)

    def start(self, n: int, bodies: dict[int, list[bytes]]) -> None:
        ctx = mp.get_context("spawn")
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(child, i, bodies), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.conns.append(parent)

    def _gather(self, timeout: float) -> list[Any]:
        replies = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise RuntimeError(f"a client did not answer within {timeout:.0f} s")
            reply = conn.recv()
            if reply[0] == "error":
                raise RuntimeError(f"client failed: {reply[1]}")
            replies.append(reply)
        return replies

    def run_cell(
        self, server: Server, batch: int, seconds: float, max_requests: int
    ) -> tuple[list[ClientResult], float, float]:
        """One cell: every client connects and warms up, then all load together.

        Returns the clients' results, the server's CPU seconds and the wall seconds.
        """
        for conn in self.conns:
            conn.send(("connect", server.port, batch))
        self._gather(IO_TIMEOUT_S)
        cpu0 = _tree_cpu_seconds(server.proc.pid)
        start_at = time.monotonic() + 0.05
        for conn in self.conns:
            conn.send(("go", start_at, seconds, max_requests))
        results: list[ClientResult] = [r[1] for r in self._gather(seconds + 2 * IO_TIMEOUT_S)]
        server_cpu = _tree_cpu_seconds(server.proc.pid) - cpu0
        wall = max(r.finished for r in results) - min(r.started for r in results)
        server.threads = max(server.threads, _tree_threads(server.proc.pid))
        return results, server_cpu, wall

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Cell:
    """Everything measured for one (server, workers, batch), over all rounds."""

    kind: str
    workers: int
    batch: int
    rates: list[float] = field(default_factory=list)
    latencies_ns: list[np.ndarray] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    wall_s: float = 0.0

    def add(self, results: Sequence[ClientResult], server_cpu: float, wall: float) -> None:
        n = sum(len(r.latencies_ns) for r in results)
        self.rates.append(n / wall)
        self.latencies_ns += [r.latencies_ns for r in results]
        self.requests += n
        self.errors += sum(r.errors for r in results)
        self.server_cpu_s += server_cpu
        self.client_cpu_s += sum(r.cpu_s for r in results)
        self.wall_s += wall

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.concatenate(self.latencies_ns), q)) / 1e6

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def _measure(
    servers: dict[tuple[str, int], Server], clients: Clients, sizes: Sizes, budget_s: float
) -> tuple[dict[tuple[str, int, int], Cell], int, list[str]]:
    """Warm-up cells, then interleaved rounds; returns the cells, rounds done and notes."""
    keys = [(k, w, b) for w in sizes.worker_counts for b in sizes.batches for k in sizes.servers]
    cells = {key: Cell(*key) for key in keys}
    notes: list[str] = []
    _log(f"warm-up: {sizes.warmup_seconds} s per cell, untimed")
    for kind, workers, batch in keys:
        clients.run_cell(servers[(kind, workers)], batch, sizes.warmup_seconds, sizes.max_requests)
    deadline = time.monotonic() + budget_s
    done = 0
    for r in range(sizes.rounds):
        if time.monotonic() > deadline:
            notes.append(f"stopped after {done} of {sizes.rounds} rounds: time budget spent")
            break
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for key in order:
            kind, workers, batch = key
            results, server_cpu, wall = clients.run_cell(
                servers[(kind, workers)], batch, sizes.seconds, sizes.max_requests
            )
            cells[key].add(results, server_cpu, wall)
            errors = [r.first_error for r in results if r.errors]
            if errors:
                raise RuntimeError(f"{kind} ×{workers} batch {batch}: failed requests: {errors[0]}")
        done += 1
        _log(
            f"round {done}/{sizes.rounds}: "
            + ", ".join(f"{k[0][0]}{k[1]}b{k[2]} {cells[k].rates[-1]:.0f}/s" for k in keys)
        )
    return cells, done, notes


# ---------------------------------------------------------------------------------------------
# Parts of a request (in-process diagnostics, after the servers have stopped)


class _AsgiRequest:
    """Calls an ASGI app with one ``POST`` of a fixed body, as uvicorn would, without a socket."""

    def __init__(self, app: Any, body: bytes) -> None:
        self.app = app
        self.body = body
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PREDICT,
            "raw_path": PREDICT.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", HOST.encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": (HOST, 50000),
            "server": (HOST, 8500),
        }
        self.status = 0

    async def _receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": self.body, "more_body": False}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]

    async def __call__(self) -> None:
        await self.app(self.scope, self._receive, self._send)
        if self.status != 200:
            raise RuntimeError(f"in-process request answered {self.status}")


class _Lifespan:
    """Runs an ASGI app's lifespan startup (embserve: the first checkpoint load) and shutdown."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        await self.app(
            {"type": "lifespan", "asgi": {"version": "3.0"}}, self.inbox.get, self.outbox.put
        )

    async def _step(self, event: str) -> None:
        await self.inbox.put({"type": f"lifespan.{event}"})
        reply = await self.outbox.get()
        if reply["type"] != f"lifespan.{event}.complete":
            raise RuntimeError(f"lifespan {event} failed: {reply}")

    async def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())
        await self._step("startup")

    async def stop(self) -> None:
        await self._step("shutdown")
        if self.task is not None:
            await self.task


def _best_us(call: Any, n: int, repeats: int = 5) -> float:
    """Microseconds per call: the best of ``repeats`` runs of ``n`` calls (after a warm-up)."""
    for _ in range(max(2, n // 10)):
        call()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter_ns() - t0) / n / 1e3)
    return best


def _parts(
    config_path: Path, bodies: dict[int, list[bytes]], quick: bool
) -> list[tuple[str, dict[int, float]]]:
    """Per-request CPU of each part of embserve's predict and of the bare endpoint, in µs.

    One process, one core, no network: the ASGI apps are called directly (Starlette included,
    uvicorn and the sockets not), and the parts through embserve's public server pieces
    (``RestCodec``, the loaded model, ``ServerMetrics.count_ids``) on the same bodies the load
    used.
    """
    import orjson

    from embserve.server.app import create_app
    from embserve.server.config import load_config
    from embserve.server.rest import RestCodec

    config = load_config(str(config_path))
    app = create_app(config)
    os.environ[BARE_ENV] = json.dumps(
        {"features": _feature_names(), "dim": DIM, "max_batch": MAX_BATCH}
    )
    bare = bare_app()
    names = _feature_names()
    arrays = [
        np.random.default_rng(SEED).standard_normal((MAX_BATCH, DIM), dtype=np.float32)
        for _ in names
    ]
    loop = asyncio.new_event_loop()
    lifespan = _Lifespan(app)
    loop.run_until_complete(lifespan.start())
    try:
        model = app.state.reloader.current.model
        metrics = app.state.metrics
        codec = RestCodec(config.features, config.limits)
        results: dict[str, dict[int, float]] = {}
        for batch in bodies:
            n = (200 if quick else 2000) if batch == 1 else (3 if quick else 20)
            body = bodies[batch][0]
            request = codec.decode(body)
            outputs = model(request.ids, request.weights)

            def bare_work(body: bytes = body) -> bytes:
                k = len(orjson.loads(body)["instances"])
                rows = [
                    dict(zip(names, r, strict=True))
                    for r in zip(*(a[:k] for a in arrays), strict=True)
                ]
                return orjson.dumps({"predictions": rows}, option=orjson.OPT_SERIALIZE_NUMPY)

            embserve_call = _AsgiRequest(app, body)
            bare_call = _AsgiRequest(bare, body)
            parts: list[tuple[str, Any]] = [
                (
                    "embserve: whole request through the Starlette app",
                    lambda c=embserve_call: loop.run_until_complete(c()),
                ),
                (
                    "bare: whole request through the Starlette app",
                    lambda c=bare_call: loop.run_until_complete(c()),
                ),
                ("embserve: decode (`RestCodec.decode`)", lambda b=body: codec.decode(b)),
                ("  of which `orjson.loads`", lambda b=body: orjson.loads(b)),
                (
                    "embserve: lookup (`model(ids)`, 26 features)",
                    lambda r=request: model(r.ids, r.weights),
                ),
                (
                    "embserve: encode (`RestCodec.encode`)",
                    lambda r=request, o=outputs: codec.encode(r, o),
                ),
                (
                    "embserve: ids metrics (`ServerMetrics.count_ids`)",
                    lambda r=request: metrics.count_ids(r.ids_per_feature),
                ),
                ("bare: handler work (loads, rows, dumps)", bare_work),
                (
                    "asyncio: one `run_until_complete` of a no-op coroutine (in both wholes)",
                    lambda: loop.run_until_complete(asyncio.sleep(0)),
                ),
            ]
            for label, call in parts:
                results.setdefault(label, {})[batch] = _best_us(call, n)
    finally:
        loop.run_until_complete(lifespan.stop())
        loop.close()
    return list(results.items())


def _parts_table(parts: Sequence[tuple[str, dict[int, float]]]) -> str:
    batches = list(parts[0][1])
    rows = [
        "| part | " + " | ".join(f"batch {b} µs" for b in batches) + " |",
        "| --- |" + " ---: |" * len(batches),
    ]
    for label, per_batch in parts:
        cells = " | ".join(
            f"{per_batch[b]:,.1f}" if per_batch[b] < 100 else f"{per_batch[b]:,.0f}"
            for b in batches
        )
        rows.append(f"| {label} | {cells} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Report


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in (
        "embserve",
        "numpy",
        "numba",
        "starlette",
        "uvicorn",
        "orjson",
        "h11",
        "httptools",
        "uvloop",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def _machine_facts() -> str:
    model = cpu_model()
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    commit = git_commit()
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().strip()
    except OSError:
        thp = "?"
    return "\n".join(
        [
            f"- nproc {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), CPU {model}, "
            f"RAM {mem_kib / 2**20:.1f} GiB, transparent huge pages `{thp}`",
            "- " + ", ".join(f"{k} {v}" for k, v in _versions().items()),
            f"- embserve tree: git {commit}",
        ]
    )


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _results_table(
    cells: dict[tuple[str, int, int], Cell], answer_bytes: dict[tuple[str, int], int]
) -> str:
    rows = [
        "| server | workers | batch | req/s (median) | req/s range | examples/s | p50 ms | p99 ms "
        "| server CPU ms/req | client CPU ms/req | answer KB | requests |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (kind, workers, batch), cell in cells.items():
        if not cell.rates:
            continue
        rows.append(
            f"| {kind} | {workers} | {batch} | {_fmt_rate(cell.rate)} "
            f"| {_fmt_rate(min(cell.rates))}–{_fmt_rate(max(cell.rates))} "
            f"| {_fmt_rate(cell.rate * batch)} "
            f"| {cell.percentile_ms(50):.2f} | {cell.percentile_ms(99):.2f} "
            f"| {1e3 * cell.server_cpu_s / cell.requests:.2f} "
            f"| {1e3 * cell.client_cpu_s / cell.requests:.2f} "
            f"| {answer_bytes[(kind, batch)] / 1024:,.1f} | {cell.requests:,} |"
        )
    return "\n".join(rows)


def _baseline_table(cells: dict[tuple[str, int, int], Cell]) -> str:
    """embserve against the baseline checkout: latency percentiles and req/s per cell."""
    rows = [
        "| workers | batch | p50 ms baseline → now | p99 ms baseline → now "
        "| req/s baseline → now | now / baseline req/s per round: median (range) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workers in sorted({w for _, w, _ in cells}):
        for batch in sorted({b for _, _, b in cells}):
            e, b = cells[("embserve", workers, batch)], cells[(BASELINE, workers, batch)]
            if not e.rates or not b.rates:
                continue
            per_round = [x / y for x, y in zip(e.rates, b.rates, strict=True)]
            rows.append(
                f"| {workers} | {batch} "
                f"| {b.percentile_ms(50):.2f} → {e.percentile_ms(50):.2f} "
                f"| {b.percentile_ms(99):.2f} → {e.percentile_ms(99):.2f} "
                f"| {_fmt_rate(b.rate)} → {_fmt_rate(e.rate)} "
                f"| {statistics.median(per_round):.3f} "
                f"({min(per_round):.2f}–{max(per_round):.2f}) |"
            )
    return "\n".join(rows)


def _ratio_table(cells: dict[tuple[str, int, int], Cell]) -> tuple[str, list[str]]:
    """embserve / bare per (workers, batch): of the medians, and per round (adjacent cells)."""
    rows = [
        "| workers | batch | embserve req/s | bare req/s | embserve / bare "
        "| per round: median (range) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for workers in sorted({w for _, w, _ in cells}):
        for batch in sorted({b for _, _, b in cells}):
            e, b = cells[("embserve", workers, batch)], cells[("bare", workers, batch)]
            if not e.rates or not b.rates:
                continue
            ratio = e.rate / b.rate
            per_round = [x / y for x, y in zip(e.rates, b.rates, strict=True)]
            spread = f"{min(per_round):.2f}–{max(per_round):.2f}"
            rows.append(
                f"| {workers} | {batch} | {_fmt_rate(e.rate)} | {_fmt_rate(b.rate)} | {ratio:.3f} "
                f"| {statistics.median(per_round):.3f} ({spread}) |"
            )
            if batch == 1:
                met = "met" if ratio >= 0.5 else "not met"
                verdicts.append(
                    f"{workers} worker{'s' if workers > 1 else ''}: {ratio:.3f} ({met})"
                )
    return "\n".join(rows), verdicts


def _report(
    *,
    command: str,
    sizes: Sizes,
    quick: bool,
    cells: dict[tuple[str, int, int], Cell],
    rounds_done: int,
    answer_bytes: dict[tuple[str, int], int],
    notes: Sequence[str],
    request_parts: Sequence[tuple[str, dict[int, float]]],
    setup: str,
    baseline_src: str | None = None,
) -> str:
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ratios, verdicts = _ratio_table(cells)
    parts = [
        f"## {date} — serving load (`serve_load.py`){' (--quick smoke run)' if quick else ''}",
        "",
        f"Command: `{command}`",
        "",
        _machine_facts(),
        "- **2 cores shared by the servers and the load-generating clients** (and by anything "
        "else running): the client processes' CPU is taken from the server's; see the CPU "
        "columns",
        "",
        "### Requests per second and latency, `POST /v1/models/load:predict`",
        "",
        _results_table(cells, answer_bytes),
        "",
        f"26 one-hot features, 26 tables of {sizes.vocab:,} × {DIM} float32 (TensorFlow "
        "checkpoint written by embserve; ids Zipf-like, rank r ∝ r^-1.05, ranks permuted over "
        "each table; "
        + ", ".join(f"{N_BODIES[b]} distinct batch-{b}" for b in sizes.batches)
        + " bodies cycled, row form `instances`). embserve = `embserve serve CONFIG --workers N "
        "--no-access-log`; bare = Starlette + orjson on uvicorn, same worker count, parses the "
        "request and answers the same JSON shape and size, no lookup. Load: "
        f"{sizes.clients} client processes, one keep-alive connection each, requests back to "
        f"back (so latency is under {sizes.clients} concurrent requests); {rounds_done} "
        f"interleaved round{'s' if rounds_done != 1 else ''} of {sizes.seconds:g} s per cell "
        "after an untimed warm-up; req/s = median over rounds; p50 / p99 over every request "
        "of every round; CPU ms/req = CPU time of the server's processes / of the client "
        "processes over the cells, per request.",
        *[f"- {note}" for note in notes],
        "",
        *(
            [
                "### embserve against the baseline",
                "",
                _baseline_table(cells),
                "",
                f"baseline = the same `embserve serve` command importing embserve from "
                f"`{baseline_src}` (`PYTHONPATH`), measured in the same interleaved rounds.",
                "",
            ]
            if baseline_src
            else []
        ),
        "### embserve against the bare endpoint",
        "",
        ratios,
        "",
        "Aim (issue 5): embserve ≥ 0.5 × the bare endpoint's req/s at batch 1 — "
        + "; ".join(verdicts)
        + ". Per round = the two servers' req/s in the same round (adjacent cells), which "
        "cancels most of the machine's drift.",
        "",
        "### Parts of a request (in-process diagnostics, not load figures)",
        "",
        _parts_table(request_parts) if request_parts else "(not measured)",
        "",
        "CPU per request on one core, best of 5 runs, after the load (servers stopped), same "
        "bodies. The whole-request rows call the Starlette apps directly (routing, middleware, "
        "handler, response; not uvicorn, h11 or the sockets); the parts are embserve's public "
        "server pieces on the loaded model. The live servers' CPU per request (table above) "
        "adds uvicorn, h11, the event loop and the sockets, and colder caches.",
        "",
        "### Setup (not in the timings)",
        "",
        setup,
        "",
    ]
    return "\n".join(parts)


@contextlib.contextmanager
def _temporary_directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="embserve-serve-load-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load benchmark; print the markdown section; ``--write`` adds it to RESULTS.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--write", action="store_true", help="insert the results in RESULTS.md")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (full: 5)")
    parser.add_argument("--seconds", type=float, help="seconds per cell and round (full: 4)")
    parser.add_argument("--clients", type=int, help="client processes (full: 4)")
    parser.add_argument("--max-requests", type=int, help="per client and cell (full: 200,000)")
    parser.add_argument(
        "--worker-counts",
        type=lambda text: tuple(int(x) for x in text.split(",")),
        help="comma-separated worker counts to run (full: 1,2)",
    )
    parser.add_argument(
        "--batches",
        type=lambda text: tuple(int(x) for x in text.split(",")),
        help=f"comma-separated batch sizes, of {sorted(N_BODIES)} (full: 1,256)",
    )
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also run embserve importing embserve from DIR (another checkout's src) as "
        "'baseline', interleaved with the others",
    )
    parser.add_argument("--max-minutes", type=float, default=15.0, help="time budget (15)")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server:
        return _run_bare_server(args.port, args.workers)

    sizes = QUICK if args.quick else FULL
    overrides = {
        k: v
        for k, v in {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "clients": args.clients,
            "max_requests": args.max_requests,
            "worker_counts": args.worker_counts,
            "batches": args.batches,
            "servers": (*SERVERS, BASELINE) if args.baseline_src else None,
        }.items()
        if v is not None
    }
    sizes = Sizes(**{**sizes.__dict__, **overrides})
    if not set(sizes.batches) <= set(N_BODIES):
        parser.error(f"--batches: each must be one of {sorted(N_BODIES)}")
    command = " ".join([".venv/bin/python", "benchmarks/serve_load.py", *sys.argv[1:]])
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    servers: dict[tuple[str, int], Server] = {}
    clients = Clients()
    with _temporary_directory() as tmp:
        try:
            t0 = time.perf_counter()
            tables = _make_tables(sizes.vocab)
            prefix = _write_checkpoint(tmp / "ckpts", tables)
            ckpt_bytes = sum(p.stat().st_size for p in (tmp / "ckpts").iterdir())
            _write_config(tmp / "serving.toml", tmp / "ckpts", sizes.vocab)
            bodies, first = _make_bodies(sizes.vocab, sizes.batches)
            write_s = time.perf_counter() - t0
            _log(f"checkpoint {prefix}: {ckpt_bytes / 1e6:.0f} MB in {write_s:.1f} s")
            t0 = time.perf_counter()
            for workers in sizes.worker_counts:
                for kind in sizes.servers:
                    servers[(kind, workers)] = _start_server(
                        kind, workers, tmp / "serving.toml", tmp, args.baseline_src
                    )
            clients.start(sizes.clients, bodies)
            _wait_ready(list(servers.values()))
            start_s = time.perf_counter() - t0
            _log(f"{len(servers)} servers ready in {start_s:.1f} s; checking answers")
            answer_bytes = _check_answers(list(servers.values()), bodies, first, tables)
            budget = args.max_minutes * 60 - (time.monotonic() - started)
            cells, rounds_done, notes = _measure(servers, clients, sizes, budget)
            notes.append(
                "most OS threads per server process tree after a cell (idle pool and OpenMP "
                "threads included): "
                + ", ".join(f"{s.label} {s.threads}" for s in servers.values())
            )
        finally:
            clients.stop()
            _stop_servers(list(servers.values()))
        for server in servers.values():
            if server.proc.returncode not in (0, None):
                notes.append(f"{server.label} exited with {server.proc.returncode} at the end")
        _log("in-process parts of a request")
        parts = _parts(tmp / "serving.toml", bodies, args.quick)
    notes.append(
        f"1-minute load average {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after"
    )
    setup = (
        f"- checkpoint: {ckpt_bytes / 1e6:,.0f} MB, tables generated and written in "
        f"{write_s:.1f} s; {len(servers)} servers started and loaded in {start_s:.1f} s "
        "(at once)\n"
        f"- whole run: {time.monotonic() - started:.0f} s"
    )
    section = _report(
        command=command,
        sizes=sizes,
        quick=args.quick,
        cells=cells,
        rounds_done=rounds_done,
        answer_bytes=answer_bytes,
        notes=notes,
        request_parts=parts,
        setup=setup,
        baseline_src=args.baseline_src,
    )
    publish(section, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
